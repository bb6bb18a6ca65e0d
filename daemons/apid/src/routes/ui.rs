//! The web UI: one static page, its script and its style sheet, compiled into the binary (no
//! CDN: a provisioning network often has no internet).
//!
//! All three are public (they contain no data; everything they show comes from the
//! authenticated API) and are served with a strict Content-Security-Policy: no inline script
//! or style (`'unsafe-inline'` nowhere), no third-party origin, no framing. The script builds
//! every element with `textContent`, never HTML, so a value an agent sent (a host name, a disk
//! model, a console line) is always shown as text. See `ui/app.js`.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");
/// The policy of every UI response. `style-src 'self'`: the style sheet only; the script sets
/// a progress bar's width through the CSSOM, which CSP allows, never a `style` attribute.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /`: the UI's page.
pub async fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

/// `GET /ui/app.js`: the UI's script.
pub async fn app_js() -> Response {
    page(APP_JS, "text/javascript; charset=utf-8")
}

/// `GET /ui/app.css`: the UI's style sheet.
pub async fn app_css() -> Response {
    page(APP_CSS, "text/css; charset=utf-8")
}
