//! The public listener's connections. A plain redirect (`GET`/`HEAD /r/…`,
//! HTTP/1.1, no body) is answered straight off the socket: httparse reads
//! the head, one write sends the 302. Any other request (the API, the
//! dashboard, anything unusual) hands the connection, with the bytes already
//! read, to hyper, which serves it from then on.

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use axum::http::{HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use futures_util::future::{BoxFuture, Either, Ready};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::edge::fetch::FetchSignals;
use crate::edge::head::{CookieHeaders, PlainHeaders};
use crate::edge::redirect::{RedirectRequest, RedirectResponse, Redirector};
use crate::metrics::Metrics;

/// A connection that completes no request for this long is closed (checked
/// once per period, so it may stay open up to twice as long). hyper applies
/// the same limit to the head of each request it reads.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most headers in a request answered here; hyper takes larger heads.
const MAX_HEADERS: usize = 32;

/// hyper's settings for both listeners: a limit on the request head's size
/// and on the time it may take to arrive; and half-closed connections kept
/// open for their answer (a client may shut its write side once its
/// request is sent, and still wait: without this hyper dropped the
/// connection, answer unsent, when it read the end of the stream first).
pub fn http1_builder(max_head_bytes: usize) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(max_head_bytes)
        .half_close(true);
    builder
}

/// What the public listener serves: redirects directly, everything else by
/// the API router.
#[derive(Clone)]
pub struct PublicService(pub Arc<PublicInner>);

pub struct PublicInner {
    pub redirector: Redirector,
    pub metrics: Arc<Metrics>,
    pub api: Router,
    /// `listen.write_timeout`: longest an answer may wait for the client
    /// to read it.
    pub write_timeout: Duration,
}

type ServiceFuture = Either<
    Ready<Result<Response<Body>, Infallible>>,
    BoxFuture<'static, Result<Response<Body>, Infallible>>,
>;

impl hyper::service::Service<Request<Incoming>> for PublicService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if is_redirect_path(req.uri().path()) {
            let response = self.0.redirect(&req);
            return Either::Left(futures_util::future::ready(Ok(response)));
        }
        let api = self.0.api.clone();
        Either::Right(Box::pin(
            async move { api.oneshot(req.map(Body::new)).await },
        ))
    }
}

fn is_redirect_path(path: &str) -> bool {
    path.starts_with("/r/") || path == "/r"
}

/// A 302's `Location` and `Set-Cookie` as both connection paths send them:
/// header-safe, or the default landing (and no cookie) should an answer
/// ever hold what cannot be a header value.
struct RedirectHeaders<'a> {
    location: &'a str,
    set_cookie: Option<&'a str>,
}

impl PublicInner {
    fn redirect_headers<'a>(&'a self, answer: &'a RedirectResponse) -> RedirectHeaders<'a> {
        // Built from validated URLs and percent-encoded values, so always
        // header-safe; should that ever break, land on the default.
        let location = Some(&*answer.location)
            .filter(|l| is_header_value(l))
            .unwrap_or(self.redirector.default_location());
        let set_cookie = answer.set_cookie.as_deref().filter(|c| is_header_value(c));
        RedirectHeaders {
            location,
            set_cookie,
        }
    }

    /// Answers one redirect and records it in the metrics.
    fn answer(&self, request: &RedirectRequest<'_>) -> RedirectResponse {
        let started = Instant::now();
        let answer = self.redirector.handle(request);
        self.metrics.count_redirect(answer.outcome);
        if let Some(reason) = answer.suspect {
            self.metrics.count_suspect(reason);
        }
        self.metrics
            .redirect_seconds
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    /// A redirect that came through hyper (HTTP/1.0, `Connection: close`,
    /// other methods and the like).
    fn redirect(&self, req: &Request<Incoming>) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        if !head && req.method() != Method::GET {
            return method_not_allowed();
        }
        let mut cookies = CookieHeaders::new();
        for value in req.headers().get_all(COOKIE) {
            cookies.push(value.as_bytes());
        }
        let answer = self.answer(&RedirectRequest {
            head,
            path: req.uri().path(),
            query: req.uri().query(),
            cookies: cookies.as_slice(),
            user_agent: req.headers().get(USER_AGENT).map(HeaderValue::as_bytes),
            fetch: FetchSignals::of_headers(req.headers()),
            now: unix_now(),
        });
        let sent = self.redirect_headers(&answer);
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        // Header-safe (printable ASCII), which `HeaderValue` always takes.
        if let Ok(location) = HeaderValue::from_str(sent.location) {
            headers.insert(LOCATION, location);
        }
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Explicit even for HEAD, where hyper would leave it out: clients
        // that cannot tell a HEAD answer then still know it has no body.
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        if let Some(cookie) = sent.set_cookie.and_then(|c| HeaderValue::from_str(c).ok()) {
            headers.insert(SET_COOKIE, cookie);
        }
        response
    }
}

fn method_not_allowed() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert("allow", HeaderValue::from_static("GET, HEAD"));
    response
}

/// Serves one public connection until it closes or `stop` fires.
pub async fn serve_connection(
    stream: TcpStream,
    service: PublicService,
    watcher: Watcher,
    stop: watch::Receiver<bool>,
    max_head_bytes: usize,
    load: Load,
) {
    let mut connection = Redirects {
        stream,
        read: Vec::with_capacity(4096),
        write: Vec::with_capacity(1024),
    };
    if connection.run(&service.0, stop, max_head_bytes).await == Next::Close {
        return;
    }
    if load == Load::Over {
        // Redirects only: anything else is shed before hyper parses it.
        service.0.metrics.count_refused("overloaded");
        let _ = connection.stream.write_all(OVERLOADED).await;
        let _ = connection.stream.shutdown().await;
        return;
    }
    let io = Replay {
        head: connection.read,
        pos: 0,
        stream: connection.stream,
        write_timeout: service.0.write_timeout,
        write_stalled: None,
    };
    let hyper_connection =
        http1_builder(max_head_bytes).serve_connection(TokioIo::new(io), service);
    let _ = watcher.watch(hyper_connection).await;
}

/// How loaded the listener was when the connection came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Normal,
    /// Past `listen.max_connections`: plain redirects only.
    Over,
}

/// The answer to a request other than a redirect past
/// `listen.max_connections`.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 80\r\n\r\n\
{\"error\":{\"code\":\"overloaded\",\"message\":\"too many open connections; try again\"}}";

#[derive(PartialEq, Eq)]
enum Next {
    Close,
    /// hyper takes the connection, starting with the unanswered bytes.
    HandOff,
}

/// A connection while it carries only plain redirects.
struct Redirects {
    stream: TcpStream,
    /// Bytes read and not yet answered.
    read: Vec<u8>,
    /// Answers not yet written.
    write: Vec<u8>,
}

pub(crate) enum Step {
    /// A redirect answered; this many bytes of the buffer were its head.
    Answered(usize),
    /// The same, for a request that asked to close the connection after.
    AnsweredLast(usize),
    /// The head is not complete yet.
    Partial,
    HandOff,
}

impl Redirects {
    async fn run(
        &mut self,
        service: &PublicInner,
        mut stop: watch::Receiver<bool>,
        max_head_bytes: usize,
    ) -> Next {
        let mut idle = pin!(tokio::time::sleep(IDLE_TIMEOUT));
        let mut stopped = pin!(stop.changed());
        let mut stopping = false;
        let mut answered: u64 = 0;
        let mut answered_at_last_check: u64 = 0;
        loop {
            let (count, next) = self.answer_buffered(service, max_head_bytes);
            answered += count;
            if !self.write.is_empty() {
                if self.write_answers(service.write_timeout).await.is_err() {
                    return Next::Close;
                }
                self.write.clear();
            }
            match next {
                Buffered::ReadMore => {}
                Buffered::Close => {
                    let _ = self.stream.shutdown().await;
                    return Next::Close;
                }
                Buffered::HandOff => return Next::HandOff,
            }
            // hyper answers heads over the size limit (431).
            if self.read.len() >= max_head_bytes {
                return Next::HandOff;
            }
            if stopping && self.read.is_empty() {
                return Next::Close;
            }
            if self.read.capacity() - self.read.len() < 1024 {
                self.read.reserve(4096);
            }
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.read) => match read {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                },
                () = &mut idle => {
                    if answered == answered_at_last_check {
                        return Next::Close;
                    }
                    answered_at_last_check = answered;
                    idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
                }
                _ = &mut stopped, if !stopping => stopping = true,
            }
        }
    }

    /// Writes the buffered answers: at once when the socket takes them
    /// (nearly always; no timer then), else within `write_timeout`, since
    /// a client that sends and never reads would hold the connection, and
    /// its answers, for good.
    async fn write_answers(&mut self, write_timeout: Duration) -> io::Result<()> {
        let sent = match self.stream.try_write(&self.write) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent == self.write.len() {
            return Ok(());
        }
        let rest = &self.write[sent..];
        tokio::time::timeout(write_timeout, self.stream.write_all(rest))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    /// Answers every complete head already read, in order, into the write
    /// buffer (so the answers leave in one write); returns how many, and
    /// what comes next.
    fn answer_buffered(&mut self, service: &PublicInner, max_head_bytes: usize) -> (u64, Buffered) {
        let mut consumed = 0;
        let mut count = 0;
        let next = loop {
            let buf = &self.read[consumed..];
            match answer_one(service, buf, max_head_bytes, &mut self.write) {
                Step::Answered(len) => {
                    consumed += len;
                    count += 1;
                }
                Step::AnsweredLast(len) => {
                    consumed += len;
                    count += 1;
                    break Buffered::Close;
                }
                Step::Partial => break Buffered::ReadMore,
                // hyper answers what is not a plain redirect, malformed heads
                // included (400).
                Step::HandOff => break Buffered::HandOff,
            }
        };
        self.read.drain(..consumed);
        (count, next)
    }
}

/// What the buffered requests leave to do.
enum Buffered {
    ReadMore,
    /// The last one asked to close the connection.
    Close,
    HandOff,
}

/// Answers the request at the start of `buf` into `out` if it is a plain
/// redirect whose head fits `max_head_bytes`.
pub(crate) fn answer_one(
    service: &PublicInner,
    buf: &[u8],
    max_head_bytes: usize,
    out: &mut Vec<u8>,
) -> Step {
    if buf.is_empty() {
        return Step::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        // hyper refuses a head over the limit (431), however it arrived.
        Ok(httparse::Status::Complete(len)) if len > max_head_bytes => return Step::HandOff,
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Step::Partial,
        Err(_) => return Step::HandOff,
    };
    let head = match request.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Step::HandOff,
    };
    let Some(target) = request.path.filter(|t| is_plain_target(t)) else {
        return Step::HandOff;
    };
    if request.version != Some(1) {
        return Step::HandOff;
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if !is_redirect_path(path) {
        return Step::HandOff;
    }
    let Some(headers) = PlainHeaders::read(request.headers) else {
        return Step::HandOff;
    };
    let now = unix_now();
    let answer = service.answer(&RedirectRequest {
        head,
        path,
        query,
        cookies: headers.cookies.as_slice(),
        user_agent: headers.user_agent,
        fetch: headers.fetch,
        now,
    });
    let sent = service.redirect_headers(&answer);
    write_redirect(out, &sent, headers.close, now);
    if headers.close {
        Step::AnsweredLast(len)
    } else {
        Step::Answered(len)
    }
}

/// A request target made only of characters every URL parser takes as they
/// are; anything else goes to hyper, which decides as it always has.
fn is_plain_target(target: &str) -> bool {
    target.bytes().all(|b| PLAIN_TARGET[b as usize])
}

/// Letters, digits and `/?&=%+-._~:@!$'()*,;`.
static PLAIN_TARGET: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"/?&=%+-._~:@!$'()*,;";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// Printable ASCII only: nothing that could end the header line. Folds
/// instead of stopping early, so the check runs as SIMD.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .fold(true, |ok, b| ok & (b.wrapping_sub(0x20) < 0x5f))
}

/// The 302 with the headers hyper would send for the same answer.
fn write_redirect(out: &mut Vec<u8>, sent: &RedirectHeaders<'_>, close: bool, now: i64) {
    out.extend_from_slice(b"HTTP/1.1 302 Found\r\nlocation: ");
    out.extend_from_slice(sent.location.as_bytes());
    out.extend_from_slice(b"\r\ncache-control: no-store\r\ncontent-length: 0\r\n");
    if let Some(cookie) = sent.set_cookie {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(cookie.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    with_http_date(now, |date| out.extend_from_slice(date));
    out.extend_from_slice(b"\r\n\r\n");
}

thread_local! {
    /// The `Date` header of the current second, formatted once per second.
    static HTTP_DATE: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

fn with_http_date(now: i64, write: impl FnOnce(&[u8])) {
    HTTP_DATE.with_borrow_mut(|(second, text)| {
        if *second != now {
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
            *text = httpdate::fmt_http_date(time);
            *second = now;
        }
        write(text.as_bytes());
    });
}

/// The wall clock in unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A stream that first gives back the bytes already read from it: how a
/// connection passes to hyper in the middle of a request. Its writes fail
/// once stalled past `write_timeout`, so hyper closes the connection.
pub struct Replay {
    head: Vec<u8>,
    pos: usize,
    stream: TcpStream,
    write_timeout: Duration,
    /// Since the client stopped taking the answer: past `write_timeout`
    /// the write fails and hyper closes the connection.
    write_stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Replay {
    /// A fresh connection for hyper, with nothing read yet (the admin
    /// listener's).
    pub fn watching(stream: TcpStream, write_timeout: Duration) -> Self {
        Replay {
            head: Vec::new(),
            pos: 0,
            stream,
            write_timeout,
            write_stalled: None,
        }
    }

    /// `written` as is, unless the write has been stalled past
    /// `write_timeout`.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.write_stalled = None;
            return written;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .write_stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match std::future::Future::poll(stalled.as_mut(), cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.pos);
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overloaded_answer_is_well_formed() {
        let text = std::str::from_utf8(OVERLOADED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "overloaded");
    }

    #[test]
    fn plain_targets_are_url_characters_only() {
        assert!(is_plain_target("/r/acme/spring?utm_term=a%20b&x=1"));
        assert!(!is_plain_target("/r/acme#top"));
        assert!(!is_plain_target("/r/acme\"x"));
        assert!(!is_plain_target("/r/acme{x}"));
        assert!(!is_plain_target("/r/é"));
    }

    #[test]
    fn the_date_header_is_http_date() {
        let mut out = Vec::new();
        with_http_date(784_111_777, |d| out.extend_from_slice(d));
        assert_eq!(out, b"Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn header_values_must_be_printable_ascii() {
        assert!(is_header_value("https://example.com/?a=b"));
        assert!(!is_header_value("https://example.com/\r\nx: y"));
        assert!(!is_header_value("https://example.com/\u{e9}"));
    }
}
