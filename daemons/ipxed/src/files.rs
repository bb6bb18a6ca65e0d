//! `GET /agent/{file}`, `GET /ipxe/{file}` and `GET /images/{name}`: the agent's kernel and
//! initrd, the iPXE binaries UEFI HTTP-boot firmware fetches (dhcpd's `http_boot_*_url`), and
//! the library's local images, with single `Range` requests and validators. The routes share
//! one way of answering with a file (`describe`), so they behave alike, and so do
//! the two ways it is sent: by `sendfile(2)` on a plain-TCP listener ([`Files`], registered
//! with `dragonfly-http`), streamed through the router on a TLS listener (or for a name the
//! file routes leave to the router, e.g. percent-encoded). At most `max_file_transfers`
//! bodies are sent at once; beyond that the answer is 503 with `Retry-After`, so a storm of
//! boots is served in turns at full speed instead of all at once at a crawl.
//!
//! Why two rules for which file a name means:
//! - `/agent/{file}`: only names in the configured list are served; the path is `agent_dir`
//!   joined with a name from that list (never with the request's text).
//! - `/ipxe/{file}`: any regular file directly in `ipxe_dir` (a distribution's directory whose
//!   contents we do not list: `ipxe.efi`, `snponly.efi`, `ipxe-arm64.efi`, …). The name must be
//!   a plain file name (letters, digits, `.`, `_`, `-`, not starting with `.`), so it has no
//!   directory part and no `..`; it is opened with `O_NOFOLLOW`, so a symlink — which could
//!   lead anywhere on the host — is refused by the kernel at open time, with no check-then-open
//!   race; only what `fstat` calls a regular file is served. Stricter than tftpd (which
//!   follows symlinks that stay beneath its roots): with one path component there is nothing
//!   to walk, and a refused link is one `cp -L` away from working.
//!
//! - `/images/{name}`: the name is an Image's in the store; the path is `images_dir` joined with
//!   that Image's `spec.file` (checked as a plain name when it was added), opened like an iPXE
//!   file. Only a `Ready` local image is served, only while its file still has the size and
//!   modification time it was checksummed with (a file replaced in place is refused, not
//!   installed under the old checksum), and — unless the Image is `public` — only to a client
//!   presenting a boot token (`Authorization: Bearer`) of a live boot session, as apid checks
//!   an agent's: an image can hold licensed software or a site's secrets, and the provisioning
//!   network is shared. Refusals are 401 with `WWW-Authenticate: Bearer`.
//!
//! This module must never open a path built from a request other than `dir/<plain name>`,
//! and never read a file whole: an initrd is tens of MiB and many machines may boot at once.
//! Refusals and missing files are all 404 to the client (no hint of what exists); the log says
//! which.

use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dragonfly_core::image::ImagePhase;
use dragonfly_http::{Answering, FileAnswer, FileBody, FilePart, FileRequest, FileRoutes};
use dragonfly_runtime::cli::Chain;
use dragonfly_runtime::config::file_name;

use crate::AppState;
use crate::script::RETRY_DELAY_SECS;

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

/// Which rule maps a name to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/agent/{file}`: a name of `agent_files`, in `agent_dir`.
    Agent,
    /// `/ipxe/{file}`: a plain name, a regular file directly in `ipxe_dir`, no symlink.
    Ipxe,
    /// `/images/{name}`: a library image's file in `images_dir`.
    Image,
}

/// ipxed's file routes for `dragonfly-http`'s sendfile path (plain-TCP listeners): the same
/// `answer` as the router's handlers, so both paths serve alike.
#[derive(Debug)]
pub struct Files {
    state: AppState,
}

impl Files {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl FileRoutes for Files {
    fn answer<'a>(&'a self, request: &'a FileRequest<'a>) -> Answering<'a> {
        let (route, name) = if let Some(name) = request.path.strip_prefix("/agent/") {
            (Route::Agent, name)
        } else if let Some(name) = request.path.strip_prefix("/ipxe/") {
            (Route::Ipxe, name)
        } else if let Some(name) = request.path.strip_prefix("/images/") {
            (Route::Image, name)
        } else {
            return Box::pin(std::future::ready(None));
        };
        // What the router would read differently (a percent-encoded name, which it decodes,
        // or more than one segment, which no route matches) is left to the router.
        if name.is_empty() || name.contains(['%', '/']) {
            return Box::pin(std::future::ready(None));
        }
        let head_only = request.method == Method::HEAD;
        match route {
            Route::Image => Box::pin(async move {
                Some(image_answer(&self.state, name, head_only, request.headers).await)
            }),
            _ => Box::pin(std::future::ready(Some(answer(
                &self.state,
                route,
                name,
                head_only,
                request.headers,
            )))),
        }
    }
}

/// Handles `GET`/`HEAD /images/{name}` through the router (see [`agent_file`]).
pub(crate) async fn image_file(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    image_answer(&state, &name, method == Method::HEAD, &headers)
        .await
        .streamed()
        .await
}

/// The answer to `/images/{name}` (see the module docs): looks the image up, checks the
/// client's boot token unless the image is public, then opens the file.
pub(crate) async fn image_answer(
    state: &AppState,
    name: &str,
    head_only: bool,
    headers: &HeaderMap,
) -> FileAnswer {
    if !dragonfly_core::template::check_image_name(name) {
        return not_found();
    }
    let image = match state.db.images().get(name).await {
        Ok(Some(image)) => image,
        Ok(None) => return not_found(),
        Err(e) => {
            tracing::error!(image = %name, error = %Chain(&e), "cannot look up an image");
            return FileAnswer::text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    let Some(file) = image.spec.file.as_deref() else {
        tracing::debug!(image = %name, "asked for a remote image, which ipxed does not serve");
        return not_found();
    };
    if image.status.phase != ImagePhase::Ready {
        tracing::info!(image = %name, phase = image.status.phase.as_str(), "image not ready");
        return not_found();
    }
    if !image.spec.public
        && let Err(why) = live_token(state, headers).await
    {
        tracing::info!(image = %name, reason = why, "image download refused");
        let mut answer =
            FileAnswer::text(StatusCode::UNAUTHORIZED, "a live boot token is required\n");
        answer.headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"dragonfly images\""),
        );
        return answer;
    }
    let dir = &state.config.images_dir;
    let (f, meta) = match dragonfly_store::images::open_file(dir, file) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(image = %name, dir = %dir.display(), file, error = %Chain(&e),
                "cannot open a library image's file (missing, a symlink, not a regular file, or \
                 not readable by ipxed)");
            return FileAnswer::text(StatusCode::INTERNAL_SERVER_ERROR, "image unavailable\n");
        }
    };
    let unchanged = image.status.size == Some(meta.len())
        && image.status.modified_ns == dragonfly_store::images::modified_ns(&meta);
    if !unchanged {
        tracing::error!(
            image = %name,
            dir = %dir.display(),
            file,
            "a library image's file changed since it was checksummed: refused; add it again \
             (delete the Image and create it) so that it is checksummed anew"
        );
        return FileAnswer::text(StatusCode::INTERNAL_SERVER_ERROR, "image unavailable\n");
    }
    match describe(state, f, head_only, headers) {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(image = %name, error = %Chain(&e), "cannot serve an image");
            FileAnswer::text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// Checks the request's `Authorization: Bearer` boot token: its signature and expiry, and that
/// its boot session is the MAC's current, unexpired one (what apid checks of an agent).
async fn live_token(state: &AppState, headers: &HeaderMap) -> Result<(), &'static str> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("no bearer token")?;
    let now = jiff::Timestamp::now();
    let claims =
        dragonfly_core::boot_token::verify(state.boot_token_key.expose(), token.trim(), now)
            .map_err(|_| "the token does not verify or has expired")?;
    let session = state
        .db
        .boot()
        .session(claims.mac)
        .await
        .map_err(|_| "the boot sessions cannot be read")?
        .ok_or("no boot session for the token's MAC")?;
    if session.admits(&claims.nonce, now) {
        Ok(())
    } else {
        Err("the token's boot session is over")
    }
}

/// Handles `GET`/`HEAD /agent/{file}` through the router: on a TLS listener, or a name the
/// file routes left to it.
pub(crate) async fn agent_file(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    streamed(state, Route::Agent, name, method, headers).await
}

/// Handles `GET`/`HEAD /ipxe/{file}` through the router (see [`agent_file`]).
pub(crate) async fn ipxe_file(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    streamed(state, Route::Ipxe, name, method, headers).await
}

/// [`answer`] on the blocking pool (it opens a file), streamed through hyper.
async fn streamed(
    state: AppState,
    route: Route,
    name: String,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let head_only = method == Method::HEAD;
    let answered =
        tokio::task::spawn_blocking(move || answer(&state, route, &name, head_only, &headers))
            .await;
    match answered {
        Ok(answer) => answer.streamed().await,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "cannot answer a file request");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The answer to a request for `name` by `route`'s rule: the file (or the part a `Range`
/// asks for) with its validators, or 404, 416, 503 (too many transfers) or 500. Opens and
/// `fstat`s the file: blocking, but brief on a local file system.
pub(crate) fn answer(
    state: &AppState,
    route: Route,
    name: &str,
    head_only: bool,
    headers: &HeaderMap,
) -> FileAnswer {
    match route {
        Route::Agent => agent_answer(state, name, head_only, headers),
        Route::Ipxe => ipxe_answer(state, name, head_only, headers),
        // Answered by `image_answer` (async: it asks the store).
        Route::Image => not_found(),
    }
}

fn agent_answer(state: &AppState, name: &str, head_only: bool, headers: &HeaderMap) -> FileAnswer {
    // Look the name up and use the configured string: the request's text never reaches a path.
    let Some(allowed) = state.config.agent_files.iter().find(|f| **f == name) else {
        return not_found();
    };
    let served = std::fs::File::open(state.config.agent_dir.join(allowed))
        .and_then(|file| describe(state, file, head_only, headers));
    match served {
        Ok(answer) => answer,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %allowed, "agent file missing from agent_dir");
            not_found()
        }
        Err(e) => {
            tracing::error!(file = %allowed, error = %Chain(&e), "cannot serve agent file");
            FileAnswer::text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// A regular file directly in `ipxe_dir`, never through a symlink (see the module docs).
fn ipxe_answer(state: &AppState, name: &str, head_only: bool, headers: &HeaderMap) -> FileAnswer {
    // No `/`, no `..`, nothing hidden: after this, `ipxe_dir/name` names an entry of ipxe_dir.
    if file_name("file", name).is_err() {
        return not_found();
    }
    let path = state.config.ipxe_dir.join(name);
    let served = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO someone left in the directory must not hang the server.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .and_then(|file| describe(state, file, head_only, headers));
    match served {
        Ok(answer) => answer,
        // A missing name, a missing ipxe_dir (logged at start), or not a regular file.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            tracing::debug!(path = %path.display(), "no such iPXE file");
            not_found()
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            tracing::warn!(
                path = %path.display(),
                "refused an iPXE file that is a symlink: ipxed serves only regular files of \
                 ipxe_dir (Debian links ipxe.efi to /boot; copy it with cp -L into a directory \
                 of its own and point ipxe_dir there)"
            );
            not_found()
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(path = %path.display(), "iPXE file not readable by ipxed");
            not_found()
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %Chain(&e), "cannot serve iPXE file");
            FileAnswer::text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

fn not_found() -> FileAnswer {
    FileAnswer::text(StatusCode::NOT_FOUND, "not found\n")
}

/// `file` (opened by the route's own rules) with validators and single ranges, holding a place
/// among `max_file_transfers` when a body is to be sent. A file that is not a regular file is
/// `NotFound`.
fn describe(
    state: &AppState,
    file: std::fs::File,
    head_only: bool,
    request: &HeaderMap,
) -> std::io::Result<FileAnswer> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let size = meta.len();
    let tag = etag(size, meta.modified().ok());
    // If-Range: only honour the range when the client's copy is the current one.
    let if_range_ok = request
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v == tag));
    let range = request
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ETAG, header_value(tag)?);
    if let Some(date) = meta.modified().ok().and_then(http_date) {
        headers.insert(header::LAST_MODIFIED, header_value(date)?);
    }
    let (status, offset, len) = match decide_range(range, size) {
        RangeDecision::Full => (StatusCode::OK, 0, size),
        RangeDecision::Partial(r) => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes {}-{}/{size}", r.first, r.last))?,
            );
            (StatusCode::PARTIAL_CONTENT, r.first, r.byte_count())
        }
        RangeDecision::Unsatisfiable => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes */{size}"))?,
            );
            return Ok(FileAnswer {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                body: FileBody::Bytes(Default::default()),
            });
        }
    };
    let permit = if head_only {
        None
    } else {
        match Arc::clone(&state.transfers).try_acquire_owned() {
            Ok(permit) => {
                state.metrics.file_transfers.inc();
                state.metrics.file_bytes.inc_by(len);
                Some(permit)
            }
            Err(_) => {
                state.metrics.file_transfers_busy.inc();
                return Ok(busy(state));
            }
        }
    };
    Ok(FileAnswer {
        status,
        headers,
        body: FileBody::File(FilePart {
            file,
            offset,
            len,
            permit,
        }),
    })
}

/// 503: every place among `max_file_transfers` is taken. The agent's script retries after
/// [`RETRY_DELAY_SECS`]; `Retry-After` says the same to any other client.
fn busy(state: &AppState) -> FileAnswer {
    if let Some(suppressed) = state.note_busy() {
        tracing::warn!(
            max_file_transfers = state.config.max_file_transfers,
            suppressed,
            "refused a download: max_file_transfers are in progress (503, Retry-After)"
        );
    }
    let mut answer = FileAnswer::text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many downloads in progress; retry later\n",
    );
    answer
        .headers
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_DELAY_SECS));
    answer
}

fn header_value(text: String) -> std::io::Result<HeaderValue> {
    HeaderValue::try_from(text).map_err(std::io::Error::other)
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
