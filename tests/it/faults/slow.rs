//! Slow and silent app connections, of both protocols: every connection is bounded, whether
//! it dribbles a head, stops inside the HTTP/2 preface, goes quiet after SETTINGS, idles
//! after a request or stops reading its response; and silent connections cannot starve a
//! normal request.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{assert_still_serves, hostile};
use crate::support::hostile_psp::Step;
use crate::support::raw::{H2_EMPTY_SETTINGS, H2_PREFACE, closed_within, connect, find};
use crate::support::*;

/// The header read timeout these tests run with, and the slack allowed past it.
const HEADER_READ: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn an_http1_slowloris_head_is_cut_at_the_header_read_timeout_and_others_are_served() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&["--header-read-timeout", "1s"]).await;
    sidecar.ready().await;
    let mut tcp = connect(sidecar.addr).await;
    let started = Instant::now();
    tcp.write_all(b"GET /cob/slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header line every 200 ms, never the end of the head (bounded: 40 lines).
    let mut cut_after = None;
    for i in 0..40 {
        if tcp
            .write_all(format!("X-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            cut_after = Some(started.elapsed());
            break;
        }
        if closed_within(&mut tcp, Duration::from_millis(200))
            .await
            .is_some()
        {
            cut_after = Some(started.elapsed());
            break;
        }
    }
    let cut_after = cut_after.expect("the slowloris connection was never cut");
    assert!(
        cut_after >= HEADER_READ - Duration::from_millis(100) && cut_after <= HEADER_READ + SLACK,
        "cut after {cut_after:?}"
    );
    assert_still_serves(&sidecar, "/cob/after-slowloris").await;
}

/// Open a connection to `addr`, send `bytes`, and return how long until the sidecar closed
/// it (or `None` if still open after the header read timeout + slack).
async fn silent_after(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<Duration> {
    let mut tcp = connect(addr).await;
    tcp.write_all(bytes).await.unwrap();
    closed_within(&mut tcp, HEADER_READ + SLACK).await
}

#[tokio::test]
async fn an_h2c_connection_stopping_inside_the_preface_is_closed_within_the_header_read_timeout() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&["--header-read-timeout", "1s"]).await;
    let closed = silent_after(sidecar.addr, &H2_PREFACE[..16]).await;
    assert!(
        closed.is_some(),
        "a connection that sent only `PRI * HTTP/2.0\\r\\n` is still open after {:?}",
        HEADER_READ + SLACK
    );
}

#[tokio::test]
async fn an_h2c_connection_silent_after_preface_and_settings_is_closed_within_the_header_read_timeout()
 {
    let env = Env::new().await;
    let sidecar = env.sidecar(&["--header-read-timeout", "1s"]).await;
    let hello = [H2_PREFACE, H2_EMPTY_SETTINGS].concat();
    let closed = silent_after(sidecar.addr, &hello).await;
    assert!(
        closed.is_some(),
        "a connection that sent the preface and SETTINGS and no request is still open after {:?}",
        HEADER_READ + SLACK
    );
}

#[tokio::test]
async fn a_hundred_silent_h2c_connections_with_64_slots_do_not_starve_a_normal_request() {
    let env = Env::new().await;
    let sidecar = env
        .sidecar(&["--header-read-timeout", "1s", "--max-connections", "64"])
        .await;
    sidecar.ready().await;
    let hello = [H2_PREFACE, H2_EMPTY_SETTINGS].concat();
    let mut silent = Vec::new();
    for _ in 0..100 {
        let mut tcp = connect(sidecar.addr).await;
        tcp.write_all(&hello).await.unwrap();
        silent.push(tcp);
    }
    let started = Instant::now();
    let bound = HEADER_READ + Duration::from_secs(3);
    let answered = tokio::time::timeout(bound, get(&sidecar.url("/cob/starved"))).await;
    let got = answered.unwrap_or_else(|_| {
        panic!("a normal request behind 100 silent h2c connections got no answer within {bound:?}")
    });
    assert_eq!(got.status, 200);
    eprintln!(
        "measured: answered after {:?} behind 100 silent h2c connections",
        started.elapsed()
    );
    drop(silent);
}

#[tokio::test]
async fn an_idle_h2c_connection_after_one_request_gets_goaway_and_is_closed_after_the_idle_timeout()
{
    let env = Env::new().await;
    let sidecar = env.sidecar(&["--idle-timeout", "2s"]).await;
    sidecar.ready().await;
    let tcp = connect(sidecar.addr).await;
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/cob/idle-h2c", sidecar.addr))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let n = chunk.unwrap().len();
        let _ = body.flow_control().release_capacity(n);
    }
    // `client` stays alive: only the server can end this connection now.
    let idle_from = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(2) + SLACK, driver).await;
    let after = idle_from.elapsed();
    assert!(
        ended.is_ok(),
        "the idle h2c connection is still open after {after:?}"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "closed too early: {after:?}"
    );
    drop(client);
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&["--idle-timeout", "2s"]).await;
    sidecar.ready().await;
    let mut tcp = connect(sidecar.addr).await;
    tcp.write_all(b"GET /cob/idle-h1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = crate::support::raw::read_until_end(
        &mut tcp,
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .await;
    assert!(first.text().starts_with("HTTP/1.1 200"), "{}", first.text());
    let closed = closed_within(&mut tcp, Duration::from_secs(2) + SLACK).await;
    assert!(
        closed.is_some(),
        "the idle keep-alive connection is still open"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_a_large_response_is_cut_after_the_idle_timeout() {
    let h = hostile(&["--idle-timeout", "2s"]).await;
    let mut chunk = b"4000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'x', 0x4000));
    chunk.extend_from_slice(b"\r\n");
    h.psp.script(vec![
        Step::Write(bytes::Bytes::from_static(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        )),
        Step::Endless(chunk.into()),
    ]);
    let mut tcp = connect(h.sidecar.addr).await;
    tcp.write_all(b"GET /lote/huge HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read the head, then stop reading.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&head, b"\r\n\r\n").is_none() {
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
        )
        .await
        .expect("the response head arrives")
        .unwrap();
        assert!(n > 0, "closed before the head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    // The sidecar gives up on the stuck client; the PSP's endless body stops being read.
    let stopped = eventually(Duration::from_secs(2) + Duration::from_secs(3), || {
        h.psp.aborted_writes() >= 1
    })
    .await;
    assert!(
        stopped,
        "the sidecar still holds a client that has not read for 5 s"
    );
    let drained = closed_within(&mut tcp, Duration::from_secs(10)).await;
    assert!(drained.is_some(), "the app connection was not closed");
    h.psp.script(vec![Step::Echo]);
    assert_still_serves(&h.sidecar, "/cob/after-stuck-reader").await;
}
