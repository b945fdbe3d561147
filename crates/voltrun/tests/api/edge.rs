//! Slow and greedy clients at the HTTP edge, over raw TCP: headers dripped a byte at a time, bodies
//! that never finish, more connections than the server serves, and parallel large uploads. Each
//! test sets its limits low and checks the server holds to them (and stays up for others).

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp};

async fn edge_app(customise: impl FnOnce(&mut voltrun::config::SettingsArgs)) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, customise).await
}

fn address(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent and when
/// it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_its_headers_is_cut_off_at_the_header_timeout() {
    let app = edge_app(|raw| raw.http.header_timeout_s = 1).await;
    let mut slow = TcpStream::connect(address(&app)).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Keep dripping a header byte every 200 ms: the connection is alive, the head never ends.
    let drip = tokio::spawn(async move {
        for _ in 0..50 {
            if slow.write_all(b"X").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    let cut_off = tokio::time::timeout(Duration::from_secs(6), drip)
        .await
        .expect("the drip ended")
        .unwrap();
    assert!(cut_off, "the server kept a dripping client for 10 s");
    app.send(reqwest::Method::GET, "/health", None, None)
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408_in_the_error_format() {
    let app = edge_app(|raw| raw.http.body_timeout_s = 1).await;
    let mut slow = TcpStream::connect(address(&app)).await.unwrap();
    slow.write_all(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"email\":",
    )
    .await
    .unwrap();
    let (reply, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 408"),
        "expected a 408 within 5 s, got {reply:?} (closed after {closed:?})"
    );
    let body: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(body["request_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_ends() {
    let app = edge_app(|raw| {
        raw.http.max_connections = 3;
        raw.http.header_timeout_s = 30;
    })
    .await;
    // Three clients that never finish their headers hold every slot.
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        holders.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Timed from before the spawn: the task may start a moment after it, while the holder below is
    // released 700 ms after it.
    let started = Instant::now();
    let waiting = tokio::spawn({
        let url = format!("{}/health", app.base);
        async move {
            let status = reqwest::get(url).await.map(|r| r.status().as_u16());
            (status, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection was served while three held every slot"
    );
    holders.pop();
    let (status, waited) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(status.unwrap(), 200);
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_past_the_cap_get_503_with_retry_after() {
    let app = edge_app(|raw| raw.http.max_uploads = 1).await;
    let user = app.register().await;
    // One upload in flight: 2 MiB declared, the first half sent, the rest held back.
    let mut first = TcpStream::connect(address(&app)).await.unwrap();
    let head = format!(
        "POST /api/functions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        user.access_token,
        2 << 20
    );
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&vec![b' '; 1 << 20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The second is answered before its body is sent (reading it would be the work refused).
    let second = upload_head(&app, &user.access_token).await;
    assert!(second.starts_with("HTTP/1.1 503"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("retry-after: 1"),
        "{second}"
    );
    assert!(second.contains("too_many_uploads"), "{second}");
    // Small requests are not uploads and go through meanwhile.
    app.get("/api/functions", &user.access_token)
        .await
        .expect(200);
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let app = edge_app(|raw| raw.http.header_timeout_s = 1).await;
    let mut idle = TcpStream::connect(address(&app)).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The answer arrives and the connection stays open for the next request...
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // ...but a client that sends nothing more does not keep its slot past the header timeout.
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    let closed = closed.expect("the idle connection was kept open for 5 s");
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
}

/// Starts a chunked upload to `path` and sends only a first chunk, holding the connection open.
async fn stalled_upload(app: &TestApp, path: &str, token: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(address(app)).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{{\"a\"\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// What the server answers a declared 2 MiB upload with before any of its body is sent (empty
/// when it waits for the body).
async fn upload_head(app: &TestApp, token: &str) -> String {
    let mut stream = TcpStream::connect(address(app)).await.unwrap();
    let head = format!(
        "POST /api/functions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The status line of [`upload_head`].
async fn upload_status(app: &TestApp, token: &str) -> String {
    let head = upload_head(app, token).await;
    head.lines()
        .next()
        .unwrap_or("(no answer: waiting for the body)")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_slots_go_only_to_authenticated_uploaders_and_a_few_per_user() {
    let app = edge_app(|raw| raw.http.max_uploads = 4).await;
    let (hog, other) = (app.register().await, app.register().await);
    // Anonymous clients stalling chunked bodies on any route hold no upload slot...
    let mut stalled = Vec::new();
    for path in [
        "/api/auth/login",
        "/api/functions",
        "/api/auth/register",
        "/api/functions",
    ] {
        stalled.push(stalled_upload(&app, path, None).await);
    }
    // ...and one user holds at most two.
    for _ in 0..2 {
        stalled.push(stalled_upload(&app, "/api/functions", Some(&hog.access_token)).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        upload_status(&app, &hog.access_token)
            .await
            .starts_with("HTTP/1.1 503"),
        "a third upload of one user is refused"
    );
    // Another user's upload is let in: the server waits for its body.
    assert_eq!(
        upload_status(&app, &other.access_token).await,
        "(no answer: waiting for the body)"
    );
    drop(stalled);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection_at_the_write_timeout() {
    let app = edge_app(|raw| {
        raw.http.max_connections = 1;
        raw.http.write_timeout_s = 1;
    })
    .await;
    // One connection, a tiny receive buffer, and many requests for a large document it never reads:
    // the server's writes stall on it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hog = socket
        .connect(address(&app).parse().unwrap())
        .await
        .unwrap();
    let requests = "GET /api/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    let _ = tokio::time::timeout(Duration::from_secs(2), hog.write_all(requests.as_bytes())).await;
    // The only slot is freed once the stuck write times out.
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(8),
        reqwest::get(format!("{}/health", app.base)),
    )
    .await
    .expect("served once the stuck connection was closed")
    .unwrap()
    .status();
    assert_eq!(status, 200, "after {:?}", started.elapsed());
    drop(hog);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections() {
    let app = edge_app(|raw| raw.http.max_connections_per_address = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(address(&app)).await.unwrap();
    let _ = third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (reply, closed) = read_until_closed(&mut third, Duration::from_secs(3)).await;
    assert!(
        reply.is_empty() && closed.is_some(),
        "a third connection was served: {reply:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.send(reqwest::Method::GET, "/health", None, None)
        .await
        .expect(200);
}

/// Large code downloads are bounded like uploads: a client that asks for a function's code and
/// never reads it holds a download slot (two per user) only until the body deadline, not the
/// server's memory for as long as it likes; past the slots a 503 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_large_code_hold_slots_only_until_the_deadline() {
    let app = edge_app(|raw| raw.http.body_timeout_s = 3).await;
    let user = app.register().await;
    // 16 MiB that does not compress: about 22 MiB of base64 JSON, more than loopback's buffers hold.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..16 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let zip = crate::helpers::zip_of(&[
        ("bootstrap", b"#!/bin/sh\n".as_slice(), 0o100755),
        ("noise.bin", &noise, 0o100644),
    ]);
    let created = app
        .post(
            "/api/functions",
            &user.access_token,
            serde_json::json!({"name": "big", "runtime": "provided", "handler": "x.handler",
                               "code": {"zip_base64": crate::helpers::b64(&zip)}}),
        )
        .await
        .expect(201);
    let path = format!(
        "/api/functions/{}/code",
        created.body["id"].as_str().unwrap()
    );
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        user.access_token
    );
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        readers.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = app.get(&path, &user.access_token).await;
    assert_eq!(
        refused.status,
        503,
        "{}",
        &refused.text[..refused.text.len().min(200)]
    );
    assert!(
        refused.text.contains("too_many_downloads"),
        "{}",
        refused.text
    );

    // Past the deadline the stalled transfers are cut off and their slots are free again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let served = app.get(&path, &user.access_token).await.expect(200);
    assert_eq!(served.body["kind"], "zip");
    for mut reader in readers {
        let mut sink = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut sink)).await;
        assert!(
            read.is_ok() && sink.len() < 22 << 20,
            "the stalled transfer was cut off ({} bytes read)",
            sink.len()
        );
    }
}
