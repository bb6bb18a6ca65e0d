//! A 10 %-loss link: the server binary in one network namespace, curl in another, a veth
//! between them, and nftables dropping 10 % of what each side receives (no netem here).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dragonfly_testkit::{require_binary, require_root, unprivileged};

use crate::binary::{TFTPD, write_config};
use crate::common::Tree;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Two namespaces joined by a veth (`10.200.0.1` server side, `.2` client side). Dropping it
/// kills every process inside and deletes both namespaces, even after a panic.
pub(crate) struct NetnsPair {
    pub(crate) server: String,
    pub(crate) client: String,
    /// The veth ends: (server side, client side).
    pub(crate) devices: (String, String),
    children: Vec<Child>,
}

pub(crate) fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

impl NetnsPair {
    pub(crate) fn new(loss_percent: u8) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id());
        let (vs, vc) = (format!("dfv{tag}s"), format!("dfv{tag}c"));
        let pair = Self {
            server: format!("dft{tag}s"),
            client: format!("dft{tag}c"),
            devices: (vs.clone(), vc.clone()),
            children: vec![],
        };
        assert!(vs.len() <= 15, "{vs} is too long for an interface name");
        ip(&["netns", "add", &pair.server]);
        ip(&["netns", "add", &pair.client]);
        ip(&[
            "link",
            "add",
            &vs,
            "netns",
            &pair.server,
            "type",
            "veth",
            "peer",
            "name",
            &vc,
            "netns",
            &pair.client,
        ]);
        for (ns, dev, addr) in [
            (&pair.server, &vs, "10.200.0.1/24"),
            (&pair.client, &vc, "10.200.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            if loss_percent > 0 {
                let rules = format!(
                    "table netdev loss {{\n chain in {{\n  type filter hook ingress device \"{dev}\" priority 0;\n  numgen random mod 100 < {loss_percent} counter drop\n }}\n}}\n"
                );
                let mut nft = Command::new("ip")
                    .args(["netns", "exec", ns, "nft", "-f", "-"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
                assert!(nft.wait().unwrap().success(), "nft in {ns}");
            }
        }
        pair
    }

    /// Waits (up to 10 s) until something listens on UDP `port` inside namespace `ns`: a server
    /// just spawned on a loaded machine may take a while, and a request sent before it binds
    /// gets an ICMP error that makes clients give up at once.
    pub(crate) fn wait_udp_bound(&self, ns: &str, port: u16) -> bool {
        for _ in 0..400 {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "ss", "-Huln"])
                .arg(format!("sport = :{port}"))
                .output()
                .unwrap();
            if !out.stdout.is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Starts `cmd` inside namespace `ns`; it is killed when the pair is dropped.
    pub(crate) fn spawn(&mut self, ns: &str, cmd: &Command) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.server, &self.client] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_megabyte_crosses_a_ten_percent_loss_link_intact() {
    if !require_root()
        || require_binary("nft", "apt-get install nftables").is_none()
        || require_binary("curl", "apt-get install curl").is_none()
    {
        return;
    }
    let tree = Tree::new();
    let cfg = write_config(&tree, "10.200.0.1:6969");
    let mut pair = NetnsPair::new(10);
    let mut server = unprivileged(TFTPD);
    server.arg("--config").arg(&cfg);
    pair.spawn(&pair.server.clone(), &server);
    assert!(
        pair.wait_udp_bound(&pair.server, 6969),
        "tftpd never bound 6969"
    );

    let out = tree.scratch.join("lossy");
    let t0 = Instant::now();
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client,
            "curl",
            "-sS",
            "--max-time",
            "120",
        ])
        .args(["--connect-timeout", "3", "--tftp-blksize", "1468", "-o"])
        .arg(&out)
        .arg("tftp://10.200.0.1:6969/small.bin")
        .status()
        .unwrap();
    let elapsed = t0.elapsed();
    assert!(status.success(), "curl failed after {elapsed:?}");
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(tree.root.join("small.bin")).unwrap(),
        "the file arrived damaged"
    );
    eprintln!("1 MiB over a 10 %-loss link with curl (timeout 1): {elapsed:?}");
}
