//! Provisioning, end to end: a VM with one empty virtio disk PXE-boots in the lab with every
//! daemon (workflowd included), the agent registers it, an operator uploads the test OS
//! template and assigns it through the API, and the agent — still running from discovery —
//! installs in place (the fast track: image2disk of the zstd test OS, writefile of its
//! hostname, kexec), so the installed OS prints its marker with the hostname the operator
//! gave. The workflow is Succeeded and the machine Ready; then the VM is powered off and on
//! again: ipxed answers local boot and the OS comes back from its disk, not re-imaged.
//!
//! The phase times printed (QEMU start → agent registered, image2disk, kexec → marker, power
//! on → marker from disk) are the figures of docs/performance.md; tests do not assert times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dragonfly_integration::{
    BRIDGE_ADDR, Disk, DiskBus, Firmware, ImageServer, Lab, Nic, NicRom, TESTOS_MARKER, Vm,
    VmConfig, VmLock, list_machines, test_os,
};
use serde_json::{Value, json};

use crate::common::{ADMIN, PASSWORD};
use crate::discovery::full_lab;

/// Port of the lab's image server (python3's http.server) on the bridge.
const IMAGES_PORT: u16 = 8090;
const HOSTNAME: &str = "installed-by-dragonfly";

/// Logs in as the admin and makes operator calls from inside the lab's namespace.
pub(crate) struct Operator<'a> {
    lab: &'a Lab,
    base: String,
    cookie: String,
}

impl<'a> Operator<'a> {
    pub(crate) fn login(lab: &'a Lab, base: &str) -> Self {
        let cookie = lab.in_namespace(|| {
            let r = reqwest::blocking::Client::new()
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"username": ADMIN, "password": PASSWORD}))
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "login");
            r.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        });
        Operator {
            lab,
            base: base.to_owned(),
            cookie,
        }
    }

    /// `method path` with an optional JSON body: (status, JSON body or Null).
    pub(crate) fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.lab.in_namespace(|| {
            let c = reqwest::blocking::Client::new();
            let mut req = c
                .request(method.parse().unwrap(), format!("{}{path}", self.base))
                .header("cookie", &self.cookie)
                // The CSRF check: a cookie-authenticated change comes from apid's origin.
                .header("origin", &self.base);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let r = req.send().unwrap();
            let status = r.status().as_u16();
            (status, r.json().unwrap_or(Value::Null))
        })
    }
}

/// Seconds between the VM's first console lines containing `a` and `b`.
pub(crate) fn between(vm: &mut Vm, a: &str, b: &str) -> f64 {
    let (ta, _) = vm.wait_for_line(a, Duration::from_secs(1)).unwrap();
    let (tb, _) = vm.wait_for_line(b, Duration::from_secs(1)).unwrap();
    tb.saturating_sub(ta).as_secs_f64()
}

pub(crate) fn vm_config(firmware: Firmware, disk: &std::path::Path) -> VmConfig {
    let rom = match firmware {
        Firmware::Bios => NicRom::Ipxe,
        Firmware::Uefi => NicRom::None,
    };
    let mut c = VmConfig::new(firmware, Nic::VirtioNet, rom, "52:54:00:99:09:01");
    c.name = format!("provision-{firmware:?}").to_lowercase();
    c.cpus = 2;
    c.memory_mib = 1536;
    c.timeout = Duration::from_secs(900);
    c.disks.push(Disk {
        path: disk.to_owned(),
        bus: DiskBus::Virtio,
    });
    c
}

fn provision(firmware: Firmware) {
    let Some((mut lab, stack, _events)) = full_lab() else {
        return;
    };
    let base = stack.apid.clone().unwrap();
    let os = test_os();
    // The image server: the compressed test OS, on the lab's bridge only.
    let images = lab.dir().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(&os.compressed, images.join("test-os.img.zst")).unwrap();
    let mut server = lab.command("/usr/bin/python3");
    server.args([
        "-u",
        "-m",
        "http.server",
        "--bind",
        BRIDGE_ADDR,
        "--directory",
    ]);
    server.arg(&images).arg(IMAGES_PORT.to_string());
    lab.spawn("images", server);
    lab.wait_for_log("images", "Serving HTTP", Duration::from_secs(20));

    let disk = lab.dir().join("provision-virtio.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let mut vm = Vm::boot(&mut lab, vm_config(firmware, &disk));
    let (registered, _) = vm
        .wait_for_line("Dragonfly agent: registered as", Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));

    let op = Operator::login(&lab, &base);
    let template = os.template(
        "test-os",
        &format!("http://{BRIDGE_ADDR}:{IMAGES_PORT}/test-os.img.zst"),
    );
    op.create_template(template);
    let machines = list_machines(&lab, &base, ADMIN, PASSWORD).unwrap();
    assert_eq!(machines.len(), 1, "{machines:#?}");
    let id = machines[0]["id"].as_str().unwrap().to_owned();
    let assigned = Instant::now();
    let (status, wf) = op.call(
        "POST",
        &format!("/api/machines/{id}/provision"),
        Some(json!({"template": "test-os", "values": {"hostname": HOSTNAME}})),
    );
    assert_eq!(status, 201, "{wf:#}");
    let wf_id = wf["id"].as_str().unwrap().to_owned();

    let marker = format!("{TESTOS_MARKER} hostname={HOSTNAME}");
    let (installed, line) = vm
        .wait_for_line(&marker, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    let assign_to_marker = assigned.elapsed().as_secs_f64();
    println!("installed: {line}");
    let image2disk = between(&mut vm, "action image (1 of", "action image: done");
    let kexec = between(&mut vm, "jumping into it (kexec)", &marker);

    // The API: the workflow Succeeded, the machine Ready (workflowd may lag the jump).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, w) = op.call("GET", &format!("/api/workflows/{wf_id}/progress"), None);
        let m = list_machines(&lab, &base, ADMIN, PASSWORD).unwrap();
        if w["state"] == "Succeeded" && m[0]["state"] == "Ready" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workflow {w:#}\nmachine {:#}\n{}",
            m[0],
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(vm);

    // Power off and on: PXE again, ipxed answers local boot, the disk boots; no agent.
    let mut again = Vm::boot(&mut lab, vm_config(firmware, &disk));
    let (from_disk, _) = again
        .wait_for_line(&marker, Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    assert!(
        again
            .wait_for_line("Dragonfly agent", Duration::from_secs(1))
            .is_err(),
        "the agent ran again: the machine was not sent to its disk"
    );
    let m = list_machines(&lab, &base, ADMIN, PASSWORD).unwrap();
    assert_eq!(m[0]["state"], "Ready", "{:#}", m[0]);
    println!(
        "provision {firmware:?}: QEMU start → agent registered {:.1} s; assignment → installed \
         OS marker {assign_to_marker:.1} s (image2disk {image2disk:.1} s, kexec → marker \
         {kexec:.1} s); QEMU start → marker {:.1} s; power on → marker from disk {:.1} s",
        registered.as_secs_f64(),
        installed.as_secs_f64(),
        from_disk.as_secs_f64(),
    );
}

impl Operator<'_> {
    /// Polls the workflow's progress until its state is `want` (panics with the lab's logs
    /// after `timeout`, or when it ends in another terminal state); returns the progress.
    pub(crate) fn wait_workflow(&self, id: &str, want: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, w) = self.call("GET", &format!("/api/workflows/{id}/progress"), None);
            if status == 200 && w["state"] == want {
                return w;
            }
            let terminal = ["Succeeded", "Failed", "TimedOut", "Cancelled"];
            assert!(
                Instant::now() < deadline
                    && !(status == 200 && terminal.contains(&w["state"].as_str().unwrap_or(""))),
                "workflow {id}: wanted {want}, got {status} {w:#}\n{}",
                self.lab.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Creates a template (201, or the test fails with apid's answer).
    pub(crate) fn create_template(&self, template: Value) {
        let name = template["metadata"]["name"].clone();
        let (status, body) = self.call(
            "POST",
            "/apis/dragonfly.computer/v1/templates",
            Some(template),
        );
        assert_eq!(status, 201, "template {name}: {body:#}");
    }

    /// The one machine's id and record.
    pub(crate) fn machine(&self, base: &str) -> (String, Value) {
        let m = list_machines(self.lab, base, ADMIN, PASSWORD).unwrap();
        assert_eq!(m.len(), 1, "{m:#?}");
        (m[0]["id"].as_str().unwrap().to_owned(), m[0].clone())
    }
}

#[test]
fn bios_vm_installs_the_test_os_and_boots_it_from_disk() {
    provision(Firmware::Bios);
}

/// Three VMs with empty disks PXE-boot at once (one hold of the VM lock); the operator
/// assigns the test OS to each with its own hostname, one call after the other: all three
/// install at the same time, and each boots its OS with its own hostname.
#[test]
fn three_vms_provisioned_at_once_each_with_its_hostname() {
    let Some((mut lab, stack, _events)) = full_lab() else {
        return;
    };
    let base = stack.apid.clone().unwrap();
    let os = test_os();
    let images = ImageServer::start(
        &lab,
        format!("{BRIDGE_ADDR}:{IMAGES_PORT}").parse().unwrap(),
    );
    images.add("test-os.img.zst", std::fs::read(&os.compressed).unwrap());
    for i in 1..3 {
        lab.add_tap(&format!("tap{i}"));
    }
    let lock = Arc::new(VmLock::acquire());
    let macs: Vec<String> = (0..3).map(|i| format!("52:54:00:99:0a:0{i}")).collect();
    let mut vms: Vec<Vm> = (0..3)
        .map(|i| {
            let disk = lab.dir().join(format!("three-{i}.img"));
            std::fs::File::create(&disk)
                .unwrap()
                .set_len(2 << 30)
                .unwrap();
            let mut c = vm_config(Firmware::Bios, &disk);
            c.name = format!("three-{i}");
            c.mac = macs[i].clone();
            c.tap = format!("tap{i}");
            Vm::boot_holding(&mut lab, c, Arc::clone(&lock))
        })
        .collect();
    for vm in &mut vms {
        vm.wait_for_line("Dragonfly agent: registered as", Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    }
    let op = Operator::login(&lab, &base);
    let template = os.template("test-os", &images.url("test-os.img.zst", false));
    op.create_template(template);
    let machines = list_machines(&lab, &base, ADMIN, PASSWORD).unwrap();
    assert_eq!(machines.len(), 3, "{machines:#?}");
    let assigned = Instant::now();
    let mut workflows = Vec::new();
    for (i, mac) in macs.iter().enumerate() {
        let name = dragonfly_core::names::memorable_name(mac.parse().unwrap());
        let m = machines.iter().find(|m| m["name"] == name).unwrap();
        let (status, wf) = op.call(
            "POST",
            &format!("/api/machines/{}/provision", m["id"].as_str().unwrap()),
            Some(json!({"template": "test-os", "values": {"hostname": format!("rack-{i}")}})),
        );
        assert_eq!(status, 201, "{wf:#}");
        workflows.push(wf["id"].as_str().unwrap().to_owned());
    }
    let mut times = Vec::new();
    for (i, vm) in vms.iter_mut().enumerate() {
        let marker = format!("{TESTOS_MARKER} hostname=rack-{i}");
        vm.wait_for_line(&marker, Duration::from_secs(900))
            .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
        times.push(assigned.elapsed().as_secs_f64());
    }
    for id in &workflows {
        op.wait_workflow(id, "Succeeded", Duration::from_secs(60));
    }
    let machines = list_machines(&lab, &base, ADMIN, PASSWORD).unwrap();
    assert!(
        machines.iter().all(|m| m["state"] == "Ready"),
        "{machines:#?}"
    );
    println!(
        "three at once: assignment → each installed OS's marker {:.1} / {:.1} / {:.1} s; \
         image downloads {}",
        times[0],
        times[1],
        times[2],
        images.requests()
    );
}

#[test]
fn uefi_vm_installs_the_test_os_and_boots_it_from_disk() {
    provision(Firmware::Uefi);
}
