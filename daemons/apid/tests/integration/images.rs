//! The image library over HTTP: local images checksummed in the background, refusals with
//! their reasons, and a template naming an image resolved into the workflow it creates.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::common::{Server, mac, report, token_for};

const IMAGES: &str = "/apis/dragonfly.computer/v1/images";

fn image(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "dragonfly.computer/v1", "kind": "Image",
           "metadata": {"name": name}, "spec": spec})
}

async fn send(
    s: &Server,
    cookie: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut r = s.http.request(method, s.url(path)).header("cookie", cookie);
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn local_images_are_checksummed_and_templates_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let images_dir = dir.path().to_owned();
    // 3 MiB and a bit: more than one read of the checksummer.
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 253) as u8).collect();
    std::fs::write(images_dir.join("os.img.zst"), &data).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", images_dir.join("link.img")).unwrap();
    let dir_for_config = images_dir.clone();
    let s = Server::start_with(crate::common::config(move |c| {
        c.images_dir = Some(dir_for_config.clone());
        c.images_url = Some("http://10.99.0.1:8080/images".into());
    }))
    .await;
    let cookie = s.admin_cookie().await;
    use reqwest::Method;

    // Refusals, each with its reason.
    for (name, spec, says) in [
        ("bad/name", json!({"file": "os.img.zst"}), "metadata.name"),
        ("x", json!({"file": "../etc/passwd"}), "spec.file"),
        ("x", json!({"file": "missing.img"}), "no such file"),
        ("x", json!({"file": "link.img"}), "symbolic link"),
        (
            "x",
            json!({"file": "os.img.zst", "url": "http://a/b"}),
            "exactly one",
        ),
        (
            "x",
            json!({"url": "http://a/b", "public": true}),
            "spec.public",
        ),
        (
            "x",
            json!({"file": "os.img.zst", "sha256": "12"}),
            "spec.sha256",
        ),
        (
            "x",
            json!({"file": "os.img.zst", "size": 1}),
            "unknown field",
        ),
    ] {
        let (st, e) = send(&s, &cookie, Method::POST, IMAGES, Some(&image(name, spec))).await;
        assert_eq!(st, 422, "{name}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{says}: {e}");
    }

    let raw_sha = "ab".repeat(32);
    let (st, created) = send(
        &s,
        &cookie,
        Method::POST,
        IMAGES,
        Some(&image(
            "os",
            json!({"file": "os.img.zst", "compression": "zstd", "sha256": raw_sha}),
        )),
    )
    .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["status"]["phase"], "Pending", "{created}");
    let (st, e) = send(
        &s,
        &cookie,
        Method::POST,
        IMAGES,
        Some(&image("os", json!({"file": "os.img.zst"}))),
    )
    .await;
    assert_eq!(st, 409, "{e}");
    let mut ready = Value::Null;
    for _ in 0..100 {
        let (st, got) = send(&s, &cookie, Method::GET, &format!("{IMAGES}/os"), None).await;
        assert_eq!(st, 200);
        if got["status"]["phase"] != "Pending" {
            ready = got;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready["status"]["phase"], "Ready", "{ready}");
    let want: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(ready["status"]["fileSha256"], want.as_str());
    assert_eq!(ready["status"]["size"], data.len());
    let (_, list) = send(&s, &cookie, Method::GET, IMAGES, None).await;
    assert_eq!(list["kind"], "ImageList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // The file's published checksum is checked when it is added: a match is Ready, another
    // file is refused (Failed, saying which sum differs) and cannot be installed.
    for (name, file_sha, phase) in [
        ("same", want.clone(), "Ready"),
        ("other", "0".repeat(64), "Failed"),
    ] {
        let (st, e) = send(
            &s,
            &cookie,
            Method::POST,
            IMAGES,
            Some(&image(
                name,
                json!({"file": "os.img.zst", "fileSha256": file_sha}),
            )),
        )
        .await;
        assert_eq!(st, 201, "{e}");
        let mut got = Value::Null;
        for _ in 0..100 {
            let (_, g) = send(&s, &cookie, Method::GET, &format!("{IMAGES}/{name}"), None).await;
            if g["status"]["phase"] != "Pending" {
                got = g;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(got["status"]["phase"], phase, "{got}");
        if phase == "Failed" {
            let message = got["status"]["message"].as_str().unwrap();
            assert!(
                message.contains("refused") && message.contains("spec.fileSha256"),
                "{message}"
            );
        }
    }

    // A remote image is Ready at once.
    let (st, remote) = send(
        &s,
        &cookie,
        Method::POST,
        IMAGES,
        Some(&image(
            "remote",
            json!({"url": "https://cloud.example/debian.raw"}),
        )),
    )
    .await;
    assert_eq!(st, 201, "{remote}");
    assert_eq!(remote["status"]["phase"], "Ready");

    // A template names images; a workflow carries what the name meant.
    let template = |image: &str| {
        json!({"apiVersion": "dragonfly.computer/v1", "kind": "Template",
            "metadata": {"name": format!("from-{image}")},
            "spec": {"actions": [{"name": "image", "type": "image2disk", "image": image,
                                  "disk": "/dev/vda"}]}})
    };
    let templates = "/apis/dragonfly.computer/v1/templates";
    for name in ["os", "remote", "nothing", "other"] {
        let (st, e) = send(&s, &cookie, Method::POST, templates, Some(&template(name))).await;
        assert_eq!(st, 201, "{e}");
    }
    let mut forged = template("os");
    forged["metadata"]["name"] = "forged".into();
    forged["spec"]["actions"][0]["authenticate"] = true.into();
    let (st, e) = send(&s, &cookie, Method::POST, templates, Some(&forged)).await;
    assert_eq!(st, 422, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("authenticate"),
        "{e}"
    );

    let mut actions = Vec::new();
    for (i, (tpl, status, says)) in [
        ("from-nothing", 422, "no image \"nothing\""),
        ("from-other", 422, "failed when it was added: refused"),
        ("from-os", 201, ""),
        ("from-remote", 201, ""),
    ]
    .into_iter()
    .enumerate()
    {
        let n = u8::try_from(i + 1).unwrap();
        let r = s
            .http
            .post(s.url("/api/machines/register"))
            .bearer_auth(token_for(&s.db, mac(n)).await)
            .json(&report(&[n]))
            .send()
            .await
            .unwrap();
        let m: Value = r.json().await.unwrap();
        let path = format!("/api/machines/{}/provision", m["name"].as_str().unwrap());
        let (st, wf) = send(
            &s,
            &cookie,
            Method::POST,
            &path,
            Some(&json!({"template": tpl})),
        )
        .await;
        assert_eq!(st, status, "{tpl}: {wf}");
        if st != 201 {
            assert!(wf["message"].as_str().unwrap().contains(says), "{wf}");
            continue;
        }
        let id: uuid::Uuid = wf["id"].as_str().unwrap().parse().unwrap();
        let stored = s.db.workflows().get(id).await.unwrap().unwrap();
        actions.push(serde_json::to_value(&stored.actions[0].action).unwrap());
    }
    assert_eq!(
        actions[0],
        json!({"type": "image2disk", "url": "http://10.99.0.1:8080/images/os",
               "authenticate": true, "disk": "/dev/vda", "sha256": raw_sha,
               "compression": "zstd"})
    );
    assert_eq!(
        actions[1],
        json!({"type": "image2disk", "url": "https://cloud.example/debian.raw",
               "disk": "/dev/vda", "compression": "auto"})
    );

    // Named by a template: kept. Unnamed: removed.
    let (st, e) = send(&s, &cookie, Method::DELETE, &format!("{IMAGES}/os"), None).await;
    assert_eq!(st, 409, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("template from-os"),
        "{e}"
    );
    let (st, e) = send(
        &s,
        &cookie,
        Method::POST,
        IMAGES,
        Some(&image("spare", json!({"url": "http://a/spare.raw"}))),
    )
    .await;
    assert_eq!(st, 201, "{e}");
    let (st, _) = send(
        &s,
        &cookie,
        Method::DELETE,
        &format!("{IMAGES}/spare"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = send(&s, &cookie, Method::GET, &format!("{IMAGES}/spare"), None).await;
    assert_eq!(st, 404);
}
