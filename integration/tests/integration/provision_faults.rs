//! Provisioning when things go wrong, with a real VM: daemons killed with SIGKILL while the
//! VM writes its disk, and a machine powered off in the middle of its download.
//!
//! The image comes from [`ImageServer`], which holds a download after its first MiB until the
//! test opens its gate: the kills happen while image2disk is really in progress, at a moment
//! the test chooses, not one a timer guesses.
//!
//! One VM, two workflows:
//! 1. **Crash safety (fast track).** The discovered agent starts imaging in place; with the
//!    download held, workflowd is killed (`kill -9`), the agent keeps reporting to apid, and
//!    workflowd is started again; then apid is killed, the agent's reports fail and are sent
//!    again, apid is started again. The gate opens: the install completes and the OS boots.
//!    Afterwards the store shows every report of every action, numbered without a gap and
//!    all applied: no acknowledged report was lost.
//! 2. **A silent agent, then retry (the PXE path).** The machine, now Ready and running its
//!    OS, is re-imaged with a template whose image action has a 20 s timeout; it is powered
//!    on again, PXE-boots into the agent in imaging mode, starts the (held) download and is
//!    powered off: the workflow times out, the machine goes to Error with a message naming
//!    the action. The operator retries; the VM is powered on, PXE-boots into imaging mode
//!    again and installs: Succeeded, Ready, and the OS prints its marker.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dragonfly_integration::{
    BRIDGE_ADDR, Firmware, ImageServer, SubjectWatcher, TESTOS_MARKER, Vm, test_os,
};
use serde_json::{Value, json};

use crate::common::{spawn_apid, spawn_workflowd};
use crate::discovery::full_lab;
use crate::provision::{Operator, between, vm_config};

const IMAGES_PORT: u16 = 8091;

/// Every stored report of a workflow, per (attempt, action): `(attempt, action, count,
/// highest seq, unapplied)`, read from the store file with Python's sqlite3 (a reader
/// independent of ours).
fn stored_reports(store: &std::path::Path, workflow: &str) -> Vec<(u64, u64, u64, u64, u64)> {
    let script = "import sqlite3, sys\n\
        db = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
        for row in db.execute('SELECT attempt, action, count(*), max(seq), \
        sum(applied = 0) FROM workflow_reports WHERE workflow_id = ? \
        GROUP BY attempt, action ORDER BY attempt, action', (sys.argv[2],)):\n\
        \x20   print(*row)\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(store)
        .arg(workflow)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let n: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            (n[0], n[1], n[2], n[3], n[4])
        })
        .collect()
}

/// `config` with its own name: each boot keeps its own serial log.
fn named(
    mut config: dragonfly_integration::VmConfig,
    name: &str,
) -> dragonfly_integration::VmConfig {
    config.name = name.to_owned();
    config
}

#[test]
fn killed_daemons_and_a_silent_agent_lose_nothing() {
    let Some((mut lab, stack, _events)) = full_lab() else {
        return;
    };
    let base = stack.apid.clone().unwrap();
    // An operator's session for one call or one wait: the lab must stay free for the test to
    // kill and start daemons and VMs in between. (Logging in again after apid's restart also
    // shows the operators' database survived.)
    macro_rules! op {
        () => {
            Operator::login(&lab, &base)
        };
    }
    let workflows = SubjectWatcher::start(&lab, &stack.nats, "dragonfly.workflow.>");
    let os = test_os();
    let addr: SocketAddr = format!("{BRIDGE_ADDR}:{IMAGES_PORT}").parse().unwrap();
    let images = ImageServer::start(&lab, addr);
    images.add("test-os.img.zst", std::fs::read(&os.compressed).unwrap());

    let disk = lab.dir().join("faults-virtio.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let mut vm = Vm::boot(
        &mut lab,
        named(vm_config(Firmware::Bios, &disk), "faults-1"),
    );
    vm.wait_for_line("Dragonfly agent: registered as", Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));

    let template = os.template("held", &images.url("test-os.img.zst", true));
    op!().create_template(template);
    let (id, _) = op!().machine(&base);
    let (status, wf) = op!().call(
        "POST",
        &format!("/api/machines/{id}/provision"),
        Some(json!({"template": "held", "values": {"hostname": "crash-safe"}})),
    );
    assert_eq!(status, 201, "{wf:#}");
    let wf_id = wf["id"].as_str().unwrap().to_owned();

    // image2disk is writing (its first MiB) and workflowd has applied its start.
    images
        .wait_held(1, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let op = op!();
    loop {
        let (_, w) = op.call("GET", &format!("/api/workflows/{wf_id}/progress"), None);
        if w["actions"][0]["state"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "image never Running: {w:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(op);

    // kill -9 workflowd mid-write: the agent's reports still reach apid and the store.
    lab.kill("workflowd");
    std::thread::sleep(Duration::from_secs(5));
    spawn_workflowd(&mut lab, "workflowd-2");
    // kill -9 apid: the agent's reports fail and wait; nothing acknowledged is in flight.
    lab.kill("apid");
    std::thread::sleep(Duration::from_secs(5));
    spawn_apid(&mut lab, "apid-2");
    images.open_gate();

    let marker = format!("{TESTOS_MARKER} hostname=crash-safe");
    vm.wait_for_line(&marker, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    let w = op!().wait_workflow(&wf_id, "Succeeded", Duration::from_secs(60));
    println!("crash safety: workflow {w:#}");
    let reports = stored_reports(&lab.store(), &wf_id);
    println!(
        "crash safety: stored reports (attempt, action, count, max seq, unapplied) {reports:?}"
    );
    assert_eq!(
        reports.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "every action reported: {reports:?}"
    );
    for &(attempt, action, count, max, unapplied) in &reports {
        assert_eq!(attempt, 1, "{reports:?}");
        assert_eq!(
            count,
            max + 1,
            "a gap in action {action}'s reports: {reports:?}"
        );
        assert_eq!(
            unapplied, 0,
            "action {action}'s reports not all applied: {reports:?}"
        );
    }
    let (_, m) = op!().machine(&base);
    assert_eq!(m["state"], "Ready", "{m:#}");
    drop(vm);

    // A silent agent: re-image with a short action timeout, power on, power off mid-download.
    images.close_gate();
    let mut short = os.template("held-short", &images.url("test-os.img.zst", true));
    short["spec"]["actions"][0]["timeoutSeconds"] = json!(20);
    op!().create_template(short);
    let (status, body) = op!().call(
        "POST",
        &format!("/api/machines/{id}/provision"),
        Some(json!({"template": "held-short", "values": {"hostname": "after-retry"}})),
    );
    assert_eq!(status, 409, "a Ready machine needs reimage: {body:#}");
    let (status, wf) = op!().call(
        "POST",
        &format!("/api/machines/{id}/provision"),
        Some(json!({"template": "held-short", "reimage": true,
                    "values": {"hostname": "after-retry"}})),
    );
    assert_eq!(status, 201, "{wf:#}");
    let wf_id = wf["id"].as_str().unwrap().to_owned();
    let mut vm = Vm::boot(
        &mut lab,
        named(vm_config(Firmware::Bios, &disk), "faults-2"),
    );
    images
        .wait_held(2, Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    vm.wait_for_line("imaging mode)", Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("the agent was not in imaging mode: {e}"));
    drop(vm);
    let powered_off = Instant::now();
    let w = op!().wait_workflow(&wf_id, "TimedOut", Duration::from_secs(120));
    println!(
        "silent agent: TimedOut {:.1} s after power-off: {}",
        powered_off.elapsed().as_secs_f64(),
        w["error"]
    );
    let message = w["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("image") && message.contains("timed out"),
        "{w:#}"
    );
    let (_, m) = op!().machine(&base);
    assert_eq!(m["state"], "Error", "{m:#}");

    // Retry: power on, PXE into imaging mode again, install.
    images.open_gate();
    let (status, body) = op!().call("POST", &format!("/api/workflows/{wf_id}/retry"), None);
    assert_eq!(status, 202, "retry: {body:#}");
    let mut vm = Vm::boot(
        &mut lab,
        named(vm_config(Firmware::Bios, &disk), "faults-3"),
    );
    let marker = format!("{TESTOS_MARKER} hostname=after-retry");
    let (installed, _) = vm
        .wait_for_line(&marker, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    let image2disk = between(&mut vm, "action image (1 of", "action image: done");
    op!().wait_workflow(&wf_id, "Succeeded", Duration::from_secs(60));
    let (_, m) = op!().machine(&base);
    assert_eq!(m["state"], "Ready", "{m:#}");
    println!(
        "PXE path (power on → imaging agent → installed OS): QEMU start → marker {:.1} s \
         (image2disk {image2disk:.1} s)",
        installed.as_secs_f64()
    );

    // Every CloudEvent of both workflows, each a CloudEvent (the watcher checks the shape).
    let subjects = workflows.subjects();
    for want in ["created", "started", "progress", "succeeded", "timedout"] {
        let subject = format!("dragonfly.workflow.{want}");
        assert!(subjects.contains(&subject), "no {subject}: {subjects:?}");
    }
    let progress: Vec<Value> = workflows
        .messages()
        .into_iter()
        .filter(|(s, _)| s == "dragonfly.workflow.progress")
        .map(|(_, e)| e)
        .collect();
    println!(
        "events: {} on dragonfly.workflow.>, {} progress",
        subjects.len(),
        progress.len()
    );
}

/// Bad input, one case after another on one VM (the fast track: the agent stays up after a
/// failure and the next assignment reaches it): each gives a Failed workflow whose message
/// says what went wrong, in the API and in workflowd's journal, and the machine in Error.
#[test]
fn bad_images_and_templates_fail_clearly() {
    let Some((mut lab, stack, _events)) = full_lab() else {
        return;
    };
    let base = stack.apid.clone().unwrap();
    let os = test_os();
    let addr: SocketAddr = format!("{BRIDGE_ADDR}:{IMAGES_PORT}").parse().unwrap();
    let images = ImageServer::start(&lab, addr);
    images.add("test-os.img.zst", std::fs::read(&os.compressed).unwrap());
    // A zstd frame's magic, then bytes that are no zstd at all.
    let mut corrupt = vec![0x28, 0xb5, 0x2f, 0xfd];
    corrupt.extend((0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    images.add("corrupt.img.zst", corrupt);

    let disk = lab.dir().join("bad-virtio.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    // A second disk smaller than the image (32 MiB < 64 MiB), blank.
    let small = lab.dir().join("bad-small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mut config = vm_config(Firmware::Bios, &disk);
    config.disks.push(dragonfly_integration::Disk {
        path: small,
        bus: dragonfly_integration::DiskBus::Virtio,
    });
    let mut vm = Vm::boot(&mut lab, config);
    vm.wait_for_line("Dragonfly agent: registered as", Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    let op = Operator::login(&lab, &base);
    let (id, _) = op.machine(&base);

    let good = images.url("test-os.img.zst", false);
    let image2disk = |url: &str, disk: Value, sha256: &str| {
        json!({"name": "image", "type": "image2disk", "url": url, "disk": disk,
               "sha256": sha256})
    };
    let cases: Vec<(&str, Value, Vec<String>)> = vec![
        (
            "unreachable",
            image2disk(
                &format!("http://{BRIDGE_ADDR}:8099/test-os.img.zst"),
                json!("/dev/vda"),
                &os.image_sha256,
            ),
            vec![format!("{BRIDGE_ADDR}:8099")],
        ),
        (
            "checksum",
            image2disk(&good, json!("/dev/vda"), &"ab".repeat(32)),
            vec!["ab".repeat(32), os.image_sha256.clone()],
        ),
        (
            "corrupt",
            image2disk(
                &images.url("corrupt.img.zst", false),
                json!("/dev/vda"),
                &os.image_sha256,
            ),
            vec!["zstd".into()],
        ),
        (
            "too-small",
            image2disk(&good, json!("/dev/vdb"), &os.image_sha256),
            vec!["/dev/vdb".into()],
        ),
        (
            "no-disk",
            image2disk(
                &good,
                json!({"rule": {"minSize": "1TiB"}}),
                &os.image_sha256,
            ),
            vec!["1TiB".into()],
        ),
        (
            "no-filesystem",
            json!({"name": "hostname", "type": "writefile", "device": "/dev/vdb",
                   "filesystem": "ext4", "path": "/etc/hostname", "contents": "x\n"}),
            vec!["/dev/vdb".into()],
        ),
    ];
    for (name, action, expect) in cases {
        let template = json!({
            "apiVersion": dragonfly_core::resource::API_VERSION,
            "kind": dragonfly_core::resource::TEMPLATE,
            "metadata": { "name": name },
            "spec": { "actions": [action] },
        });
        op.create_template(template);
        let started = Instant::now();
        let (status, wf) = op.call(
            "POST",
            &format!("/api/machines/{id}/provision"),
            Some(json!({"template": name})),
        );
        assert_eq!(status, 201, "{name}: {wf:#}");
        let wf_id = wf["id"].as_str().unwrap();
        let w = op.wait_workflow(wf_id, "Failed", Duration::from_secs(300));
        let message = w["error"].as_str().unwrap_or_default().to_owned();
        println!(
            "bad input {name}: Failed in {:.1} s: {message}",
            started.elapsed().as_secs_f64()
        );
        for e in &expect {
            assert!(message.contains(e.as_str()), "{name}: {e:?} not in {w:#}");
        }
        let (_, m) = op.machine(&base);
        assert_eq!(m["state"], "Error", "{name}: {m:#}");
        let journal = lab.log("workflowd");
        let wf_name = format!("workflow={}", w["name"].as_str().unwrap());
        assert!(
            journal.lines().any(|l| l.contains("workflow failed")
                && l.contains(&wf_name)
                && l.contains(expect[0].as_str())),
            "{name}: workflowd's journal has no failure line with {wf_name} and {:?}\n{journal}",
            expect[0]
        );
    }
    drop(vm);
}
