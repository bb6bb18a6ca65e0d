//! A pair of network namespaces joined by a veth, removed on drop (even on panic).
//!
//! Server side `S` holds `10.A.B.1/24`, client side `C` holds `10.A.B.2/24`, with A.B unique per
//! test process and test. Nothing here touches a host interface: a DHCP server must never run
//! on one in a test.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) struct NetPair {
    pub(crate) server_ns: String,
    pub(crate) client_ns: String,
    pub(crate) server_if: String,
    pub(crate) client_if: String,
    /// 10.A.B.0/24.
    pub(crate) prefix: [u8; 3],
}

pub(crate) fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl NetPair {
    pub(crate) fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 100_000);
        // Second octet from the pid, third from the counter: unique across parallel tests.
        let prefix = [
            10,
            u8::try_from(150 + pid % 100).unwrap(),
            u8::try_from(n * 2 % 250).unwrap(),
        ];
        let p = Self {
            server_ns: format!("dfdhs{tag}"),
            client_ns: format!("dfdhc{tag}"),
            server_if: format!("dfs{tag}"),
            client_if: format!("dfc{tag}"),
            prefix,
        };
        sh(&["ip", "netns", "add", &p.server_ns]);
        sh(&["ip", "netns", "add", &p.client_ns]);
        sh(&[
            "ip",
            "link",
            "add",
            &p.server_if,
            "netns",
            &p.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &p.client_if,
            "netns",
            &p.client_ns,
        ]);
        let s = format!("{}/24", p.server_ip());
        let c = format!("{}/24", p.client_ip());
        p.exec_s(&["ip", "addr", "add", &s, "dev", &p.server_if]);
        p.exec_c(&["ip", "addr", "add", &c, "dev", &p.client_if]);
        for (ns, dev) in [(&p.server_ns, &p.server_if), (&p.client_ns, &p.client_if)] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Our daemon runs as nobody in the server namespace and binds 67/4011 itself.
        p.exec_s(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_unprivileged_port_start=0",
        ]);
        p
    }

    pub(crate) fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], last)
    }
    pub(crate) fn server_ip(&self) -> Ipv4Addr {
        self.ip(1)
    }
    pub(crate) fn client_ip(&self) -> Ipv4Addr {
        self.ip(2)
    }
    /// The second subnet, reached through a "relay" address on the client side.
    pub(crate) fn relay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2] + 1, 1)
    }

    pub(crate) fn exec_s(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", &self.server_ns];
        v.extend_from_slice(args);
        sh(&v)
    }
    pub(crate) fn exec_c(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", &self.client_ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Adds the relay address on the client side and a route to it on the server side.
    pub(crate) fn add_relay(&self) {
        let r = format!("{}/24", self.relay_ip());
        self.exec_c(&["ip", "addr", "add", &r, "dev", &self.client_if]);
        let net = format!(
            "{}/24",
            Ipv4Addr::from(u32::from(self.relay_ip()) & 0xffff_ff00)
        );
        let via = self.client_ip().to_string();
        self.exec_s(&["ip", "route", "add", &net, "via", &via]);
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A UDP socket created inside namespace `ns` (it stays there whichever thread uses it).
pub(crate) fn udp_in(ns: &str, bind: SocketAddrV4, device: Option<&str>) -> UdpSocket {
    let ns = ns.to_owned();
    let device = device.map(str::to_owned);
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind(bind).unwrap();
        s.set_broadcast(true).unwrap();
        if let Some(d) = device {
            nix::sys::socket::setsockopt(
                &s,
                nix::sys::socket::sockopt::BindToDevice,
                &std::ffi::OsString::from(d),
            )
            .unwrap();
        }
        s
    })
    .join()
    .unwrap()
}
