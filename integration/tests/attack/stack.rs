//! The attacked stack: every daemon in a lab namespace, an attacker's namespace beside it.

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_integration::{DhcpdConfig, Lab, LabConfig, Peer};

use crate::common::{create_admin, start_dragonfly_configured};

/// The attacker's address on the lab's bridge (`br0` is 10.99.0.1/24).
pub(crate) const ATTACKER_ADDR: &str = "10.99.0.66";

/// The running stack and where to reach it.
pub(crate) struct AttackLab {
    pub(crate) lab: Lab,
    /// The lab's NATS URL, as seen from inside the lab's namespace.
    pub(crate) nats: String,
    /// apid's operators' listener, `http://10.99.0.1:3000`.
    pub(crate) apid: String,
    /// apid's agents' listener, `http://10.99.0.1:3001`.
    pub(crate) apid_agent: String,
    /// ipxed's base URL, `http://10.99.0.1:8080`.
    pub(crate) ipxed: String,
    /// The attacker's namespace (a peer of the lab's bridge at [`ATTACKER_ADDR`]).
    pub(crate) attacker: String,
    /// The lab's database.
    pub(crate) store: PathBuf,
}

impl AttackLab {
    /// Starts everything, `None` (after `SKIP:`) when root, `nats-server` or a daemon binary
    /// is missing outside CI. dhcpd runs in reservation mode with the lab's pool.
    pub(crate) fn start() -> Option<AttackLab> {
        Self::start_configured(|_| {})
    }

    /// [`AttackLab::start`] with the lab's configuration changed by `tweak` first.
    pub(crate) fn start_configured(tweak: impl FnOnce(&mut LabConfig)) -> Option<AttackLab> {
        if !dragonfly_testkit::require_root()
            || dragonfly_testkit::require_nats_servers().is_empty()
        {
            return None;
        }
        let mut attacker = String::new();
        let mut lab = Lab::with_network(|n| {
            attacker = format!("{}a", n.name);
            n.peers.push(Peer {
                namespace: attacker.clone(),
                addr: format!("{ATTACKER_ADDR}/24"),
            });
        });
        // ipxed serves the agent's files from here; no VM boots them in this suite.
        let agent: PathBuf = lab.dir().join("agent");
        std::fs::create_dir_all(&agent).unwrap();
        for name in ["vmlinuz", "initrd.img"] {
            std::fs::write(agent.join(name), b"not a kernel").unwrap();
        }
        create_admin(&mut lab);
        let stack = start_dragonfly_configured(
            &mut lab,
            &agent,
            DhcpdConfig::lab("reservation"),
            true,
            tweak,
        );
        let apid = stack.apid.clone().unwrap();
        let apid_agent = stack.apid_agent.clone().unwrap();
        let store = lab.store();
        let this = AttackLab {
            nats: stack.nats,
            store,
            lab,
            apid,
            apid_agent,
            ipxed: "http://10.99.0.1:8080".to_owned(),
            attacker,
        };
        this.wait_until_serving();
        Some(this)
    }

    /// Runs `f` on a thread inside the attacker's namespace: every socket it opens is the
    /// attacker's.
    pub(crate) fn as_attacker<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_namespace(&self.attacker, f)
    }

    /// Runs `f` inside the lab's namespace: a legitimate client on the daemons' own host.
    pub(crate) fn as_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.lab.in_namespace(f)
    }

    /// Records in the store that dhcpd answered each MAC's network boot just now, offering it
    /// `address` (`None`: as a ProxyDHCP answer, which names no address). This is what dhcpd
    /// writes before a PXE client hears from it; tests use it instead of a DHCP exchange.
    pub(crate) fn sight(&self, macs: &[String], address: Option<std::net::Ipv4Addr>) {
        let store = dragonfly_store::BlockingDb::open(&self.store).unwrap();
        for mac in macs {
            store
                .block_on(store.db().boot().sighted(dragonfly_store::boot::Sighting {
                    mac: mac.parse().unwrap(),
                    seen_at: jiff::Timestamp::now(),
                    address,
                    via: dragonfly_store::boot::SightedVia::Reservation,
                }))
                .unwrap();
        }
        drop(store);
        dragonfly_testkit::chown_for_unprivileged(self.store.parent().unwrap()).unwrap();
    }

    /// `GET /boot/{mac}` from ipxed for each MAC, from the attacker's namespace or the lab's:
    /// the token on each script's kernel line, if it has one.
    pub(crate) fn boot_tokens(&self, macs: &[String], from_attacker: bool) -> Vec<Option<String>> {
        let ipxed = self.ipxed.clone();
        let fetch = || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            macs.iter()
                .map(|mac| {
                    let r = client
                        .get(format!("{ipxed}/boot/{mac}?platform=efi"))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200, "/boot/{mac}");
                    let script = r.text().unwrap();
                    script
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("dragonfly.token="))
                        .map(str::to_owned)
                })
                .collect()
        };
        if from_attacker {
            self.as_attacker(fetch)
        } else {
            self.as_client(fetch)
        }
    }

    /// Boot tokens for `macs` the way a booting machine gets one: dhcpd saw it boot (a
    /// sighting without an address, as in ProxyDHCP), then ipxed served its script.
    pub(crate) fn agent_tokens(&self, macs: &[String]) -> Vec<String> {
        self.sight(macs, None);
        self.boot_tokens(macs, false)
            .into_iter()
            .zip(macs)
            .map(|(t, mac)| t.unwrap_or_else(|| panic!("ipxed minted no token for {mac}")))
            .collect()
    }

    /// [`AttackLab::agent_tokens`] for one MAC.
    pub(crate) fn agent_token(&self, mac: &str) -> String {
        self.agent_tokens(&[mac.to_owned()]).remove(0)
    }

    /// A command run in the attacker's namespace (`ip netns exec`).
    pub(crate) fn attacker_command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.attacker, program]);
        cmd
    }

    /// apid and ipxed are socket-activated: start both with a first request, from the
    /// attacker's side (which also proves the attacker reaches them).
    fn wait_until_serving(&self) {
        let urls = [
            format!("{}/api/health", self.apid),
            format!("{}/api/health", self.apid_agent),
            format!("{}/healthz", self.ipxed),
        ];
        self.as_attacker(|| {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for url in &urls {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                loop {
                    match client.get(url).send() {
                        Ok(r) if r.status().is_success() => break,
                        other => {
                            assert!(
                                std::time::Instant::now() < deadline,
                                "{url} never answered: {other:?}"
                            );
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            }
        });
    }
}

/// Runs `f` on a thread that entered the network namespace `name`.
pub(crate) fn in_namespace<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsFd;
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// The harness itself: the stack starts, both HTTP daemons answer the attacker, and an
/// operator can log in from the lab.
#[test]
fn the_attacked_stack_starts_and_serves_both_sides() {
    let Some(lab) = AttackLab::start() else {
        return;
    };
    let apid = lab.apid.clone();
    let status = lab.as_client(|| {
        reqwest::blocking::Client::new()
            .post(format!("{apid}/api/auth/login"))
            .json(&serde_json::json!({"username": crate::common::ADMIN, "password": crate::common::PASSWORD}))
            .send()
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "operator login: {status}");
    let out = lab
        .attacker_command("ip")
        .args(["-4", "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(ATTACKER_ADDR),
        "the attacker's eth0: {shown}"
    );
    println!(
        "stack up: apid {}, ipxed {}, NATS {}",
        lab.apid, lab.ipxed, lab.nats
    );
}
