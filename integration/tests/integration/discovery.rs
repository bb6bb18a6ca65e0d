//! The discovery flow, end to end: a machine unknown to Dragonfly PXE-boots in the lab with
//! every daemon running (dhcpd, tftpd, ipxed serving the real agent image, apid, NATS, the
//! store), the agent reports its hardware, and the machine appears under its memorable name
//! with exactly the VM's shape; a `dragonfly.machine.registered` CloudEvent is seen on NATS;
//! booting the same VM again does not create a second machine.
//!
//! Also: three VMs booting at once, and 500 simulated agents against a real apid.
//!
//! Times printed (QEMU start → the agent's "registered as" line) are the figures for
//! `docs/performance.md`; tests do not assert times.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dragonfly_core::MacAddr;
use dragonfly_core::names::memorable_name;
use dragonfly_integration::{
    DhcpdConfig, Disk, DiskBus, EventWatcher, ExtraNic, Firmware, Lab, Nic, NicRom, Vm, VmConfig,
    VmLock, cache_dir, list_machines,
};
use serde_json::{Value, json};

use crate::common::{
    ADMIN, PASSWORD, Stack, create_admin, require_vm_tools, start_dragonfly_configured,
    start_dragonfly_with,
};

const CPUS: u32 = 2;
const MEM_MIB: u32 = 1536;
const VIRTIO_BYTES: u64 = 4 << 30;
const SATA_BYTES: u64 = 2 << 30;
/// What the agent prints on the console once apid has accepted it.
const REGISTERED: &str = "Dragonfly agent: registered as";

/// `target/agent-image/{vmlinuz,initrd.img}`, brought up to date by `agent-image/build.sh`
/// once per test process (a few seconds when nothing changed; the image must carry the
/// current agent), then copied into the lab's `agent/` (ipxed's `agent_dir`): a rebuild of
/// the image by someone else during the test then cannot hand a VM half a file. build.sh
/// rewrites `initrd.img` in place (zstd writes it for seconds), so the copy is checked
/// against the manifest's sha256 and taken again until they match.
fn agent_image(lab: &Lab) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = repo.join("target/agent-image");
    let files = ["vmlinuz", "initrd.img"];
    BUILT.call_once(|| {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache_dir().join("build.lock"))
            .unwrap();
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let t = std::time::Instant::now();
        let out = std::process::Command::new(repo.join("agent-image/build.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success() && files.iter().all(|f| built.join(f).is_file()),
            "agent-image/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("agent-image/build.sh: {:.1} s", t.elapsed().as_secs_f64());
    });
    let dir = lab.dir().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let sha256 = |path: &Path| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(std::fs::read(path).unwrap_or_default());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    for _ in 0..90 {
        let manifest: Value = std::fs::read(built.join("manifest.json"))
            .ok()
            .and_then(|m| serde_json::from_slice(&m).ok())
            .unwrap_or_default();
        for f in files {
            let _ = std::fs::copy(built.join(f), dir.join(f));
        }
        let consistent = [("vmlinuz", "vmlinuz"), ("initrd", "initrd.img")]
            .iter()
            .all(|(key, f)| manifest[key]["sha256"] == sha256(&dir.join(f)).as_str());
        if consistent {
            return dir;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("target/agent-image does not match its manifest.json for 3 minutes (being rebuilt?)");
}

/// The lab with every daemon, an admin to log in as, and a NATS watcher.
pub(crate) fn full_lab() -> Option<(Lab, Stack, EventWatcher)> {
    if !require_vm_tools() || dragonfly_testkit::require_nats_servers().is_empty() {
        return None;
    }
    let mut lab = Lab::new();
    let agent = agent_image(&lab);
    lab.answer_router_solicitations();
    create_admin(&mut lab);
    let stack = start_dragonfly_with(&mut lab, &agent, DhcpdConfig::lab("reservation"), true);
    let watcher = EventWatcher::start(&lab, &stack.nats);
    warm_up(&lab, stack.apid.as_deref().unwrap());
    Some((lab, stack, watcher))
}

/// apid is socket-activated (it starts on the first connection): start it now, as a running
/// server would be, so its start-up is not counted in the first VM's registration.
fn warm_up(lab: &Lab, base: &str) {
    let url = format!("{base}/api/health");
    lab.in_namespace(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                for _ in 0..100 {
                    if let Ok(r) = reqwest::get(&url).await
                        && r.status().is_success()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("apid did not answer {url}");
            });
    });
}

/// One VM of the known shape: `2 vCPUs, 1536 MiB, a 4 GiB virtio and a 2 GiB SATA disk
/// (sparse files in the lab), the boot NIC (virtio-net) on `tap` and an e1000 on `tap2`,
/// a fixed SMBIOS UUID.
struct Shape {
    name: String,
    macs: [MacAddr; 2],
    uuid: String,
}

impl Shape {
    fn new(name: &str, index: u8) -> Shape {
        Shape {
            name: name.to_owned(),
            macs: [
                MacAddr::new([0x52, 0x54, 0x00, 0x99, 0x04, 0x10 + 2 * index]),
                MacAddr::new([0x52, 0x54, 0x00, 0x99, 0x04, 0x11 + 2 * index]),
            ],
            uuid: format!("5eed0b0e-7d1c-4f2a-9b3e-0000000004{index:02x}"),
        }
    }

    fn config(&self, lab: &Lab, firmware: Firmware, taps: [&str; 2]) -> VmConfig {
        let rom = match firmware {
            // QEMU's NIC ROM is iPXE: straight to dhcpd → ipxed.
            Firmware::Bios => NicRom::Ipxe,
            // OVMF's own PXE client → dhcpd → TFTP ipxe.efi from tftpd → iPXE → ipxed.
            Firmware::Uefi => NicRom::None,
        };
        let mut c = VmConfig::new(firmware, Nic::VirtioNet, rom, &self.macs[0].to_string());
        c.name.clone_from(&self.name);
        c.cpus = CPUS;
        c.memory_mib = MEM_MIB;
        c.timeout = Duration::from_secs(400);
        c.tap = taps[0].to_owned();
        c.extra_nics.push(ExtraNic {
            nic: Nic::E1000,
            mac: self.macs[1].to_string(),
            tap: taps[1].to_owned(),
        });
        for (suffix, bus, size) in [
            ("virtio", DiskBus::Virtio, VIRTIO_BYTES),
            ("sata", DiskBus::Sata, SATA_BYTES),
        ] {
            let path = lab.dir().join(format!("{}-{suffix}.img", self.name));
            if !path.exists() {
                std::fs::File::create(&path).unwrap().set_len(size).unwrap();
            }
            c.disks.push(Disk { path, bus });
        }
        c.smbios_uuid = Some(self.uuid.clone());
        c
    }

    /// Asserts that `m` is this VM, registered, with exactly its shape.
    fn check(&self, m: &Value, firmware: Firmware) {
        let hw = &m["hardware"];
        assert_eq!(m["name"], memorable_name(self.macs[0]), "{m:#}");
        assert_eq!(m["state"], "Registered", "{m:#}");
        assert_eq!(hw["smbiosUuid"], self.uuid.as_str(), "{hw:#}");
        assert_eq!(
            hw["macs"],
            json!([self.macs[0].to_string(), self.macs[1].to_string()]),
            "{hw:#}"
        );
        assert_eq!(hw["cpu"]["threads"].as_u64(), Some(CPUS.into()), "{hw:#}");
        let mem = hw["memoryBytes"].as_u64().unwrap();
        let want = u64::from(MEM_MIB) << 20;
        assert!(
            mem.abs_diff(want) * 100 <= want * 3,
            "memory {mem} vs {want}: {hw:#}"
        );
        let mut disks: Vec<(String, u64)> = hw["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_owned(),
                    d["sizeBytes"].as_u64().unwrap(),
                )
            })
            .collect();
        disks.sort();
        assert_eq!(
            disks,
            [
                ("sda".to_owned(), SATA_BYTES),
                ("vda".to_owned(), VIRTIO_BYTES)
            ],
            "{hw:#}"
        );
        let firmware = match firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        assert_eq!(hw["firmware"], firmware, "{hw:#}");
    }
}

/// Boots `vm` and waits for the agent's registration; returns (seconds from QEMU start to
/// the console line, the line). Panics with every log when it does not come.
fn wait_registered(lab: &Lab, vm: &mut Vm) -> (f64, String) {
    let (at, line) = vm
        .wait_for_line(REGISTERED, Duration::from_secs(380))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    let timeline: Vec<String> = vm
        .timeline()
        .iter()
        .map(|(l, t)| format!("{l} {:.1}s", t.as_secs_f64()))
        .collect();
    println!(
        "timeline {} {:?}: {}",
        vm.config().name,
        vm.config().firmware,
        timeline.join("; ")
    );
    (at.as_secs_f64(), line)
}

/// When `vm`'s QEMU started, by the wall clock (apid's `createdAt` is wall-clock time).
fn wall_start(vm: &Vm) -> jiff::Timestamp {
    let ago = jiff::SignedDuration::try_from(vm.started().elapsed()).unwrap();
    jiff::Timestamp::now() - ago
}

/// Seconds from `qemu_started` (wall clock) to the machine's `createdAt`.
fn created_after(m: &Value, qemu_started: jiff::Timestamp) -> f64 {
    let created: jiff::Timestamp = m["createdAt"].as_str().unwrap().parse().unwrap();
    created.duration_since(qemu_started).as_secs_f64()
}

fn the_one_machine(lab: &Lab, stack: &Stack) -> Value {
    let list = list_machines(lab, stack.apid.as_deref().unwrap(), ADMIN, PASSWORD).unwrap();
    assert_eq!(list.len(), 1, "exactly one machine: {list:#?}");
    list.into_iter().next().unwrap()
}

/// Boots the VM of the known shape twice and checks it registers once; returns the lab for
/// checks of how it booted. `tweak` changes the VM's settings (how it network-boots).
fn discover(firmware: Firmware, tweak: impl FnOnce(&mut VmConfig)) -> Option<Lab> {
    let (mut lab, stack, watcher) = full_lab()?;
    lab.add_tap("tap1");
    let vm_shape = Shape::new("vm0", 0);
    let mut config = vm_shape.config(&lab, firmware, ["tap0", "tap1"]);
    tweak(&mut config);

    // First boot: unknown to Dragonfly.
    let mut vm = Vm::boot(&mut lab, config.clone());
    // After the boot: Vm::boot may first wait for another test's VM.
    let wall = wall_start(&vm);
    let (secs, line) = wait_registered(&lab, &mut vm);
    drop(vm);
    assert!(line.contains(", new machine)"), "{line}");
    let m = the_one_machine(&lab, &stack);
    vm_shape.check(&m, firmware);
    println!(
        "{firmware:?}: QEMU start → registered {secs:.1} s (console); createdAt {:.1} s after \
         QEMU start; {}",
        created_after(&m, wall),
        m["name"]
    );
    let id = m["id"].as_str().unwrap().to_owned();
    let event = watcher
        .wait_for(Duration::from_secs(5), |e| {
            e.data.machine_id.to_string() == id && e.data.created
        })
        .unwrap_or_else(|| panic!("no created event for {id}: {:#?}", watcher.events()));
    assert_eq!(event.ty, "computer.dragonfly.machine.registered");
    assert_eq!(event.data.name, m["name"].as_str().unwrap());

    // Second boot of the same VM (same disks, MACs and UUID): the same machine.
    let mut vm = Vm::boot(&mut lab, config);
    let (secs2, line) = wait_registered(&lab, &mut vm);
    drop(vm);
    println!("{firmware:?}: QEMU start → registered {secs2:.1} s (second boot)");
    assert!(line.contains(", known machine)"), "{line}");
    let again = the_one_machine(&lab, &stack);
    assert_eq!(again["id"], m["id"]);
    assert_eq!(again["name"], m["name"]);
    vm_shape.check(&again, firmware);
    watcher
        .wait_for(Duration::from_secs(5), |e| {
            e.data.machine_id.to_string() == id && !e.data.created
        })
        .unwrap_or_else(|| panic!("no re-registration event: {:#?}", watcher.events()));
    assert_eq!(
        watcher.events().iter().filter(|e| e.data.created).count(),
        1,
        "{:#?}",
        watcher.events()
    );
    Some(lab)
}

/// SeaBIOS + virtio-net with QEMU's iPXE ROM: dhcpd → ipxed `/boot/{mac}` (discovery) →
/// the agent image → apid.
#[test]
fn discovery_bios_virtio_registers_the_vm_once() {
    discover(Firmware::Bios, |_| {});
}

/// OVMF's own PXE client → dhcpd → TFTP `ipxe.efi` (tftpd) → iPXE → ipxed → agent → apid.
#[test]
fn discovery_uefi_virtio_registers_the_vm_once() {
    discover(Firmware::Uefi, |_| {});
}

/// OVMF with its PXE option turned off, so its UEFI HTTP boot (IPv4) runs: dhcpd answers
/// `HTTPClient` with ipxed's `/ipxe/ipxe.efi` → the firmware downloads and runs it → iPXE
/// DHCPs → ipxed `/boot/{mac}` → agent → apid. No TFTP on the way.
#[test]
fn discovery_uefi_http_boot_registers_the_vm() {
    let Some(lab) = discover(Firmware::Uefi, |c| c.uefi_pxe = false) else {
        return;
    };
    let dhcpd = lab.log("dhcpd");
    assert!(
        dhcpd.contains("boot=http://10.99.0.1:8080/ipxe/ipxe.efi"),
        "dhcpd sent the HTTP-boot URL:\n{dhcpd}"
    );
    assert!(
        !dhcpd.contains("boot=ipxe.efi"),
        "no PXE (TFTP) answer: the firmware's PXE option is off:\n{dhcpd}"
    );
    let tftpd = lab.log("tftpd");
    assert!(!tftpd.contains("ipxe.efi"), "nothing over TFTP:\n{tftpd}");
}

/// Three VMs PXE-boot at the same time (BIOS, each its own MACs, disks and UUID; under one
/// hold of the VM lock): all register, each exactly once.
#[test]
fn discovery_three_vms_at_once_each_registers_once() {
    let Some((mut lab, stack, watcher)) = full_lab() else {
        return;
    };
    let shapes: Vec<Shape> = (0..3u8).map(|i| Shape::new(&format!("vm{i}"), i)).collect();
    for i in 1..6 {
        lab.add_tap(&format!("tap{i}"));
    }
    let lock = Arc::new(VmLock::acquire());
    let mut vms: Vec<Vm> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let taps = [format!("tap{}", 2 * i), format!("tap{}", 2 * i + 1)];
            let config = s.config(&lab, Firmware::Bios, [&taps[0], &taps[1]]);
            Vm::boot_holding(&mut lab, config, Arc::clone(&lock))
        })
        .collect();
    let wall = wall_start(&vms[0]);
    let mut times = Vec::new();
    for vm in &mut vms {
        let (secs, line) = wait_registered(&lab, vm);
        assert!(line.contains(", new machine)"), "{line}");
        times.push(secs);
    }
    drop(vms);
    let list = list_machines(&lab, stack.apid.as_deref().unwrap(), ADMIN, PASSWORD).unwrap();
    assert_eq!(list.len(), 3, "{list:#?}");
    for s in &shapes {
        let name = memorable_name(s.macs[0]);
        let found: Vec<&Value> = list.iter().filter(|m| m["name"] == name).collect();
        assert_eq!(found.len(), 1, "{name}: {list:#?}");
        s.check(found[0], Firmware::Bios);
    }
    let created = watcher
        .wait_for(Duration::from_secs(5), |_| {
            watcher.events().iter().filter(|e| e.data.created).count() >= 3
        })
        .map(|_| watcher.events().iter().filter(|e| e.data.created).count());
    assert_eq!(created, Some(3), "{:#?}", watcher.events());
    let last = list
        .iter()
        .map(|m| created_after(m, wall))
        .fold(0.0, f64::max);
    println!(
        "three VMs at once: QEMU start → registered {:.1} s / {:.1} s / {:.1} s (console); \
         last createdAt {last:.1} s after the first QEMU start",
        times[0], times[1], times[2]
    );
}

/// 500 simulated agents register with a real apid (as nobody, socket-activated, inside a
/// lab namespace with NATS and the store), then all poll at once: every one registered
/// exactly once, none refused. Prints p50/p99.
#[test]
fn five_hundred_agents_register_and_poll_at_once() {
    const AGENTS: usize = 500;
    if !dragonfly_testkit::require_root() || dragonfly_testkit::require_nats_servers().is_empty() {
        return;
    }
    let mut lab = Lab::new();
    let agent = lab.dir().join("agent");
    std::fs::create_dir_all(&agent).unwrap();
    create_admin(&mut lab);
    // Every simulated agent comes from the lab's one address, where real ones each have their
    // own: the per-client connection cap must let them all in.
    let stack = start_dragonfly_configured(
        &mut lab,
        &agent,
        DhcpdConfig::lab("reservation"),
        true,
        |c| {
            if let Some(apid) = &mut c.apid {
                apid.http.max_connections_per_client = Some(2 * AGENTS);
            }
        },
    );
    let base = stack.apid_agent.clone().unwrap();
    warm_up(&lab, &base);
    let key = std::fs::read(lab.dir().join("boot-token-key")).unwrap();
    let config = dragonfly_integration::load::LoadConfig {
        base,
        key,
        db: lab.store(),
        agents: AGENTS,
        timeout: Duration::from_secs(60),
    };
    let report = lab.in_namespace(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(dragonfly_integration::load::run(&config))
    });
    println!("{AGENTS} agents, register: {}", report.register);
    println!("{AGENTS} agents, poll:     {}", report.poll);
    assert!(
        report.register.errors.is_empty() && report.poll.errors.is_empty(),
        "requests failed: {:?} {:?}",
        &report.register.errors[..report.register.errors.len().min(5)],
        &report.poll.errors[..report.poll.errors.len().min(5)]
    );
    assert_eq!(report.register.count(201), AGENTS, "{}", report.register);
    assert_eq!(report.poll.count(200), AGENTS, "{}", report.poll);
    let store = dragonfly_store::BlockingDb::open(lab.store()).unwrap();
    assert_eq!(
        store.block_on(store.db().machines().count()).unwrap(),
        AGENTS as u64
    );
    drop(store);
    let mut macs: Vec<String> = list_machines(&lab, &stack.apid.unwrap(), ADMIN, PASSWORD)
        .unwrap()
        .iter()
        .map(|m| m["hardware"]["macs"][0].as_str().unwrap().to_owned())
        .collect();
    macs.sort();
    macs.dedup();
    assert_eq!(macs.len(), AGENTS, "distinct MACs among the machines");
}
