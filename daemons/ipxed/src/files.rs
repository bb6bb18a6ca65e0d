//! `GET /agent/{file}`: the agent's kernel and initrd, streamed, with single `Range` requests.
//!
//! Only names in the configured list are served; the path is `agent_dir` joined with a name
//! from that list (never with the request's text), so no request can reach another file.
//! Files are streamed from disk in chunks, never read whole: an initrd is tens of MiB and many
//! machines may boot at once.

use std::path::Path;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dragonfly_runtime::cli::Chain;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::AppState;

/// A byte range to serve, inclusive of both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    /// Bytes in the range (never zero: both ends are inclusive).
    pub fn byte_count(self) -> u64 {
        self.last - self.first + 1
    }
}

/// What to do with a request's `Range` header for a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// No usable single range: send the whole file (200). RFC 9110 lets a server ignore a
    /// malformed or multi-range header.
    Full,
    /// Send this part (206).
    Partial(ByteRange),
    /// A well-formed range that does not overlap the file (416).
    Unsatisfiable,
}

/// Parses a `Range` header value against a file size (RFC 9110 §14.1.2), single range only.
pub fn decide_range(header: Option<&str>, size: u64) -> RangeDecision {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeDecision::Full,
            Some(0) => RangeDecision::Unsatisfiable,
            Some(_) if size == 0 => RangeDecision::Unsatisfiable,
            Some(n) => RangeDecision::Partial(ByteRange {
                first: size.saturating_sub(n),
                last: size - 1,
            }),
        },
        (first, last) => {
            let Some(first) = num(first) else {
                return RangeDecision::Full;
            };
            let last = if last.is_empty() {
                u64::MAX
            } else {
                match num(last) {
                    Some(l) if l >= first => l,
                    _ => return RangeDecision::Full,
                }
            };
            if first >= size {
                RangeDecision::Unsatisfiable
            } else {
                RangeDecision::Partial(ByteRange {
                    first,
                    last: last.min(size - 1),
                })
            }
        }
    }
}

/// A weak-enough validator from size and modification time; changes whenever the file does.
fn etag(size: u64, modified: Option<SystemTime>) -> String {
    let nanos = modified
        .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{size:x}-{nanos:x}\"")
}

fn http_date(t: SystemTime) -> Option<String> {
    let ts = jiff::Timestamp::try_from(t).ok()?;
    jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&ts)
        .ok()
}

/// Handles `GET`/`HEAD /agent/{file}`.
pub(crate) async fn agent_file(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    // Look the name up and use the configured string: the request's text never reaches a path.
    let Some(allowed) = state.config.agent_files.iter().find(|f| **f == name) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    match serve(&state.config.agent_dir.join(allowed), &headers).await {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %allowed, "agent file missing from agent_dir");
            (StatusCode::NOT_FOUND, "not found\n").into_response()
        }
        Err(e) => {
            tracing::error!(file = %allowed, error = %Chain(&e), "cannot serve agent file");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn serve(path: &Path, headers: &HeaderMap) -> std::io::Result<Response> {
    let mut file = tokio::fs::File::open(path).await?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let size = meta.len();
    let tag = etag(size, meta.modified().ok());
    // If-Range: only honour the range when the client's copy is the current one.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v == tag));
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ETAG, &tag);
    if let Some(date) = meta.modified().ok().and_then(http_date) {
        builder = builder.header(header::LAST_MODIFIED, date);
    }
    let (status, first, len) = match decide_range(range, size) {
        RangeDecision::Full => (StatusCode::OK, 0, size),
        RangeDecision::Partial(r) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.first, r.last),
            );
            (StatusCode::PARTIAL_CONTENT, r.first, r.byte_count())
        }
        RangeDecision::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .map_err(std::io::Error::other);
        }
    };
    if first > 0 {
        file.seek(std::io::SeekFrom::Start(first)).await?;
    }
    let stream = ReaderStream::with_capacity(file.take(len), 64 * 1024);
    builder
        .status(status)
        .header(header::CONTENT_LENGTH, HeaderValue::from(len))
        .body(Body::from_stream(stream))
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::*;

    fn p(first: u64, last: u64) -> RangeDecision {
        Partial(ByteRange { first, last })
    }

    #[test]
    fn ranges() {
        let cases = [
            (None, Full),
            (Some("bytes=0-0"), p(0, 0)),
            (Some("bytes=100-199"), p(100, 199)),
            (Some("bytes=100-"), p(100, 999)),
            (Some("bytes=990-5000"), p(990, 999)),
            (Some("bytes=-10"), p(990, 999)),
            (Some("bytes=-5000"), p(0, 999)),
            (Some("bytes=1000-"), Unsatisfiable),
            (Some("bytes=2000-3000"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=5-1"), Full),
            (Some("bytes=0-1,5-6"), Full),
            (Some("items=0-1"), Full),
            (Some("bytes=a-b"), Full),
            (Some("bytes=+1-2"), Full),
            (Some("bytes=-"), Full),
            (Some("bytes=18446744073709551616-"), Full),
        ];
        for (h, want) in cases {
            assert_eq!(decide_range(h, 1000), want, "{h:?}");
        }
        assert_eq!(decide_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(decide_range(Some("bytes=-1"), 0), Unsatisfiable);
    }

    #[test]
    fn partial_ranges_stay_inside_the_file() {
        for size in [1u64, 2, 7, 1000] {
            for h in [
                "bytes=0-",
                "bytes=-1",
                "bytes=3-4",
                "bytes=-999999",
                "bytes=0-999999",
            ] {
                if let Partial(r) = decide_range(Some(h), size) {
                    assert!(r.first <= r.last && r.last < size, "{h} {size} {r:?}");
                }
            }
        }
    }

    #[test]
    fn etags_change_with_size_and_time() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5);
        assert_ne!(etag(1, Some(t)), etag(2, Some(t)));
        assert_ne!(etag(1, Some(t)), etag(1, None));
        assert_eq!(
            http_date(t).unwrap(),
            "Thu, 01 Jan 1970 00:00:05 GMT".to_owned()
        );
    }
}
