//! The OpenAPI document is a golden file, and every route in it demands credentials except
//! the explicit allow-list.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::Server;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openapi.json")
}

#[test]
fn openapi_document_matches_the_golden_file() {
    let doc = dragonfly_apid::openapi::document();
    let v: Value = serde_json::from_str(&doc).unwrap();
    assert!(
        v["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1"
    );
    let path = golden_path();
    if std::env::var_os("DRAGONFLY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        golden == doc,
        "the OpenAPI document changed; review it and run with DRAGONFLY_UPDATE_GOLDEN=1 to update {}",
        path.display()
    );
}

/// Every (method, path) in the document, with path parameters filled in.
fn routes(doc: &Value) -> Vec<(reqwest::Method, String, String)> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let concrete = template
                .replace("{id}", "0196d6a2-0000-7000-8000-000000000001")
                .replace("{name}", "SomeMachine");
            out.push((m, template.clone(), concrete));
        }
    }
    out
}

#[tokio::test]
async fn every_documented_route_requires_credentials_except_the_allow_list() {
    let s = Server::start().await;
    let doc: Value = serde_json::from_str(&dragonfly_apid::openapi::document()).unwrap();
    let routes = routes(&doc);
    assert!(routes.len() >= 14, "{} routes", routes.len());
    let mut public = Vec::new();
    for (method, template, path) in &routes {
        let is_public = dragonfly_apid::auth::is_public(method, template);
        let mut req = s.http.request(method.clone(), s.url(path));
        if method == reqwest::Method::POST
            || method == reqwest::Method::PATCH
            || method == reqwest::Method::PUT
        {
            req = req.json(&serde_json::json!({}));
        }
        let status = req.send().await.unwrap().status();
        // The agent's routes are on the allow-list because they authenticate the agent's
        // boot token themselves: without one they refuse all the same.
        let agent_route = matches!(
            template.as_str(),
            "/api/machines/register"
                | "/api/agent/instructions"
                | "/api/agent/log"
                | "/api/agent/renew"
                | "/api/agent/workflow"
                | "/api/agent/report"
        );
        if is_public && !agent_route {
            assert_ne!(status, 401, "{method} {template} should be public");
            public.push(format!("{method} {template}"));
        } else {
            assert_eq!(status, 401, "{method} {template} without credentials");
        }
    }
    public.sort();
    assert_eq!(public, ["GET /api/health", "POST /api/auth/login"]);
}

#[tokio::test]
async fn wrong_credentials_are_as_good_as_none() {
    let s = Server::start().await;
    let url = s.url("/api/machines");
    let boot = crate::common::token_for(&s.db, crate::common::mac(1)).await;
    for (header, value) in [
        ("authorization", "Bearer dft_not-a-real-token".to_owned()),
        ("authorization", "Bearer ".to_owned()),
        ("authorization", format!("Bearer {boot}")),
        ("authorization", "Basic YWRtaW46YWRtaW4=".to_owned()),
        ("cookie", "dragonfly_session=forged".to_owned()),
        ("cookie", format!("dragonfly_session={}", "x".repeat(4000))),
    ] {
        let r = s
            .http
            .get(&url)
            .header(header, &value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{header}: {value:.40}");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    // Unknown routes do not tell an anonymous caller whether they exist.
    let r = s
        .http
        .get(s.url("/api/secret-admin-panel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
