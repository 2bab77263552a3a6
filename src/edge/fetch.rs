//! The browser's own account of how a request was made: Fetch Metadata
//! (`Sec-Fetch-Dest`, `Sec-Fetch-Mode`) and the prefetch headers
//! (`Sec-Purpose`, `Purpose`). A link loaded in a hidden iframe, as an
//! image or a script, or prefetched by a page, was not a visitor's click:
//! the cookie-stuffing guard reads these and calls the request suspect.
//! Requests without them (older browsers, curl) say nothing, and are
//! judged as before. Nothing here allocates.

/// Why a request is not a click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspectReason {
    /// Loaded in a frame: `Sec-Fetch-Dest: iframe` (or frame, embed,
    /// object, fencedframe), or an old browser's `nested-navigate`.
    Iframe = 0,
    /// Loaded as anything but a page: an image, a script, a `fetch()`.
    Subresource,
    /// Fetched ahead of a click that may never come.
    Prefetch,
}

impl SuspectReason {
    pub const ALL: [SuspectReason; 3] = [
        SuspectReason::Iframe,
        SuspectReason::Subresource,
        SuspectReason::Prefetch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SuspectReason::Iframe => "iframe",
            SuspectReason::Subresource => "subresource",
            SuspectReason::Prefetch => "prefetch",
        }
    }
}

/// The values of the headers that say how a request was made, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchSignals<'a> {
    pub dest: Option<&'a [u8]>,
    pub mode: Option<&'a [u8]>,
    /// `Sec-Purpose`, or the older `Purpose`.
    pub purpose: Option<&'a [u8]>,
}

impl<'a> FetchSignals<'a> {
    /// Keeps `value` when `name` is one of the headers read here (the first
    /// of each); answers whether it was. Called for every header of a
    /// redirect, so the common names are told apart by length and first
    /// byte before any comparison.
    pub fn take(&mut self, name: &str, value: &'a [u8]) -> bool {
        let slot = match (name.len(), name.as_bytes().first()) {
            (14, Some(b's' | b'S')) if name.eq_ignore_ascii_case("sec-fetch-dest") => {
                &mut self.dest
            }
            (14, Some(b's' | b'S')) if name.eq_ignore_ascii_case("sec-fetch-mode") => {
                &mut self.mode
            }
            (11, Some(b's' | b'S')) if name.eq_ignore_ascii_case("sec-purpose") => {
                &mut self.purpose
            }
            (7, Some(b'p' | b'P')) if name.eq_ignore_ascii_case("purpose") => &mut self.purpose,
            _ => return false,
        };
        slot.get_or_insert(value);
        true
    }

    /// The headers of a request hyper parsed.
    pub fn of_headers(headers: &'a axum::http::HeaderMap) -> Self {
        let mut signals = FetchSignals::default();
        for name in ["sec-fetch-dest", "sec-fetch-mode", "sec-purpose", "purpose"] {
            if let Some(value) = headers.get(name) {
                signals.take(name, value.as_bytes());
            }
        }
        signals
    }

    /// Why the request is not a visitor's click, if it says so.
    pub fn suspect(&self) -> Option<SuspectReason> {
        if self.purpose.is_some_and(is_prefetch) {
            return Some(SuspectReason::Prefetch);
        }
        if let Some(dest) = self.dest.map(trim) {
            if !dest.eq_ignore_ascii_case(b"document") {
                return Some(if FRAMES.iter().any(|f| dest.eq_ignore_ascii_case(f)) {
                    SuspectReason::Iframe
                } else {
                    SuspectReason::Subresource
                });
            }
        }
        match self.mode.map(trim) {
            Some(mode) if mode.eq_ignore_ascii_case(b"nested-navigate") => {
                Some(SuspectReason::Iframe)
            }
            Some(mode) if !mode.eq_ignore_ascii_case(b"navigate") => {
                Some(SuspectReason::Subresource)
            }
            _ => None,
        }
    }
}

/// `Sec-Fetch-Dest` values of a page loaded inside another.
const FRAMES: [&[u8]; 5] = [b"iframe", b"frame", b"embed", b"object", b"fencedframe"];

/// `prefetch`, `prefetch;prerender`, `prerender`, … (the value is a list
/// whose first token names the purpose).
fn is_prefetch(value: &[u8]) -> bool {
    let value = trim(value);
    let starts =
        |word: &[u8]| value.len() >= word.len() && value[..word.len()].eq_ignore_ascii_case(word);
    starts(b"prefetch") || starts(b"prerender")
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals<'a>(headers: &[(&str, &'a str)]) -> FetchSignals<'a> {
        let mut signals = FetchSignals::default();
        for (name, value) in headers {
            signals.take(name, value.as_bytes());
        }
        signals
    }

    #[test]
    fn a_top_level_navigation_or_no_statement_is_a_click() {
        for headers in [
            vec![],
            vec![
                ("Sec-Fetch-Dest", "document"),
                ("Sec-Fetch-Mode", "navigate"),
            ],
            vec![("sec-fetch-dest", "DOCUMENT"), ("sec-fetch-user", "?1")],
            vec![
                ("Sec-Fetch-Mode", "navigate"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            vec![("User-Agent", "curl/8"), ("Purpose", "none")],
        ] {
            assert_eq!(signals(&headers).suspect(), None, "{headers:?}");
        }
    }

    #[test]
    fn frames_subresources_and_prefetches_are_suspect() {
        for (headers, reason) in [
            (vec![("Sec-Fetch-Dest", "iframe")], SuspectReason::Iframe),
            (vec![("Sec-Fetch-Dest", "frame")], SuspectReason::Iframe),
            (vec![("Sec-Fetch-Dest", "embed")], SuspectReason::Iframe),
            (
                vec![("Sec-Fetch-Mode", "nested-navigate")],
                SuspectReason::Iframe,
            ),
            (
                vec![("Sec-Fetch-Dest", "image")],
                SuspectReason::Subresource,
            ),
            (
                vec![("Sec-Fetch-Dest", "script")],
                SuspectReason::Subresource,
            ),
            (
                vec![("Sec-Fetch-Dest", "empty"), ("Sec-Fetch-Mode", "cors")],
                SuspectReason::Subresource,
            ),
            (
                vec![("Sec-Fetch-Mode", "no-cors")],
                SuspectReason::Subresource,
            ),
            (vec![("Sec-Purpose", "prefetch")], SuspectReason::Prefetch),
            (
                vec![("Sec-Purpose", "prefetch;prerender")],
                SuspectReason::Prefetch,
            ),
            (vec![("Purpose", "prefetch")], SuspectReason::Prefetch),
            (
                vec![("Sec-Fetch-Dest", "document"), ("Sec-Purpose", "prefetch")],
                SuspectReason::Prefetch,
            ),
        ] {
            assert_eq!(signals(&headers).suspect(), Some(reason), "{headers:?}");
        }
    }

    #[test]
    fn the_first_of_each_header_counts() {
        let s = signals(&[("Sec-Fetch-Dest", "document"), ("Sec-Fetch-Dest", "image")]);
        assert_eq!(s.suspect(), None);
        assert!(!FetchSignals::default().take("Sec-Fetch-Site", b"none"));
        assert!(!FetchSignals::default().take("cookie", b"x"));
    }
}
