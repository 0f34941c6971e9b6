//! Exchanges the app gives up on before the PSP's response head (it closes its connection,
//! or the request timeout passes): the PSP has the request either way, so the sidecar lets
//! the answer come and keeps the connection for the next request instead of paying a new
//! TLS handshake, unless the answer is late or too long.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use super::{echo, one_slot};
use crate::support::counting_psp::Event;
use crate::support::*;

/// Once the PSP has finished answering the abandoned `path` (its last body byte handed
/// over), the next request must go on the same, single connection.
async fn answered_and_connection_reused(s: &super::Setup, path: &str) {
    let end = Event::End(path.to_owned());
    assert!(
        eventually(Duration::from_secs(10), || s.psp.events().contains(&end)).await,
        "the PSP answered the abandoned {path}"
    );
    s.psp.set_delay(Duration::ZERO);
    echo(&s.sidecar, "next").await;
    assert_eq!(
        s.psp.connections(),
        (1, 0),
        "the abandoned exchange's answer was read and its connection reused"
    );
    assert_eq!(s.psp.open_connections(), 1);
}

/// An app connection that sends `GET path` and goes away once the PSP has the request.
async fn gone_after_sending(s: &super::Setup, path: &str) {
    let before = s.psp.requests();
    let mut app = tokio::net::TcpStream::connect(s.sidecar.addr)
        .await
        .unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
    app.write_all(head.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || s.psp.requests() > before).await,
        "the PSP got {path}"
    );
    drop(app);
}

#[tokio::test]
async fn an_app_that_goes_away_before_the_head_costs_no_new_psp_connection() {
    let s = one_slot(&[]).await;
    echo(&s.sidecar, "warm").await;
    assert_eq!(s.psp.connections(), (1, 0));

    s.psp.set_delay(Duration::from_millis(300));
    gone_after_sending(&s, "/echo/gone").await;
    answered_and_connection_reused(&s, "/echo/gone").await;
}

#[tokio::test]
async fn an_exchange_past_the_request_timeout_keeps_its_connection_if_the_answer_follows_soon() {
    let s = one_slot(&["--request-timeout", "400ms"]).await;
    echo(&s.sidecar, "warm").await;
    assert_eq!(s.psp.connections(), (1, 0));

    s.psp.set_delay(Duration::from_millis(800));
    let late = get(&s.sidecar.url("/echo/late")).await;
    assert_problem(&late, 504, "upstream-timeout");
    answered_and_connection_reused(&s, "/echo/late").await;
}

/// Reading an abandoned answer is bounded in bytes as well as in time: a body longer than
/// 64 KiB closes the connection rather than be read for nobody.
#[tokio::test]
async fn an_abandoned_exchange_with_a_long_answer_closes_its_connection() {
    let s = one_slot(&[]).await;
    echo(&s.sidecar, "warm").await;

    s.psp.set_delay(Duration::from_millis(300));
    gone_after_sending(&s, "/bytes/1048576").await;
    assert!(
        eventually(Duration::from_secs(10), || s.psp.open_connections() == 0).await,
        "the sidecar closed the connection of the long abandoned answer (open: {})",
        s.psp.open_connections()
    );
    s.psp.set_delay(Duration::ZERO);
    echo(&s.sidecar, "next").await;
    assert_eq!(s.psp.connections(), (2, 0), "answered on a new connection");
}
