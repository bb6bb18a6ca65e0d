//! Files served zero-copy: the hook a daemon registers ([`FileRoutes`]) and what it answers
//! ([`FileAnswer`]).
//!
//! Why: hyper writes only buffers it holds, so a file through hyper is read into userspace
//! 64 KiB at a time (each read a hop through tokio's blocking pool) and copied again into the
//! socket. A boot storm measured that at 5.7× nginx's CPU for the same bytes. On a plain-TCP
//! listener with file routes, the server reads each request head itself, asks the daemon's
//! [`FileRoutes`], and when it answers with a file writes the status and headers and then
//! `sendfile(2)`s the file's pages straight from the page cache to the socket, on the
//! runtime's own thread, driven by the socket's readiness (see `direct.rs`). A request the
//! routes decline goes to the router through hyper, as on any listener.
//!
//! On a TLS listener there is no sendfile (the bytes must be encrypted in userspace): the
//! router's own handlers answer, and the same [`FileAnswer`] becomes a streamed response with
//! [`FileAnswer::streamed`]. A daemon therefore keeps a router route for each file route
//! and builds both from one function, so the two paths cannot disagree.
//!
//! What it must never do: open a file (the daemon's routes do, with their own rules) or
//! decide which requests are file requests.

use std::fmt;
use std::net::SocketAddr;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncSeekExt as _, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

/// A listener's file routes: which requests are answered from a file.
///
/// Called on a runtime thread for each `GET` and `HEAD` without a body on a plain-TCP
/// listener, with the path (no query) exactly as sent (not percent-decoded). It may open a
/// file and `fstat` it — quick on a local file system whose metadata is cached — and must not
/// do more blocking I/O than that: it runs where the connections are served. It is async so
/// that a route may first ask something that is (the store: which file a name means, whether
/// this client may have it).
pub trait FileRoutes: Send + Sync + fmt::Debug + 'static {
    /// `None`: not a file route (or not one this function is sure of, e.g. a percent-encoded
    /// name): the router answers, as on any listener.
    fn answer<'a>(&'a self, request: &'a FileRequest<'a>) -> Answering<'a>;
}

/// What [`FileRoutes::answer`] returns: its answer, when it has one.
pub type Answering<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<FileAnswer>> + Send + 'a>>;

/// What the routes are told about a request.
#[derive(Debug)]
pub struct FileRequest<'a> {
    /// `GET` or `HEAD`.
    pub method: &'a Method,
    /// The path, without the query, as sent.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub peer: SocketAddr,
}

/// An answer: a status, headers (without `Content-Length`, which the server sets from the
/// body) and a body.
#[derive(Debug)]
pub struct FileAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: FileBody,
}

/// A file answer's body.
#[derive(Debug)]
pub enum FileBody {
    /// A short body in memory (an error's text, or nothing).
    Bytes(Bytes),
    /// `len` bytes of `file` from `offset`. For a `HEAD` the server sends the headers only,
    /// with the `Content-Length` of this part.
    File(FilePart),
}

/// Part of an open regular file, and what it holds while it is sent.
#[derive(Debug)]
pub struct FilePart {
    pub file: std::fs::File,
    pub offset: u64,
    pub len: u64,
    /// A place among the daemon's concurrent transfers, given back when the body ends or the
    /// client leaves.
    pub permit: Option<OwnedSemaphorePermit>,
}

impl FileAnswer {
    /// A short answer: `status` with `body` as plain text.
    pub fn text(status: StatusCode, body: &'static str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Self {
            status,
            headers,
            body: FileBody::Bytes(Bytes::from_static(body.as_bytes())),
        }
    }

    /// Bytes the body holds: the `Content-Length`.
    pub(crate) fn content_length(&self) -> u64 {
        match &self.body {
            FileBody::Bytes(b) => b.len() as u64,
            FileBody::File(part) => part.len,
        }
    }

    /// The answer as a response streamed through hyper (for a TLS listener, and for requests
    /// the routes declined but a router handler answers with the same function): the file read
    /// in 64 KiB chunks. `Content-Length` is set here.
    pub async fn streamed(self) -> Response {
        let len = self.content_length();
        let body = match self.body {
            FileBody::Bytes(b) => Body::from(b),
            FileBody::File(part) => {
                let mut file = tokio::fs::File::from_std(part.file);
                if part.offset > 0
                    && let Err(e) = file.seek(std::io::SeekFrom::Start(part.offset)).await
                {
                    tracing::warn!(error = %e, "cannot seek in a file to serve");
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                let held = Held {
                    inner: file.take(part.len),
                    _permit: part.permit,
                };
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(held, 64 * 1024))
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        response
    }
}

/// A reader that holds a transfer's permit until the body is dropped.
#[derive(Debug)]
struct Held<R> {
    inner: R,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Held<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
