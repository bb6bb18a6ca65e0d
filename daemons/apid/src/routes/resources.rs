//! `/apis/dragonfly.computer/v1`: the inventory as Kubernetes-shaped documents.
//!
//! The same rows as `/api/machines`, rendered as `Hardware` resources in JSON or, when the
//! client's `Accept` asks for it, YAML — so `curl … | kubectl apply -f -` style tooling and
//! GitOps repositories can consume them directly.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use dragonfly_core::resource::{API_VERSION, Hardware};
use dragonfly_store::machines::Filter;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use crate::AppState;
use crate::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::routes::machines::{page_size, parse_selector};

/// Whether the client prefers YAML. JSON is the default, as in Kubernetes.
fn wants_yaml(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|m| m.split(';').next().unwrap_or("").trim())
        .find(|m| {
            matches!(
                *m,
                "application/yaml" | "application/x-yaml" | "text/yaml" | "application/json"
            )
        })
        .is_some_and(|m| m != "application/json")
}

pub(crate) fn render<T: Serialize>(headers: &HeaderMap, doc: &T) -> Result<Response, ApiError> {
    if wants_yaml(headers) {
        let text = serde_yaml_ng::to_string(doc)
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("rendering YAML")))?;
        let mut r = text.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        );
        Ok(r)
    } else {
        Ok(axum::Json(doc).into_response())
    }
}

/// A `HardwareList` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareList {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ListMeta,
    pub items: Vec<Hardware>,
}

/// `metadata` of a list: where the next page starts.
#[derive(Debug, Serialize)]
pub struct ListMeta {
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
}

/// Query of the list endpoint, with Kubernetes' parameter names.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ResourceListQuery {
    /// Comma-separated `key=value` pairs that must all match.
    pub label_selector: Option<String>,
    /// Page size, 1–500 (default 100).
    pub limit: Option<usize>,
    /// `metadata.continue` of the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    pub continue_: Option<String>,
}

/// Lists machines as `Hardware` documents (JSON, or YAML with `Accept: application/yaml`).
#[utoipa::path(get, path = "/apis/dragonfly.computer/v1/hardware", tag = "resources",
    params(ResourceListQuery),
    responses((status = 200, description = "A HardwareList", content(
        (Object = "application/json"), (String = "application/yaml"))),
        (status = 401, body = ErrorBody)))]
pub async fn list_hardware(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ResourceListQuery>,
) -> Result<Response, ApiError> {
    let filter = Filter {
        state: None,
        labels: q
            .label_selector
            .as_deref()
            .map(parse_selector)
            .transpose()?
            .unwrap_or_default(),
    };
    let limit = page_size(q.limit)?;
    let page = state.db.machines().list(filter, q.continue_, limit).await?;
    let doc = HardwareList {
        api_version: API_VERSION,
        kind: "HardwareList",
        metadata: ListMeta {
            continue_: page.next_after,
        },
        items: page.items.iter().map(Hardware::from).collect(),
    };
    render(&headers, &doc)
}

/// Gets one machine as a `Hardware` document, by memorable name (or id).
#[utoipa::path(get, path = "/apis/dragonfly.computer/v1/hardware/{name}", tag = "resources",
    params(("name" = String, Path, description = "Memorable name (or id)")),
    responses((status = 200, description = "A Hardware document", content(
        (Object = "application/json"), (String = "application/yaml"))),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_hardware(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    if name.len() > 256 {
        return Err(ApiError::NotFound("machine"));
    }
    let m = state
        .db
        .machines()
        .get_by_id_or_name(&name)
        .await?
        .ok_or(ApiError::NotFound("machine"))?;
    render(&headers, &Hardware::from(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, v.parse().unwrap());
            m
        };
        assert!(!wants_yaml(&HeaderMap::new()));
        assert!(wants_yaml(&h("application/yaml")));
        assert!(wants_yaml(&h("text/html, application/x-yaml;q=0.9")));
        assert!(!wants_yaml(&h("application/json, application/yaml")));
        assert!(!wants_yaml(&h("*/*")));
    }
}
