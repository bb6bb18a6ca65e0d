//! Cross-site request forgery: a state-changing request that a browser sent with the
//! operator's session cookie must come from apid's own origin.
//!
//! `SameSite=Strict` is not enough: "site" ignores the port and the scheme, so a page served
//! by anything else on apid's host — ipxed on :8080, which serves what the boot path tells it
//! to — is same-site, and the browser attaches the cookie to its requests. A JSON body is not
//! enough either: logout has no body, and a simple cross-site `fetch` needs no preflight for
//! it. So [`check`] demands, of every POST/PUT/PATCH/DELETE carrying a session cookie:
//! - an `Origin` equal to the request's own (scheme, `Host`, port), or
//! - without `Origin`, `Sec-Fetch-Site: same-origin` (or `none`: the operator typed it).
//!
//! Browsers send `Origin` with every non-GET `fetch`, same-origin included, so the web UI
//! passes unchanged. A request with neither header is refused: only a non-browser sends that,
//! and it should use an API token. Bearer-token requests are not checked: a browser never
//! attaches a token by itself (no ambient credential, no forgery). The scheme is `http`
//! unless the request carries [`dragonfly_http::Secure`] (set by the listener that terminated
//! TLS) or a trusted proxy
//! said `X-Forwarded-Proto: https`.
//!
//! Pure: no I/O, no state. It must never accept a request because a header is malformed.

use axum::http::{HeaderMap, Method, header};

/// Whether `method` can change state (everything but the safe methods).
pub fn changes_state(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Why a request was refused (for the log; the client gets a plain 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CrossOrigin {
    #[error("Origin does not match the request's host")]
    OriginMismatch,
    #[error("Sec-Fetch-Site says the request is cross-origin")]
    CrossSite,
    #[error("neither Origin nor Sec-Fetch-Site: not provably same-origin")]
    Unproven,
}

/// (scheme, host, port) of an origin, host lower-cased.
fn split_origin(origin: &str) -> Option<(&str, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = match scheme {
        "http" => "http",
        "https" => "https",
        _ => return None,
    };
    // An origin is scheme://host[:port] and nothing else.
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = split_authority(rest, default_port(scheme))?;
    Some((scheme, host, port))
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// host[:port], IPv6 literals in brackets.
fn split_authority(authority: &str, default: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", h.to_ascii_lowercase()), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    let port = match port {
        None => default,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    Some((host, port))
}

/// Checks a state-changing, cookie-authenticated request (see the module documentation).
/// `scheme` is the one the request arrived by (`"http"` or `"https"`); `host` the `Host` it
/// was sent to (a trusted proxy's `X-Forwarded-Host` where one forwards it).
pub fn check(headers: &HeaderMap, scheme: &str, host: Option<&str>) -> Result<(), CrossOrigin> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = host.and_then(|h| split_authority(h.trim(), default_port(scheme)));
        let theirs = origin.to_str().ok().and_then(split_origin);
        return match (theirs, own) {
            (Some((s, h, p)), Some((oh, op))) if s == scheme && h == oh && p == op => Ok(()),
            _ => Err(CrossOrigin::OriginMismatch),
        };
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin" | "none") => Ok(()),
        Some(_) => Err(CrossOrigin::CrossSite),
        None => Err(CrossOrigin::Unproven),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_passes() {
        let host = Some("10.99.0.1:3000");
        let ok = |h: HeaderMap| check(&h, "http", host);
        assert_eq!(ok(with(&[("origin", "http://10.99.0.1:3000")])), Ok(()));
        assert_eq!(ok(with(&[("sec-fetch-site", "same-origin")])), Ok(()));
        assert_eq!(ok(with(&[("sec-fetch-site", "none")])), Ok(()));
        // Case and default ports do not matter.
        assert_eq!(
            check(
                &with(&[("origin", "https://Ops.Example")]),
                "https",
                Some("ops.example:443")
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &with(&[("origin", "http://[fd00::1]:3000")]),
                "http",
                Some("[FD00::1]:3000")
            ),
            Ok(())
        );
    }

    #[test]
    fn other_origins_are_refused() {
        let host = Some("10.99.0.1:3000");
        let refused = |h: HeaderMap| check(&h, "http", host).unwrap_err();
        // ipxed's port on the same host: same-site, not same-origin.
        assert_eq!(
            refused(with(&[("origin", "http://10.99.0.1:8080")])),
            CrossOrigin::OriginMismatch
        );
        assert_eq!(
            refused(with(&[("origin", "http://10.99.0.1")])),
            CrossOrigin::OriginMismatch
        );
        assert_eq!(
            refused(with(&[("origin", "https://10.99.0.1:3000")])),
            CrossOrigin::OriginMismatch,
            "another scheme"
        );
        assert_eq!(
            refused(with(&[("origin", "http://evil.example")])),
            CrossOrigin::OriginMismatch
        );
        // Origin wins over a Sec-Fetch-Site that claims otherwise.
        assert_eq!(
            refused(with(&[
                ("origin", "null"),
                ("sec-fetch-site", "same-origin")
            ])),
            CrossOrigin::OriginMismatch
        );
        for junk in [
            "http://10.99.0.1:3000/",
            "http://u@10.99.0.1:3000",
            "http://10.99.0.1:x",
        ] {
            assert_eq!(
                refused(with(&[("origin", junk)])),
                CrossOrigin::OriginMismatch,
                "{junk}"
            );
        }
        assert_eq!(
            refused(with(&[("sec-fetch-site", "same-site")])),
            CrossOrigin::CrossSite
        );
        assert_eq!(
            refused(with(&[("sec-fetch-site", "cross-site")])),
            CrossOrigin::CrossSite
        );
        assert_eq!(refused(HeaderMap::new()), CrossOrigin::Unproven);
        // No Host to compare with: never a match.
        assert_eq!(
            check(&with(&[("origin", "http://10.99.0.1:3000")]), "http", None),
            Err(CrossOrigin::OriginMismatch)
        );
    }

    #[test]
    fn only_unsafe_methods_change_state() {
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(changes_state(&m));
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(!changes_state(&m));
        }
    }
}
