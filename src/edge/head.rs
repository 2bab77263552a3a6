//! The headers a redirect reads: what a plain one answered off the socket
//! takes from httparse's headers (and which of them send it to hyper
//! instead), and the `Cookie` values both paths gather on the stack.

use crate::edge::fetch::FetchSignals;

/// Most `Cookie` headers read from one request.
const MAX_COOKIE_HEADERS: usize = 8;

/// The `Cookie` header values of a request, up to `MAX_COOKIE_HEADERS`
/// (later ones are ignored), gathered on the stack.
pub(crate) struct CookieHeaders<'a> {
    values: [&'a [u8]; MAX_COOKIE_HEADERS],
    len: usize,
}

impl<'a> CookieHeaders<'a> {
    pub fn new() -> Self {
        CookieHeaders {
            values: [&[]; MAX_COOKIE_HEADERS],
            len: 0,
        }
    }

    pub fn push(&mut self, value: &'a [u8]) {
        if self.len < MAX_COOKIE_HEADERS {
            self.values[self.len] = value;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.values[..self.len]
    }
}

/// What a redirect answered off the socket reads of its headers.
pub(crate) struct PlainHeaders<'a> {
    pub cookies: CookieHeaders<'a>,
    pub user_agent: Option<&'a [u8]>,
    pub fetch: FetchSignals<'a>,
    pub close: bool,
}

impl<'a> PlainHeaders<'a> {
    /// `None` when a header means hyper must answer: a body, an upgrade,
    /// `Expect`, or a `Connection` other than `close` or `keep-alive`.
    pub fn read(headers: &[httparse::Header<'a>]) -> Option<Self> {
        let mut read = PlainHeaders {
            cookies: CookieHeaders::new(),
            user_agent: None,
            fetch: FetchSignals::default(),
            close: false,
        };
        for header in headers {
            let (name, value) = (header.name, header.value);
            if name.eq_ignore_ascii_case("cookie") {
                read.cookies.push(value);
            } else if name.eq_ignore_ascii_case("user-agent") {
                read.user_agent.get_or_insert(value);
            } else if read.fetch.take(name, value) {
                // Read by the cookie-stuffing guard.
            } else if name.eq_ignore_ascii_case("content-length") {
                if value != b"0" {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case(b"close") {
                    read.close = true;
                } else if !value.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            } else if ["transfer-encoding", "expect", "upgrade"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            {
                return None;
            }
        }
        Some(read)
    }
}
