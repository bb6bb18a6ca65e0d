//! An `ipmi_sim` BMC on 127.0.0.1, with a chassis whose power and boot device live in files.
//!
//! ipmi_sim has no power state of its own: it asks a `chassis_control` program (`prog get
//! power`, `prog set power "1"`, `prog set boot "pxe"` …). Ours keeps each value in a file and
//! appends every call to a log, so a test sees what the BMC was asked to do, in order.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test set-up: a failure panics, as each `# Panics` says"
)]

use std::fs;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, free_port, require_binary, wait_for};

/// The BMC's administrator.
pub const USER: &str = "dfadmin";
/// Its password.
pub const PASSWORD: &str = "pw-Xq7ZmR2v";

const CHASSIS: &str = r#"#!/bin/sh
# chassis DIR get NAME… | set NAME VALUE… — ipmi_sim's chassis_control program.
dir=$1; shift; op=$1; shift
echo "$op $*" >> "$dir/log"
if [ "$op" = get ]; then
    for name in "$@"; do
        value=$(cat "$dir/$name" 2>/dev/null)
        case $name in
            boot) echo "boot:${value:-default}" ;;
            *) echo "$name:${value:-0}" ;;
        esac
    done
else
    while [ $# -ge 2 ]; do
        case $1 in
            shutdown) echo 0 > "$dir/power" ;;   # the OS "shuts down" at once
            reset) ;;
            *) echo "$2" > "$dir/$1" ;;
        esac
        shift 2
    done
fi
"#;

/// A running `ipmi_sim`, killed on drop.
#[derive(Debug)]
pub struct IpmiSim {
    child: Child,
    /// Its UDP port on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
    /// The `ipmitool` found.
    pub ipmitool: PathBuf,
}

impl IpmiSim {
    /// Starts ipmi_sim, or returns `None` (after printing why) when ipmi_sim or ipmitool is
    /// not installed outside CI.
    ///
    /// # Panics
    /// When it cannot be set up or does not start.
    pub async fn start() -> Option<Self> {
        let ipmi_sim = require_binary("ipmi_sim", "apt-get install openipmi")?;
        let ipmitool = require_binary("ipmitool", "apt-get install ipmitool")?;
        let dir = TempDir::new().unwrap();
        let chassis_dir = dir.path().join("chassis");
        fs::create_dir(&chassis_dir).unwrap();
        fs::create_dir(dir.path().join("state")).unwrap();
        let script = dir.path().join("chassis.sh");
        fs::write(&script, CHASSIS).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let lan_conf = format!(
            r#"name "dragonfly"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script} {chassis}"
  user 2 true "{USER}" "{PASSWORD}" admin 10 none md2 md5 straight
"#,
            script = script.display(),
            chassis = chassis_dir.display(),
        );
        fs::write(dir.path().join("lan.conf"), lan_conf).unwrap();
        // The BMC is the management controller at IPMB address 0x20.
        fs::write(
            dir.path().join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n",
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("ipmi_sim.out")).unwrap();
        let child = Command::new(ipmi_sim)
            .arg("-c")
            .arg(dir.path().join("lan.conf"))
            .arg("-f")
            .arg(dir.path().join("sim.emu"))
            .arg("-s")
            .arg(dir.path().join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sim = Self {
            child,
            port,
            dir,
            ipmitool,
        };
        // Ready once its LAN socket is bound: then our bind of the same port fails.
        let ready = wait_for(Duration::from_secs(20), || {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err()
                || sim.child.try_wait().ok().flatten().is_some()
        })
        .await;
        if let Some(status) = sim.child.try_wait().unwrap() {
            panic!("ipmi_sim exited with {status}: {}", sim.output());
        }
        assert!(
            ready,
            "ipmi_sim did not bind 127.0.0.1:{port}: {}",
            sim.output()
        );
        Some(sim)
    }

    /// What ipmi_sim printed.
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.path().join("ipmi_sim.out")).unwrap_or_default()
    }

    fn chassis(&self) -> PathBuf {
        self.dir.path().join("chassis")
    }

    /// Every call ipmi_sim made to the chassis program so far, one per line.
    pub fn chassis_log(&self) -> Vec<String> {
        fs::read_to_string(self.chassis().join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs `ipmitool` itself (not through a driver) against this BMC: the cross-check.
    ///
    /// # Panics
    /// When ipmitool fails.
    pub fn ipmitool(&self, args: &[&str]) -> String {
        ipmitool_at(&self.ipmitool, self.port, args)
    }
}

/// Runs `ipmitool` against the simulator on `port` as [`USER`].
///
/// # Panics
/// When ipmitool fails.
pub fn ipmitool_at(ipmitool: &Path, port: u16, args: &[&str]) -> String {
    let output = Command::new(ipmitool)
        .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", USER, "-E", "-C", "3"])
        .args(args)
        .env("IPMI_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ipmitool {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
