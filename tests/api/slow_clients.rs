//! Clients too slow to serve lose their connection: a header still incomplete
//! `server.client_header_timeout_ms` after its first byte (on a new connection, after the
//! connection opened), a write to a client that has read nothing for
//! `server.client_send_timeout_ms`. Slow bodies are not theirs to cut, nor a
//! keep-alive connection idle for less than `server.client_keepalive_timeout_seconds`; one
//! idle longer is closed, and so is one that has served `server.client_keepalive_requests`.
//! An address with `server.client_connections_per_address` open has any more closed.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{APPID, Db, TestApp, Tweaks};
use crate::observability::{observed, scrape, value};
use crate::proxy::read_response;
use crate::tls::client_failures_are_logged_at_info;

/// A gateway with these lines added under `server:`, and its metrics on.
async fn gateway(server: &str, tweaks: Tweaks) -> TestApp {
    let tweaks = Tweaks {
        server: Some(server.to_string()),
        ..tweaks
    };
    observed(Db::Sqlite, "", tweaks).await
}

/// `mpapi_client_timeouts_total` for `timeout` (`header` or `send`).
async fn timeouts(app: &TestApp, timeout: &str) -> f64 {
    value(
        &scrape(app).await,
        "mpapi_client_timeouts_total",
        &[("timeout", timeout)],
    )
}

/// Write the start of a request to the app, `method_path` (`GET /app/x`), with its `Host` and
/// `User-App`, then `rest`: more header lines and the blank line that ends the header, or
/// nothing to leave it open.
async fn send_head<S: AsyncWrite + Unpin>(stream: &mut S, method_path: &str, rest: &str) {
    let head = format!("{method_path} HTTP/1.1\r\nHost: mpapi\r\nUser-App: {APPID}\r\n{rest}");
    stream.write_all(head.as_bytes()).await.unwrap();
}

/// Whether the gateway has closed `stream` (end of stream or reset) within `limit`, reading
/// and dropping whatever comes before.
pub(crate) async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Assert that the gateway closes `stream` within `latest` from now, and no sooner than
/// `earliest` after `since` (when the timeout being checked began).
pub(crate) async fn closed_between<S: AsyncRead + Unpin>(
    stream: &mut S,
    since: Instant,
    earliest: Duration,
    latest: Duration,
) {
    assert!(
        closed_within(stream, latest).await,
        "still open {latest:?} later"
    );
    let took = since.elapsed();
    assert!(took >= earliest, "closed after {took:?}");
}

#[tokio::test]
async fn a_header_sent_a_line_at_a_time_is_cut_off_at_the_header_timeout() {
    let app = gateway("  client_header_timeout_ms: 600", Tweaks::default()).await;
    // On a new connection, and on one whose first request was served.
    let mut fresh = TcpStream::connect(app.addr).await.unwrap();
    drip_until_cut_off(&mut fresh).await;
    let mut reused = TcpStream::connect(app.addr).await.unwrap();
    send_head(&mut reused, "GET /app/first", "\r\n").await;
    let first = read_response(&mut reused).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    drip_until_cut_off(&mut reused).await;
    client_failures_are_logged_at_info("server.client_header_timeout_ms").await;
    assert_eq!(timeouts(&app, "header").await, 2.0);
    app.stop().await;
}

#[tokio::test]
async fn a_new_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let app = gateway("  client_header_timeout_ms: 600", Tweaks::default()).await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    // Pingora alone would wait 60 s for the first request.
    let (earliest, latest) = (Duration::from_millis(500), Duration::from_secs(10));
    closed_between(&mut silent, opened, earliest, latest).await;
    assert_eq!(timeouts(&app, "header").await, 1.0);
    // One that begins its request within the timeout is served.
    let mut prompt = TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_head(&mut prompt, "GET /app/prompt", "\r\n").await;
    let answer = read_response(&mut prompt).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(timeouts(&app, "header").await, 1.0);
    app.stop().await;
}

/// Begin a request and send its header a line every 100 ms, never ending it: each read comes
/// well within Pingora's own read timeout. Returns once the gateway has closed the connection,
/// which must come after the 600 ms header timeout and within 10 s.
pub(crate) async fn drip_until_cut_off<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let started = Instant::now();
    send_head(stream, "GET /app/open", "").await;
    for line in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Writing fails once the gateway has closed the connection, or reading ends.
        let written = stream
            .write_all(format!("X-Drip-{line}: 1\r\n").as_bytes())
            .await;
        if written.is_err() || closed_within(stream, Duration::from_millis(1)).await {
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(500),
                "cut off after {took:?}, before the header timeout"
            );
            return;
        }
    }
    panic!("a header dripped for 10 s was still being read");
}

#[tokio::test]
async fn a_slow_header_in_time_a_slow_body_and_an_idle_keep_alive_are_all_served() {
    let app = gateway("  client_header_timeout_ms: 1000", Tweaks::default()).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // A header in three pieces, 150 ms apart: whole 300 ms after it began, within the timeout.
    for piece in [
        "GET /app/first HTTP/1.1\r\n".to_string(),
        format!("Host: mpapi\r\nUser-App: {APPID}\r\n"),
        "Accept: */*\r\n\r\n".to_string(),
    ] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("/api/first"), "{first}");

    // Idle for longer than the header timeout: waiting for a request is not sending one.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Then a body a byte every 150 ms, 1.8 s in all: the header came whole, the body is not
    // timed as one.
    let body = "slow-body-12";
    let length = format!("Content-Length: {}\r\n\r\n", body.len());
    send_head(&mut stream, "POST /app/second", &length).await;
    for byte in body.bytes() {
        tokio::time::sleep(Duration::from_millis(150)).await;
        stream.write_all(&[byte]).await.unwrap();
    }
    let second = read_response(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains("/api/second"), "{second}");
    assert!(second.contains(body), "{second}");
    assert_eq!(timeouts(&app, "header").await, 0.0);
    assert_eq!(timeouts(&app, "send").await, 0.0);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut_off_at_the_send_timeout() {
    // An upstream with an answer far larger than the sockets on the way can hold.
    const ANSWER: usize = 64 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let router = axum::Router::new().fallback(|| async { vec![b'x'; ANSWER] });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let app = gateway(
        "  client_send_timeout_ms: 500",
        Tweaks {
            upstreams: Some(vec![format!("http://{upstream}/api")]),
            ..Tweaks::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    send_head(&mut stream, "GET /app/large", "\r\n").await;
    // Read nothing for a while, then everything there is.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection neither closed nor delivered within 10 s"),
        }
        if received > ANSWER {
            break;
        }
    }
    assert!(
        received < ANSWER,
        "the whole answer ({received} bytes) reached a client that stopped reading"
    );
    client_failures_are_logged_at_info("server.client_send_timeout_ms").await;
    assert_eq!(timeouts(&app, "send").await, 1.0);
    assert_eq!(timeouts(&app, "header").await, 0.0);
    app.stop().await;
}

#[tokio::test]
async fn a_keep_alive_connection_idle_longer_than_the_keepalive_timeout_is_closed() {
    let app = gateway("  client_keepalive_timeout_seconds: 1", Tweaks::default()).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    send_head(&mut stream, "GET /app/first", "\r\n").await;
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Idle for less than the timeout each time, three times over (longer than the timeout in
    // all): each wait is timed on its own, so the connection serves every request.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        send_head(&mut stream, "GET /app/again", "\r\n").await;
        let again = read_response(&mut stream).await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    }
    // Idle for longer: it is closed, a second after the answer, not at once.
    let idle = Instant::now();
    let (earliest, latest) = (Duration::from_millis(900), Duration::from_secs(5));
    closed_between(&mut stream, idle, earliest, latest).await;
    app.stop().await;
}

#[tokio::test]
async fn a_connection_that_has_served_its_keepalive_requests_is_closed() {
    let app = gateway("  client_keepalive_requests: 3", Tweaks::default()).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    for request in 1..=3 {
        send_head(&mut stream, &format!("GET /app/{request}"), "\r\n").await;
        let answer = read_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The last answer says so, and the client opens a new connection for the next.
        let closing = answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n");
        assert_eq!(closing, request == 3, "request {request}: {answer}");
    }
    assert!(
        closed_within(&mut stream, Duration::from_secs(2)).await,
        "the connection is still open after its last request"
    );
    app.stop().await;
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed_until_one_of_them_closes() {
    let app = gateway("  client_connections_per_address: 2", Tweaks::default()).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        send_head(&mut stream, "GET /app/held", "\r\n").await;
        let answer = read_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    // A third from the same address is closed unanswered.
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    send_head(&mut third, "GET /app/third", "\r\n").await;
    assert!(
        closed_within(&mut third, Duration::from_secs(2)).await,
        "a third connection was served"
    );
    assert_eq!(refused(&app).await, 1.0);
    // One of the two closes: a new connection takes its place, once the gateway has seen it go.
    drop(held.remove(0));
    let mut served = None;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        send_head(&mut stream, "GET /app/next", "\r\n").await;
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                served = Some(String::from_utf8_lossy(&chunk[..n]).into_owned());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let served = served.expect("no connection was served after one of the two closed");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    // The connection still open was never cut.
    send_head(&mut held[0], "GET /app/again", "\r\n").await;
    let again = read_response(&mut held[0]).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    app.stop().await;
}

/// `mpapi_client_connections_refused_total`.
async fn refused(app: &TestApp) -> f64 {
    value(
        &scrape(app).await,
        "mpapi_client_connections_refused_total",
        &[],
    )
}
