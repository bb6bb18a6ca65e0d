//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`: one request per connection.
//!
//! It exists because the agent needs two kinds of request — JSON to apid, by IP address, in
//! plain HTTP on the boot network, and streamed image downloads — and the initramfs must stay
//! small: no async runtime. It must never follow redirects or resolve names through NSS (the
//! binary is statically linked against glibc, whose NSS cannot load modules: see README).
//!
//! Downloads (images, writefile contents) may be `https://`: rustls (ring, the workspace's one
//! TLS stack), certificates checked against the CA files the agent is given
//! ([`tls_config`]; in the initramfs, Debian's `ca-certificates` bundle and any PEM files in
//! `/etc/dragonfly/ca.d`). apid is only ever spoken to in plain HTTP: its boot tokens are
//! per-boot and short-lived, and the machine has no trust anchor for it before it is
//! installed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The most of a response body the agent reads; a machine record is a few KiB.
const MAX_BODY: usize = 1 << 20;

/// An `http://host[:port][/prefix]` (or, for downloads, `https://`) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port` as written (port defaulted to 80, or 443 with TLS).
    pub authority: String,
    /// The `Host` header value.
    pub host: String,
    /// Path prefix without a trailing slash (empty for the root).
    pub prefix: String,
    /// `https://`: the connection is TLS.
    pub tls: bool,
}

impl Url {
    /// Parses a plain-HTTP base URL. Refuses `https://`, user info, queries and fragments.
    pub fn parse(s: &str) -> Result<Self, HttpError> {
        Self::parse_with(s, false)
    }

    /// Parses a download URL: `http://` or `https://`, the same rules otherwise.
    pub fn parse_download(s: &str) -> Result<Self, HttpError> {
        Self::parse_with(s, true)
    }

    fn parse_with(s: &str, https: bool) -> Result<Self, HttpError> {
        let bad = || HttpError::BadUrl(s.to_owned());
        let (rest, tls) = match (s.strip_prefix("http://"), s.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) if https => (rest, true),
            _ => return Err(bad()),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if hostport.is_empty()
            || hostport.contains('@')
            || path.contains(['?', '#'])
            || hostport.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        // A bracketed IPv6 literal has colons of its own.
        let has_port = match hostport.rfind(']') {
            Some(close) => hostport[close..].contains(':'),
            None => hostport.contains(':'),
        };
        let authority = if has_port {
            hostport.to_owned()
        } else if tls {
            format!("{hostport}:443")
        } else {
            format!("{hostport}:80")
        };
        Ok(Self {
            authority,
            host: hostport.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
            tls,
        })
    }

    /// The host without its port or IPv6 brackets: the name a certificate must carry.
    fn server_name(&self) -> &str {
        let h = match self.host.rfind(']') {
            Some(close) => &self.host[..=close],
            None => self.host.split(':').next().unwrap_or(&self.host),
        };
        h.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A connection: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// The TLS client settings for `https://` downloads: the certificates of every readable PEM
/// file among `files` (a missing file is skipped: the list names where CAs may be) as trust
/// anchors, ring as the crypto provider, TLS 1.2 and 1.3.
///
/// # Errors
/// [`HttpError::Tls`] when no certificate at all was found: an `https://` download could
/// then never succeed, and the message says where the agent looked.
pub fn tls_config(files: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    let mut roots = rustls::RootCertStore::empty();
    for file in files {
        let paths: Vec<PathBuf> = if file.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(file)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            v.sort();
            v
        } else {
            vec![file.clone()]
        };
        for path in paths {
            add_pem(&mut roots, &path);
        }
    }
    if roots.is_empty() {
        return Err(HttpError::Tls(format!(
            "no CA certificate found in {}, so no https:// server can be trusted",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Adds the certificates of one PEM file; unreadable files and bad entries are skipped (a
/// system bundle may hold a certificate rustls refuses; the others still count).
fn add_pem(roots: &mut rustls::RootCertStore, path: &Path) {
    let Ok(iter) = CertificateDer::pem_file_iter(path) else {
        return;
    };
    for cert in iter.flatten() {
        let _ = roots.add(cert);
    }
}

/// A response: the status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not a plain http:// URL")]
    BadUrl(String),
    #[error("cannot find the address of {0}")]
    Resolve(String),
    #[error("connecting to {0}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("talking to the server")]
    Io(#[from] io::Error),
    #[error("the server sent something that is not HTTP/1.x: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Sends `GET {base}{path}` with a bearer token; returns the response.
pub fn get(base: &Url, path: &str, bearer: &str, timeout: Duration) -> Result<Response, HttpError> {
    request(base, "GET", path, bearer, None, timeout)
}

/// Sends `POST {base}{path}` with a JSON body and a bearer token; returns the response.
pub fn post_json(
    base: &Url,
    path: &str,
    bearer: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    request(base, "POST", path, bearer, Some(body), timeout)
}

fn request(
    base: &Url,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let addr = base
        .authority
        .to_socket_addrs()
        .map_err(|_| HttpError::Resolve(base.authority.clone()))?
        .next()
        .ok_or_else(|| HttpError::Resolve(base.authority.clone()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| HttpError::Connect(addr, e))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let content = match body {
        Some(b) => format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ),
        None => String::new(),
    };
    let head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dragonfly-mage/{ver}\r\n\
         Accept: application/json\r\n{content}\
         Authorization: Bearer {bearer}\r\nConnection: close\r\n\r\n",
        prefix = base.prefix,
        host = base.host,
        ver = env!("CARGO_PKG_VERSION"),
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&req)?;
    read_response(BufReader::new(stream))
}

/// Longest status or header line accepted, with its CRLF.
pub const MAX_LINE: usize = 8 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line's hex digits: 8 are enough for anything under [`MAX_BODY`].
const MAX_CHUNK_DIGITS: usize = 8;

/// Reads one response (status line, headers, then a `Content-Length`, chunked or
/// until-close body).
///
/// The server is on a network an attacker shares, so nothing it sends can make this allocate
/// without bound, loop forever on a finite stream, or overflow: lines are at most
/// [`MAX_LINE`], headers at most [`MAX_HEADERS`], the body at most `MAX_BODY` (1 MiB) however
/// it is framed, and every size is parsed strictly (digits only) and added with checks.
/// Anything else is [`HttpError::Protocol`].
pub fn read_response(mut r: impl BufRead) -> Result<Response, HttpError> {
    let protocol = |what: &str| HttpError::Protocol(what.to_owned());
    let mut line = Vec::new();
    let Head {
        status,
        length,
        chunked,
        ..
    } = read_head(&mut r, &mut line)?;
    let body = match (chunked, length) {
        (true, Some(_)) => return Err(protocol("both chunked and Content-Length")),
        (true, None) => read_chunked(&mut r, &mut line)?,
        (false, Some(n)) => {
            if n > MAX_BODY as u64 {
                return Err(protocol("response too large"));
            }
            let mut body = Vec::new();
            (&mut r).take(n).read_to_end(&mut body)?;
            if body.len() as u64 != n {
                return Err(protocol("body cut short"));
            }
            body
        }
        (false, None) => {
            let mut body = Vec::new();
            (&mut r).take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
            if body.len() > MAX_BODY {
                return Err(protocol("response too large"));
            }
            body
        }
    };
    Ok(Response { status, body })
}

/// A response's status line and the headers the agent acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub length: Option<u64>,
    pub chunked: bool,
    /// `Content-Range: bytes START-END/TOTAL`: START, and TOTAL when it is not `*`.
    pub range_start: Option<u64>,
    pub range_total: Option<u64>,
    /// `Accept-Ranges: bytes`.
    pub accept_ranges: bool,
}

/// Reads the status line and headers, under the same bounds as [`read_response`].
pub fn read_head(r: &mut impl BufRead, line: &mut Vec<u8>) -> Result<Head, HttpError> {
    let protocol = |what: &str| HttpError::Protocol(what.to_owned());
    read_line(r, line)?;
    let status = parse_status(line).ok_or_else(|| {
        HttpError::Protocol(
            String::from_utf8_lossy(line)
                .trim()
                .chars()
                .take(80)
                .collect(),
        )
    })?;
    let mut head = Head {
        status,
        ..Head::default()
    };
    let mut headers = 0usize;
    loop {
        if read_line(r, line)? == 0 {
            return Err(protocol("headers cut short"));
        }
        let l = trim_crlf(line);
        if l.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(protocol("too many headers"));
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            return Err(protocol("a header line without a colon"));
        };
        let (name, value) = (&l[..colon], l[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or_else(|| protocol("bad Content-Length"))?;
            // Two different lengths: which one frames the body is the server's secret.
            if head.length.is_some_and(|m| m != n) {
                return Err(protocol("conflicting Content-Length headers"));
            }
            head.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(protocol("unsupported Transfer-Encoding"));
            }
            head.chunked = true;
        } else if name.eq_ignore_ascii_case(b"accept-ranges") {
            head.accept_ranges = value.eq_ignore_ascii_case(b"bytes");
        } else if name.eq_ignore_ascii_case(b"content-range") {
            let (start, total) =
                parse_content_range(value).ok_or_else(|| protocol("bad Content-Range"))?;
            head.range_start = Some(start);
            head.range_total = total;
        }
    }
    if head.chunked && head.length.is_some() {
        return Err(protocol("both chunked and Content-Length"));
    }
    Ok(head)
}

/// `bytes START-END/TOTAL` or `bytes START-END/*`.
fn parse_content_range(v: &[u8]) -> Option<(u64, Option<u64>)> {
    let rest = v.strip_prefix(b"bytes ")?;
    let dash = rest.iter().position(|&b| b == b'-')?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let start = parse_decimal(&rest[..dash])?;
    let end = parse_decimal(rest.get(dash + 1..slash)?)?;
    if end < start {
        return None;
    }
    let total = match &rest[slash + 1..] {
        b"*" => None,
        t => Some(parse_decimal(t).filter(|&t| t > end)?),
    };
    Some((start, total))
}

/// A streamed `GET` of an absolute URL: no bearer token (image servers are not apid and must
/// never see one), optionally from a byte offset (`Range: bytes=N-`).
///
/// An `https://` URL needs `tls` ([`tls_config`]); the handshake (and so the certificate
/// check) is done before the request is sent, so a server that is not trusted is said as
/// such rather than as a failed write.
pub fn get_stream(
    url: &Url,
    from: u64,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
    bearer: Option<&str>,
) -> Result<(Head, Body<BufReader<Stream>>), HttpError> {
    let addr = url
        .authority
        .to_socket_addrs()
        .map_err(|_| HttpError::Resolve(url.authority.clone()))?
        .next()
        .ok_or_else(|| HttpError::Resolve(url.authority.clone()))?;
    let tcp =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| HttpError::Connect(addr, e))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut stream = if url.tls {
        let config = tls.ok_or_else(|| {
            HttpError::Tls(format!(
                "{} is https:// but no TLS settings were given",
                url.host
            ))
        })?;
        let name = ServerName::try_from(url.server_name().to_owned())
            .map_err(|e| HttpError::Tls(format!("{:?}: {e}", url.server_name())))?;
        let mut conn = rustls::ClientConnection::new(Arc::clone(config), name)
            .map_err(|e| HttpError::Tls(e.to_string()))?;
        let mut tcp = tcp;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| HttpError::Tls(format!("handshake with {}: {e}", url.authority)))?;
        }
        Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
    } else {
        Stream::Plain(tcp)
    };
    let range = if from > 0 {
        format!("Range: bytes={from}-\r\n")
    } else {
        String::new()
    };
    let path = if url.prefix.is_empty() {
        "/"
    } else {
        &url.prefix
    };
    let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dragonfly-mage/{ver}\r\n\
         Accept-Encoding: identity\r\n{auth}{range}Connection: close\r\n\r\n",
        host = url.host,
        ver = env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(head.as_bytes())?;
    // Large reads: the body is an OS image.
    let mut r = BufReader::with_capacity(256 * 1024, stream);
    let mut line = Vec::new();
    let head = read_head(&mut r, &mut line)?;
    let body = Body::new(r, &head);
    Ok((head, body))
}

/// A response body read as a stream: `Content-Length`, chunked or until the connection
/// closes. A body that ends before its declared length is an `UnexpectedEof` error, so a
/// dropped connection is never mistaken for the end of the image.
#[derive(Debug)]
pub struct Body<R> {
    r: R,
    framing: Framing,
    line: Vec<u8>,
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    /// Bytes left in the current chunk; `None` before a size line; `Some(0)` at the end.
    Chunked(Option<u64>, bool),
    Close,
}

impl<R: BufRead> Body<R> {
    pub fn new(r: R, head: &Head) -> Self {
        let framing = if head.chunked {
            Framing::Chunked(None, false)
        } else if let Some(n) = head.length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        Self {
            r,
            framing,
            line: Vec::new(),
        }
    }
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned())
}

fn bad(e: HttpError) -> io::Error {
    match e {
        HttpError::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.framing {
                Framing::Close => return self.r.read(buf),
                Framing::Length(0) => return Ok(0),
                Framing::Length(left) => {
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = self.r.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(eof("body cut short"));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                Framing::Chunked(_, true) => return Ok(0),
                Framing::Chunked(Some(0), done) => {
                    // The CRLF after a chunk's data, then the next size line.
                    read_line(&mut self.r, &mut self.line).map_err(bad)?;
                    if !trim_crlf(&self.line).is_empty() {
                        return Err(bad(HttpError::Protocol(
                            "chunk longer than its size".into(),
                        )));
                    }
                    let _ = done;
                    self.framing = Framing::Chunked(None, false);
                }
                Framing::Chunked(None, _) => {
                    if read_line(&mut self.r, &mut self.line).map_err(bad)? == 0 {
                        return Err(eof("chunked body cut short"));
                    }
                    let l = trim_crlf(&self.line);
                    let digits = l
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    let size = parse_hex(digits)
                        .ok_or_else(|| bad(HttpError::Protocol("bad chunk size".into())))?;
                    self.framing = Framing::Chunked(Some(size), size == 0);
                }
                Framing::Chunked(Some(left), _) => {
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = self.r.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(eof("chunk cut short"));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

fn read_chunked(r: &mut impl BufRead, line: &mut Vec<u8>) -> Result<Vec<u8>, HttpError> {
    let protocol = |what: &str| HttpError::Protocol(what.to_owned());
    let mut body = Vec::new();
    loop {
        if read_line(r, line)? == 0 {
            return Err(protocol("chunked body cut short"));
        }
        let l = trim_crlf(line);
        let digits = l
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = parse_hex(digits).ok_or_else(|| protocol("bad chunk size"))?;
        if size == 0 {
            // Trailers are not read: the connection closes after this response.
            return Ok(body);
        }
        let total = (body.len() as u64)
            .checked_add(size)
            .filter(|&t| t <= MAX_BODY as u64)
            .ok_or_else(|| protocol("response too large"))?;
        (&mut *r).take(size).read_to_end(&mut body)?;
        if body.len() as u64 != total {
            return Err(protocol("chunk cut short"));
        }
        read_line(r, line)?;
        if !trim_crlf(line).is_empty() {
            return Err(protocol("chunk longer than its size"));
        }
    }
}

/// Reads one line (through `\n`) into `out`, replacing what it held; `Ok(0)` at the end of
/// the stream. A line longer than [`MAX_LINE`] is an error before it is all read.
fn read_line(r: &mut impl BufRead, out: &mut Vec<u8>) -> Result<usize, HttpError> {
    out.clear();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(out.len());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if out.len().saturating_add(take) > MAX_LINE {
            return Err(HttpError::Protocol("header line too long".into()));
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(out.len());
        }
    }
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `HTTP/1.x NNN[ reason]`.
fn parse_status(line: &[u8]) -> Option<u16> {
    let rest = trim_crlf(line).strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    if !minor.is_ascii_digit() || rest.len() < 3 || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    let code = &rest[..3];
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Decimal digits only (no sign, no spaces), at most 19 of them so it fits a `u64`.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Hex digits only, at most [`MAX_CHUNK_DIGITS`] after leading zeros.
fn parse_hex(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let significant = &v[v.iter().position(|&b| b != b'0').unwrap_or(v.len())..];
    if significant.len() > MAX_CHUNK_DIGITS {
        return None;
    }
    if significant.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(significant).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://10.99.0.1:3000").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.prefix.as_str()),
            ("10.99.0.1:3000", "")
        );
        let u = Url::parse("http://10.0.0.1/dragonfly/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.prefix.as_str()),
            ("10.0.0.1:80", "/dragonfly")
        );
        let u = Url::parse("http://[fd00::1]:3000").unwrap();
        assert_eq!(u.authority, "[fd00::1]:3000");
        let u = Url::parse("http://[fd00::1]").unwrap();
        assert_eq!(u.authority, "[fd00::1]:80");
        for bad in [
            "https://a",
            "http://",
            "http://u@h",
            "http://h/?q",
            "ftp://h",
            "http://a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn download_urls_may_be_https() {
        let u = Url::parse_download("https://images.example/debian.img.zst").unwrap();
        assert!(u.tls);
        assert_eq!(u.authority, "images.example:443");
        assert_eq!(u.server_name(), "images.example");
        let u = Url::parse_download("https://10.0.0.1:8443/x").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.server_name()),
            ("10.0.0.1:8443", "10.0.0.1")
        );
        let u = Url::parse_download("https://[fd00::1]:8443/x").unwrap();
        assert_eq!(u.server_name(), "fd00::1");
        let u = Url::parse_download("http://10.0.0.1/x").unwrap();
        assert!(!u.tls);
        // apid's base URL stays plain HTTP.
        assert!(Url::parse("https://10.0.0.1").is_err());
        assert!(Url::parse_download("ftp://10.0.0.1/x").is_err());
    }

    #[test]
    fn responses() {
        let r = read_response(&b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"[..]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        let r = read_response(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..],
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = read_response(&b"HTTP/1.0 401 Unauthorized\r\n\r\nno"[..]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (401, &b"no"[..]));
        assert!(read_response(&b"SSH-2.0-OpenSSH\r\n"[..]).is_err());
        assert!(read_response(&b"HTTP/1.1 200 OK\r\ncontent-len"[..]).is_err());
        let r = read_response(&b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"[..]);
        assert_eq!(r.unwrap().status, 204);
        let r = read_response(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok"[..],
        );
        assert_eq!(r.unwrap().body, b"ok", "the same length twice is fine");
    }

    fn refused(response: &[u8]) -> String {
        match read_response(response) {
            Err(HttpError::Protocol(why)) => why,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(response)),
        }
    }

    /// A reader that sends `head` and then `tail` forever: a server that never stops.
    fn endless(head: &'static [u8], tail: &'static [u8]) -> impl BufRead {
        BufReader::new(head.chain(Endless(tail, 0)))
    }

    struct Endless(&'static [u8], usize);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            for b in buf.iter_mut() {
                *b = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
            Ok(buf.len())
        }
    }

    #[test]
    fn endless_streams_end_in_an_error() {
        let cases: [(&[u8], &[u8], &str); 5] = [
            (b"", b"H", "header line too long"),
            (b"HTTP/1.1 200 OK\r\nX-A: ", b"a", "header line too long"),
            (b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n", "too many headers"),
            (b"HTTP/1.1 200 OK\r\n\r\n", b"body", "response too large"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"3\r\nabcdef\r\n",
                "chunk longer than its size",
            ),
        ];
        for (head, tail, why) in cases {
            match read_response(endless(head, tail)) {
                Err(HttpError::Protocol(got)) => assert_eq!(got, why),
                other => panic!("{head:?}+{tail:?}…: {other:?}"),
            }
        }
        // Chunks that each are fine but add up past the bound.
        let many = read_response(endless(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"8\r\nabcdefgh\r\n",
        ));
        assert!(
            matches!(&many, Err(HttpError::Protocol(w)) if w == "response too large"),
            "{many:?}"
        );
    }

    #[test]
    fn sizes_are_parsed_strictly_and_never_overflow() {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        for size in [
            "ffffffffffffffff",
            "10000000000000000",
            "+5",
            "-1",
            "0x5",
            "",
            " ",
            "fffff000",
        ] {
            let why = refused(format!("{chunked}{size}\r\nabcde\r\n0\r\n\r\n").as_bytes());
            assert!(
                why == "bad chunk size" || why == "response too large",
                "{size:?}: {why}"
            );
        }
        // Leading zeros are still a small number.
        let r = read_response(format!("{chunked}00000003\r\nabc\r\n0\r\n\r\n").as_bytes());
        assert_eq!(r.unwrap().body, b"abc");
        for length in [
            "+5",
            "-1",
            "5 5",
            "5, 5",
            "0x5",
            "",
            "18446744073709551616",
            "99999999999999999999",
        ] {
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\nabcde");
            assert_eq!(
                refused(response.as_bytes()),
                "bad Content-Length",
                "{length:?}"
            );
        }
        // Large but well-formed: refused before anything is allocated for it.
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n"),
            "response too large"
        );
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"),
            "conflicting Content-Length headers"
        );
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            "both chunked and Content-Length"
        );
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            "unsupported Transfer-Encoding"
        );
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            "body cut short"
        );
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
            "chunk cut short"
        );
    }

    #[test]
    fn status_lines_are_strict() {
        for bad in [
            "HTTP/1.1 20 OK",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1  200 OK",
            "HTTP/1.x 200 OK",
            "HTTP/1.1 +20 OK",
            "HTTP/2 200",
        ] {
            assert!(
                read_response(format!("{bad}\r\n\r\n").as_bytes()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            read_response(&b"HTTP/1.1 200\r\n\r\n"[..]).unwrap().status,
            200
        );
    }

    proptest::proptest! {
        /// Whatever the server sends, the client returns (never panics) and never hands back
        /// more than the bound.
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            if let Ok(r) = read_response(&bytes[..]) {
                proptest::prop_assert!(r.body.len() <= MAX_BODY);
            }
        }

        /// Hostile but HTTP-shaped: random header lines and chunk sizes around the limits.
        #[test]
        fn hostile_framing_never_panics(
            headers in proptest::collection::vec("[A-Za-z-]{1,20}: [ -~]{0,40}", 0..8),
            sizes in proptest::collection::vec("[0-9a-fA-F+ -]{0,20}", 0..6),
        ) {
            let mut text = String::from("HTTP/1.1 200 OK\r\n");
            for h in &headers {
                text.push_str(h);
                text.push_str("\r\n");
            }
            text.push_str("Transfer-Encoding: chunked\r\n\r\n");
            for size in &sizes {
                text.push_str(size);
                text.push_str("\r\nxyz\r\n");
            }
            if let Ok(r) = read_response(text.as_bytes()) {
                proptest::prop_assert!(r.body.len() <= MAX_BODY);
            }
        }

        /// A well-formed chunked body, cut anywhere, reads back whole.
        #[test]
        fn chunked_bodies_read_back(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..2000),
            cuts in proptest::collection::vec(1usize..300, 0..20),
        ) {
            let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let mut rest = &body[..];
            for cut in cuts.iter().chain(std::iter::repeat(&300)) {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
                rest = tail;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let r = read_response(&wire[..]).unwrap();
            proptest::prop_assert_eq!(r.body, body);
        }
    }

    fn stream(raw: &[u8]) -> (Head, io::Result<Vec<u8>>) {
        let mut r = BufReader::with_capacity(7, raw);
        let mut line = Vec::new();
        let head = read_head(&mut r, &mut line).unwrap();
        let mut body = Body::new(r, &head);
        let mut out = Vec::new();
        // Small reads, to cross chunk boundaries mid-read.
        let mut buf = [0u8; 3];
        loop {
            match body.read(&mut buf) {
                Ok(0) => return (head, Ok(out)),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (head, Err(e)),
            }
        }
    }

    #[test]
    fn streamed_bodies() {
        let (h, b) = stream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nAccept-Ranges: bytes\r\n\r\nhelloEXTRA",
        );
        assert_eq!(b.unwrap(), b"hello");
        assert!(h.accept_ranges);
        let (_, b) = stream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n");
        assert_eq!(b.unwrap(), b"wikipedia");
        let (_, b) = stream(b"HTTP/1.1 200 OK\r\n\r\nuntil close");
        assert_eq!(b.unwrap(), b"until close");
        // Cut short: an error, never a short image.
        let (_, b) = stream(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello");
        assert_eq!(b.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let (_, b) = stream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort");
        assert_eq!(b.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let (_, b) =
            stream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n");
        assert!(b.is_err(), "a chunk longer than its size");
        let (_, b) =
            stream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n");
        assert!(b.is_err());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range(b"bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range(b"bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range(b"bytes 200-100/1000"), None);
        assert_eq!(parse_content_range(b"bytes 0-999/999"), None);
        assert_eq!(parse_content_range(b"items 0-1/2"), None);
        assert_eq!(parse_content_range(b"bytes -5/10"), None);
        let (h, b) = stream(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 3-5/6\r\nContent-Length: 3\r\n\r\ndef");
        assert_eq!(
            (h.status, h.range_start, h.range_total),
            (206, Some(3), Some(6))
        );
        assert_eq!(b.unwrap(), b"def");
    }
}
