//! Provisioning over HTTP: templates, assignment, workflows, and the agent's workflow and
//! report routes.

use dragonfly_core::agent_api::{REPORT_PATH, WORKFLOW_PATH};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, mac, report, token_for};

const TEMPLATES: &str = "/apis/dragonfly.computer/v1/templates";

fn template(name: &str, contents: &str) -> Value {
    json!({
        "apiVersion": "dragonfly.computer/v1",
        "kind": "Template",
        "metadata": {"name": name},
        "spec": {"actions": [
            {"name": "disk", "type": "partition", "disk": "/dev/vda", "table": "gpt",
             "partitions": [{"label": "root", "size": "rest", "type": "linux", "format": "ext4"}]},
            {"name": "hostname", "type": "writefile",
             "device": {"disk": "/dev/vda", "partition": 1}, "filesystem": "ext4",
             "path": "/etc/hostname", "contents": contents},
            {"name": "boot", "type": "kexec", "device": {"disk": "/dev/vda", "partition": 1},
             "filesystem": "ext4", "kernel": "/boot/vmlinuz",
             "cmdline": "root=LABEL=root console={{values.console}}"}
        ]}
    })
}

async fn post_json(s: &Server, cookie: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = s
        .http
        .post(s.url(path))
        .header("cookie", cookie)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn templates_are_validated_when_written_in_json_or_yaml() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let (st, t) = post_json(
        &s,
        &cookie,
        TEMPLATES,
        &template("debian", "{{hostname}}\n"),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    assert_eq!(t["metadata"]["resourceVersion"], "1");
    let (st, _) = post_json(&s, &cookie, TEMPLATES, &template("debian", "x")).await;
    assert_eq!(st, 409, "the name is taken");
    // A variable apid does not render: refused now, not half-way through an install.
    let (st, e) = post_json(&s, &cookie, TEMPLATES, &template("bad", "{{hostnme}}")).await;
    assert_eq!(st, 422);
    assert!(e["message"].as_str().unwrap().contains("hostnme"), "{e}");
    let mut dup = template("dup", "x");
    dup["spec"]["actions"][1]["name"] = "disk".into();
    let (st, e) = post_json(&s, &cookie, TEMPLATES, &dup).await;
    assert_eq!(st, 422);
    assert!(
        e["message"].as_str().unwrap().contains("already used"),
        "{e}"
    );
    // YAML in, YAML out.
    let yaml = serde_yaml_ng::to_string(&template("yaml", "static")).unwrap();
    let r = s
        .http
        .post(s.url(TEMPLATES))
        .header("cookie", &cookie)
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .http
        .get(s.url(TEMPLATES))
        .header("cookie", &cookie)
        .header("accept", "application/yaml")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("kind: TemplateList") && text.contains("name: yaml"),
        "{text}"
    );
    // Replace names the version it read.
    let mut doc = template("debian", "{{hostname}}");
    doc["metadata"]["resourceVersion"] = "7".into();
    let r = s
        .http
        .put(s.url(&format!("{TEMPLATES}/debian")))
        .header("cookie", &cookie)
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    doc["metadata"]["resourceVersion"] = "1".into();
    let r = s
        .http
        .put(s.url(&format!("{TEMPLATES}/debian")))
        .header("cookie", &cookie)
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .http
        .delete(s.url(&format!("{TEMPLATES}/yaml")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn provisioning_serves_actions_and_keeps_reports_once() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let (st, _) = post_json(
        &s,
        &cookie,
        TEMPLATES,
        &template("debian", "{{hostname}}\n"),
    )
    .await;
    assert_eq!(st, 201);
    let r = s
        .http
        .post(s.url("/api/machines/register"))
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .json(&report(&[1]))
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    let name = m["name"].as_str().unwrap().to_owned();
    let provision = format!("/api/machines/{name}/provision");

    // A value the template needs is missing: 422 naming it, nothing created.
    let (st, e) = post_json(&s, &cookie, &provision, &json!({"template": "debian"})).await;
    assert_eq!(st, 422);
    assert!(
        e["message"].as_str().unwrap().contains("values.console"),
        "{e}"
    );
    let body = json!({"template": "debian",
        "values": {"hostname": "web-1", "console": "ttyS0"}});
    let (st, wf) = post_json(&s, &cookie, &provision, &body).await;
    assert_eq!(st, 201, "{wf}");
    assert_eq!(wf["state"], "Pending");
    let (st, _) = post_json(&s, &cookie, &provision, &body).await;
    assert_eq!(st, 409, "one active workflow per machine");
    let r = s
        .http
        .delete(s.url(&format!("{TEMPLATES}/debian")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a running workflow uses it");

    // The agent: imaging fate, then its first action, rendered.
    let token = token_for(&s.db, mac(1)).await;
    let i: Value = s
        .http
        .get(s.url("/api/agent/instructions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(i["fate"], "imaging");
    assert_eq!(i["workflowId"], wf["id"]);
    let step = |token: String| {
        let s = &s;
        async move {
            let r = s
                .http
                .get(s.url(WORKFLOW_PATH))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = step(token.clone()).await;
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["action"]["index"], 0);
    assert_eq!(first["action"]["name"], "disk");
    assert_eq!(first["action"]["nextSeq"], 0, "nothing reported yet");
    // Asked again (an agent that reconnected): the same action.
    assert_eq!(step(token.clone()).await["action"]["index"], 0);

    let send = |seq: u64, action: u32, kind: &str| {
        let s = &s;
        let token = token.clone();
        let body = json!({"workflowId": wf["id"], "attempt": 1, "action": action,
            "seq": seq, "kind": kind});
        async move {
            s.http
                .post(s.url(REPORT_PATH))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(send(0, 0, "started").await, 202);
    assert_eq!(
        send(0, 0, "started").await,
        202,
        "a re-sent report is 202 again"
    );
    for seq in 1..=3u64 {
        let body = json!({"workflowId": wf["id"], "attempt": 1, "action": 0, "seq": seq,
            "kind": "progress", "bytesDone": seq, "bytesPerSecond": 1});
        let r = s
            .http
            .post(s.url(REPORT_PATH))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // An agent that rebooted mid-action is served it again, and numbers on from seq 4: seqs
    // 0 to 3 are kept, and a new report with one of them would be dropped as a copy.
    let again = step(token.clone()).await;
    assert_eq!(again["action"]["index"], 0);
    assert_eq!(again["action"]["nextSeq"], 4);
    assert_eq!(send(4, 0, "succeeded").await, 202);
    let id: uuid::Uuid = wf["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        s.db.workflows().report_count(id).await.unwrap(),
        5,
        "kept once"
    );
    // Its success is stored: the next action is served even before workflowd applied it.
    let second = step(token.clone()).await;
    assert_eq!(second["action"]["index"], 1);
    assert_eq!(second["action"]["spec"]["contents"], "web-1\n");
    let third = &s.db.workflows().get(id).await.unwrap().unwrap().actions[2];
    assert_eq!(
        serde_json::to_value(third).unwrap()["cmdline"],
        "root=LABEL=root console=ttyS0"
    );

    // Another machine's agent cannot report on this workflow.
    let other = token_for(&s.db, mac(2)).await;
    s.http
        .post(s.url("/api/machines/register"))
        .bearer_auth(&other)
        .json(&report(&[2]))
        .send()
        .await
        .unwrap();
    let r = s
        .http
        .post(s.url(REPORT_PATH))
        .bearer_auth(&other)
        .json(
            &json!({"workflowId": wf["id"], "attempt": 1, "action": 1, "seq": 0,
            "kind": "started"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Operators: progress, the resource, cancel (202, for workflowd), retry refused while active.
    let r = s
        .http
        .get(s.url(&format!(
            "/api/workflows/{}/progress",
            wf["id"].as_str().unwrap()
        )))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["actions"].as_array().unwrap().len(), 3);
    let r = s
        .http
        .get(s.url(&format!(
            "/apis/dragonfly.computer/v1/workflows/{}",
            wf["name"].as_str().unwrap()
        )))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["kind"], "Workflow");
    let wid = wf["id"].as_str().unwrap();
    let (st, _) = post_json(
        &s,
        &cookie,
        &format!("/api/workflows/{wid}/retry"),
        &json!({}),
    )
    .await;
    assert_eq!(st, 409);
    let (st, _) = post_json(
        &s,
        &cookie,
        &format!("/api/workflows/{wid}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(st, 202);

    // The second action fails first: its message and the agent's last console lines are what
    // an operator reads in the progress, once applied (as workflowd applies reports).
    assert_eq!(send(2, 1, "started").await, 202);
    let failed = json!({"workflowId": wf["id"], "attempt": 1, "action": 1, "seq": 3,
        "kind": "failed", "message": "no space left on device",
        "logTail": ["writing /etc/hostname", "ENOSPC"]});
    let r = s
        .http
        .post(s.url(REPORT_PATH))
        .bearer_auth(&token)
        .json(&failed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let now = jiff::Timestamp::now();
    let mut w = s.db.workflows().get(id).await.unwrap().unwrap();
    let reports = s.db.workflows().unapplied(100).await.unwrap();
    for r in &reports {
        w.apply(&r.report, now);
    }
    s.db.workflows()
        .save(
            dragonfly_store::workflows::Save {
                workflow: w,
                applied: reports.iter().map(|r| r.id).collect(),
                clear_request: false,
                machine: vec![],
            },
            now,
        )
        .await
        .unwrap();
    let p: Value = s
        .get_json(&format!("/api/workflows/{wid}/progress"), &cookie)
        .await;
    assert_eq!(p["state"], "Failed", "{p}");
    assert_eq!(p["actions"][1]["state"], "Failed", "{p}");
    let message = p["actions"][1]["message"].as_str().unwrap();
    assert!(message.contains("no space left on device"), "{message}");
    assert_eq!(
        p["actions"][1]["logTail"],
        json!(["writing /etc/hostname", "ENOSPC"])
    );
}

#[tokio::test]
async fn a_ready_machine_is_reimaged_only_when_asked() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    post_json(&s, &cookie, TEMPLATES, &template("debian", "static")).await;
    let r = s
        .http
        .post(s.url("/api/machines/register"))
        .bearer_auth(token_for(&s.db, mac(1)).await)
        .json(&report(&[1]))
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    let id: uuid::Uuid = m["id"].as_str().unwrap().parse().unwrap();
    dragonfly_store::testing::set_state(
        &s.db,
        dragonfly_core::MachineId(id),
        dragonfly_core::MachineState::Ready,
        None,
    )
    .await;
    let path = format!("/api/machines/{id}/provision");
    let values = json!({"console": "ttyS0"});
    let (st, _) = post_json(
        &s,
        &cookie,
        &path,
        &json!({"template": "debian", "values": values}),
    )
    .await;
    assert_eq!(st, 409);
    let (st, wf) = post_json(
        &s,
        &cookie,
        &path,
        &json!({"template": "debian", "values": values, "reimage": true}),
    )
    .await;
    assert_eq!(st, 201, "{wf}");
}

#[tokio::test]
async fn provision_says_who_powers_the_machine_on() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let (st, _) = post_json(&s, &cookie, TEMPLATES, &template("debian", "x\n")).await;
    assert_eq!(st, 201);
    let body = json!({"template": "debian", "values": {"console": "ttyS0"}});
    let bare = s
        .store
        .machine(dragonfly_store::testing::NewMachine::with_mac(mac(1)))
        .await;
    let (st, wf) = post_json(
        &s,
        &cookie,
        &format!("/api/machines/{}/provision", bare.name),
        &body,
    )
    .await;
    assert_eq!(st, 201, "{wf}");
    assert_eq!(wf["state"], "Pending", "the workflow's own fields are kept");
    assert_eq!(
        wf["power"],
        "no BMC configured: power the machine on (it boots from the network) yourself"
    );

    let with_bmc = s
        .store
        .machine(dragonfly_store::testing::NewMachine::with_mac(mac(2)))
        .await;
    let spec = dragonfly_store::bmc::BmcSpec {
        kind: dragonfly_store::bmc::BmcKind::Ipmi,
        address: Some("10.0.0.5".into()),
        port: None,
        username: Some("admin".into()),
        system: None,
        uefi: true,
        tls_ca: None,
        tls_fingerprint: None,
    };
    s.db.bmcs()
        .put(with_bmc.id, spec, None, None, jiff::Timestamp::now())
        .await
        .unwrap();
    let (st, wf) = post_json(
        &s,
        &cookie,
        &format!("/api/machines/{}/provision", with_bmc.name),
        &body,
    )
    .await;
    assert_eq!(st, 201, "{wf}");
    assert_eq!(
        wf["power"],
        "bmcd sets next boot to the network and powers the machine on"
    );
    // The BMC view lists the power request made with the workflow.
    let v = s
        .get_json(&format!("/api/machines/{}/bmc", with_bmc.name), &cookie)
        .await;
    assert_eq!(v["lastRequests"][0]["kind"], "provision", "{v}");
    assert_eq!(v["lastRequests"][0]["state"], "pending", "{v}");
}

/// A template installing an OS that cloud-init configures: its user-data is checked when
/// written, and `{{metadataUrl}}` renders to the install's datasource URL with its secret.
#[tokio::test]
async fn cloud_init_templates_are_checked_and_get_their_datasource_url() {
    let with_user_data = |user_data: &str| {
        let mut t = template(
            "cloud",
            "datasource_list: [NoCloud]\ndatasource:\n  NoCloud:\n    seedfrom: {{metadataUrl}}\nnetwork: {{networkConfig}}\n",
        );
        t["spec"]["actions"][1]["path"] = "/etc/cloud/cloud.cfg.d/90-dragonfly.cfg".into();
        t["spec"]["actions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "first-boot", "type": "cloudinit", "userData": user_data}));
        t
    };
    for (cfg, wants) in [
        (None, "metadata_url"),
        (Some("http://10.99.0.1:8080/metadata"), ""),
    ] {
        let s = Server::start_with(crate::common::config(|c| {
            c.metadata_url = cfg.map(str::to_owned);
        }))
        .await;
        let cookie = s.admin_cookie().await;
        for (bad, says) in [
            ("hostname: x\n", "#cloud-config"),
            ("#cloud-config\nusers: [\n", "not valid YAML"),
        ] {
            let (st, e) = post_json(&s, &cookie, TEMPLATES, &with_user_data(bad)).await;
            assert_eq!(st, 422, "{bad:?}: {e}");
            let msg = e["message"].as_str().unwrap();
            assert!(msg.contains(says) && msg.contains("first-boot"), "{msg}");
        }
        let good = "#cloud-config\nhostname: {{hostname}}\nssh_authorized_keys:\n{{#each sshKeys}}\n  - {{this}}\n{{/each}}\n";
        let (st, e) = post_json(&s, &cookie, TEMPLATES, &with_user_data(good)).await;
        assert_eq!(st, 201, "{e}");
        let r = s
            .http
            .post(s.url("/api/machines/register"))
            .bearer_auth(token_for(&s.db, mac(1)).await)
            .json(&report(&[1]))
            .send()
            .await
            .unwrap();
        let m: Value = r.json().await.unwrap();
        let provision = format!("/api/machines/{}/provision", m["name"].as_str().unwrap());
        let body = json!({"template": "cloud",
            "values": {"console": "ttyS0", "sshKeys": ["ssh-ed25519 AAAA k@lab"]}});
        if wants.is_empty() {
            // Per machine, values.userData replaces the template's, checked the same way.
            let mut bad = body.clone();
            bad["values"]["userData"] = "#cloud-config\n- not\n- a mapping\n".into();
            let (st, e) = post_json(&s, &cookie, &provision, &bad).await;
            assert_eq!(st, 422, "{e}");
            assert!(
                e["message"].as_str().unwrap().contains("rendered userData"),
                "{e}"
            );
        }
        let (st, wf) = post_json(&s, &cookie, &provision, &body).await;
        if !wants.is_empty() {
            assert_eq!(st, 422, "{wf}");
            assert!(wf["message"].as_str().unwrap().contains(wants), "{wf}");
            continue;
        }
        assert_eq!(st, 201, "{wf}");
        let id: uuid::Uuid = wf["id"].as_str().unwrap().parse().unwrap();
        let stored = s.db.workflows().get(id).await.unwrap().unwrap();
        let machine = dragonfly_core::MachineId(m["id"].as_str().unwrap().parse().unwrap());
        let url = dragonfly_core::metadata::datasource_url(
            "http://10.99.0.1:8080/metadata",
            &crate::common::KEY,
            machine,
            id,
        );
        let dragonfly_core::template::Action::Writefile { contents, .. } =
            &stored.actions[1].action
        else {
            panic!("{:?}", stored.actions[1]);
        };
        assert!(
            contents
                .as_deref()
                .unwrap()
                .contains(&format!("seedfrom: {url}\n")),
            "{contents:?}"
        );
        // The network configuration, in the file cloud-init reads it from (YAML).
        let cfg: serde_yaml_ng::Value = serde_yaml_ng::from_str(contents.as_deref().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {contents:?}"));
        assert_eq!(cfg["network"]["version"], 2, "{contents:?}");
        assert_eq!(
            cfg["network"]["ethernets"]["nic0"]["match"]["macaddress"],
            crate::common::mac(1).to_string().as_str(),
            "{contents:?}"
        );
        assert_eq!(cfg["network"]["ethernets"]["nic0"]["dhcp4"], true);
        let dragonfly_core::template::Action::Cloudinit { user_data } = &stored.actions[3].action
        else {
            panic!("{:?}", stored.actions[3]);
        };
        assert!(
            user_data.contains("  - ssh-ed25519 AAAA k@lab"),
            "{user_data}"
        );
        let r = s
            .http
            .post(s.url(&format!("/api/workflows/{id}/cancel")))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
}
