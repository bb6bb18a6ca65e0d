//! Bringing up the boot interface: the NIC whose MAC the boot server put on the command line.
//!
//! The agent finds the interface by MAC (names differ between kernels and machines), sets it
//! up, waits for carrier (an e1000 takes ~2 s after link-up, and DHCP sent before that is
//! lost), then runs busybox `udhcpc` with the initramfs's `/etc/udhcpc.script`, which applies
//! the lease with `ip`. It keeps trying until it has an address: a machine without network
//! can do nothing, and saying so on the console beats a reboot loop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use dragonfly_core::{Chain, MacAddr};

use crate::Console;
use crate::register::sleep_unless_stopped;

/// The interface in `<root>/sys/class/net` with MAC `mac`, if any.
pub fn interface_with_mac(root: &Path, mac: MacAddr) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("sys/class/net"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        std::fs::read_to_string(root.join("sys/class/net").join(n).join("address"))
            .ok()
            .and_then(|a| a.trim().parse::<MacAddr>().ok())
            == Some(mac)
    })
}

fn run(console: &dyn Console, program: &str, args: &[&str]) -> bool {
    match Command::new(program).args(args).status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            console.say(&format!("{program} {} failed ({s})", args.join(" ")));
            false
        }
        Err(e) => {
            console.say(&format!("cannot run {program}: {}", Chain(&e)));
            false
        }
    }
}

/// Finds, sets up and configures (DHCP) the boot NIC; returns its name once it has an
/// address. Retries forever (until `stop`), saying why on the console.
pub fn bring_up(
    mac: MacAddr,
    dhcp_script: &Path,
    console: &dyn Console,
    stop: &AtomicBool,
) -> Option<String> {
    let root = PathBuf::from("/");
    let started = Instant::now();
    let mut warned = false;
    let ifname = loop {
        if let Some(n) = interface_with_mac(&root, mac) {
            break n;
        }
        if !warned && started.elapsed() > Duration::from_secs(5) {
            console.say(&format!(
                "PROBLEM: no network card with MAC {mac} (the one this machine booted from). \
                 Its driver may be missing from the agent image. Still looking."
            ));
            warned = true;
        }
        sleep_unless_stopped(Duration::from_millis(200), stop);
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
    };
    run(console, "ip", &["link", "set", "lo", "up"]);
    let mut round = 0u32;
    loop {
        run(console, "ip", &["link", "set", &ifname, "up"]);
        let carrier = root.join("sys/class/net").join(&ifname).join("carrier");
        let t0 = Instant::now();
        while !std::fs::read_to_string(&carrier).is_ok_and(|c| c.trim() == "1")
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        if t0.elapsed() >= Duration::from_secs(10) {
            console.say(&format!(
                "PROBLEM: no link on {ifname} ({mac}): is the cable plugged in? Still trying."
            ));
        }
        console.say(&format!(
            "asking for an address on {ifname} ({mac}) by DHCP …"
        ));
        let script = dhcp_script.to_string_lossy();
        // -n: give up after the tries; -q: quit once bound; -t/-T: 5 tries 1 s apart
        // (the default 3 s gap doubles a lost first DISCOVER's cost).
        if run(
            console,
            "udhcpc",
            &[
                "-i", &ifname, "-n", "-q", "-t", "5", "-T", "1", "-s", &script,
            ],
        ) {
            return Some(ifname);
        }
        round += 1;
        let wait = Duration::from_secs(u64::from(round.min(6)) * 5);
        console.say(&format!(
            "PROBLEM: no DHCP answer on {ifname}. Is the boot server running? Trying again in \
             {} s.",
            wait.as_secs()
        ));
        sleep_unless_stopped(wait, stop);
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_boot_nic_by_mac() {
        let root = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/qemu-vm"
        ));
        let mac = "52:54:00:df:00:02".parse().unwrap();
        assert_eq!(interface_with_mac(root, mac).as_deref(), Some("enp0s4"));
        let other = "52:54:00:df:00:99".parse().unwrap();
        assert_eq!(interface_with_mac(root, other), None);
    }
}
