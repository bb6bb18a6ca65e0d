//! apid's metrics: API requests by listener, method, route template and status, with a
//! latency histogram, counted by one middleware layer around each listener's router and
//! registered in the frame's registry ([`dragonfly_runtime::Metrics`]).
//!
//! The route is the template the router matched (axum's [`MatchedPath`]: `/api/machines/{id}`),
//! never the raw path, so the number of series is bounded by the routes in the code whatever
//! clients ask; a request no route matched counts as `unmatched`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use dragonfly_runtime::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Latency buckets, in seconds: most answers take milliseconds; a login (Argon2) a few
/// hundred; an image check longer.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A request's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `operator` or `agent`.
    pub listener: &'static str,
    /// `GET`, `POST`, … or `other`.
    pub method: &'static str,
    /// The matched route template, or `unmatched`.
    pub route: String,
    pub status: u16,
}

/// The latency's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: &'static str,
    pub route: String,
}

/// apid's request metrics for one listener; clones count into the same series.
#[derive(Debug, Clone)]
pub struct ApidMetrics {
    listener: &'static str,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

impl ApidMetrics {
    /// The metrics, registered in `registry`, for the listener `operator` and `agent` (see
    /// [`ApidMetrics::for_listener`]).
    pub fn register(registry: &Metrics) -> Self {
        let m = Self {
            listener: "operator",
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        };
        registry.register(
            "http_requests",
            "API requests answered, by listener, method, route template and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an API request (until its response head), by listener and route \
             template",
            m.duration.clone(),
        );
        m
    }

    /// The same series, labelled with another listener.
    #[must_use]
    pub fn for_listener(&self, listener: &'static str) -> Self {
        Self {
            listener,
            ..self.clone()
        }
    }
}

/// The middleware: `axum::middleware::from_fn_with_state(metrics, metrics::track)`.
pub async fn track(State(metrics): State<ApidMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_name(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            listener: metrics.listener,
            method,
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .duration
        .get_or_create(&RouteLabels {
            listener: metrics.listener,
            route,
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

fn method_name(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use axum::Router;
    use axum::routing::get;

    use super::*;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_never_by_path() {
        let registry = Metrics::new("apid");
        let metrics = ApidMetrics::register(&registry);
        let app = Router::new()
            .route("/api/machines/{id}", get(|| async { "a machine" }))
            .layer(axum::middleware::from_fn_with_state(
                metrics.for_listener("agent"),
                track,
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        for path in ["/api/machines/a", "/api/machines/b", "/no/such/route"] {
            reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        }
        let text = registry.encode();
        assert!(
            text.contains(
                "dragonfly_apid_http_requests_total{listener=\"agent\",method=\"GET\",\
                 route=\"/api/machines/{id}\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("route=\"unmatched\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(!text.contains("/api/machines/a"), "{text}");
        assert!(!text.contains("/no/such/route"), "{text}");
    }
}
