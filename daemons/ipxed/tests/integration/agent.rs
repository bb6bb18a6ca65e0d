//! `GET /agent/{file}`: whole and ranged downloads, 416, and no way out of the directory.

use std::process::Command;

use crate::common::{Fixture, Server, bytes, raw_get};
use dragonfly_testkit::require_binary;

#[tokio::test]
async fn full_download_is_byte_identical_with_validators() {
    let s = Server::start().await;
    let r = s.http.get(s.url("/agent/vmlinuz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-length"], s.fx.kernel.len().to_string());
    assert_eq!(h["accept-ranges"], "bytes");
    assert!(h["etag"].to_str().unwrap().starts_with('"'));
    assert!(h["last-modified"].to_str().unwrap().ends_with(" GMT"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), s.fx.kernel.as_slice());
    // The larger file (several read chunks) also arrives whole.
    let initrd = s.http.get(s.url("/agent/initrd.img")).send().await.unwrap();
    assert_eq!(
        initrd.bytes().await.unwrap().as_ref(),
        bytes(3 << 20, 2).as_slice()
    );
    // HEAD: the same headers, no body.
    let head = s.http.head(s.url("/agent/vmlinuz")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        s.fx.kernel.len().to_string()
    );
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn ranges_are_byte_identical_and_bad_ranges_get_416() {
    let s = Server::start().await;
    let k = &s.fx.kernel;
    let size = k.len();
    let get = |range: &'static str| {
        s.http
            .get(s.url("/agent/vmlinuz"))
            .header("range", range)
            .send()
    };
    for (range, first, last) in [
        ("bytes=100-199", 100, 199),
        ("bytes=-500", size - 500, size - 1),
        ("bytes=299000-", 299_000, size - 1),
        ("bytes=0-0", 0, 0),
    ] {
        let r = get(range).await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {first}-{last}/{size}"),
            "{range}"
        );
        assert_eq!(
            r.headers()["content-length"],
            (last - first + 1).to_string()
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &k[first..=last],
            "{range}"
        );
    }
    let r = get("bytes=300000-").await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], format!("bytes */{size}"));
    // If-Range with a stale validator: the whole file, not a part of a different one.
    let r = s
        .http
        .get(s.url("/agent/vmlinuz"))
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn curl_ranged_download_matches() {
    let Some(curl) = require_binary("curl", "apt-get install curl") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(Server::start());
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part");
    let whole = dir.path().join("whole");
    let _guard = rt.enter();
    // The server runs on `rt`'s worker threads while curl runs here.
    let st = Command::new(&curl)
        .args(["-sSf", "-r", "100-199", "-o"])
        .arg(&part)
        .arg(s.url("/agent/vmlinuz"))
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new(&curl)
        .args(["-sSf", "-o"])
        .arg(&whole)
        .arg(s.url("/agent/vmlinuz"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(&part).unwrap(), &s.fx.kernel[100..200]);
    assert_eq!(std::fs::read(&whole).unwrap(), s.fx.kernel);
}

#[tokio::test]
async fn only_listed_files_are_served_and_no_path_leaves_the_directory() {
    let fx = Fixture::new();
    // A secret beside agent_dir, and an unlisted file inside it.
    std::fs::write(fx.store.dir.path().join("secret"), "TOP-SECRET").unwrap();
    std::fs::write(fx.agent_dir.join("unlisted"), "TOP-SECRET").unwrap();
    let s = Server::start_with(fx, |_| {}, None).await;
    for path in [
        "/agent/unlisted",
        "/agent/secret",
        "/agent/../secret",
        "/agent/..%2Fsecret",
        "/agent/%2e%2e%2fsecret",
        "/agent/vmlinuz/../../secret",
        "/agent/.%2E/secret",
        "/agent/%2Fetc%2Fpasswd",
        "/agent/..",
        "/agent/",
        "/agent/VMLINUZ",
        "/agent/vmlinuz%00",
    ] {
        let r = raw_get(&s.base, path).await;
        let status = r.split_whitespace().nth(1).unwrap_or_default();
        assert!(matches!(status, "404" | "400"), "{path}: {r}");
        assert!(
            !r.contains("TOP-SECRET") && !r.contains("root:"),
            "{path}: {r}"
        );
    }
    // A listed file that is missing is a 404 too, not a 500.
    std::fs::remove_file(s.fx.agent_dir.join("initrd.img")).unwrap();
    let (status, _) = s.get("/agent/initrd.img").await;
    assert_eq!(status, 404);
}
