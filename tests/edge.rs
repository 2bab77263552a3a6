//! End-to-end: the public listener's connections. Redirects are answered
//! straight off the socket and anything else by hyper, on one keep-alive
//! connection, in order, with the same headers either way.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::TestApp;

/// One answer read off a connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-case names, in order.
    headers: Vec<(String, String)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits everything a connection sent into answers (bodies skipped by
/// their Content-Length).
fn answers(mut raw: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let (status, headers) = common::parse_head(&String::from_utf8_lossy(&raw[..end]));
        let body: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        out.push(Answer { status, headers });
        raw = &raw[(end + 4 + body).min(raw.len())..];
    }
    out
}

fn connect(app: &TestApp) -> TcpStream {
    let stream = TcpStream::connect(app.public.trim_start_matches("http://")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

fn read_all(mut stream: TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw
}

#[tokio::test]
async fn one_connection_answers_pipelined_redirects_and_api_calls_in_order() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    let mut stream = connect(&app);
    // Two redirects, an API call (hyper from then on), another redirect.
    stream
        .write_all(
            b"GET /r/acme HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /r/acme?utm_term=t HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /v1/partners/acme HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /r/acme HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .expect("write");
    let got = answers(&read_all(stream));
    let statuses: Vec<u16> = got.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [302, 302, 401, 302], "{got:?}");
    assert!(got[1].header("location").unwrap().contains("utm_term=t"));
    assert_eq!(got[1].header("content-length"), Some("0"));
    assert!(got[3].header("set-cookie").is_some());
}

#[tokio::test]
async fn a_request_head_split_across_writes_is_answered() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    let mut stream = connect(&app);
    for part in [
        &b"GET /r/ac"[..],
        b"me HTTP/1.1\r\nHo",
        b"st: x\r\nConnection: close\r\n",
        b"\r\n",
    ] {
        stream.write_all(part).expect("write");
        stream.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = answers(&read_all(stream));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].status, 302);
    assert!(got[0]
        .header("location")
        .unwrap()
        .contains("utm_source=acme"));
    assert_eq!(got[0].header("connection"), Some("close"));
}

#[tokio::test]
async fn both_paths_send_the_same_redirect() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    let request = |version: &str| {
        format!("GET /r/acme?utm_term=spring HTTP/{version}\r\nHost: x\r\nConnection: close\r\nUser-Agent: Mozilla/5.0\r\n\r\n")
    };
    // HTTP/1.1 is answered off the socket, HTTP/1.0 by hyper.
    let fast = answers(&app.raw(request("1.1").as_bytes())).remove(0);
    let hyper = answers(&app.raw(request("1.0").as_bytes())).remove(0);
    let names = |a: &Answer| {
        let mut names: Vec<String> = a
            .headers
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k != "connection")
            .collect();
        names.sort();
        names
    };
    assert_eq!((fast.status, hyper.status), (302, 302));
    assert_eq!(names(&fast), names(&hyper));
    let without_click = |a: &Answer| {
        let location = a.header("location").unwrap();
        location.split("&lc_click=").next().unwrap().to_owned()
    };
    assert_eq!(without_click(&fast), without_click(&hyper));
    let attributes = |a: &Answer| {
        let cookie = a.header("set-cookie").unwrap();
        cookie.split_once(';').unwrap().1.to_owned()
    };
    assert_eq!(attributes(&fast), attributes(&hyper));
    assert_eq!(fast.header("cache-control"), Some("no-store"));
    assert_eq!(fast.header("content-length"), Some("0"));
    assert!(fast.header("date").is_some_and(|d| d.ends_with(" GMT")));
}

#[tokio::test]
async fn requests_the_fast_path_does_not_take_are_still_answered() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    for (name, request, status) in [
        (
            "a body on a redirect",
            &b"GET /r/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab"[..],
            302,
        ),
        (
            "chunked",
            b"GET /r/acme HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            302,
        ),
        (
            "Expect",
            b"GET /r/acme HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            302,
        ),
        (
            "a fragment",
            b"GET /r/acme#top HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            302,
        ),
        (
            "another method",
            b"DELETE /r/acme HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
        (
            "not HTTP",
            b"HELLO\r\n\r\n",
            400,
        ),
    ] {
        let got = answers(&app.raw(request));
        assert_eq!(got.first().map(|a| a.status), Some(status), "{name}: {got:?}");
    }
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused_however_it_arrives() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    // 17,000 bytes against the 16 KiB limit, in two writes: the second
    // completes the head in the same read that crosses the limit.
    let mut head = b"GET /r/acme HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ".to_vec();
    head.resize(17_000 - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let mut stream = connect(&app);
    stream.write_all(&head[..15_500]).expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&head[15_500..]).expect("write");
    let got = answers(&read_all(stream));
    let status = got.first().map_or(0, |a| a.status);
    assert!(status == 431 || status == 0, "answered {status}");
}
