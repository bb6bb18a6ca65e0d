//! The operator side: CSRF on cookie-authenticated changes, user management, disabled users,
//! per-account throttling with the known-good address, and proxies' client addresses.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, config};

/// A client that sends no Origin of its own (each request says what it claims).
fn bare() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn cross_origin_changes_with_a_session_cookie_are_refused() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let (_, m) = {
        let r = s
            .http
            .post(s.url("/api/machines/register"))
            .bearer_auth(crate::common::token_for(&s.db, crate::common::mac(1)).await)
            .json(&crate::common::report(&[1]))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let machine = s.url(&format!("/api/machines/{}", m["id"].as_str().unwrap()));
    // ipxed's port on the same host is same-site (the cookie goes along) but not same-origin.
    let port = s.base.rsplit(':').next().unwrap();
    let ipxed = s
        .base
        .replace(port, if port == "8080" { "8081" } else { "8080" });
    let http = bare();
    let attempts: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("logout", http.post(s.url("/api/auth/logout"))),
        (
            "token",
            http.post(s.url("/api/tokens"))
                .json(&json!({"name": "evil"})),
        ),
        (
            "patch",
            http.patch(&machine).json(&json!({"hostname": "pwned"})),
        ),
        (
            "user",
            http.post(s.url("/api/users")).json(
                &json!({"username": "evil", "password": "evil-but-long-enough", "isAdmin": true}),
            ),
        ),
    ];
    for (what, req) in attempts {
        for headers in [
            vec![("origin", ipxed.as_str())],
            vec![("origin", "http://evil.example")],
            vec![("origin", "null")],
            vec![("sec-fetch-site", "same-site")],
            vec![("sec-fetch-site", "cross-site")],
            vec![],
        ] {
            let mut r = req.try_clone().unwrap().header("cookie", &cookie);
            for (k, v) in &headers {
                r = r.header(*k, *v);
            }
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), 403, "{what} with {headers:?}");
        }
    }
    // Nothing changed: the session lives, no token, the machine untouched, no user.
    let me = http
        .get(s.url("/api/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "the session survived the forged logouts");
    let tokens: Value = http
        .get(s.url("/api/tokens"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tokens, json!([]));
    let now: Value = http
        .get(&machine)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(now.get("hostname").is_none(), "{now}");
    assert_eq!(s.auth_db.auth().user_count().await.unwrap(), 1);

    // The same requests from apid's own page pass: Origin, or Sec-Fetch-Site without it.
    let ok = http
        .post(s.url("/api/tokens"))
        .header("cookie", &cookie)
        .header("origin", &s.base)
        .json(&json!({"name": "ui"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    let ok = http
        .patch(&machine)
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .json(&json!({"hostname": "web-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // A bearer token carries no ambient authority: no Origin needed.
    let created: Value = s
        .http
        .post(s.url("/api/tokens"))
        .header("cookie", &cookie)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .patch(&machine)
        .bearer_auth(created["token"].as_str().unwrap())
        .header("origin", "http://evil.example")
        .json(&json!({"hostname": "web-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Logging in from another origin is refused too (login CSRF).
    let r = http
        .post(s.url("/api/auth/login"))
        .header("origin", "http://evil.example")
        .json(&json!({"username": "admin", "password": "admin-correct-horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let out = s
        .http
        .post(s.url("/api/auth/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204, "same-origin logout");
}

async fn status_and_body(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admins_manage_users_and_operators_their_own_password() {
    let s = Server::start().await;
    let admin = s.admin_cookie().await;
    let post = |path: &str, cookie: &str, body: Value| {
        s.http
            .post(s.url(path))
            .header("cookie", cookie)
            .json(&body)
            .send()
    };
    // Create an operator; weak passwords, bad names and duplicates are refused.
    for (body, want) in [
        (json!({"username": "ops", "password": "short"}), 422),
        (
            json!({"username": "bad name", "password": "long enough password"}),
            422,
        ),
        (
            json!({"username": "admin", "password": "long enough password"}),
            409,
        ),
    ] {
        let (st, _) = status_and_body(post("/api/users", &admin, body).await.unwrap()).await;
        assert_eq!(st, want);
    }
    let (st, ops) = status_and_body(
        post(
            "/api/users",
            &admin,
            json!({"username": "ops", "password": "ops-first-password"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(ops["isAdmin"], false);
    assert_eq!(ops["disabled"], false);
    let ops_id = ops["id"].as_i64().unwrap();
    let listed: Value = s.get_json("/api/users", &admin).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("argon2"), "no hash shown");

    // An operator is not an administrator.
    let ops_cookie = s.login("ops", "ops-first-password").await;
    let (st, _) = status_and_body(
        s.http
            .get(s.url("/api/users"))
            .header("cookie", &ops_cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 403);
    let (st, _) = status_and_body(
        post(
            "/api/users",
            &ops_cookie,
            json!({"username": "x", "password": "long enough password"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, 403);

    // Changing one's password: the current one is required, others' sessions end.
    let second = s.login("ops", "ops-first-password").await;
    let (st, _) = status_and_body(
        post(
            "/api/auth/password",
            &ops_cookie,
            json!({"currentPassword": "wrong", "newPassword": "ops-second-password"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, 403);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, _) = status_and_body(
        post(
            "/api/auth/password",
            &ops_cookie,
            json!({"currentPassword": "ops-first-password", "newPassword": "short"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, 422);
    let (st, _) = status_and_body(
        post(
            "/api/auth/password",
            &ops_cookie,
            json!({"currentPassword": "ops-first-password", "newPassword": "ops-second-password"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, 204);
    let me = |cookie: String| {
        let http = s.http.clone();
        let url = s.url("/api/auth/me");
        async move {
            http.get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        me(ops_cookie.clone()).await,
        200,
        "the changing session stays"
    );
    assert_eq!(me(second.clone()).await, 401, "the other session ended");
    let ops_cookie = s.login("ops", "ops-second-password").await;

    // Disabling: sessions end, tokens stop working, login refused.
    let token: Value = post("/api/tokens", &ops_cookie, json!({"name": "ci"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let patch = |id: i64, body: Value| {
        s.http
            .patch(s.url(&format!("/api/users/{id}")))
            .header("cookie", &admin)
            .json(&body)
            .send()
    };
    let (st, u) = status_and_body(patch(ops_id, json!({"disabled": true})).await.unwrap()).await;
    assert_eq!((st, u["disabled"].clone()), (StatusCode::OK, json!(true)));
    assert_eq!(me(ops_cookie.clone()).await, 401);
    let with_token = s
        .http
        .get(s.url("/api/machines"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 401);
    let login = s
        .http
        .post(s.url("/api/auth/login"))
        .json(&json!({"username": "ops", "password": "ops-second-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 401, "a disabled user cannot log in");
    // Re-enabled and promoted: the token works again.
    let (st, u) = status_and_body(
        patch(ops_id, json!({"disabled": false, "isAdmin": true}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((st, u["isAdmin"].clone()), (StatusCode::OK, json!(true)));
    let with_token = s
        .http
        .get(s.url("/api/machines"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    // Revoke: every session and token of the user goes.
    let (st, r) = status_and_body(
        post(&format!("/api/users/{ops_id}/revoke"), &admin, json!({}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(r["apiTokens"], 1);
    let with_token = s
        .http
        .get(s.url("/api/machines"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 401);
    // The last enabled administrator stays: demote ops, then the admin cannot demote itself.
    patch(ops_id, json!({"isAdmin": false})).await.unwrap();
    let admin_id = 1;
    let (st, _) = status_and_body(patch(admin_id, json!({"disabled": true})).await.unwrap()).await;
    assert_eq!(st, 409);
    let (st, _) = status_and_body(patch(999, json!({"disabled": true})).await.unwrap()).await;
    assert_eq!(st, 404);
    let (st, _) = status_and_body(
        post("/api/users/999/revoke", &admin, json!({}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn a_guessed_account_backs_off_but_not_for_its_operators_address() {
    // The proxy in front of apid is loopback here, so X-Forwarded-For picks the "addresses".
    let s = Server::start_with(config(|c| {
        c.trusted_proxies = Some(vec!["127.0.0.1".into()]);
        c.login_attempts_per_minute = Some(1000);
    }))
    .await;
    let (user, password) = s.add_admin("ops").await;
    let from = |addr: &'static str, pw: &str| {
        s.http
            .post(s.url("/api/auth/login"))
            .header("x-forwarded-for", addr)
            .json(&json!({"username": user, "password": pw}))
            .send()
    };
    assert_eq!(
        from("192.0.2.10", &password).await.unwrap().status(),
        200,
        "the operator logs in from their usual address"
    );
    // An attacker spreads guesses over many addresses: the account backs off all the same.
    let mut refused = 0;
    for i in 0..20u8 {
        let addr: &'static str = Box::leak(format!("198.51.100.{i}").into_boxed_str());
        match from(addr, "guess").await.unwrap().status().as_u16() {
            401 => {}
            429 => refused += 1,
            other => panic!("{other}"),
        }
    }
    assert!(refused >= 18, "{refused} of 20 guesses held back");
    // Even the right password from a new address waits.
    assert_eq!(from("203.0.113.5", &password).await.unwrap().status(), 429);
    // The operator's known address is not locked out.
    assert_eq!(from("192.0.2.10", &password).await.unwrap().status(), 200);
    // Without a trusted proxy, X-Forwarded-For is the client's own claim and is ignored:
    // every one of these is 127.0.0.1.
    let s2 = Server::start_with(config(|c| c.login_attempts_per_minute = Some(2))).await;
    let mut statuses = Vec::new();
    for i in 0..3u8 {
        let r = s2
            .http
            .post(s2.url("/api/auth/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&json!({"username": format!("n{i}"), "password": "x"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_the_password_slots_and_their_queue_login_answers_503_with_retry_after() {
    let s = Server::start_with(config(|c| {
        c.login_attempts_per_minute = Some(10_000);
        // Every attempt is its own connection from this one client address.
        c.http = Some(dragonfly_http::RawHttpConfig {
            max_connections: Some(4096),
            max_connections_per_client: Some(4096),
            ..Default::default()
        });
    }))
    .await;
    s.add_admin("ops").await;
    // Many names at once, so neither limit holds them back: only the Argon2 budget does
    // (one slot per CPU, and a queue of QUEUE_PER_SLOT each).
    let slots = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let n = slots * (dragonfly_apid::password::QUEUE_PER_SLOT + 1) * 4 + 200;
    let attempts: Vec<_> = (0..n)
        .map(|i| {
            let (http, url) = (s.http.clone(), s.url("/api/auth/login"));
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .json(&json!({"username": format!("guess{i}"), "password": "wrong"}))
                    .send()
                    .await
                    .unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let mut checked = 0;
    let mut busy = 0;
    for a in attempts {
        match a.await.unwrap() {
            (401, _) => checked += 1,
            (503, Some(retry)) => {
                assert_eq!(retry, "1");
                busy += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        checked >= slots && busy > 0,
        "{checked} checked, {busy} told to retry"
    );
    // The budget is back once the burst is over.
    let r = s
        .http
        .post(s.url("/api/auth/login"))
        .json(&json!({"username": "ops", "password": "ops-correct-horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_origin_is_the_proxys_public_one() {
    let headers = [
        ("origin", "https://ops.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "ops.example"),
    ];
    for (trusted, want) in [(true, 201), (false, 403)] {
        let s = Server::start_with(config(|c| {
            if trusted {
                c.trusted_proxies = Some(vec!["127.0.0.0/8".into()]);
            }
        }))
        .await;
        let cookie = s.admin_cookie().await;
        let mut req = bare()
            .post(s.url("/api/tokens"))
            .header("cookie", &cookie)
            .json(&json!({"name": "via-proxy"}));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let status = req.send().await.unwrap().status();
        // Only a listed proxy may say which public origin the browser used.
        assert_eq!(status, want, "trusted proxy: {trusted}");
    }
}
