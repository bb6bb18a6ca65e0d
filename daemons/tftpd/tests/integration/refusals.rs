//! What the server refuses, and how it answers: traversal, writes, other modes, overload.

use std::time::Duration;

use dragonfly_tftpd::packet::Packet;

use crate::common::{Client, Raw, Server, Tree, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_are_refused() {
    let tree = Tree::new();
    std::fs::write(tree.dir.path().join("secret"), "outside the root").unwrap();
    std::os::unix::fs::symlink("../secret", tree.root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tree.root.join("passwd")).unwrap();
    std::fs::create_dir(tree.root.join("dir")).unwrap();
    let server = Server::start(config(&[&tree.root], |_| {}), None);

    // (name, TFTP error code): 1 file not found, 2 access violation.
    let cases: [(&[u8], u16); 8] = [
        (b"../etc/passwd", 2),
        (b"dir/../../secret", 2),
        (b"//etc/passwd", 2),
        // One leading slash is stripped: this is <root>/etc/passwd, which does not exist.
        (b"/etc/passwd", 1),
        (b"escape", 2),
        (b"passwd", 2),
        (b"dir", 2),
        (b"small.bin\\..\\x", 2),
    ];
    for (name, code) in cases {
        let raw = Raw::new(server.addr).await;
        raw.send(&Raw::rrq(name)).await;
        let (got, message) = raw.error().await;
        assert_eq!(got, code, "{}: {message}", String::from_utf8_lossy(name));
    }

    // A NUL ends the name; what follows is then an invalid mode: no answer at all.
    let raw = Raw::new(server.addr).await;
    raw.send(b"\x00\x01small.bin\x00../../etc/passwd\x00octet\x00")
        .await;
    assert!(
        raw.recv(|_, _| ()).await.is_none(),
        "answered a NUL-smuggling request"
    );

    // Real clients see failures too, and nothing is written.
    if Client::Curl.available() {
        for name in ["../secret", "escape"] {
            let out = tree.scratch.join("out");
            assert!(!Client::Curl.fetch(server.addr, name, &out).await, "{name}");
            assert!(
                std::fs::read(&out).map_or(true, |b| b.is_empty()),
                "{name}: got data"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_netascii_are_refused() {
    let tree = Tree::new();
    let server = Server::start(config(&[&tree.root], |_| {}), None);
    let raw = Raw::new(server.addr).await;
    raw.send(b"\x00\x02new.bin\x00octet\x00").await;
    assert_eq!(raw.error().await.0, 2);
    raw.send(b"\x00\x01small.bin\x00netascii\x00").await;
    let (code, message) = raw.error().await;
    assert_eq!(code, 0);
    assert!(message.contains("octet"), "{message}");
    assert!(!tree.root.join("new.bin").exists());
}

/// Beyond the limit a request waits for a slot rather than being told "busy" (PXE firmware
/// gives up on an ERROR, not on silence); a transfer whose client never answers gets its first
/// block a few times, no ERROR, and frees its slot after `first_ack_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_limit_wait_and_unanswered_transfers_end_quietly() {
    let tree = Tree::new();
    let server = Server::start(
        config(&[&tree.root], |raw| {
            raw.max_transfers = Some(1);
            raw.first_ack_timeout = Some("2s".into());
        }),
        None,
    );
    // The first client takes the only slot and never acknowledges.
    let first = Raw::new(server.addr).await;
    first.send(&Raw::rrq(b"small.bin")).await;
    let tid = first
        .recv(|p, from| {
            assert!(matches!(p, Packet::Data { block: 1, .. }), "{p:?}");
            from
        })
        .await
        .unwrap();
    assert_ne!(
        tid.port(),
        server.addr.port(),
        "the transfer must use a new TID"
    );
    // The second waits for the slot, and gets the file's first block once it is free.
    let second = Raw::new(server.addr).await;
    second.send(&Raw::rrq(b"small.bin")).await;
    let served = second
        .recv(|p, _| matches!(p, Packet::Data { block: 1, .. }))
        .await;
    assert_eq!(served, Some(true), "the waiting request was not served");
    // By then the first transfer had ended: its client got block 1 a few times, no ERROR.
    let mut sends = 1;
    while let Some(block1) = tokio::time::timeout(
        Duration::from_millis(300),
        first.recv(|p, _| matches!(p, Packet::Data { block: 1, .. })),
    )
    .await
    .ok()
    .flatten()
    {
        assert!(block1, "the unanswered client was sent something else");
        sends += 1;
    }
    assert_eq!(sends, dragonfly_tftpd::transfer::FIRST_SENDS);
}
