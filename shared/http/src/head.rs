//! A request head (request line and headers), read by the server itself on a listener that
//! serves files with `sendfile(2)` ([`crate::FileRoutes`]): hyper owns the connections it
//! serves and writes only buffers it holds, so to hand a file's pages from the page cache to
//! the socket the server must know which request it is looking at before hyper does.
//!
//! Pure and synchronous (no tokio): a function of the bytes received so far, bounded
//! ([`MAX_HEAD_BYTES`], [`MAX_HEADERS`], like hyper's own limits: 100 headers), and total —
//! malformed input is an error the caller answers with 400 (431 for too large), never a panic.
//! The parsing itself is httparse's, the parser hyper uses, so both read a head alike.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Largest request head read: a request line and headers beyond it are answered 431. A boot
/// client's head is a few hundred bytes; a browser's with cookies a few KiB.
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most headers in one request (hyper's `max_headers` on every listener is the same).
pub(crate) const MAX_HEADERS: usize = 100;

/// Why a head cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    /// Not HTTP/1.x, or a line or header that does not parse: 400.
    #[error("malformed request head")]
    Malformed,
    /// More than [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`]: 431.
    #[error("request head too large")]
    TooLarge,
}

/// A complete request head.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) method: Method,
    /// The request target as sent (`/agent/vmlinuz?x=1`, or an absolute or `*` form).
    pub(crate) target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    pub(crate) headers: HeaderMap,
    /// Bytes of the head in the buffer, its final empty line included.
    pub(crate) len: usize,
}

/// Parses the head at the start of `buf`: `Ok(None)` when more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let status = match request.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge);
        }
        httparse::Status::Partial => return Ok(None),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed);
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed)?;
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Malformed)?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        method,
        target: target.to_owned(),
        minor,
        headers,
        len,
    }))
}

impl Head {
    /// Whether the client lets the connection carry another request after this one: HTTP/1.1
    /// unless it says `close`, HTTP/1.0 only when it says `keep-alive`.
    pub(crate) fn keep_alive(&self) -> bool {
        let says = |token: &str| {
            self.headers
                .get_all(http::header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if self.minor == 0 {
            says("keep-alive")
        } else {
            !says("close")
        }
    }

    /// A `GET` or `HEAD` of an origin-form path with no body, no upgrade and no `Expect`: the
    /// only requests the server answers from a file itself. Anything else (a body to read, a
    /// `Content-Length` that does not say 0, an absolute-form target) is hyper's to handle.
    pub(crate) fn is_plain_fetch(&self) -> bool {
        use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
        let no_body = !self.headers.contains_key(TRANSFER_ENCODING)
            && self
                .headers
                .get_all(CONTENT_LENGTH)
                .iter()
                .all(|v| v.as_bytes() == b"0");
        (self.method == Method::GET || self.method == Method::HEAD)
            && self.target.starts_with('/')
            && no_body
            && !self.headers.contains_key(UPGRADE)
            && !self.headers.contains_key(EXPECT)
    }

    /// The target's path: without its query.
    pub(crate) fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(path, _)| path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(text: &str) -> Head {
        parse(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_plain_fetch() {
        let h =
            complete("GET /agent/vmlinuz?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=0-\r\n\r\nNEXT");
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.path(), "/agent/vmlinuz");
        assert_eq!(h.headers["range"], "bytes=0-");
        assert_eq!(
            h.len,
            "GET /agent/vmlinuz?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=0-\r\n\r\n".len()
        );
        assert!(h.keep_alive() && h.is_plain_fetch());
    }

    #[test]
    fn partial_heads_ask_for_more() {
        let whole = "HEAD /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        for cut in 0..whole.len() {
            assert!(parse(&whole.as_bytes()[..cut]).unwrap().is_none(), "{cut}");
        }
        let h = complete(whole);
        assert!(h.keep_alive() && h.is_plain_fetch());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(!complete("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive());
        assert!(!complete("GET / HTTP/1.1\r\nConnection: TE, close\r\n\r\n").keep_alive());
        assert!(complete("GET / HTTP/1.1\r\nConnection: TE\r\n\r\n").keep_alive());
    }

    #[test]
    fn requests_with_a_body_or_odd_targets_are_not_plain() {
        for text in [
            "POST /agent/vmlinuz HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "GET /a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
            "GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET http://h/a HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
        ] {
            assert!(!complete(text).is_plain_fetch(), "{text}");
        }
        assert!(complete("GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_plain_fetch());
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        for text in [
            "GET / HTTP/2.0\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "G\0T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        ] {
            assert_eq!(
                parse(text.as_bytes()).unwrap_err(),
                HeadError::Malformed,
                "{text:?}"
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err(),
            HeadError::TooLarge
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(long.as_bytes()).unwrap_err(), HeadError::TooLarge);
        let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            parse(unfinished.as_bytes()).unwrap_err(),
            HeadError::TooLarge
        );
        // Empty lines before a request are allowed (RFC 9112 §2.2), but not without bound.
        assert!(parse(b"\r\n\r\n").unwrap().is_none());
        let blank = "\r\n".repeat(MAX_HEAD_BYTES / 2);
        assert_eq!(parse(blank.as_bytes()).unwrap_err(), HeadError::TooLarge);
    }

    proptest! {
        /// Any bytes at all: an answer, never a panic; a head never claims more bytes than
        /// were given or than the bound.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some(h)) = parse(&buf) {
                prop_assert!(h.len <= buf.len() && h.len <= MAX_HEAD_BYTES);
            }
        }

        /// Heads built from valid parts parse back to those parts, however they are cut.
        #[test]
        fn valid_heads_round_trip(
            path in "/[a-zA-Z0-9._~%-]{0,40}",
            headers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,30}"), 0..12),
            cut in 0usize..400,
        ) {
            let mut text = format!("GET {path} HTTP/1.1\r\n");
            for (n, v) in &headers {
                text.push_str(&format!("{n}: {}\r\n", v.trim()));
            }
            text.push_str("\r\n");
            let cut = cut.min(text.len() - 1);
            prop_assert!(parse(&text.as_bytes()[..cut]).unwrap().is_none());
            let h = parse(text.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(h.len, text.len());
            prop_assert_eq!(&h.target, &path);
            prop_assert_eq!(h.headers.len(), headers.len());
        }
    }
}
