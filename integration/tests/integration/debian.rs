//! A real Debian install, end to end: a VM with an empty disk PXE-boots in the lab with every
//! daemon; the operator adds Dragonfly's Debian 12 image (`packaging/images/debian-12.sh`) to
//! the image library (a file in the images directory, checksummed by apid), reserves an address
//! for the machine and assigns a template naming the image, with a host name and an SSH key.
//! The agent downloads the image from ipxed with its boot token and writes it, then the
//! image, the datasource URL and kexecs into Debian; the machine is Provisioning, "installed,
//! waiting for first boot", until Debian's own cloud-init (Debian's package) reads our
//! metadata, sets the host name, installs the key and phones home; only then is it Ready.
//! The test logs in over SSH from the lab with that key and checks the host name, `cloud-init
//! status` and the reserved address; then powers the VM off and on: ipxed sends it to its
//! disk, where GRUB boots Debian again.
//!
//! The phase times printed are docs/performance.md's; tests do not assert times.

use std::process::Command;
use std::time::{Duration, Instant};

use dragonfly_integration::{BRIDGE_ADDR, Firmware, Lab, Vm, debian_image, list_machines};
use serde_json::json;

use crate::common::{ADMIN, PASSWORD};
use crate::discovery::full_lab;
use crate::provision::{Operator, vm_config};

const HOSTNAME: &str = "debian-e2e";
const RESERVED: &str = "10.99.0.50";

/// `ssh debian@RESERVED command` from the lab's namespace with `key`.
fn ssh(lab: &Lab, key: &std::path::Path, command: &str) -> std::process::Output {
    let mut c = lab.command("ssh");
    c.arg("-i")
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            &format!("debian@{RESERVED}"),
            command,
        ])
        .output()
        .expect("running ssh")
}

fn install(firmware: Firmware) {
    if dragonfly_testkit::require_binary("ssh", "apt-get install openssh-client").is_none() {
        return;
    }
    let Some((mut lab, stack, _events)) = full_lab() else {
        return;
    };
    let base = stack.apid.clone().unwrap();
    let image = debian_image();
    // The operator's copy into the library (readable by the daemons' user).
    let file = "debian-12-amd64.raw.zst";
    let copied = Command::new("cp")
        .arg("--reflink=auto")
        .arg(&image.compressed)
        .arg(lab.dir().join("images").join(file))
        .status()
        .unwrap();
    assert!(copied.success());
    let key = lab.dir().join("id_ed25519");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "operator@lab", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    let disk = lab.dir().join(format!("debian-{firmware:?}.img"));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let mut config = vm_config(firmware, &disk);
    config.name = format!("debian-{firmware:?}").to_lowercase();
    config.timeout = Duration::from_secs(2400);
    let mut vm = Vm::boot(&mut lab, config.clone());
    let (registered, _) = vm
        .wait_for_line("Dragonfly agent: registered as", Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));

    let op = Operator::login(&lab, &base);
    let (status, added) = op.call(
        "POST",
        "/apis/dragonfly.computer/v1/images",
        Some(image.image_doc("debian-12", file)),
    );
    assert_eq!(status, 201, "{added:#}");
    let checksummed = Instant::now();
    let ready = loop {
        let (_, got) = op.call("GET", "/apis/dragonfly.computer/v1/images/debian-12", None);
        if got["status"]["phase"] != "Pending" {
            break got;
        }
        assert!(checksummed.elapsed() < Duration::from_secs(300), "{got:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ready["status"]["phase"], "Ready", "{ready:#}");
    let checksum_secs = checksummed.elapsed().as_secs_f64();
    // Not public: only a machine being booted may download it.
    let anonymous = lab
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{BRIDGE_ADDR}:8080/images/debian-12"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");
    op.create_template(image.library_template("debian-12", "debian-12"));
    let (id, _) = op.machine(&base);
    let (status, r) = op.call(
        "PUT",
        &format!("/api/machines/{id}/address"),
        Some(json!({"ip": RESERVED})),
    );
    assert_eq!(status, 200, "{r:#}");
    let assigned = Instant::now();
    let (status, wf) = op.call(
        "POST",
        &format!("/api/machines/{id}/provision"),
        Some(json!({"template": "debian-12",
            "values": {"hostname": HOSTNAME, "sshKeys": [public.trim()]}})),
    );
    assert_eq!(status, 201, "{wf:#}");
    let wf_id = wf["id"].as_str().unwrap().to_owned();

    let (kexec, _) = vm
        .wait_for_line("jumping into it (kexec)", Duration::from_secs(1800))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    let to_kexec = assigned.elapsed().as_secs_f64();
    // Installed, not Ready: the machine waits for its first boot to phone home.
    let waiting = op.wait_workflow_action(&wf_id, "first-boot", Duration::from_secs(60));
    assert_eq!(waiting["state"], "Running", "{waiting:#}");
    let at = usize::try_from(waiting["currentAction"].as_u64().unwrap()).unwrap();
    assert_eq!(
        waiting["actions"][at]["message"], "installed, waiting for first boot",
        "{waiting:#}"
    );
    let (_, m) = op.call("GET", &format!("/api/machines/{id}"), None);
    assert_eq!(m["state"], "Provisioning", "{m:#}");

    let done = op.wait_workflow(&wf_id, "Succeeded", Duration::from_secs(1500));
    let phoned = assigned.elapsed().as_secs_f64();
    let first_boot = done["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "first-boot"))
        .cloned()
        .unwrap_or_default();
    assert!(
        first_boot["message"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("phoned home from {RESERVED}"))),
        "{done:#}"
    );
    let (_, m) = op.call("GET", &format!("/api/machines/{id}"), None);
    assert_eq!(m["state"], "Ready", "{m:#}");
    assert_eq!(m["reservedIp"], RESERVED, "{m:#}");

    // Log in with the operator's key, as the operator would.
    let out = ssh(
        &lab,
        &key,
        "hostname; cloud-init status --wait | tail -n1; ip -4 -o addr show scope global",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ssh: {}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(HOSTNAME), "{text}");
    assert_eq!(lines.next(), Some("status: done"), "{text}");
    // Static, from the network configuration Dragonfly rendered into the install: an address
    // from DHCP would be "dynamic".
    let reserved_line = text
        .lines()
        .find(|l| l.contains(&format!("inet {RESERVED}/24")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!reserved_line.contains("dynamic"), "{text}");
    let logged_in = assigned.elapsed().as_secs_f64();
    drop(vm);

    // Off and on: ipxed answers with the disk (the workflow succeeded), GRUB boots Debian.
    let mut again = Vm::boot(&mut lab, config);
    let (from_disk, _) = again
        .wait_for_line(&format!("{HOSTNAME} login:"), Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    assert!(
        again
            .wait_for_line("Dragonfly agent", Duration::from_secs(1))
            .is_err(),
        "the agent ran again: the machine was not sent to its disk"
    );
    let machines = list_machines(&lab, &base, ADMIN, PASSWORD).unwrap();
    assert_eq!(machines[0]["state"], "Ready");
    println!(
        "debian {firmware:?}: image added to the library (checksummed) {checksum_secs:.1} s; \
         QEMU start → agent registered {:.1} s; assignment → kexec \
         {to_kexec:.1} s (QEMU clock {:.1} s); → phone home {phoned:.1} s; → SSH login checked \
         {logged_in:.1} s; power on → login prompt from disk {:.1} s",
        registered.as_secs_f64(),
        kexec.as_secs_f64(),
        from_disk.as_secs_f64(),
    );
}

impl Operator<'_> {
    /// Polls the workflow until its current action is `name`; returns the progress.
    pub(crate) fn wait_workflow_action(
        &self,
        id: &str,
        name: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, w) = self.call("GET", &format!("/api/workflows/{id}/progress"), None);
            let current = w["currentAction"].as_u64().unwrap_or(u64::MAX);
            let at = usize::try_from(current).unwrap_or(usize::MAX);
            if status == 200 && w["actions"][at]["name"] == name {
                return w;
            }
            assert!(Instant::now() < deadline, "workflow {id}: {status} {w:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn bios_vm_installs_debian_and_is_reachable_over_ssh() {
    install(Firmware::Bios);
}

#[test]
fn uefi_vm_installs_debian_and_is_reachable_over_ssh() {
    install(Firmware::Uefi);
}
