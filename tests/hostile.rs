//! End-to-end: open-redirect and header-injection attempts. Every answer is
//! a 302 onto the allowlist or a 4xx, never a 5xx, never an injected header.

mod common;

use std::io::{Read, Write};

use common::TestApp;

const ALLOWED: [&str; 2] = ["https://www.example.com/", "https://promo.example.com/"];

/// Parses a raw HTTP/1.1 answer into status and header lines.
fn parse_answer(raw: &[u8]) -> (u16, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(raw);
    common::parse_head(text.split("\r\n\r\n").next().unwrap_or(""))
}

fn assert_safe(name: &str, raw: &[u8]) {
    let (status, headers) = parse_answer(raw);
    if raw.is_empty() {
        return; // the server closed the connection: nothing was served
    }
    assert!((300..500).contains(&status), "{name}: status {status}");
    let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    for injected in ["x-injected", "refresh", "content-security-policy"] {
        assert!(
            !names.contains(&injected),
            "{name}: injected header {injected}"
        );
    }
    let cookies = headers.iter().filter(|(k, _)| k == "set-cookie").count();
    assert!(cookies <= 1, "{name}: {cookies} cookies");
    if let Some((_, cookie)) = headers.iter().find(|(k, _)| k == "set-cookie") {
        assert!(
            cookie.starts_with("lc_attr="),
            "{name}: foreign cookie {cookie}"
        );
    }
    if status == 302 {
        let location = headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name}: 302 without Location"));
        assert!(
            ALLOWED.iter().any(|a| location.starts_with(a)),
            "{name}: Location {location} leaves the allowlist"
        );
        let url = url::Url::parse(location).expect("absolute Location");
        assert!(
            matches!(
                url.host_str(),
                Some("www.example.com" | "promo.example.com")
            ),
            "{name}: {location}"
        );
    }
}

fn get(path: &[u8], extra_headers: &[u8]) -> Vec<u8> {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(path);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    req.extend_from_slice(extra_headers);
    req.extend_from_slice(b"\r\n");
    req
}

/// The same request as HTTP/1.0.
fn as_http10(request: &[u8]) -> Vec<u8> {
    let text = request.to_vec();
    let at = text
        .windows(11)
        .position(|w| w == b" HTTP/1.1\r\n")
        .expect("an HTTP/1.1 request line");
    let mut out = text[..at].to_vec();
    out.extend_from_slice(b" HTTP/1.0\r\n");
    out.extend_from_slice(&text[at + 11..]);
    out
}

#[tokio::test]
async fn hostile_redirect_requests_never_leave_the_allowlist_or_inject_headers() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    app.create_campaign("acme", serde_json::json!({"slug": "promo", "name": "promo", "landing": "https://promo.example.com/x"}))
        .await;
    let long = "A".repeat(5000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "encoded slash in partner",
            get(b"/r/acme%2F..%2F..%2Fevil.com", b""),
        ),
        (
            "encoded slash in campaign",
            get(b"/r/acme/promo%2F%2Fevil.com", b""),
        ),
        ("double slash", get(b"/r//evil.com", b"")),
        ("backslash", get(b"/r/acme\\evil.com", b"")),
        ("encoded backslash", get(b"/r/acme/%5C%5Cevil.com", b"")),
        (
            "CRLF in utm_term",
            get(b"/r/acme?utm_term=x%0D%0AX-Injected:%201", b""),
        ),
        (
            "CRLF in utm_source",
            get(b"/r/acme?utm_source=%0D%0ASet-Cookie:%20evil=1", b""),
        ),
        (
            "bare LF in utm_medium",
            get(
                b"/r/acme?utm_medium=a%0ARefresh:%200;url=https://evil.com",
                b"",
            ),
        ),
        (
            "absolute URL in unknown params",
            get(
                b"/r/acme?url=https://evil.com&next=//evil.com&redirect=https:%2F%2Fevil.com",
                b"",
            ),
        ),
        (
            "landing in the query",
            get(
                b"/r/acme/promo?landing=https://evil.com&lc_click=forged",
                b"",
            ),
        ),
        (
            "5000-character term",
            get(format!("/r/acme?utm_term={long}").as_bytes(), b""),
        ),
        (
            "5000-character partner",
            get(format!("/r/{long}").as_bytes(), b""),
        ),
        (
            "5000-character campaign",
            get(format!("/r/acme/{long}").as_bytes(), b""),
        ),
        (
            "invalid UTF-8 in term",
            get(b"/r/acme?utm_term=%FF%FE%C3%28", b""),
        ),
        ("raw invalid UTF-8 in path", get(b"/r/acme\xff\xfe", b"")),
        (
            "raw invalid UTF-8 in query",
            get(b"/r/acme?utm_term=\xc3\x28", b""),
        ),
        (
            "absolute-form request target",
            get(b"https://evil.com/r/acme", b""),
        ),
        ("scheme-relative path", get(b"//evil.com/r/acme", b"")),
        ("dot segments", get(b"/r/../../evil.com", b"")),
        (
            "hostile Host header",
            get(
                b"/r/acme",
                b"X-Forwarded-Host: evil.com\r\nHost: evil.com\r\n",
            ),
        ),
        (
            "junk cookie",
            get(b"/r/acme", b"Cookie: lc_attr=%0D%0Ax.y; lc_attr=....\r\n"),
        ),
        (
            "5000-character cookie",
            get(b"/r/acme", format!("Cookie: lc_attr={long}\r\n").as_bytes()),
        ),
        (
            "javascript in utm_content",
            get(
                b"/r/acme?utm_content=javascript:alert(1)%22%3E%3Cscript%3E",
                b"",
            ),
        ),
        ("NUL bytes", get(b"/r/acme?utm_term=%00%00", b"")),
        (
            "header-injection in user agent",
            get(b"/r/acme", b"User-Agent: x\r\n X-Injected: folded\r\n"),
        ),
    ];
    assert!(cases.len() >= 15);
    let mut redirected = 0;
    for (name, request) in &cases {
        // HTTP/1.1 is answered straight off the socket, HTTP/1.0 by hyper:
        // both must hold.
        for (path, request) in [("1.1", request.clone()), ("1.0", as_http10(request))] {
            let name = format!("{name} (HTTP/{path})");
            let answer = app.raw(&request);
            assert_safe(&name, &answer);
            eprintln!(
                "{name}: {}",
                String::from_utf8_lossy(&answer)
                    .lines()
                    .next()
                    .unwrap_or("(closed)")
            );
            redirected += usize::from(parse_answer(&answer).0 == 302);
        }
    }
    assert!(
        redirected >= 30,
        "only {redirected} hostile requests were redirected"
    );
    // A click with a hostile term still lands, and its term is encoded.
    let r = app
        .click("/r/acme?utm_term=%22%3E%3Cscript%3E", None, None)
        .await;
    assert_eq!(r.status, 302);
    assert!(
        r.location.contains("utm_term=%22%3E%3Cscript%3E"),
        "{}",
        r.location
    );
    assert!(!app.metrics().await.contains("outcome=\"error\""));
}

#[tokio::test]
async fn request_heads_over_the_limit_are_refused_on_both_listeners() {
    let app = TestApp::spawn().await;
    let big = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let (status, _) = parse_answer(&app.raw(&get(b"/r/acme", big.as_bytes())));
    assert!(status == 431 || status == 0, "public answered {status}");
    let admin = app.admin.trim_start_matches("http://").to_owned();
    let answer = common::raw_exchange(&admin, &get(b"/metrics", big.as_bytes()));
    let (status, _) = parse_answer(&answer);
    assert!(status == 431 || status == 0, "admin answered {status}");
    // Just under the limit is served.
    let fits = format!("X-Big: {}\r\n", "a".repeat(12_000));
    let (status, _) = parse_answer(&app.raw(&get(b"/r/acme", fits.as_bytes())));
    assert_eq!(status, 302);
}

#[tokio::test]
async fn other_methods_on_a_redirect_path_are_405() {
    let app = TestApp::spawn().await;
    let answer = app
        .raw(b"POST /r/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(parse_answer(&answer).0, 405);
}

/// A client that announces a large body and sends it a byte at a time held
/// its connection, and a file descriptor, for good: 1,100 of them put the
/// server at its descriptor limit and visitors' redirects timed out. Each
/// now gets 408 once `api.body_idle_timeout` (or `api.body_timeout`)
/// passes, and its connection is closed; here 150 of them against a server
/// allowed 128 descriptors, after which redirects answer.
#[tokio::test]
async fn slow_request_bodies_are_cut_off_and_redirects_keep_answering() {
    let app = TestApp::spawn_with(&[
        ("LASTCLICK_API__BODY_TIMEOUT", "3s"),
        ("LASTCLICK_API__BODY_IDLE_TIMEOUT", "1s"),
    ])
    .await;
    let token = app.create_partner("acme").await;
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &app.pid().to_string(), "--nofile=128:128"])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success(), "prlimit could not lower the fd limit");
    let address = app.public.trim_start_matches("http://").to_owned();
    let answers = tokio::task::spawn_blocking(move || {
        let head = format!(
            "POST /v1/partners/acme/campaigns HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000000\r\n\r\n{{"
        );
        let slow: Vec<std::net::TcpStream> = (0..150)
            .map(|_| {
                let mut stream = std::net::TcpStream::connect(&address).unwrap();
                stream.write_all(head.as_bytes()).unwrap();
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(60)))
                    .unwrap();
                stream
            })
            .collect();
        slow.into_iter()
            .map(|mut stream| {
                let mut answer = Vec::new();
                // A reset after the answer is fine; no answer at all is not.
                let _ = stream.read_to_end(&mut answer);
                String::from_utf8_lossy(&answer).into_owned()
            })
            .collect::<Vec<String>>()
    })
    .await
    .unwrap();
    for answer in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a slow body was not cut off: {answer:?}"
        );
        assert!(answer.contains("body_timeout"), "{answer}");
    }
    let redirect = app.click("/r/acme", None, None).await;
    assert_eq!(redirect.status, 302);
    let cut = r#"lastclick_requests_refused_total{reason="body_timeout"}"#;
    assert_eq!(app.metric(cut).await, 150.0);
}

/// A client may shut its write side once its request is sent: it still
/// waits for the answer. On the general HTTP path that answer was lost 5 to
/// 31 times in 100 (for `POST /v1/events` the client could then not know
/// whether its events were taken). Each kind of request, 100 times.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    let address = app.public.trim_start_matches("http://").to_owned();
    let at = chrono::Utc::now().to_rfc3339();
    let event = format!(r#"[{{"id": "c1", "type": "cancel", "customer": "cus_1", "at": "{at}"}}]"#);
    let requests = [
        (
            "HTTP/1.0 redirect",
            "GET /r/acme HTTP/1.0\r\n\r\n".to_owned(),
            "302",
        ),
        (
            "absolute-form redirect",
            format!("GET http://{address}/r/acme HTTP/1.1\r\nHost: {address}\r\n\r\n"),
            "302",
        ),
        (
            "plain redirect",
            "GET /r/acme HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "302",
        ),
        (
            "events",
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{event}",
                common::MERCHANT,
                event.len()
            ),
            "202",
        ),
    ];
    let lost = tokio::task::spawn_blocking(move || {
        let mut lost = Vec::new();
        for (name, request, status) in &requests {
            for _ in 0..100 {
                let mut stream = std::net::TcpStream::connect(&address).unwrap();
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                stream.write_all(request.as_bytes()).unwrap();
                stream.shutdown(std::net::Shutdown::Write).unwrap();
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                let answer = String::from_utf8_lossy(&answer);
                let answered = answer.starts_with("HTTP/1.") && answer.get(9..12) == Some(status);
                if !answered {
                    lost.push(format!("{name}: {answer:?}"));
                }
            }
        }
        lost
    })
    .await
    .unwrap();
    assert!(lost.is_empty(), "{} answers lost: {lost:?}", lost.len());
}

/// Past `listen.max_connections` open connections the public listener
/// serves redirects only: an API request gets 503 `overloaded`, a visitor
/// still lands. Past one and a half times it, new connections are closed
/// at once. When connections close, the API answers again.
#[tokio::test]
async fn past_max_connections_redirects_are_served_first_and_the_api_is_shed() {
    let app = TestApp::spawn_with(&[("LASTCLICK_LISTEN__MAX_CONNECTIONS", "20")]).await;
    app.create_partner("acme").await;
    let address = app.public.trim_start_matches("http://").to_owned();
    let exchange = |request: &'static str| {
        let address = address.clone();
        move || {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            // A connection closed at once may refuse the write: no answer.
            let _ = stream.write_all(request.as_bytes());
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let api = exchange(
        "GET /v1/partners/acme HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-admin-token\r\nConnection: close\r\n\r\n",
    );
    let redirect = exchange("GET /r/acme HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let status = |answer: &str| answer.get(9..12).unwrap_or("").to_owned();
    let idle: Vec<std::net::TcpStream> = (0..25)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    let mut shed = String::new();
    for _ in 0..200 {
        shed = tokio::task::spawn_blocking(api.clone()).await.unwrap();
        if status(&shed) == "503" {
            break;
        }
    }
    assert_eq!(status(&shed), "503", "{shed}");
    assert!(shed.contains("overloaded"), "{shed}");
    let landed = tokio::task::spawn_blocking(redirect.clone()).await.unwrap();
    assert_eq!(status(&landed), "302", "{landed}");
    // Past 30, a new connection is closed without an answer.
    let more: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    let mut refused = String::from("not tried");
    for _ in 0..200 {
        refused = tokio::task::spawn_blocking(redirect.clone()).await.unwrap();
        if refused.is_empty() {
            break;
        }
    }
    assert!(refused.is_empty(), "{refused}");
    drop(idle);
    drop(more);
    let mut served = String::new();
    for _ in 0..200 {
        served = tokio::task::spawn_blocking(api.clone()).await.unwrap();
        if status(&served) == "200" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status(&served), "200", "{served}");
    let refused = |reason: &str| format!("lastclick_requests_refused_total{{reason=\"{reason}\"}}");
    assert!(app.metric(&refused("overloaded")).await >= 1.0);
    assert!(app.metric(&refused("connection_closed")).await >= 1.0);
}

/// A client that sends request after request and never reads its answers
/// held its connection, and the answers, for good: the server's write
/// waited forever. Past `listen.write_timeout` without progress the
/// connection is closed, on both connection paths (redirects answered off
/// the socket, the dashboard through hyper) and on the admin listener.
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_cut_off() {
    let app = TestApp::spawn_with(&[("LASTCLICK_LISTEN__WRITE_TIMEOUT", "1s")]).await;
    app.create_partner("acme").await;
    let public = app.public.trim_start_matches("http://").to_owned();
    let admin = app.admin.trim_start_matches("http://").to_owned();
    let outcomes = tokio::task::spawn_blocking(move || {
        [
            (&public, "GET /r/acme HTTP/1.1\r\nHost: x\r\n\r\n"),
            (&public, "GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n"),
            (&admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        ]
        .map(|(address, request)| {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .set_write_timeout(Some(std::time::Duration::from_millis(200)))
                .unwrap();
            let batch = request.repeat(100);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                match stream.write_all(batch.as_bytes()) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => break Ok(e.kind()),
                }
                if std::time::Instant::now() > deadline {
                    break Err(format!("{request:?}: still open after a minute unread"));
                }
            }
        })
    })
    .await
    .unwrap();
    for outcome in outcomes {
        let kind = outcome.unwrap();
        assert!(
            matches!(
                kind,
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{kind:?}"
        );
    }
}

/// An admin listener keeps at most `listen.max_admin_connections` open:
/// past it a new connection is closed at once, and once the others go,
/// scrapes are served again.
#[tokio::test]
async fn the_admin_listener_closes_connections_past_its_cap() {
    let app = TestApp::spawn_with(&[("LASTCLICK_LISTEN__MAX_ADMIN_CONNECTIONS", "4")]).await;
    let admin = app.admin.trim_start_matches("http://").to_owned();
    let closed = tokio::task::spawn_blocking(move || {
        let held: Vec<std::net::TcpStream> = (0..8)
            .map(|_| std::net::TcpStream::connect(&admin).unwrap())
            .collect();
        // Closed: the read ends (0 bytes or a reset); open and idle: the
        // read times out.
        let closed_at_once = |stream: &std::net::TcpStream| {
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(3)))
                .unwrap();
            let mut byte = [0u8; 1];
            match (&*stream).read(&mut byte) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        };
        held.iter().filter(|s| closed_at_once(s)).count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 4, "eight connections, a cap of four");
    let metrics = format!("{}/metrics", app.admin);
    let mut scraped = None;
    for _ in 0..50 {
        match reqwest::get(&metrics).await {
            Ok(answer) => {
                scraped = Some(answer.text().await.unwrap());
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let scraped = scraped.expect("scrapes are served once the connections are gone");
    assert!(
        scraped.contains("lastclick_requests_refused_total{reason=\"admin_connection_closed\"} 4"),
        "{scraped}"
    );
}
