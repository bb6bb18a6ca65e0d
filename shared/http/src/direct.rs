//! A plain-TCP connection on a listener with [`FileRoutes`]: the server reads each request
//! head itself, answers file routes with `sendfile(2)`, and lets hyper answer everything else.
//!
//! Why not hyper for all of it: hyper owns the connection and writes only `Bytes` it holds,
//! so a file would be read into userspace and copied again (a boot storm measured 5.7× nginx's
//! CPU for the agent's kernel and initrd, ~44 % of it thread switches to tokio's blocking pool
//! per 64 KiB read). Here a file's pages go from the page cache to the socket in the kernel,
//! up to [`SENDFILE_CHUNK`] per call, driven by the socket's readiness on the runtime's own
//! thread: no blocking-pool hop, no copy through userspace.
//!
//! Each request on the connection, in turn:
//! - its head is read ([`crate::head`]: bounded, 400 or 431 and close when malformed or too
//!   large) within the header timeout, which also bounds the wait for the next request on a
//!   keep-alive connection, as hyper's does; an idle connection closes when draining starts;
//! - a plain `GET`/`HEAD` (no body) goes to the routes; a file answer is written here, and the
//!   connection carries on when the client allows it;
//! - a plain fetch the routes decline is served by hyper and the router as one exchange: hyper
//!   is given exactly that head's bytes over a borrowed socket; once the response body is gone
//!   and hyper has flushed its buffer (it asks the socket to flush only when its own buffer is
//!   empty), the exchange is over and the connection comes back here, so a boot script
//!   followed by the kernel and the initrd on one keep-alive connection (what iPXE does) still
//!   gets them by sendfile;
//! - anything else (a body to read, an upgrade, `Expect`) hands the rest of the connection to
//!   hyper with the bytes already read, as on a listener without file routes.
//!
//! The idle timeout, the connection caps and the drain are the serving loop's, around this.
//!
//! Cold pages: `sendfile` reads a page that is not cached inside the call, on this thread, as
//! nginx does without `aio threads`; a chunk is at most [`SENDFILE_CHUNK`] so one call holds
//! the thread for one chunk's read at most (docs/performance.md, "Files").

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Method, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::files::{FileAnswer, FileBody, FilePart, FileRequest, FileRoutes};
use crate::head::{self, Head, HeadError};
use crate::io::{Activity, Prefixed, Tracked};
use crate::serve::Shared;

/// Most bytes one `sendfile` call may move: large enough that the syscalls are few (nginx's
/// `sendfile_max_chunk` default is 2 MiB), small enough that a call on cold pages holds the
/// thread for one such read.
pub(crate) const SENDFILE_CHUNK: usize = 2 << 20;
/// How long, and for how many bytes, a refused request's connection is drained before it is
/// closed ([`linger`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 256 << 10;
/// A transfer yields the thread to other connections after this many bytes, even to a client
/// that never makes the socket wait (on loopback, say): a chunk takes about a millisecond, so a
/// `/boot` request waits about that long behind each busy transfer. (16 MiB made `/healthz`
/// wait 9 ms at the median during four loopback downloads; a yield costs a microsecond.)
const YIELD_EVERY: u64 = SENDFILE_CHUNK as u64;

/// Serves `stream` until the client or the server closes it.
pub(crate) async fn connection(
    shared: &Shared,
    routes: &dyn FileRoutes,
    mut stream: TcpStream,
    peer: SocketAddr,
    activity: &Arc<Activity>,
    drain: &CancellationToken,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head = match read_head(&mut stream, &mut buf, shared, activity, drain).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                let status = match e {
                    HeadError::Malformed => "400 Bad Request",
                    HeadError::TooLarge => "431 Request Header Fields Too Large",
                };
                tracing::debug!(listener = shared.name, %peer, error = %e, "refused a request");
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = write_all(&stream, answer.as_bytes(), activity).await;
                linger(&mut stream).await;
                return;
            }
        };
        if !head.is_plain_fetch() {
            let io = Prefixed::new(buf, Tracked::new(stream, Arc::clone(activity)));
            shared.http(io, peer, drain).await;
            return;
        }
        let request = FileRequest {
            method: &head.method,
            path: head.path(),
            headers: &head.headers,
            peer,
        };
        let again = match routes.answer(&request).await {
            Some(answer) => {
                let keep_alive = head.keep_alive() && !drain.is_cancelled();
                match send(&stream, answer, &head, keep_alive, activity).await {
                    Ok(()) => keep_alive,
                    Err(e) => {
                        log_send_error(shared.name, peer, &head, &e);
                        false
                    }
                }
            }
            None => exchange(shared, &stream, &buf[..head.len], peer, activity, drain).await,
        };
        if !again || drain.is_cancelled() {
            return;
        }
        buf.drain(..head.len);
    }
}

/// Closes our side, then reads and drops what the client is still sending for a moment (a
/// lingering close, as nginx does): closing with unread bytes would reset the connection, and
/// the client could lose the error answer before reading it.
async fn linger(stream: &mut TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut dropped = 0usize;
        while dropped < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

/// Reads until `buf` starts with a whole head. `Ok(None)`: the client closed, the header
/// timeout passed, or draining began before a byte of a next request arrived.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    shared: &Shared,
    activity: &Activity,
    drain: &CancellationToken,
) -> Result<Option<Head>, HeadError> {
    let deadline = Instant::now() + shared.config.header_timeout;
    loop {
        if let Some(head) = head::parse(buf)? {
            return Ok(Some(head));
        }
        buf.reserve(4096);
        let read = tokio::select! {
            read = stream.read_buf(buf) => read,
            () = tokio::time::sleep_until(deadline) => {
                tracing::debug!(listener = shared.name, "no request head within the header timeout");
                return Ok(None);
            }
            () = drain.cancelled(), if buf.is_empty() => return Ok(None),
        };
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => activity.touch(),
        }
    }
}

/// Writes a file answer: the head, then the body (none for `HEAD`).
async fn send(
    stream: &TcpStream,
    answer: FileAnswer,
    request: &Head,
    keep_alive: bool,
    activity: &Activity,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(512);
    let status = answer.status;
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    let mut headers = answer.headers;
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(match &answer.body {
            FileBody::Bytes(b) => b.len() as u64,
            FileBody::File(part) => part.len,
        }),
    );
    if let Some(date) = http_date_now() {
        headers.insert(header::DATE, date);
    }
    if !keep_alive {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if request.minor == 0 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let head_only = request.method == Method::HEAD;
    match answer.body {
        FileBody::Bytes(body) => {
            if !head_only {
                out.extend_from_slice(&body);
            }
            write_all(stream, &out, activity).await
        }
        FileBody::File(part) => {
            write_all(stream, &out, activity).await?;
            if head_only {
                return Ok(());
            }
            send_file(stream, &part, activity).await
        }
    }
}

/// `part` to the socket with `sendfile(2)`, waiting for the socket's readiness between calls.
/// Fails when the client goes away (EPIPE, ECONNRESET) or the file is shorter than announced.
async fn send_file(stream: &TcpStream, part: &FilePart, activity: &Activity) -> io::Result<()> {
    let end = part
        .offset
        .checked_add(part.len)
        .ok_or_else(|| io::Error::other("file part beyond the largest offset"))?;
    let mut offset = i64::try_from(part.offset).map_err(io::Error::other)?;
    let mut since_yield = 0u64;
    while offset.unsigned_abs() < end {
        let want = usize::try_from(end - offset.unsigned_abs())
            .unwrap_or(usize::MAX)
            .min(SENDFILE_CHUNK);
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(stream, &part.file, Some(&mut offset), want)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file is shorter than when its answer began (changed while served)",
                ));
            }
            Ok(n) => {
                activity.touch();
                since_yield += n as u64;
                if since_yield >= YIELD_EVERY {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// All of `data` to the socket.
async fn write_all(stream: &TcpStream, mut data: &[u8], activity: &Activity) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => {
                activity.touch();
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A client that leaves mid-answer is ordinary (a cancelled download, a machine powered off):
/// debug. A file that shrank while served is the operator's to hear about.
fn log_send_error(listener: &'static str, peer: SocketAddr, head: &Head, e: &io::Error) {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        tracing::warn!(listener, %peer, path = head.path(), error = %e, "file answer cut short");
    } else {
        tracing::debug!(listener, %peer, path = head.path(), error = %e, "client left during a file answer");
    }
}

fn http_date_now() -> Option<HeaderValue> {
    let now = jiff::Timestamp::now();
    let text = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&now)
        .ok()?;
    HeaderValue::from_str(&text).ok()
}

/// One request answered by hyper and the router. `true` when the connection may carry another
/// request (hyper did not close it).
async fn exchange(
    shared: &Shared,
    stream: &TcpStream,
    head: &[u8],
    peer: SocketAddr,
    activity: &Activity,
    drain: &CancellationToken,
) -> bool {
    let state = Arc::new(ExchangeState::default());
    let io = Exchange {
        stream,
        head,
        state: Arc::clone(&state),
        activity,
    };
    let service = shared.service(peer, Some(Arc::clone(&state)), drain);
    let conn = shared.builder().serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
        Poll::Ready(Ok(())) => Poll::Ready(false),
        Poll::Ready(Err(e)) => {
            tracing::debug!(listener = shared.name, %peer, error = %e, "connection ended");
            Poll::Ready(false)
        }
        Poll::Pending if state.done.load(Ordering::Acquire) => Poll::Ready(true),
        Poll::Pending => Poll::Pending,
    })
    .await
}

/// Where one exchange through hyper stands.
#[derive(Debug, Default)]
pub(crate) struct ExchangeState {
    /// hyper dropped the response body: it holds every byte of the response.
    body_dropped: AtomicBool,
    /// …and then flushed its buffer to the socket: the exchange is over.
    done: AtomicBool,
}

impl ExchangeState {
    pub(crate) fn body_dropped(&self) {
        self.body_dropped.store(true, Ordering::Release);
    }
}

/// The socket as hyper sees it for one exchange: the request's head, then nothing more to
/// read (`Pending`: the next request is read by [`connection`]); writes go to the socket.
struct Exchange<'a> {
    stream: &'a TcpStream,
    head: &'a [u8],
    state: Arc<ExchangeState>,
    activity: &'a Activity,
}

impl AsyncRead for Exchange<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head.is_empty() {
            // No waker: nothing will arrive for hyper; the exchange ends on `done` instead.
            return Poll::Pending;
        }
        let n = self.head.len().min(buf.remaining());
        buf.put_slice(&self.head[..n]);
        self.head = &self.head[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Exchange<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(data) {
                Ok(n) => {
                    self.activity.touch();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Ok(n) => {
                    self.activity.touch();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the socket only once its own buffer is empty.
        if self.state.body_dropped.load(Ordering::Acquire) {
            self.state.done.store(true, Ordering::Release);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper closes: the connection ends when `exchange` returns and the socket is dropped.
        Poll::Ready(Ok(()))
    }
}
