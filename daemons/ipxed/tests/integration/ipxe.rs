//! `GET /ipxe/{file}`: the iPXE binaries UEFI HTTP-boot firmware fetches. Served like agent
//! files (validators, ranges, HEAD); only regular files directly in `ipxe_dir`, never through
//! a symlink, a `..` or an absolute name, and a missing directory is a 404, not a failure.

use std::path::PathBuf;

use crate::common::{Fixture, Server, bytes, raw_get};

/// A fixture whose `ipxe_dir` holds `ipxe.efi` (and returns its bytes), with a secret beside
/// the directory for the escape attempts to look for.
fn with_ipxe_dir() -> (Fixture, PathBuf, Vec<u8>) {
    let fx = Fixture::new();
    let dir = fx.store.dir.path().join("ipxe");
    std::fs::create_dir(&dir).unwrap();
    let efi = bytes(200_000, 7);
    std::fs::write(dir.join("ipxe.efi"), &efi).unwrap();
    std::fs::write(fx.store.dir.path().join("secret"), "TOP-SECRET").unwrap();
    (fx, dir, efi)
}

async fn start(fx: Fixture, dir: PathBuf) -> Server {
    Server::start_with(fx, move |r| r.ipxe_dir = Some(dir), None).await
}

#[tokio::test]
async fn serves_a_file_of_ipxe_dir_like_an_agent_file() {
    let (fx, dir, efi) = with_ipxe_dir();
    let s = start(fx, dir).await;
    let r = s.http.get(s.url("/ipxe/ipxe.efi")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-length"], efi.len().to_string());
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert!(h["etag"].to_str().unwrap().starts_with('"'));
    assert!(h["last-modified"].to_str().unwrap().ends_with(" GMT"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), efi.as_slice());

    let r = s
        .http
        .get(s.url("/ipxe/ipxe.efi"))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", efi.len())
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &efi[1000..2000]);

    let r = s
        .http
        .get(s.url("/ipxe/ipxe.efi"))
        .header("range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    let head = s.http.head(s.url("/ipxe/ipxe.efi")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], efi.len().to_string());
    assert_eq!(head.headers()["etag"], h["etag"]);
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_names_and_escapes_are_404() {
    let (fx, dir, _) = with_ipxe_dir();
    let outside = fx.store.dir.path().join("secret");
    // Symlinks out of the directory (relative and absolute), and one that stays inside: none
    // is followed (O_NOFOLLOW), whatever it points at.
    std::os::unix::fs::symlink("../secret", dir.join("relative.efi")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("absolute.efi")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    std::os::unix::fs::symlink("ipxe.efi", dir.join("inside.efi")).unwrap();
    // Not regular files: a directory and a FIFO (which must not hang the request).
    std::fs::create_dir(dir.join("qemu")).unwrap();
    std::fs::write(dir.join("qemu/secret"), "TOP-SECRET").unwrap();
    nix::unistd::mkfifo(
        &dir.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::write(dir.join(".hidden"), "TOP-SECRET").unwrap();
    let s = start(fx, dir).await;
    for path in [
        "/ipxe/nope.efi",
        "/ipxe/IPXE.EFI",
        "/ipxe/relative.efi",
        "/ipxe/absolute.efi",
        "/ipxe/passwd",
        "/ipxe/inside.efi",
        "/ipxe/qemu",
        "/ipxe/qemu/secret",
        "/ipxe/qemu%2Fsecret",
        "/ipxe/fifo",
        "/ipxe/.hidden",
        "/ipxe/..",
        "/ipxe/%2e%2e",
        "/ipxe/../secret",
        "/ipxe/..%2Fsecret",
        "/ipxe/%2e%2e%2fsecret",
        "/ipxe/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/ipxe/%2Fetc%2Fpasswd",
        "/ipxe//etc/passwd",
        "/ipxe/ipxe.efi%00",
        "/ipxe/",
    ] {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), raw_get(&s.base, path))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer"));
        let status = r.split_whitespace().nth(1).unwrap_or_default();
        assert!(matches!(status, "404" | "400"), "{path}: {r}");
        assert!(
            !r.contains("TOP-SECRET") && !r.contains("root:"),
            "{path}: {r}"
        );
    }
    // The file itself is still there for the right name.
    assert_eq!(s.get("/ipxe/ipxe.efi").await.0, 200);
}

#[tokio::test]
async fn a_missing_ipxe_dir_is_404_not_an_error() {
    let fx = Fixture::new();
    let dir = fx.store.dir.path().join("no-such-dir");
    let s = start(fx, dir).await;
    assert_eq!(s.get("/ipxe/ipxe.efi").await.0, 404);
    // The rest of ipxed is unaffected.
    assert_eq!(s.get("/agent/vmlinuz").await.0, 200);
    assert_eq!(s.get("/healthz").await.0, 200);
}
