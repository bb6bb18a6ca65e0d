//! `/images/{name}`: the library's local images, served to agents that present a live boot
//! token (sendfile path and router alike), with ranges, validators and refusals.

use dragonfly_core::image::{ImagePhase, ImageStatus};

use crate::common::{Fixture, Server, bytes, kernel_arg, mac, register, sight_here};

async fn add(s: &Server, name: &str, file: &str, public: bool, phase: ImagePhase) {
    let path = s.fx.store.dir.path().join("images").join(file);
    let meta = std::fs::metadata(&path).unwrap();
    let status = ImageStatus {
        phase,
        ..dragonfly_store::images::ready_status(&meta)
    };
    s.db.images()
        .create(
            name.into(),
            dragonfly_store::images::local_spec(file, public),
            status,
            jiff::Timestamp::now(),
        )
        .await
        .unwrap();
}

/// A fresh boot of machine `n`: its token.
async fn boot(s: &Server, n: u8) -> String {
    sight_here(&s.db, mac(n)).await;
    let (status, script) = s.get(&format!("/boot/{}?platform=pcbios", mac(n))).await;
    assert_eq!(status, 200, "{script}");
    kernel_arg(&script, "dragonfly.token").unwrap().to_owned()
}

#[tokio::test]
async fn images_go_to_live_boots_only() {
    let fx = Fixture::new();
    let dir = fx.store.dir.path().join("images");
    std::fs::create_dir(&dir).unwrap();
    let data = bytes(2 << 20, 9);
    std::fs::write(dir.join("os.img"), &data).unwrap();
    std::fs::write(dir.join("pub.img"), b"public bytes").unwrap();
    std::fs::write(dir.join("wip.img"), b"x").unwrap();
    let s = Server::start_with(fx, |r| r.images_dir = Some(dir.clone()), None).await;
    add(&s, "os", "os.img", false, ImagePhase::Ready).await;
    add(&s, "pub", "pub.img", true, ImagePhase::Ready).await;
    add(&s, "wip", "wip.img", false, ImagePhase::Pending).await;
    register(&s.db, mac(1)).await;
    let first = boot(&s, 1).await;

    let get = |path: &str, token: Option<&str>, range: Option<&str>| {
        let mut r = s.http.get(s.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(range) = range {
            r = r.header("range", range);
        }
        r.send()
    };
    // No token, a forged one: 401 saying how to authenticate.
    for token in [None, Some("dfb1.AAAA.BBBB")] {
        let r = get("/images/os", token, None).await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
    }
    let r = get("/images/os", Some(&first), None).await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    let r = get("/images/os", Some(&first), Some("bytes=100-199"))
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[100..200]);

    // The router's streamed path (a percent-encoded name) answers the same.
    let r = get("/images/%6fs", Some(&first), None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), data.len());

    // A new boot of the machine ends the old boot's session: its token no longer opens.
    let second = boot(&s, 1).await;
    assert_eq!(
        get("/images/os", Some(&first), None)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        get("/images/os", Some(&second), None)
            .await
            .unwrap()
            .status(),
        200
    );

    // Public: no token needed. Not ready, unknown, not a name: 404.
    let r = get("/images/pub", None, None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"public bytes");
    for path in ["/images/wip", "/images/nothing", "/images/..", "/images/UP"] {
        assert_eq!(
            get(path, Some(&second), None).await.unwrap().status(),
            404,
            "{path}"
        );
    }

    // Replaced in place after it was checksummed: refused, not served under the old sum.
    std::fs::write(dir.join("os.img"), b"something else").unwrap();
    assert_eq!(
        get("/images/os", Some(&second), None)
            .await
            .unwrap()
            .status(),
        500
    );
}
