//! Boot proof without PXE: QEMU boots `target/agent-image/{vmlinuz,initrd.img}` directly, in a
//! private network namespace with the real `dragonfly-apid` binary and busybox `udhcpd`; the
//! agent must register the VM with exactly its shape, and a second boot must find the same
//! machine. Root only; needs qemu-system-x86_64 (skipped outside CI when missing).

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dragonfly_core::MacAddr;
use dragonfly_testkit::{chown_for_unprivileged, require_binary, require_root, unprivileged};
use serde_json::{Value, json};

use crate::common::session_token;

const KEY: [u8; 32] = [0x6b; 32];
const UUID: &str = "5eed0b0e-7d1c-4f2a-9b3e-0123456789ab";
const MEM_MIB: u64 = 1536;

/// A network namespace with a bridge and two taps; deleted (after its processes are killed)
/// on drop, even when the test panics.
struct Netns {
    name: String,
    children: Vec<Child>,
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed: {st}");
}

impl Netns {
    fn new(name: &str, subnet: &str) -> Self {
        // A namespace left by a killed earlier run of this PID (rare): remove it quietly.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
            children: Vec::new(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.exec(&["ip", "addr", "add", &format!("{subnet}.1/24"), "dev", "br0"]);
        ns.exec(&["ip", "link", "set", "br0", "up"]);
        for tap in ["tap0", "tap1"] {
            ns.exec(&["ip", "tuntap", "add", tap, "mode", "tap"]);
            ns.exec(&["ip", "link", "set", tap, "master", "br0"]);
            ns.exec(&["ip", "link", "set", tap, "up"]);
        }
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all);
    }

    fn command(&self, program: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(program.get_program())
            .args(program.get_args());
        c
    }

    fn spawn(&mut self, program: &Command, log: &Path) {
        let out = fs::File::create(log).unwrap();
        let child = self
            .command(program)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A QEMU VM under `timeout`, stopped on drop. SIGTERM, not SIGKILL: `timeout` passes it on
/// to QEMU, whereas a killed `timeout` would leave QEMU running with the tap and the disks.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

/// Runs `f` on a thread inside the namespace, so its sockets live there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Logs in as the admin and lists the machines, from inside the namespace.
fn machines(ns: &str, base: &str, password: &str) -> Vec<Value> {
    in_netns(ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let http = reqwest::Client::new();
                let r = http
                    .post(format!("{base}/api/auth/login"))
                    .json(&json!({"username": "admin", "password": password}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "login");
                let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
                let cookie = cookie.split(';').next().unwrap().to_owned();
                let list: Value = http
                    .get(format!("{base}/api/machines"))
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                list["items"].as_array().unwrap().clone()
            })
    })
}

/// Boots the VM, returns (seconds from QEMU start to the agent's "registered as", console).
fn boot(
    ns: &Netns,
    dir: &Path,
    qemu: &Path,
    base: &str,
    macs: [MacAddr; 2],
    run: u32,
    db: &Path,
) -> (f64, String) {
    let out = repo_root().join("target/agent-image");
    let serial = dir.join(format!("serial-{run}.log"));
    // Each boot opens a new session, as ipxed does when it mints.
    let token = session_token(db, &KEY, macs[0]);
    let append = format!(
        "console=ttyS0 dragonfly.url={base} dragonfly.mode=discovery dragonfly.mac={} \
         dragonfly.token={token} panic=-1",
        macs[0]
    );
    let mut q = Command::new("timeout");
    q.arg("300").arg(qemu).args([
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-smp",
        "2",
        "-m",
        &MEM_MIB.to_string(),
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-vga",
        "none",
        "-smbios",
        &format!("type=1,uuid={UUID}"),
    ]);
    q.arg("-kernel").arg(out.join("vmlinuz"));
    q.arg("-initrd").arg(out.join("initrd.img"));
    q.args(["-append", &append]);
    q.arg("-serial").arg(format!("file:{}", serial.display()));
    q.args(["-monitor", "none"]);
    q.arg("-drive").arg(format!(
        "file={},format=raw,if=none,id=vd,cache=unsafe",
        dir.join("virtio.img").display()
    ));
    q.args(["-device", "virtio-blk-pci,drive=vd,serial=df-virtio-0"]);
    q.arg("-drive").arg(format!(
        "file={},format=raw,if=none,id=sd,cache=unsafe",
        dir.join("sata.img").display()
    ));
    q.args([
        "-device",
        "ahci,id=ahci",
        "-device",
        "ide-hd,drive=sd,bus=ahci.0",
    ]);
    q.args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]);
    q.args([
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={}", macs[0]),
    ]);
    q.args(["-netdev", "tap,id=n1,ifname=tap1,script=no,downscript=no"]);
    q.args(["-device", &format!("e1000,netdev=n1,mac={}", macs[1])]);
    let t0 = Instant::now();
    let _vm = Vm(ns
        .command(&q)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join(format!("qemu-{run}.err"))).unwrap())
        .spawn()
        .unwrap());
    loop {
        let text = fs::read_to_string(&serial).unwrap_or_default();
        if text.contains("Dragonfly agent: registered as") {
            return (t0.elapsed().as_secs_f64(), text);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no registration within 240 s; QEMU said {:?}; console:\n{text}",
            fs::read_to_string(dir.join(format!("qemu-{run}.err"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_image_boots_in_qemu_and_registers_the_vm_once() {
    if !require_root() {
        return;
    }
    let Some(qemu) = require_binary("qemu-system-x86_64", "apt-get install qemu-system-x86") else {
        return;
    };
    let Some(busybox) = require_binary("busybox", "apt-get install busybox-static") else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let apid = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("dragonfly-apid");
    let Some(apid) = require_binary(apid.to_str().unwrap(), "cargo build --workspace --bins")
    else {
        return;
    };
    // The image: built (or found up to date) by the one command.
    let t = Instant::now();
    let st = Command::new(repo_root().join("agent-image/build.sh"))
        .status()
        .unwrap();
    assert!(st.success(), "agent-image/build.sh failed");
    eprintln!("agent-image/build.sh: {:.1} s", t.elapsed().as_secs_f64());

    let pid = std::process::id();
    let subnet = format!("10.{}.{}", 100 + pid % 100, (pid / 100) % 250);
    let base = format!("http://{subnet}.1:3000");
    // The agent talks to apid's agents' listener; operators list machines on the other.
    let agents = format!("http://{subnet}.1:3001");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, size) in [("virtio.img", 4u64 << 30), ("sata.img", 2 << 30)] {
        fs::File::create(d.join(name))
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    // apid: a migrated store with an admin, the key, a config; NATS unreachable (optional).
    let state = d.join("state");
    fs::create_dir(&state).unwrap();
    let db = state.join("dragonfly.db");
    let password = "correct-horse-battery";
    let auth_db = state.join("apid/auth.db");
    {
        dragonfly_store::migrate_file(&db).unwrap();
        let store = dragonfly_store::BlockingDb::create_or_open_auth(&auth_db).unwrap();
        let hash = dragonfly_apid::auth::hash_password(password).unwrap();
        let create = store
            .db()
            .auth()
            .create_user("admin", &hash, true, jiff::Timestamp::now());
        store.block_on(create).unwrap();
    }
    let key = state.join("boot-token-key");
    fs::write(&key, KEY).unwrap();
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = state.join("dragonfly.toml");
    fs::write(
        &cfg,
        format!(
            "[store]\npath = {:?}\n[nats]\nurl = \"nats://127.0.0.1:1\"\n[log]\nlevel = \"info\"\n\
             [apid]\nlisten = \"{subnet}.1:3000\"\nagent_listen = \"{subnet}.1:3001\"\nboot_token_key_file = {:?}\nsecure_cookies = false\n\
              auth_db = {:?}\n",
            db.display().to_string(),
            key.display().to_string(),
            auth_db.display().to_string()
        ),
    )
    .unwrap();
    chown_for_unprivileged(&state).unwrap();
    let udhcpd = d.join("udhcpd.conf");
    let mut f = fs::File::create(&udhcpd).unwrap();
    write!(
        f,
        "start {subnet}.100\nend {subnet}.199\ninterface br0\nlease_file {}\n\
         option subnet 255.255.255.0\noption lease 3600\n",
        d.join("leases").display()
    )
    .unwrap();
    fs::File::create(d.join("leases")).unwrap();

    let mut ns = Netns::new(&format!("dfagent{pid}"), &subnet);
    let mut apid_cmd = unprivileged(&apid);
    apid_cmd.arg("--config").arg(&cfg);
    ns.spawn(&apid_cmd, &d.join("apid.log"));
    let mut dhcp = Command::new(&busybox);
    dhcp.args(["udhcpd", "-f"]).arg(&udhcpd);
    ns.spawn(&dhcp, &d.join("udhcpd.log"));

    let mac0: MacAddr = format!("52:54:00:{:02x}:{:02x}:01", pid % 256, (pid >> 8) % 256)
        .parse()
        .unwrap();
    let mac1: MacAddr = format!("52:54:00:{:02x}:{:02x}:02", pid % 256, (pid >> 8) % 256)
        .parse()
        .unwrap();

    let (secs, console) = boot(&ns, d, &qemu, &agents, [mac0, mac1], 1, &db);
    eprintln!("QEMU start → agent registered: {secs:.1} s (first boot)");
    assert!(console.contains("firmware BIOS"), "{console}");
    assert!(console.contains(", new machine)"), "{console}");
    let list = machines(&ns.name, &base, password);
    assert_eq!(list.len(), 1, "{list:#?}");
    let m = &list[0];
    let hw = &m["hardware"];
    assert_eq!(m["state"], "Registered", "{m:#}");
    assert_eq!(hw["smbiosUuid"], UUID);
    assert_eq!(hw["firmware"], "bios", "{hw:#}");
    assert_eq!(hw["virtualization"], "qemu", "{hw:#}");
    assert_eq!(hw["macs"], json!([mac0.to_string(), mac1.to_string()]));
    assert_eq!(
        (hw["cpu"]["cores"].as_u64(), hw["cpu"]["threads"].as_u64()),
        (Some(2), Some(2))
    );
    let mem = hw["memoryBytes"].as_u64().unwrap();
    let want = MEM_MIB << 20;
    assert!(
        mem.abs_diff(want) * 100 <= want * 3,
        "memory {mem} vs {want}"
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
        [("sda".to_owned(), 2 << 30), ("vda".to_owned(), 4 << 30)],
        "{hw:#}"
    );
    let drivers: Vec<_> = hw["nics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["driver"].clone())
        .collect();
    assert_eq!(drivers, [json!("virtio_net"), json!("e1000")], "{hw:#}");

    // Second boot of the same VM: the same machine, updated.
    let (secs2, console) = boot(&ns, d, &qemu, &agents, [mac0, mac1], 2, &db);
    eprintln!("QEMU start → agent registered: {secs2:.1} s (second boot)");
    assert!(console.contains(", known machine)"), "{console}");
    let again = machines(&ns.name, &base, password);
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(again[0]["id"], m["id"]);
    assert_eq!(again[0]["name"], m["name"]);
}
