//! apid's API over HTTP: one request per call, errors turned into [`CliError`]s that keep
//! apid's own words.
//!
//! The client speaks JSON only and keeps answers as `serde_json::Value`: `-o json` prints
//! what apid sent, unchanged, and a newer apid's extra fields never break an older client.

use std::path::Path;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, COOKIE, HeaderName, HeaderValue, ORIGIN};
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Bytes;
use serde_json::Value;

use crate::error::CliError;
use crate::http::{Endpoint, Streaming};

/// How a request proves who sends it.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// `Authorization: Bearer dft_…`.
    Token(String),
    /// A login session's cookie (only between `login` and the token it creates). apid
    /// demands a same-origin `Origin` of state-changing requests carrying a cookie (its CSRF
    /// check), so these send `Origin: <base>`.
    Session(String),
}

/// A connection to one apid.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    auth: Auth,
    timeout: Duration,
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Client {
    /// A client for `base` (`scheme://host:port`), trusting the host's CAs and `ca_file`.
    ///
    /// # Errors
    /// [`CliError::Io`] when `ca_file` cannot be read, [`CliError::Usage`] when it holds no
    /// certificate or the URL cannot be used.
    pub fn new(
        base: &str,
        auth: Auth,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, CliError> {
        Ok(Self {
            endpoint: Endpoint::new(base, ca_file)?,
            auth,
            timeout,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        self.endpoint.base()
    }

    /// The same server with other credentials.
    pub fn with_auth(&self, auth: Auth) -> Self {
        Self {
            endpoint: self.endpoint.clone(),
            auth,
            timeout: self.timeout,
        }
    }

    fn headers(
        &self,
        accept: &'static str,
        json_body: bool,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, CliError> {
        let mut h = vec![
            (ACCEPT, HeaderValue::from_static(accept)),
            (
                http::header::USER_AGENT,
                HeaderValue::from_static(concat!("dragonfly-cli/", env!("CARGO_PKG_VERSION"))),
            ),
        ];
        if json_body {
            h.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        }
        let value = |v: String| {
            let mut v = HeaderValue::from_str(&v).map_err(|_| {
                CliError::NotLoggedIn("the token cannot go in an HTTP header".into())
            })?;
            v.set_sensitive(true);
            Ok::<_, CliError>(v)
        };
        match &self.auth {
            Auth::None => {}
            Auth::Token(t) => h.push((AUTHORIZATION, value(format!("Bearer {t}"))?)),
            Auth::Session(cookie) => {
                h.push((COOKIE, value(cookie.clone())?));
                h.push((
                    ORIGIN,
                    HeaderValue::from_str(self.base())
                        .map_err(|e| CliError::Usage(e.to_string()))?,
                ));
            }
        }
        Ok(h)
    }

    /// `method path` with an optional JSON body: the whole answer, whatever its status.
    ///
    /// # Errors
    /// [`CliError::Unreachable`] without an answer.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        let headers = self.headers("application/json", body.is_some())?;
        let body = body.map(|b| b.to_string().into_bytes());
        let answer = self
            .endpoint
            .send(method, path, headers, body, self.timeout)
            .await?;
        let (status, headers) = (answer.status, answer.headers.clone());
        let body = tokio::time::timeout(self.timeout, answer.bytes())
            .await
            .map_err(|_| "the answer did not end in time".to_owned())
            .and_then(|r| r)
            .map_err(|detail| CliError::Unreachable {
                url: self.base().to_owned(),
                detail,
            })?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// `method path` with an optional JSON body; the answer's JSON (`Null` when it has
    /// none), or apid's error.
    ///
    /// # Errors
    /// [`CliError::Api`] for any non-2xx answer, [`CliError::Unreachable`] without one.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let a = self.raw(method.clone(), path, body).await?;
        if !a.status.is_success() {
            return Err(api_error(&method, path, a.status, &a.body));
        }
        if a.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&a.body).map_err(|e| CliError::Protocol {
            what: format!("{method} {path}"),
            detail: format!("not JSON: {e}"),
        })
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::GET, path, None).await
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn delete(&self, path: &str) -> Result<(), CliError> {
        self.call(Method::DELETE, path, None).await.map(|_| ())
    }

    /// `GET path` as a Server-Sent Events stream, with `Last-Event-ID` when resuming.
    ///
    /// # Errors
    /// [`CliError::Api`] for a non-2xx answer, [`CliError::Unreachable`] without one.
    pub async fn events(&self, path: &str, last_id: Option<&str>) -> Result<Streaming, CliError> {
        let mut headers = self.headers("text/event-stream", false)?;
        if let Some(id) = last_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.push((HeaderName::from_static("last-event-id"), id));
        }
        let answer = self
            .endpoint
            .send(Method::GET, path, headers, None, self.timeout)
            .await?;
        if !answer.status.is_success() {
            let status = answer.status;
            let body = answer.bytes().await.unwrap_or_default();
            return Err(api_error(&Method::GET, path, status, &body));
        }
        Ok(answer)
    }
}

/// apid's error answer as a [`CliError::Api`]: its `{"error", "message"}` body when it sent
/// one, else the status's reason and the start of the body.
pub fn api_error(method: &Method, path: &str, status: StatusCode, body: &[u8]) -> CliError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text: String = text.chars().take(200).collect();
        let reason = status.canonical_reason().unwrap_or("error");
        if text.trim().is_empty() {
            reason.to_owned()
        } else {
            format!("{reason}: {}", text.trim())
        }
    });
    CliError::Api {
        method: method.to_string(),
        path: path.to_owned(),
        status: status.as_u16(),
        code: field("error"),
        message,
    }
}

/// `segment` percent-encoded for one path segment (machine and template names are plain
/// ASCII, but a typo must not turn into another path).
pub fn segment(segment: &str) -> String {
    if segment == "." || segment == ".." {
        // A URL parser would resolve them (`/api/machines/..` is `/api/`).
        return segment.replace('.', "%2E");
    }
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `value` encoded for a query string.
pub fn query_value(value: &str) -> String {
    segment(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_apids_words() {
        let e = api_error(
            &Method::POST,
            "/api/machines/x/provision",
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":"unprocessable","message":"template: no such template \"deb\""}"#,
        );
        assert_eq!(
            e.to_string(),
            "POST /api/machines/x/provision: 422 template: no such template \"deb\""
        );
        assert_eq!(e.exit_code(), 5);
        let e = api_error(
            &Method::GET,
            "/x",
            StatusCode::BAD_GATEWAY,
            b"<html>proxy</html>",
        );
        assert_eq!(e.to_string(), "GET /x: 502 Bad Gateway: <html>proxy</html>");
        let e = api_error(&Method::GET, "/x", StatusCode::NOT_FOUND, b"");
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "GET /x: 404 Not Found");
    }

    #[test]
    fn segments_cannot_escape_their_place() {
        assert_eq!(
            segment("CensusAbleQualityParent"),
            "CensusAbleQualityParent"
        );
        assert_eq!(segment("../tokens"), "..%2Ftokens");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(query_value("rack=r1,role=gpu"), "rack%3Dr1%2Crole%3Dgpu");
    }
}
