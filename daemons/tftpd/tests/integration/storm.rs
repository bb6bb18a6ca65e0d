//! A rack powered on at once: a thousand simulated PXE clients, each from its own loopback
//! address, ask the real binary for the same boot file in the same instant. Every one must
//! boot (byte-identical, whatever waited beyond `max_transfers`), and tftpd's memory stays
//! bounded.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dragonfly_testkit::{free_port, unprivileged};

use crate::binary::{TFTPD, wait_bound, write_config};
use crate::common::{Tree, random_bytes};
use crate::flood::{pxe_fetch, status_kib};

const CLIENTS: usize = 1000;
/// About an `undionly.kpxe` and a half.
const FILE_BYTES: usize = 128 * 1024;
/// The targets (docs/performance.md): under load, and idle.
const MAX_LOADED_KIB: u64 = 64 * 1024;
const MAX_IDLE_KIB: u64 = 20 * 1024;

/// Client `i`'s own address: 127.100.x.y (all of 127/8 is loopback on Linux).
fn client_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        100,
        (i / 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pxe_clients_at_once_all_boot_in_bounded_memory() {
    let tree = Tree::new();
    let want = Arc::new(random_bytes(FILE_BYTES, 7));
    std::fs::write(tree.root.join("boot.kpxe"), &*want).unwrap();
    dragonfly_testkit::chown_for_unprivileged(&tree.root).unwrap();
    let port = free_port();
    let cfg = write_config(&tree, &format!("127.0.0.1:{port}"));
    let log = tree.dir.path().join("tftpd.log");
    let mut server = tokio::process::Command::from(unprivileged(TFTPD))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = server.id().unwrap();
    assert!(wait_bound(port).await, "tftpd never bound {port}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_before = status_kib(pid, "VmRSS").unwrap();

    // Sample the resident size while the storm runs (VmHWM gives the peak too).
    let peak = Arc::new(AtomicU64::new(idle_before));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            while let Some(rss) = status_kib(pid, "VmRSS") {
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let server_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let want = Arc::clone(&want);
            tokio::spawn(
                async move { pxe_fetch(client_ip(i), server_addr, "boot.kpxe", &want).await },
            )
        })
        .collect();
    let mut failures = vec![];
    let (mut duplicates, mut with_duplicates, mut retried, mut slowest) =
        (0u32, 0usize, 0usize, Duration::ZERO);
    for (i, client) in clients.into_iter().enumerate() {
        match client.await.unwrap() {
            Ok(f) => {
                duplicates += f.duplicates;
                with_duplicates += usize::from(f.duplicates > 0);
                retried += usize::from(f.requests > 1);
                slowest = slowest.max(f.elapsed);
            }
            Err(e) => failures.push(format!("client {i} ({}): {e}", client_ip(i))),
        }
    }
    let elapsed = t0.elapsed();
    let peak_sampled = peak.load(Ordering::Relaxed);
    let hwm = status_kib(pid, "VmHWM").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_after = status_kib(pid, "VmRSS").unwrap();
    sampler.abort();

    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    // The server's own count, from its "sent" lines: retransmissions, and timeouts it later
    // proved spurious.
    let field = |name: &str| -> u64 {
        log_text
            .split_whitespace()
            .filter_map(|w| w.strip_prefix(name)?.parse::<u64>().ok())
            .sum()
    };
    let (resent, spurious) = (field("resent="), field("spurious="));
    let blocks = CLIENTS * (FILE_BYTES / 1468 + 1);
    eprintln!(
        "{CLIENTS} PXE clients x {} KiB at once: {} failed, all done in {elapsed:.2?} \
         (slowest client {slowest:.2?}); {retried} had to repeat their request; duplicates \
         received: {duplicates} of {blocks} blocks, in {with_duplicates} transfers (tftpd: \
         {resent} resent, {spurious} timeouts proven spurious); tftpd RSS idle {:.1} MiB, \
         peak {:.1} MiB (VmHWM {:.1} MiB), after {:.1} MiB",
        FILE_BYTES / 1024,
        failures.len(),
        idle_before as f64 / 1024.0,
        peak_sampled as f64 / 1024.0,
        hwm as f64 / 1024.0,
        idle_after as f64 / 1024.0,
    );
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed:\n{}\n--- tftpd log (tail) ---\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        log_text
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    // The old server resent 1.6 % of its blocks with no loss at all (10 ms timer floor).
    assert!(
        (duplicates as usize) * 100 < blocks,
        "{duplicates} of {blocks} blocks arrived twice: spurious retransmissions"
    );
    assert!(hwm < MAX_LOADED_KIB, "peak RSS {hwm} KiB");
    assert!(idle_before < MAX_IDLE_KIB, "idle RSS {idle_before} KiB");
    assert!(
        idle_after < MAX_IDLE_KIB,
        "RSS after the storm {idle_after} KiB"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("exited within 15 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
