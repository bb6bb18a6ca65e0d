//! The HTTP API end to end over a real socket: registration, inventory, resources, operators.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, config, mac, mint, report, token_for};

async fn register(s: &Server, macs: &[u8]) -> (StatusCode, Value) {
    let r = s
        .http
        .post(s.url("/api/machines/register"))
        .bearer_auth(token_for(&s.db, mac(macs[0])).await)
        .json(&report(macs))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn registration_is_authenticated_by_boot_token_and_idempotent() {
    let s = Server::start().await;
    let url = s.url("/api/machines/register");

    let none = s.http.post(&url).json(&report(&[1])).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let forged = s
        .http
        .post(&url)
        .bearer_auth(mint(&[0x11; 32], mac(1)))
        .json(&report(&[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let other_machine = s
        .http
        .post(&url)
        .bearer_auth(token_for(&s.db, mac(9)).await)
        .json(&report(&[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(other_machine.status(), 403);
    assert_eq!(s.machine_count().await, 0);

    let (status, first) = register(&s, &[1, 2]).await;
    assert_eq!(status, 201);
    assert_eq!(first["state"], "Registered");
    assert_eq!(first["resourceVersion"], 1);
    assert_eq!(first["name"], dragonfly_core::names::memorable_name(mac(1)));
    // The agent boots again and reports, MACs listed in another order: same machine.
    let (status, again) = register(&s, &[2, 1]).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["resourceVersion"], 2);
    assert_eq!(s.machine_count().await, 1);

    // An operator may register a machine by hand with their own credentials.
    let cookie = s.admin_cookie().await;
    let r = s
        .http
        .post(&url)
        .header("cookie", &cookie)
        .json(&report(&[3]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(s.machine_count().await, 2);
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_writes_nothing() {
    let s = Server::start_with(config(|c| {
        c.http = Some(dragonfly_http::RawHttpConfig {
            max_body_bytes: Some(4096),
            ..Default::default()
        });
    }))
    .await;
    let url = s.url("/api/machines/register");
    let token = token_for(&s.db, mac(1)).await;
    let mut unknown_field = report(&[1]);
    unknown_field["colour"] = json!("blue");
    let mut bad_mac = report(&[1]);
    bad_mac["macs"] = json!(["52:54:00:aa:00:01", "not-a-mac"]);
    let mut broadcast = report(&[1]);
    broadcast["macs"] = json!(["52:54:00:aa:00:01", "ff:ff:ff:ff:ff:ff"]);
    let mut no_macs = report(&[1]);
    no_macs["macs"] = json!([]);
    let mut huge = report(&[1]);
    huge["cpu"]["model"] = json!("x".repeat(8192));

    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "malformed JSON",
            s.http
                .post(&url)
                .header("content-type", "application/json")
                .body("{\"macs\": [")
                .bearer_auth(&token),
            400,
        ),
        (
            "not JSON",
            s.http
                .post(&url)
                .header("content-type", "text/plain")
                .body("hello")
                .bearer_auth(&token),
            415,
        ),
        (
            "unknown field",
            s.http.post(&url).json(&unknown_field).bearer_auth(&token),
            422,
        ),
        (
            "invalid MAC",
            s.http.post(&url).json(&bad_mac).bearer_auth(&token),
            422,
        ),
        (
            "broadcast MAC",
            s.http.post(&url).json(&broadcast).bearer_auth(&token),
            422,
        ),
        (
            "no MACs",
            s.http
                .post(&url)
                .json(&no_macs)
                .bearer_auth(token_for(&s.db, mac(1)).await),
            403,
        ),
        (
            "huge body",
            s.http.post(&url).json(&huge).bearer_auth(&token),
            413,
        ),
        (
            "wrong type",
            s.http
                .post(&url)
                .json(&json!({"macs": "52:54:00:aa:00:01"}))
                .bearer_auth(&token),
            422,
        ),
    ];
    for (what, req, want) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{what}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}: error body is JSON"
        );
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{what}: {body}"
        );
    }
    assert_eq!(s.machine_count().await, 0, "nothing was written");

    // Operator endpoints refuse bad input the same way.
    let cookie = s.admin_cookie().await;
    let (_, m) = register(&s, &[1]).await;
    let id = m["id"].as_str().unwrap();
    let patch = |body: Value| {
        s.http
            .patch(s.url(&format!("/api/machines/{id}")))
            .header("cookie", &cookie)
            .json(&body)
    };
    for (body, want) in [
        (json!({"labels": {"bad key!": "x"}}), 422),
        (json!({"hostname": "-nope"}), 422),
        (json!({"owner": "me"}), 422),
    ] {
        assert_eq!(
            patch(body.clone()).send().await.unwrap().status().as_u16(),
            want,
            "{body}"
        );
    }
    let r = s
        .http
        .get(s.url("/api/machines?limit=0"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .http
        .get(s.url("/api/machines?state=Sleeping"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let unchanged: Value = s.get_json(&format!("/api/machines/{id}"), &cookie).await;
    assert_eq!(unchanged["resourceVersion"], 1);
}

#[tokio::test]
async fn inventory_lists_filters_pages_and_finds_by_name() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let mut names = Vec::new();
    for i in 1..=7u8 {
        let (_, m) = register(&s, &[i]).await;
        let rack = if i <= 3 { "r1" } else { "r2" };
        let r = s
            .http
            .patch(s.url(&format!("/api/machines/{}", m["name"].as_str().unwrap())))
            .header("cookie", &cookie)
            .json(&json!({"labels": {"rack": rack, "dragonfly.computer/role": "worker"}, "hostname": format!("node-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        names.push(m["name"].as_str().unwrap().to_owned());
    }
    names.sort();
    let get = |path: String| {
        let s = &s;
        let cookie = &cookie;
        async move {
            let r = s
                .http
                .get(s.url(&path))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    // Pages of 3, in name order, covering everything once.
    let mut seen = Vec::new();
    let mut path = "/api/machines?limit=3".to_owned();
    loop {
        let page = get(path.clone()).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|m| m["name"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => path = format!("/api/machines?limit=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, names);
    let r1 =
        get("/api/machines?labelSelector=rack%3Dr1,dragonfly.computer/role%3Dworker".into()).await;
    assert_eq!(r1["items"].as_array().unwrap().len(), 3);
    let registered = get("/api/machines?state=Registered".into()).await;
    assert_eq!(registered["items"].as_array().unwrap().len(), 7);
    let ready = get("/api/machines?state=Ready".into()).await;
    assert!(ready["items"].as_array().unwrap().is_empty());

    let by_name = get(format!("/api/machines/{}", names[0])).await;
    let by_id = get(format!("/api/machines/{}", by_name["id"].as_str().unwrap())).await;
    assert_eq!(by_name, by_id);
    assert!(by_name["hostname"].as_str().unwrap().starts_with("node-"));
    let missing = s
        .http
        .get(s.url("/api/machines/NoSuchMachineHere"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn updates_and_deletes_respect_resource_version() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let (_, m) = register(&s, &[1]).await;
    let url = s.url(&format!("/api/machines/{}", m["id"].as_str().unwrap()));
    let v1 = m["resourceVersion"].as_i64().unwrap();

    let ok = s
        .http
        .patch(&url)
        .header("cookie", &cookie)
        .json(&json!({"hostname": "web-1", "resourceVersion": v1}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let m2: Value = ok.json().await.unwrap();
    assert_eq!(m2["hostname"], "web-1");
    assert_eq!(m2["resourceVersion"], v1 + 1);

    let stale = s
        .http
        .patch(&url)
        .header("cookie", &cookie)
        .json(&json!({"hostname": "web-2", "resourceVersion": v1}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let clear = s
        .http
        .patch(&url)
        .header("cookie", &cookie)
        .json(&json!({"hostname": null}))
        .send()
        .await
        .unwrap();
    let m3: Value = clear.json().await.unwrap();
    assert!(m3.get("hostname").is_none(), "{m3}");

    let stale_delete = s
        .http
        .delete(format!("{url}?resourceVersion={v1}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stale_delete.status(), 409);
    let delete = s
        .http
        .delete(format!("{url}?resourceVersion={}", m3["resourceVersion"]))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
    let gone = s
        .http
        .get(&url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    // Rediscovered after deletion: same memorable name, new identity.
    let (status, back) = register(&s, &[1]).await;
    assert_eq!(status, 201);
    assert_eq!(back["name"], m["name"]);
    assert_ne!(back["id"], m["id"]);
}

#[tokio::test]
async fn hardware_resources_in_json_and_yaml() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let (_, m) = register(&s, &[1]).await;
    register(&s, &[2]).await;
    let name = m["name"].as_str().unwrap();

    let r = s
        .http
        .get(s.url("/apis/dragonfly.computer/v1/hardware"))
        .header("cookie", &cookie)
        .header("accept", "application/yaml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/yaml");
    let list: Value = serde_yaml_ng::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(list["apiVersion"], "dragonfly.computer/v1");
    assert_eq!(list["kind"], "HardwareList");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    let r = s
        .http
        .get(s.url(&format!("/apis/dragonfly.computer/v1/hardware/{name}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let doc: dragonfly_core::resource::Hardware = r.json().await.unwrap();
    doc.check_type("Hardware").unwrap();
    assert_eq!(doc.metadata.name, name);
    assert_eq!(
        doc.metadata.uid.unwrap().to_string(),
        m["id"].as_str().unwrap()
    );
    assert_eq!(doc.spec.hardware.macs, vec![mac(1)]);
    assert_eq!(
        doc.status.unwrap().state,
        dragonfly_core::MachineState::Registered
    );

    let page: Value = s
        .get_json("/apis/dragonfly.computer/v1/hardware?limit=1", &cookie)
        .await;
    let cont = page["metadata"]["continue"].as_str().unwrap();
    let rest: Value = s
        .get_json(
            &format!("/apis/dragonfly.computer/v1/hardware?limit=1&continue={cont}"),
            &cookie,
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["metadata"].get("continue").is_none());
}

#[tokio::test]
async fn sessions_and_api_tokens() {
    let s = Server::start_with(config(|c| c.secure_cookies = Some(true))).await;
    let (user, password) = s.add_admin("ops").await;

    let wrong = s
        .http
        .post(s.url("/api/auth/login"))
        .json(&json!({"username": user, "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let nobody = s
        .http
        .post(s.url("/api/auth/login"))
        .json(&json!({"username": "nobody", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), 401);
    // A wrong password holds the account back for a second (per-account backoff), even for
    // the right one: a person retyping takes longer than that.
    let held = s
        .http
        .post(s.url("/api/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 429);
    assert_eq!(held.headers()["retry-after"], "1");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let r = s
        .http
        .post(s.url("/api/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let me: Value = s.get_json("/api/auth/me", &cookie).await;
    assert_eq!(me["username"], "ops");

    let created: Value = s
        .http
        .post(s.url("/api/tokens"))
        .header("cookie", &cookie)
        .json(&json!({"name": "ci", "expiresInDays": 30}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("dft_"));
    let with_token = s
        .http
        .get(s.url("/api/machines"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let listed: Value = s
        .http
        .get(s.url("/api/tokens"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&token),
        "a token's secret is shown only once"
    );
    assert!(listed[0]["lastUsed"].is_string());

    // The token's secret is not stored: not in the database file, nor in its write-ahead log
    // (which holds every page written since the last checkpoint).
    let mut wal = s.store.path.clone().into_os_string();
    wal.push("-wal");
    let mut stored = std::fs::read(&s.store.path).unwrap();
    stored.extend(std::fs::read(&wal).unwrap_or_default());
    assert!(
        !stored.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token's secret is in the database"
    );

    let revoke = s
        .http
        .delete(s.url(&format!("/api/tokens/{}", created["id"].as_str().unwrap())))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 204);
    let revoked = s
        .http
        .get(s.url("/api/machines"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 401);

    let out = s
        .http
        .post(s.url("/api/auth/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = s
        .http
        .get(s.url("/api/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}

#[tokio::test]
async fn login_is_rate_limited_per_address() {
    let s = Server::start_with(config(|c| c.login_attempts_per_minute = Some(3))).await;
    let (user, password) = s.add_admin("ops").await;
    let attempt = |name: &str, pw: &str| {
        s.http
            .post(s.url("/api/auth/login"))
            .json(&json!({"username": name, "password": pw}))
            .send()
    };
    // Three names, so that only the address's limit is at work (not an account's backoff).
    for i in 0..3 {
        assert_eq!(
            attempt(&format!("guess{i}"), "wrong")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let limited = attempt(&user, &password).await.unwrap();
    assert_eq!(limited.status(), 429, "even the right password waits");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
}

#[tokio::test]
async fn health_needs_no_credentials_and_the_ui_is_served() {
    let s = Server::start().await;
    let h: Value = s
        .http
        .get(s.url("/api/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["schemaVersion"], dragonfly_store::SCHEMA_VERSION);
    assert_eq!(h["bus"], "disabled");
    let page = s.http.get(s.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("/ui/app.js") && html.contains("/ui/app.css"));
    // No inline script or style for the policy to refuse.
    assert!(!html.contains("<style") && !html.contains(" style=") && !html.contains("<script>"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let body = r.text().await.unwrap();
        // The script never builds HTML from strings (every value goes in as text).
        assert!(
            !body.contains("innerHTML") && !body.contains("insertAdjacentHTML"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn agents_ask_for_instructions_with_their_boot_token_only() {
    let s = Server::start().await;
    let url = s.url("/api/agent/instructions");
    // Not registered yet: 404 tells the agent to register.
    let r = s
        .http
        .get(&url)
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, m) = register(&s, &[1, 2]).await;
    // Any of the machine's MACs' tokens works; the answer is about that machine only.
    for n in [1, 2] {
        let r = s
            .http
            .get(&url)
            .bearer_auth(token_for(&s.db, mac(n)).await)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let i: Value = r.json().await.unwrap();
        assert_eq!(i["machineId"], m["id"]);
        assert_eq!(i["name"], m["name"]);
        assert_eq!(i["state"], "Registered");
        assert_eq!(i["fate"], "discovery");
        assert_eq!(i["reason"], "awaitingAssignment");
        assert!(i["pollAfterSeconds"].as_u64().unwrap() > 0);
    }
    // An operator's credentials are not an agent's.
    let cookie = s.admin_cookie().await;
    let r = s
        .http
        .get(&url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let forged = s
        .http
        .get(&url)
        .bearer_auth(mint(&[0x11; 32], mac(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    // A machine whose OS was assigned and whose workflow exists is sent to imaging.
    let id: uuid::Uuid = m["id"].as_str().unwrap().parse().unwrap();
    let wf: uuid::Uuid = "0196d6a2-0000-7000-8000-0000000000ff".parse().unwrap();
    dragonfly_store::testing::set_state(
        &s.db,
        dragonfly_core::MachineId(id),
        dragonfly_core::MachineState::OsAssigned,
        Some(wf),
    )
    .await;
    let i: Value = s
        .http
        .get(&url)
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(i["fate"], "imaging");
    assert_eq!(i["workflowId"], "0196d6a2-0000-7000-8000-0000000000ff");
}

#[tokio::test]
async fn agents_ship_console_lines_that_operators_read() {
    let s = Server::start().await;
    let url = s.url("/api/agent/log");
    let lines = serde_json::json!({"lines": ["starting", "registered as X\u{1b}[31m", "waiting"]});
    // Unknown machine: register first.
    let r = s
        .http
        .post(&url)
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .json(&lines)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, m) = register(&s, &[1]).await;
    let r = s.http.post(&url).json(&lines).send().await.unwrap();
    assert_eq!(r.status(), 401, "the boot token is required");
    let r = s
        .http
        .post(&url)
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .json(&lines)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let too_many = serde_json::json!({"lines": vec!["x"; 101]});
    let r = s
        .http
        .post(&url)
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .json(&too_many)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    let cookie = s.admin_cookie().await;
    let read = s.url(&format!(
        "/api/machines/{}/agent-log",
        m["name"].as_str().unwrap()
    ));
    assert_eq!(s.http.get(&read).send().await.unwrap().status(), 401);
    let got: Value = s
        .http
        .get(&read)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ["starting", "registered as X[31m", "waiting"],
        "control characters are dropped"
    );
}

#[tokio::test]
async fn a_chatty_agent_is_told_when_to_come_back() {
    let s = Server::start_with(config(|c| c.agent_log_requests_per_minute = Some(3))).await;
    register(&s, &[1]).await;
    let url = s.url("/api/agent/log");
    let lines = json!({"lines": ["hello"]});
    let tokens = [
        token_for(&s.db, mac(1)).await,
        token_for(&s.db, mac(2)).await,
    ];
    let send = |m: u8| {
        s.http
            .post(&url)
            .bearer_auth(&tokens[usize::from(m) - 1])
            .json(&lines)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(send(1).await.unwrap().status(), 204);
    }
    let refused = send(1).await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "Retry-After: {wait}");
    // Refused before the body is read: not even parsed.
    let garbage = s
        .http
        .post(&url)
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 429);
    // The limit is the token's (its MAC's), not everyone's: another agent is still heard
    // (404: it has not registered, which is checked after the rate).
    assert_eq!(send(2).await.unwrap().status(), 404);
}

#[tokio::test]
async fn a_report_cannot_take_another_machines_identity() {
    let s = Server::start().await;
    let (status, victim) = register(&s, &[2]).await;
    assert_eq!(status, 201);
    let before =
        s.db.machines()
            .list(Default::default(), None, 100)
            .await
            .unwrap();
    let url = s.url("/api/machines/register");
    let attacker = token_for(&s.db, mac(1)).await;
    // By MAC set: a token for MAC 1 reporting MACs 1 and 2.
    let r = s
        .http
        .post(&url)
        .bearer_auth(&attacker)
        .json(&report(&[1, 2]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(
        !body.to_string().contains(victim["id"].as_str().unwrap()),
        "the refusal names no machine: {body}"
    );
    // By SMBIOS UUID: MAC 1 alone, with the victim's UUID.
    let mut stolen = report(&[1]);
    stolen["smbiosUuid"] = victim["hardware"]["smbiosUuid"].clone();
    let r = s
        .http
        .post(&url)
        .bearer_auth(&attacker)
        .json(&stolen)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let after =
        s.db.machines()
            .list(Default::default(), None, 100)
            .await
            .unwrap();
    assert_eq!(before, after, "nothing written");
    // The operator sees both claims.
    let cookie = s.admin_cookie().await;
    let conflicts: Value = s.get_json("/api/conflicts", &cookie).await;
    let list = conflicts.as_array().unwrap();
    assert_eq!(list.len(), 2, "{conflicts}");
    for c in list {
        assert_eq!(c["ownerId"], victim["id"]);
        assert_eq!(c["claimantMac"], mac(1).to_string());
    }
    let kinds: Vec<&str> = list.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    // And on the victim machine.
    let on_machine: Value = s
        .get_json(
            &format!(
                "/api/machines/{}/conflicts",
                victim["name"].as_str().unwrap()
            ),
            &cookie,
        )
        .await;
    assert_eq!(&on_machine, &conflicts);
    assert!(
        kinds.contains(&"mac") && kinds.contains(&"smbiosUuid"),
        "{kinds:?}"
    );
    // Agents cannot read them.
    let r = s
        .http
        .get(s.url("/api/conflicts"))
        .bearer_auth(&attacker)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn tokens_belong_to_their_boot_are_renewed_within_it_and_die_with_it() {
    let s = Server::start().await;
    let first = token_for(&s.db, mac(1)).await;
    let ask = |t: String| {
        let http = s.http.clone();
        let url = s.url("/api/agent/instructions");
        async move { http.get(url).bearer_auth(t).send().await.unwrap().status() }
    };
    register(&s, &[1]).await;
    assert_eq!(ask(first.clone()).await, 200);
    // Renewal: a new token for the same boot, which works too.
    let r = s
        .http
        .post(s.url("/api/agent/renew"))
        .bearer_auth(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let renewed: dragonfly_core::agent_api::RenewedToken = r.json().await.unwrap();
    assert!((14 * 60..=15 * 60).contains(&renewed.expires_in_seconds));
    assert!(renewed.renew_after_seconds < renewed.expires_in_seconds);
    assert_eq!(ask(renewed.token.clone()).await, 200);
    // The machine boots again: ipxed opens a new session; the old boot's tokens are refused.
    let now = jiff::Timestamp::now();
    s.db.boot()
        .open_session(
            mac(1),
            [9; 16],
            now,
            now + jiff::SignedDuration::from_hours(1),
        )
        .await
        .unwrap();
    for old in [&first, &renewed.token] {
        assert_eq!(ask(old.clone()).await, 401);
        let r = s
            .http
            .post(s.url("/api/agent/renew"))
            .bearer_auth(old)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a dead boot's token cannot be renewed");
        let r = s
            .http
            .post(s.url("/api/machines/register"))
            .bearer_auth(old)
            .json(&report(&[1]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // Back to this test's boot; then the machine reaches Ready: its token is revoked.
    let current = token_for(&s.db, mac(1)).await;
    assert_eq!(ask(current.clone()).await, 200);
    let id =
        s.db.machines()
            .get_by_mac(mac(1))
            .await
            .unwrap()
            .unwrap()
            .id;
    s.store
        .set_state(id, dragonfly_core::MachineState::Ready, None)
        .await;
    assert_eq!(ask(current).await, 401);
}

#[tokio::test]
async fn new_machines_are_rate_limited_capped_and_can_await_approval() {
    let s = Server::start_with(config(|c| {
        c.new_machines_per_second = Some(1);
        c.new_machines_burst = Some(3);
        c.max_machines = Some(4);
    }))
    .await;
    let mut statuses = Vec::new();
    for n in 1..=5 {
        statuses.push(register_status(&s, n).await);
    }
    assert!(
        statuses[..3].iter().all(|(st, _)| *st == 201),
        "{statuses:?}"
    );
    assert_eq!(statuses[3].0, 429);
    let retry: u64 = statuses[3].1.parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        s.machine_count().await,
        3,
        "nothing written beyond the burst"
    );
    // A known machine is never limited.
    assert_eq!(register_status(&s, 1).await.0, 200);
    // After the refill: the fourth machine, then the cap.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(register_status(&s, 6).await.0, 201);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, retry) = register_status(&s, 7).await;
    assert_eq!((status, retry.is_empty()), (503, false));
    assert_eq!(s.machine_count().await, 4);

    // Approval required: the new machine waits in Discovered until an operator approves it.
    let s = Server::start_with(config(|c| c.auto_register = Some(false))).await;
    let (status, m) = register(&s, &[1]).await;
    assert_eq!(
        (status.as_u16(), m["state"].as_str()),
        (201, Some("Discovered"))
    );
    let (_, again) = register(&s, &[1]).await;
    assert_eq!(again["state"], "Discovered", "its agent cannot approve it");
    let url = s.url(&format!(
        "/api/machines/{}/approve",
        m["name"].as_str().unwrap()
    ));
    let agent = s
        .http
        .post(&url)
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .send()
        .await
        .unwrap();
    assert_eq!(agent.status(), 401);
    let cookie = s.admin_cookie().await;
    let r = s
        .http
        .post(&url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let approved: Value = r.json().await.unwrap();
    assert_eq!(approved["state"], "Registered");
    let r = s
        .http
        .post(&url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "approved once");
}

/// Registers machine `n` (MAC n) as its agent; returns (status, Retry-After or "").
async fn register_status(s: &Server, n: u8) -> (u16, String) {
    let r = s
        .http
        .post(s.url("/api/machines/register"))
        .bearer_auth(token_for(&s.db, mac(n)).await)
        .json(&report(&[n]))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), retry)
}
