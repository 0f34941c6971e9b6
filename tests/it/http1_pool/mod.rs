//! The pool of HTTP/1.1 connections to the PSP and its bound (`--upstream-max-connections`):
//! at most N HTTP/1.1 exchanges in flight at the PSP, a streamed body holding its slot until
//! it ends (or is dropped), waiting bounded by `--request-timeout`, no bound on HTTP/2, a
//! connection handed back after every kind of body and closed after an exchange given up,
//! and one the PSP closed while idle not tried again. Reading the bodies: [`bodies`].

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use pix_auth_proxy::client::UpstreamProtocol;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::faults::counter;
use crate::support::counting_psp::{CountingPsp, Event, GATE_AT, pattern};
use crate::support::*;

mod abandoned;
mod bodies;

const WAITS: &str = "pix_auth_proxy_upstream_connection_waits_total";
const RETRIES: &str = "pix_auth_proxy_upstream_retries_total";

/// The waits counter, read from the admin `/metrics` endpoint as Prometheus scrapes it.
async fn waits(sidecar: &Running) -> u64 {
    let got = get(&sidecar.admin_url("/metrics")).await;
    assert_eq!(got.status, 200);
    let text = String::from_utf8_lossy(&got.body);
    let prefix = format!("{WAITS} ");
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{WAITS}` sample on /metrics:\n{text}"));
    value.trim().parse::<f64>().unwrap() as u64
}

/// A sidecar whose API calls go to a [`CountingPsp`] (offering h2 if `h2`), tokens from
/// the env's mock PSP.
struct Setup {
    sidecar: Running,
    psp: CountingPsp,
    env: Env,
}

async fn setup(h2: bool, extra: &[&str]) -> Setup {
    let env = Env::new().await;
    let psp = CountingPsp::start(&env.pki, &env.pki.server().unwrap(), h2).await;
    let url = psp.url();
    let mut flags = vec!["--upstream", url.as_str()];
    flags.extend_from_slice(extra);
    let sidecar = env.sidecar(&flags).await;
    sidecar.ready().await;
    Setup { sidecar, psp, env }
}

/// An HTTP/1.1-only sidecar with `n` connection slots, and `extra` flags.
async fn slots(n: usize, extra: &[&str]) -> Setup {
    let n = n.to_string();
    let mut flags = vec!["--upstream-http1-only", "--upstream-max-connections", &n];
    flags.extend_from_slice(extra);
    setup(false, &flags).await
}

/// An HTTP/1.1-only sidecar with a single connection slot, and `extra` flags.
async fn one_slot(extra: &[&str]) -> Setup {
    slots(1, extra).await
}

/// `n` concurrent GETs of `/echo/{i}`, each on its own app connection; every one must be
/// answered 200 with its own path as the body.
async fn burst(sidecar: &Running, n: usize) {
    let http = http_client();
    let mut running = JoinSet::new();
    for i in 0..n {
        let http = http.clone();
        let url = sidecar.url(&format!("/echo/{i}"));
        running.spawn(async move {
            let got = send(&http, Request::get(url).body(empty()).unwrap()).await;
            (i, got)
        });
    }
    let mut answered = 0;
    while let Some(done) = running.join_next().await {
        let (i, got) = done.unwrap();
        assert_eq!(got.status, 200, "request {i}: {:?}", got.body);
        assert_eq!(got.body, format!("/echo/{i}"), "request {i}");
        answered += 1;
    }
    assert_eq!(answered, n);
}

/// GET `/echo/{name}`, which must be answered 200 with its own path as the body.
async fn echo(sidecar: &Running, name: &str) {
    let path = format!("/echo/{name}");
    let got = get(&sidecar.url(&path)).await;
    assert_eq!(
        got.status,
        200,
        "{path}: {:?}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(got.body, path);
}

/// GET `url` (`what`, for the message), which must be answered, a 504 `upstream-timeout`,
/// about `--request-timeout` (1 s) after it was sent.
async fn times_out_after_1s(url: &str, what: &str) {
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), get(url))
        .await
        .unwrap_or_else(|_| panic!("{what} is answered, not left hanging"));
    let took = started.elapsed();
    assert_problem(&got, 504, "upstream-timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{what}: 504 after {took:?}, --request-timeout is 1 s"
    );
}

/// GET `path`, returning the response with its body still to be read.
async fn open(sidecar: &Running, path: &str) -> http::Response<hyper::body::Incoming> {
    http_client()
        .request(Request::get(sidecar.url(path)).body(empty()).unwrap())
        .await
        .expect("request reaches the sidecar")
}

#[tokio::test]
async fn http1_exchanges_in_flight_at_the_psp_never_exceed_the_bound() {
    let s = slots(4, &[]).await;
    s.psp.set_delay(Duration::from_millis(200));
    assert_eq!(waits(&s.sidecar).await, 0);

    burst(&s.sidecar, 24).await;
    assert_eq!(s.psp.requests(), 24);
    // Strict: the bound is on exchanges, and the PSP counts an exchange from its handler's
    // call until its body hands over the last byte (before that byte is even written).
    // With 24 requests held 200 ms each, the bound is also reached.
    assert_eq!(
        s.psp.max_in_flight(),
        4,
        "at most (and, under this load, exactly) 4 exchanges in flight at the PSP"
    );
    // Connections: the 4 opened at first, plus at most one per slot from a handover that
    // lost its race. A freed slot is taken by a waiter at once, while the connection it
    // used goes back to hyper's pool from another task; if the waiter looks first, hyper
    // starts a new connect (and pools it). Once there are 5 connections, a handover always
    // finds one idle (at most 3 others busy), so the extras come from one round of
    // simultaneous handovers at most: 4 + 4.
    let (h1, h2) = s.psp.connections();
    assert_eq!(h2, 0);
    assert!(
        (4..=8).contains(&h1),
        "{h1} HTTP/1.1 connections for a bound of 4 (allowed 4..=8)"
    );
    // Every app connection opens within the first 200 ms round, so each request beyond
    // the first 4 found every slot taken.
    assert_eq!(waits(&s.sidecar).await, 20);
    s.env.assert_logs_clean();
}

#[tokio::test]
async fn without_a_low_bound_the_same_burst_reaches_the_psp_all_at_once() {
    // The default bound (32, above the 24 of the burst): the burst above was limited by
    // the bound, not by the test.
    let s = setup(false, &["--upstream-http1-only"]).await;
    s.psp.set_delay(Duration::from_millis(200));
    burst(&s.sidecar, 24).await;
    assert_eq!(s.psp.requests(), 24);
    let max = s.psp.max_in_flight();
    assert!(
        max > 4,
        "only {max} exchanges in flight at once with the default bound"
    );
    let (h1, h2) = s.psp.connections();
    assert_eq!(h2, 0);
    assert!(
        h1 >= max,
        "{h1} connections carried {max} exchanges at once"
    );
    assert_eq!(waits(&s.sidecar).await, 0);
}

#[tokio::test]
async fn http2_exchanges_take_no_slot() {
    let s = setup(true, &["--upstream-max-connections", "1"]).await;
    assert!(
        eventually(Duration::from_secs(5), || s
            .sidecar
            .current
            .load()
            .client
            .protocol()
            == UpstreamProtocol::Http2)
        .await,
        "the PSP's protocol was not learned at start"
    );
    s.psp.set_delay(Duration::from_millis(200));
    burst(&s.sidecar, 10).await;
    assert_eq!(s.psp.requests(), 10);
    let max = s.psp.max_in_flight();
    assert!(
        max > 1,
        "h2 is multiplexed: a bound of 1 must not serialise it (max in flight {max})"
    );
    assert_eq!(s.psp.connections().0, 0, "no HTTP/1.1 connection");
    assert_eq!(waits(&s.sidecar).await, 0);
}

#[tokio::test]
async fn a_streamed_response_holds_its_slot_until_its_body_ends() {
    let s = one_slot(&[]).await;
    let len = 200 * 1024;
    let first = open(&s.sidecar, &format!("/gated/{len}")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-length"], len.to_string());
    // The head arrived while the PSP still holds most of the body: it is streamed.
    assert_eq!(s.psp.in_flight(), 1);

    let second = tokio::spawn({
        let url = s.sidecar.url("/echo/second");
        async move { get(&url).await }
    });
    // While the first body is open the second request must not reach the PSP.
    assert!(
        !eventually(Duration::from_millis(500), || s.psp.requests() > 1).await,
        "a second exchange started while the only slot's body was still streaming"
    );
    assert!(!second.is_finished());

    s.psp.open_gate();
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), len);
    assert!(body == pattern(len), "the streamed body is not byte-exact");

    let got = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second request is answered once the first body ended")
        .unwrap();
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.body, "/echo/second");

    let events = s.psp.events();
    let end_first = events
        .iter()
        .position(|e| *e == Event::End(format!("/gated/{len}")));
    let start_second = events
        .iter()
        .position(|e| *e == Event::Start("/echo/second".into()));
    assert!(
        end_first.is_some() && start_second.is_some() && end_first < start_second,
        "the second exchange must start after the first body ended: {events:?}"
    );
    assert_eq!(s.psp.max_in_flight(), 1);
    assert_eq!(waits(&s.sidecar).await, 1);
}

#[tokio::test]
async fn a_streamed_response_dropped_by_the_app_gives_its_slot_back() {
    let s = one_slot(&["--request-timeout", "3s"]).await;
    {
        let resp = open(&s.sidecar, "/gated/204800").await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut read = 0;
        while read < 16 * 1024 {
            let frame = body.frame().await.expect("a first part").unwrap();
            read += frame.data_ref().map_or(0, Bytes::len);
        }
        assert!(read <= GATE_AT);
        // The app goes away with most of the body unread (the PSP still holds the rest).
    }
    // A leaked slot would make this wait until --request-timeout and answer 504.
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), get(&s.sidecar.url("/echo/after")))
        .await
        .expect("answered");
    assert_eq!(
        got.status,
        200,
        "after the app dropped a streamed response: {}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(got.body, "/echo/after");
    assert!(started.elapsed() < Duration::from_secs(3));
    let again = get(&s.sidecar.url("/echo/again")).await;
    assert_eq!(again.status, 200);
    assert_eq!(s.psp.requests(), 3);
}

#[tokio::test]
async fn waiting_for_a_slot_is_bounded_by_the_request_timeout() {
    let s = one_slot(&["--request-timeout", "1s"]).await;
    // The only slot is held by a streamed body the PSP does not finish.
    let first = open(&s.sidecar, "/gated/204800").await;
    assert_eq!(first.status(), 200);

    times_out_after_1s(
        &s.sidecar.url("/echo/second"),
        "a request waiting for a slot",
    )
    .await;
    assert_eq!(
        s.psp.requests(),
        1,
        "the waiting request never reached the PSP"
    );

    // The first exchange is unharmed, and its slot comes back.
    s.psp.open_gate();
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert!(body == pattern(204800));
    let got = get(&s.sidecar.url("/echo/third")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "/echo/third");
}

/// A request that times out while waiting for a slot is counted too: that is the wait that
/// matters most (it failed before the wait was counted ahead of waiting).
#[tokio::test]
async fn a_request_that_gives_up_waiting_for_a_slot_is_counted_as_a_wait() {
    let s = one_slot(&["--request-timeout", "1s"]).await;
    let first = open(&s.sidecar, "/gated/204800").await;
    assert_eq!(first.status(), 200);
    let got = tokio::time::timeout(Duration::from_secs(10), get(&s.sidecar.url("/echo/second")))
        .await
        .expect("answered");
    assert_problem(&got, 504, "upstream-timeout");
    // It found no free slot and waited (the whole --request-timeout): that is a wait.
    assert_eq!(
        waits(&s.sidecar).await,
        1,
        "a request that waited for a slot until its timeout is not counted in {WAITS}"
    );
    s.psp.open_gate();
    drop(first);
}

/// Every kind of PSP body, fetched in turn over `--upstream-http1-only`: each one's end
/// must hand its connection back, so that all of them ride one connection.
#[tokio::test]
async fn every_kind_of_body_hands_its_http1_connection_back_for_the_next_exchange() {
    let s = slots(4, &[]).await;
    let http = http_client();
    let big = 200 * 1024; // over READ_WHOLE_LIMIT: streamed
    let cases: Vec<(Method, String, usize)> = vec![
        (Method::GET, "/bytes/10".into(), 10),
        (Method::GET, "/chunked/10".into(), 10),
        (Method::GET, format!("/bytes/{big}"), big),
        (Method::GET, format!("/chunked/{big}"), big),
        (Method::GET, "/status/204".into(), 0),
        (Method::HEAD, "/bytes/10".into(), 0),
        (Method::GET, "/bytes/0".into(), 0),
    ];
    for round in 0..2 {
        for (method, path, len) in &cases {
            let req = Request::builder()
                .method(method.clone())
                .uri(s.sidecar.url(path))
                .body(empty())
                .unwrap();
            let got = send(&http, req).await;
            assert!(
                got.status == 200 || got.status == 204,
                "round {round}, {method} {path}: {} {:?}",
                got.status,
                String::from_utf8_lossy(&got.body)
            );
            assert_eq!(got.body.len(), *len, "round {round}, {method} {path}");
            if *len > 0 {
                assert!(got.body == pattern(*len), "{method} {path}: not byte-exact");
            }
        }
    }
    assert_eq!(s.psp.requests(), 2 * cases.len() as u64);
    assert_eq!(
        s.psp.connections(),
        (1, 0),
        "each exchange ended cleanly, so the next one reused its connection"
    );
    assert_eq!(waits(&s.sidecar).await, 0);
}

/// An exchange given up before the PSP's head (the request timeout) whose answer does not
/// follow within the drain bound (1 s; [`abandoned`] has the answers that do) must not leave
/// its connection in the pool with a request outstanding, nor keep its slot: the next
/// request, with a single slot, is answered on a new connection.
#[tokio::test]
async fn an_exchange_given_up_before_its_head_frees_its_slot_and_closes_its_connection() {
    let s = one_slot(&["--request-timeout", "500ms"]).await;
    assert_eq!(get(&s.sidecar.url("/echo/warm")).await.status, 200);
    assert_eq!(s.psp.connections(), (1, 0));

    s.psp.set_delay(Duration::from_secs(30));
    let late = get(&s.sidecar.url("/echo/late")).await;
    assert_problem(&late, 504, "upstream-timeout");
    assert_eq!(s.psp.requests(), 2);
    assert!(
        eventually(Duration::from_secs(10), || s.psp.open_connections() == 0).await,
        "the given-up exchange's connection is closed by the sidecar (open: {})",
        s.psp.open_connections()
    );

    s.psp.set_delay(Duration::ZERO);
    echo(&s.sidecar, "next").await;
    assert_eq!(
        s.psp.connections(),
        (2, 0),
        "the connection of the given-up exchange was not reused"
    );
    assert_eq!(s.psp.open_connections(), 1);
    let again = get(&s.sidecar.url("/echo/again")).await;
    assert_eq!(again.status, 200);
    assert_eq!(s.psp.connections(), (2, 0), "the new connection is kept");
}

/// A PSP that closes an idle keep-alive connection (nginx at its `keepalive_timeout`, or on
/// a reload) costs nothing: the close is seen when the connection is next taken from the
/// pool, and the request goes on a new connection without being tried on the closed one.
#[tokio::test]
async fn a_connection_the_psp_closed_while_idle_is_not_tried_again() {
    let s = one_slot(&[]).await;
    assert_eq!(get(&s.sidecar.url("/echo/first")).await.status, 200);
    assert_eq!(s.psp.open_connections(), 1);
    s.psp.close_idle_connections();
    assert!(
        eventually(Duration::from_secs(10), || s.psp.open_connections() == 0).await,
        "the PSP closed its idle connection"
    );
    echo(&s.sidecar, "next").await;
    assert_eq!(s.psp.connections(), (2, 0), "answered on a new connection");
    assert_eq!(
        counter(&s.sidecar.metrics, RETRIES),
        0.0,
        "the request was first tried on the closed connection"
    );
    assert_eq!(waits(&s.sidecar).await, 0);
}
