//! Shared set-up: requirements and the stand-in servers.

use std::path::Path;

use dragonfly_integration::{
    ApidConfig, BmcdConfig, BootReport, DhcpdConfig, HttpSettings, IpxedConfig, Lab, LabConfig,
    TestImage, TftpdConfig, Vm, VmConfig,
};
use dragonfly_testkit::{require_binary, require_root};

/// The operator every lab with apid has (see [`create_admin`]).
pub(crate) const ADMIN: &str = "admin";
pub(crate) const PASSWORD: &str = "e2e-correct-horse-battery";

/// Root and every tool a VM boot needs; `false` (after printing `SKIP:`) outside CI when one
/// is missing.
pub(crate) fn require_vm_tools() -> bool {
    if !require_root() {
        return false;
    }
    [
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ("dnsmasq", "apt-get install dnsmasq-base"),
        ("busybox", "apt-get install busybox-static"),
        ("timeout", "apt-get install coreutils"),
        ("ip", "apt-get install iproute2"),
        ("apt-get", "Debian"),
        ("dpkg", "Debian"),
    ]
    .iter()
    .all(|(name, install)| require_binary(name, install).is_some())
        && [
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/lib/ipxe/undionly.kpxe",
        ]
        .iter()
        .all(|p| Path::new(p).is_file() || require_binary(p, "apt-get install ovmf ipxe").is_some())
}

/// An iPXE script that boots the test image from `base` (e.g. `http://10.99.0.1:8080/agent`)
/// for `mac`: what ipxed's `/boot/{mac}` does in discovery mode.
pub(crate) fn boot_script(base: &str, mac: &str, mode: &str) -> String {
    // initrd=initrd.img: this (2019) iPXE boots Linux through the EFI stub on UEFI, which
    // finds the initrd only when named (lab pitfall 5). panic=-1 + -no-reboot: a failed boot
    // ends QEMU.
    format!(
        "#!ipxe\nkernel {base}/vmlinuz initrd=initrd.img console=ttyS0 quiet panic=-1 \
         dragonfly.mac={mac} dragonfly.mode={mode}\ninitrd {base}/initrd.img\nboot\n"
    )
}

/// busybox httpd on 10.99.0.1:8080 serving `/boot.ipxe` (chains to `/boot/${net0/mac}`),
/// `/boot/<mac>` and `/agent/{vmlinuz,initrd.img}`: the stand-in for ipxed.
pub(crate) fn standin_http(lab: &mut Lab, image: &TestImage, mac: &str, mode: &str) {
    let www = lab.dir().join("www");
    std::fs::create_dir_all(www.join("agent")).unwrap();
    std::os::unix::fs::symlink(&image.vmlinuz, www.join("agent/vmlinuz")).unwrap();
    std::os::unix::fs::symlink(&image.initrd, www.join("agent/initrd.img")).unwrap();
    lab.write_file(
        "www/boot.ipxe",
        "#!ipxe\nchain http://10.99.0.1:8080/boot/${net0/mac}\n",
    );
    lab.write_file(
        &format!("www/boot/{mac}"),
        &boot_script("http://10.99.0.1:8080/agent", mac, mode),
    );
    let mut cmd = lab.command("busybox");
    cmd.args(["httpd", "-f", "-vv", "-p", "10.99.0.1:8080", "-h"])
        .arg(&www);
    lab.spawn("httpd", cmd);
}

/// The lab's dnsmasq: DHCP (no ping), RA, and when `tftp` TFTP of the iPXE binaries, with
/// iPXE clients sent to the HTTP `/boot.ipxe` and others to `undionly.kpxe` / `ipxe.efi`.
pub(crate) fn standin_dnsmasq(lab: &mut Lab, tftp: bool) {
    let root = lab.dir().join("tftp");
    std::fs::create_dir_all(&root).unwrap();
    for (from, to) in [
        ("/usr/lib/ipxe/undionly.kpxe", "undionly.kpxe"),
        ("/usr/lib/ipxe/ipxe.efi", "ipxe.efi"),
    ] {
        std::fs::copy(from, root.join(to)).unwrap();
    }
    let mut args: Vec<String> = [
        "--dhcp-range=10.99.0.100,10.99.0.200,255.255.255.0,1h",
        "--dhcp-authoritative",
        "--no-ping",
        "--log-dhcp",
        "--dhcp-match=set:ipxe,175",
        "--dhcp-userclass=set:ipxe,iPXE",
        "--dhcp-match=set:efi64,option:client-arch,7",
        "--dhcp-match=set:efi64,option:client-arch,9",
        "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,10.99.0.1",
        "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,10.99.0.1",
        "--dhcp-boot=tag:ipxe,http://10.99.0.1:8080/boot.ipxe,,10.99.0.1",
        "--dhcp-option=tag:ipxe,encap:175,176,1",
    ]
    .map(String::from)
    .to_vec();
    if tftp {
        args.push("--enable-tftp".into());
        args.push(format!("--tftp-root={}", root.display()));
    }
    args.extend(Lab::ra_options());
    lab.dnsmasq("dnsmasq", &args);
    lab.wait_for_log("dnsmasq", "started", std::time::Duration::from_secs(5));
}

/// Boots one VM and waits for the marker; panics with every log when it does not come or
/// shows another MAC. Prints the timeline.
pub(crate) fn boot_and_check(lab: &mut Lab, config: VmConfig) -> BootReport {
    let mac = config.mac.clone();
    let mut vm = Vm::boot(lab, config);
    let report = vm
        .wait_for_marker()
        .unwrap_or_else(|e| panic!("{e}\n===== lab logs =====\n{}", lab.logs()));
    drop(vm);
    println!("{report}");
    assert_eq!(report.mac, mac, "dragonfly.mac on the kernel command line");
    assert_eq!(report.nic, mac, "eth0's MAC in the booted kernel");
    report
}

/// What [`start_dragonfly_with`] started.
#[derive(Debug)]
pub(crate) struct Stack {
    /// The lab's NATS, as seen from inside the namespace.
    pub(crate) nats: String,
    /// apid's operators' listener (inside the namespace), when it was started.
    pub(crate) apid: Option<String>,
    /// apid's agents' listener, when it was started.
    pub(crate) apid_agent: Option<String>,
}

/// Dragonfly's boot path with the test image as the agent (see [`start_dragonfly_with`]).
pub(crate) fn start_dragonfly(lab: &mut Lab, image: &TestImage, dhcpd: DhcpdConfig) -> Stack {
    start_dragonfly_with(lab, &image.dir, dhcpd, false)
}

/// Dragonfly's own boot path in `lab`: a NATS server and a migrated store inside the
/// namespace, then dhcpd (configured by `dhcpd`), tftpd (root: Debian's iPXE binaries),
/// ipxed (serving the agent kernel and initrd in `agent_dir`, and the same iPXE binaries
/// for UEFI HTTP boot) and, when `apid`, apid on
/// 10.99.0.1:3000 and workflowd (which applies the agents' reports) — each as
/// nobody through socket activation, as in production. One config file for all, as on a
/// real host; ipxed and apid share the boot-token key file.
pub(crate) fn start_dragonfly_with(
    lab: &mut Lab,
    agent_dir: &Path,
    dhcpd: DhcpdConfig,
    apid: bool,
) -> Stack {
    start_dragonfly_configured(lab, agent_dir, dhcpd, apid, |_| {})
}

/// [`start_dragonfly_with`], with the lab's configuration changed by `tweak` before it is
/// written (the attack suite shortens timeouts).
pub(crate) fn start_dragonfly_configured(
    lab: &mut Lab,
    agent_dir: &Path,
    dhcpd: DhcpdConfig,
    apid: bool,
    tweak: impl FnOnce(&mut LabConfig),
) -> Stack {
    use dragonfly_integration::{Socket, daemon_binary};
    let mut names = vec!["dragonfly-dhcpd", "dragonfly-tftpd", "dragonfly-ipxed"];
    if apid {
        names.push("dragonfly-apid");
        // Provisioning needs its engine wherever the API can create workflows, and power
        // control wherever the API can send power commands.
        names.push("dragonfly-workflowd");
        names.push("dragonfly-bmcd");
    }
    let binaries: Vec<_> = names.iter().map(|n| daemon_binary(n)).collect();
    let nats = lab.start_nats();
    let store = lab.store();
    let auth_db = lab.auth_db();
    let tftp = lab.dir().join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    // The image library: the test puts files here (readable by the daemons' user).
    let images = lab.dir().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (from, to) in [
        ("/usr/lib/ipxe/undionly.kpxe", "undionly.kpxe"),
        ("/usr/lib/ipxe/ipxe.efi", "ipxe.efi"),
        ("/usr/lib/ipxe/snponly.efi", "snponly.efi"),
    ] {
        std::fs::copy(from, tftp.join(to)).unwrap();
    }
    // A key the size of a real one (ipxed signs boot tokens with it).
    let key = lab.write_file(
        "boot-token-key",
        "e2e-test-key-0123456789abcdef0123456789abcdef0123456789abcdef",
    );
    // ipxed refuses a secret others can read.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    dragonfly_testkit::chown_for_unprivileged(&key).unwrap();
    // bmcd's private key (the BMC passwords are sealed to its public half).
    let bmc_key = lab.write_file("bmc-key", "e2e-bmc-key-0123456789abcdef0123456789abcdef");
    std::fs::set_permissions(
        &bmc_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    dragonfly_testkit::chown_for_unprivileged(&bmc_key).unwrap();
    let config = lab.dir().join("dragonfly.toml");
    let mut lab_config = LabConfig {
        store: Some(store),
        log_level: "debug".into(),
        tftpd: Some(TftpdConfig {
            roots: vec![tftp.clone()],
            listen: None,
        }),
        ipxed: Some(IpxedConfig {
            listen: "10.99.0.1:8080".into(),
            public_url: "http://10.99.0.1:8080".into(),
            // The agents' listener: the agent never talks to the operators' side.
            apid_url: "http://10.99.0.1:3001".into(),
            agent_dir: agent_dir.to_owned(),
            // The lab's copies (regular files: Debian's /usr/lib/ipxe/ipxe.efi is a symlink
            // to /boot, which ipxed refuses), the same bytes tftpd serves.
            ipxe_dir: Some(tftp.clone()),
            images_dir: Some(images.clone()),
            kernel_cmdline_extra: Some("console=ttyS0 quiet panic=-1".into()),
            boot_token_key_file: key.clone(),
            http: HttpSettings::default(),
        }),
        apid: Some(ApidConfig {
            listen: "10.99.0.1:3000".into(),
            agent_listen: "10.99.0.1:3001".into(),
            boot_token_key_file: key,
            http: HttpSettings::default(),
            auth_db: Some(auth_db),
        }),
        dhcpd: Some(dhcpd),
        bmcd: Some(BmcdConfig {
            key_file: bmc_key,
            // Quick enough for a test to see power changes without asking.
            poll_interval: Some("2s".into()),
            ipmitool: None,
        }),
        ..LabConfig::new(&nats)
    };
    tweak(&mut lab_config);
    lab_config.write(&config).unwrap();
    let args = [
        std::ffi::OsString::from("--config"),
        config.clone().into_os_string(),
    ];
    for binary in &binaries {
        let out = std::process::Command::new(binary)
            .args(&args)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} --check-config: {}{}",
            binary.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let env = [("RUST_LOG", "debug")];
    lab.spawn_daemon(
        "dhcpd",
        &binaries[0],
        &[
            Socket::Udp {
                addr: "0.0.0.0:67",
                name: "dhcp",
            },
            Socket::Udp {
                addr: "0.0.0.0:4011",
                name: "pxe",
            },
        ],
        &args,
        &env,
    );
    lab.spawn_daemon(
        "tftpd",
        &binaries[1],
        &[Socket::Udp {
            addr: "0.0.0.0:69",
            name: "tftp",
        }],
        &args,
        &env,
    );
    lab.spawn_daemon(
        "ipxed",
        &binaries[2],
        &[Socket::Tcp {
            addr: "10.99.0.1:8080",
            name: "http",
        }],
        &args,
        &env,
    );
    let labels = ["dhcpd", "tftpd", "ipxed"];
    // socket-activate prints "Listening on …" once its sockets are bound.
    for label in labels {
        lab.wait_for_log(label, "Listening on", std::time::Duration::from_secs(5));
    }
    if apid {
        spawn_apid(lab, "apid");
        spawn_workflowd(lab, "workflowd");
        spawn_bmcd(lab, "bmcd");
    }
    Stack {
        nats,
        apid: apid.then(|| "http://10.99.0.1:3000".to_owned()),
        apid_agent: apid.then(|| "http://10.99.0.1:3001".to_owned()),
    }
}

/// apid of the lab [`start_dragonfly_with`] made, started (again) as `label`: socket-activated
/// on both listeners, as nobody, with the lab's configuration. Returns when its sockets are
/// bound (apid itself starts on the first connection).
pub(crate) fn spawn_apid(lab: &mut Lab, label: &str) {
    use dragonfly_integration::{Socket, daemon_binary};
    let args = lab_config_args(lab);
    lab.spawn_daemon(
        label,
        &daemon_binary("dragonfly-apid"),
        &[
            Socket::Tcp {
                addr: "10.99.0.1:3000",
                name: "http",
            },
            Socket::Tcp {
                addr: "10.99.0.1:3001",
                name: "agent",
            },
        ],
        &args,
        &[("RUST_LOG", "debug")],
    );
    lab.wait_for_log(label, "Listening on", std::time::Duration::from_secs(5));
}

/// workflowd of the lab [`start_dragonfly_with`] made, started (again) as `label`; it has no
/// sockets, so it starts at once, as nobody. Returns once it runs.
pub(crate) fn spawn_workflowd(lab: &mut Lab, label: &str) {
    let args = lab_config_args(lab);
    lab.spawn_daemon(
        label,
        &dragonfly_integration::daemon_binary("dragonfly-workflowd"),
        &[],
        &args,
        &[("RUST_LOG", "debug")],
    );
    lab.wait_for_log(
        label,
        "workflowd running",
        std::time::Duration::from_secs(10),
    );
}

/// bmcd of the lab [`start_dragonfly_with`] made, started (again) as `label`, inside the
/// namespace (beside NATS and the BMC emulators of `dragonfly_integration::PoweredVm`), as
/// nobody. Returns once it runs.
pub(crate) fn spawn_bmcd(lab: &mut Lab, label: &str) {
    let args = lab_config_args(lab);
    lab.spawn_daemon(
        label,
        &dragonfly_integration::daemon_binary("dragonfly-bmcd"),
        &[],
        &args,
        &[("RUST_LOG", "debug")],
    );
    lab.wait_for_log(label, "bmcd running", std::time::Duration::from_secs(10));
}

fn lab_config_args(lab: &Lab) -> [std::ffi::OsString; 2] {
    [
        "--config".into(),
        lab.dir().join("dragonfly.toml").into_os_string(),
    ]
}

/// The first operator, straight into the store (as `dragonfly-apid create-admin` would).
pub(crate) fn create_admin(lab: &mut Lab) {
    let path = lab.auth_db();
    let hash = dragonfly_apid::auth::hash_password(PASSWORD).unwrap();
    // apid's own database, as `dragonfly-apid create-admin` makes it (0600 in a 0700
    // directory), then handed to nobody, who runs apid in the lab.
    let store = dragonfly_store::BlockingDb::create_or_open_auth(&path).unwrap();
    let create = store
        .db()
        .auth()
        .create_user(ADMIN, &hash, true, jiff::Timestamp::now());
    store.block_on(create).unwrap();
    drop(store);
    dragonfly_testkit::chown_for_unprivileged(path.parent().unwrap()).unwrap();
}

/// apid's operators' and agents' URLs in a lab [`start_operator_lab`] made, and the
/// boot-token key every lab's daemons use ([`start_dragonfly_with`] writes it).
pub(crate) const LAB_APID: &str = "http://10.99.0.1:3000";
pub(crate) const LAB_APID_AGENTS: &str = "http://10.99.0.1:3001";
pub(crate) const LAB_KEY: &[u8] = b"e2e-test-key-0123456789abcdef0123456789abcdef0123456789abcdef";

/// What a lab of the operator's tools (no VM) needs: root, NATS and Debian's iPXE binaries
/// (the lab's tftpd serves them); `false` (after `SKIP:`) outside CI when one is missing.
pub(crate) fn require_operator_lab() -> bool {
    require_root()
        && !dragonfly_testkit::require_nats_servers().is_empty()
        && (Path::new("/usr/lib/ipxe/undionly.kpxe").is_file()
            || require_binary("/usr/lib/ipxe/undionly.kpxe", "apt-get install ipxe").is_some())
}

/// Every daemon of a lab with the first operator ([`ADMIN`]) and no agent image: for the
/// operator's tools, with simulated agents instead of VMs.
pub(crate) fn start_operator_lab() -> Lab {
    let mut lab = Lab::new();
    create_admin(&mut lab);
    // No VM boots here: ipxed needs an agent directory, not an agent.
    let agent_dir = lab.dir().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    start_dragonfly_with(&mut lab, &agent_dir, DhcpdConfig::lab("reservation"), true);
    lab
}
