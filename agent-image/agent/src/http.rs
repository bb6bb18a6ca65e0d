//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`: one request per connection.
//!
//! It exists because the agent needs exactly one kind of request (a JSON POST to apid, by IP
//! address, in plain HTTP on the boot network) and the initramfs must stay small: no async
//! runtime, no TLS stack. It must never follow redirects or resolve names through NSS (the
//! binary is statically linked against glibc, whose NSS cannot load modules: see README).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The most of a response body the agent reads; a machine record is a few KiB.
const MAX_BODY: usize = 1 << 20;

/// An `http://host[:port][/prefix]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port` as written (port defaulted to 80).
    pub authority: String,
    /// The `Host` header value.
    pub host: String,
    /// Path prefix without a trailing slash (empty for the root).
    pub prefix: String,
}

impl Url {
    /// Parses a plain-HTTP base URL. Refuses `https://`, user info, queries and fragments.
    pub fn parse(s: &str) -> Result<Self, HttpError> {
        let bad = || HttpError::BadUrl(s.to_owned());
        let rest = s.strip_prefix("http://").ok_or_else(bad)?;
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
        } else {
            format!("{hostport}:80")
        };
        Ok(Self {
            authority,
            host: hostport.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
        })
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

/// Reads one response (status line, headers, then a `Content-Length`, chunked or
/// until-close body).
pub fn read_response(mut r: impl BufRead) -> Result<Response, HttpError> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Protocol(line.trim().chars().take(80).collect()))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(HttpError::Protocol("headers cut short".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| HttpError::Protocol("bad chunk size".into()))?;
            if size == 0 {
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(HttpError::Protocol("response too large".into()));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(HttpError::Protocol("response too large".into()));
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.take(MAX_BODY as u64).read_to_end(&mut body)?;
    }
    Ok(Response { status, body })
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
    }
}
