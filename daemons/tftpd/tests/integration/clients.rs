//! Real clients (tftp-hpa, atftp with windowsize, curl) fetch byte-identical files, and every
//! transfer is reported on the bus.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::common::{Client, MIB, Server, Tree, config};

const IPXE: &str = "/usr/lib/ipxe";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_fetch_byte_identical_files() {
    let tree = Tree::new();
    let server = Server::start(config(&[&tree.root, Path::new(IPXE)], |_| {}), None);
    let mut files = vec![
        ("small.bin", tree.root.join("small.bin")),
        ("large.bin", tree.root.join("large.bin")),
    ];
    let undionly = Path::new(IPXE).join("undionly.kpxe");
    if undionly.is_file() {
        files.push(("undionly.kpxe", undionly));
    } else {
        eprintln!(
            "note: {} absent (package ipxe): not fetched",
            undionly.display()
        );
    }
    let mut tested = 0;
    for client in Client::ALL {
        if !client.available() {
            continue;
        }
        for (name, source) in &files {
            let out = tree.scratch.join(format!("{client:?}-{name}"));
            let t0 = Instant::now();
            assert!(
                client.fetch(server.addr, name, &out).await,
                "{client:?} failed to fetch {name}"
            );
            let want = std::fs::read(source).unwrap();
            let got = std::fs::read(&out).unwrap();
            assert!(
                got == want,
                "{client:?}: {name} differs ({} bytes vs {})",
                got.len(),
                want.len()
            );
            eprintln!(
                "{client:?} {name}: {} bytes in {:?}",
                got.len(),
                t0.elapsed()
            );
            tested += 1;
        }
    }
    assert!(
        tested > 0 || std::env::var_os("CI").is_none(),
        "no client tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_at_once_all_get_the_file() {
    if !Client::Curl.available() {
        return;
    }
    let tree = Tree::new();
    let server = Server::start(config(&[&tree.root], |_| {}), None);
    let want = std::fs::read(tree.root.join("small.bin")).unwrap();
    let fetches = (0..50).map(|i| {
        let out = tree.scratch.join(format!("c{i}"));
        async move {
            assert!(
                Client::Curl.fetch(server.addr, "small.bin", &out).await,
                "client {i}"
            );
            out
        }
    });
    let t0 = Instant::now();
    let outs = futures::future::join_all(fetches).await;
    let elapsed = t0.elapsed();
    for out in outs {
        assert!(
            std::fs::read(&out).unwrap() == want,
            "{} differs",
            out.display()
        );
    }
    eprintln!(
        "50 x 1 MiB on loopback: {elapsed:?}, {:.1} MiB/s aggregate",
        50.0 / elapsed.as_secs_f64()
    );
    let _ = MIB;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transfer_is_published_as_a_cloudevent() {
    let Some(binary) = dragonfly_testkit::require_nats_servers().into_iter().next() else {
        return;
    };
    if !Client::Curl.available() {
        return;
    }
    let nats = dragonfly_testkit::NatsServer::start_with(&binary.path)
        .await
        .unwrap();
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = watcher
        .subscribe("dragonfly.tftp.transferred")
        .await
        .unwrap();
    watcher.flush().await.unwrap();

    let tree = Tree::new();
    let server = Server::start(config(&[&tree.root], |_| {}), Some(nats.url()));
    let out = tree.scratch.join("small");
    assert!(Client::Curl.fetch(server.addr, "small.bin", &out).await);
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(event["type"], "computer.dragonfly.tftp.transferred");
    let data = &event["data"];
    assert_eq!(data["file"], "small.bin");
    assert_eq!(data["bytes"], MIB as u64);
    assert_eq!(data["complete"], true);
    assert!(
        data["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{data}"
    );
    assert!(data.get("error").is_none(), "{data}");

    // A refused request is not a transfer: no event.
    assert!(!Client::Curl.fetch(server.addr, "absent", &out).await);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "a refusal was published"
    );
}
