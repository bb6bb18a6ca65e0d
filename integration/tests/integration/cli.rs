//! The `dragonfly` command-line client against the real daemons: apid (socket-activated, as
//! nobody), workflowd and bmcd on a real NATS and a real SQLite file, in a lab namespace. Every
//! step runs the real binary, as an operator's shell would, and checks its output and its
//! documented exit code. A simulated agent registers the machine and runs its workflow, so
//! `workflows watch` is seen following real progress reports to the end.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dragonfly_core::MacAddr;
use dragonfly_integration::{Lab, SimAgent, profile_dir};
use serde_json::Value;

use crate::common::{
    ADMIN, LAB_APID as URL, LAB_APID_AGENTS as AGENT_URL, LAB_KEY as KEY, PASSWORD,
    require_operator_lab, start_operator_lab,
};

/// The client, run in the lab's namespace with its own HOME (so its credentials file is the
/// test's) and nothing of the caller's environment that it reads.
struct Shell<'a> {
    lab: &'a Lab,
    home: PathBuf,
    binary: PathBuf,
}

impl Shell<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.lab.command(&self.binary);
        cmd.args(args)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DRAGONFLY_URL")
            .env_remove("DRAGONFLY_TOKEN")
            .env_remove("DRAGONFLY_CREDENTIALS")
            .stdin(Stdio::null());
        cmd
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = match stdin {
            None => cmd.output().unwrap(),
            Some(input) => {
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = cmd.spawn().unwrap();
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
        };
        println!(
            "$ dragonfly {} → {}\n{}{}",
            args.join(" "),
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `dragonfly args`, expecting exit code `code`; its stdout.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        self.expect_env(code, args, &[])
    }

    fn expect_env(&self, code: i32, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run_with(args, env, None);
        assert_eq!(
            out.status.code(),
            Some(code),
            "dragonfly {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.expect(0, &all)).unwrap()
    }

    fn credentials(&self) -> PathBuf {
        self.home.join(".config/dragonfly/credentials.toml")
    }
}

const TEMPLATE: &str = "\
apiVersion: dragonfly.computer/v1
kind: Template
metadata:
  name: cli-test
spec:
  actions:
    - name: hostname
      type: writefile
      device: {disk: /dev/vda, partition: 1}
      filesystem: ext4
      path: /etc/hostname
      contents: \"{{hostname}}\"
";

#[test]
fn an_operator_does_everything_from_the_shell() {
    if !require_operator_lab() {
        return;
    }
    let lab = start_operator_lab();
    let home = lab.dir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let sh = Shell {
        lab: &lab,
        home,
        binary: profile_dir().join("dragonfly"),
    };
    assert!(
        sh.binary.is_file(),
        "{} missing: cargo build --workspace --bins",
        sh.binary.display()
    );

    // Not logged in: exit 3 with what to do.
    let out = sh.run_with(&["machines", "list"], &[], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dragonfly login"));

    // A wrong password: 401, exit 3, nothing saved.
    let out = sh.run_with(
        &["login", URL, "--username", ADMIN, "--password-stdin"],
        &[],
        Some("wrong\n"),
    );
    assert_eq!(out.status.code(), Some(3), "wrong password");
    assert!(!sh.credentials().exists());

    // Log in: a token saved 0600, the session used to make it ended.
    let out = sh.run_with(
        &[
            "login",
            URL,
            "--username",
            ADMIN,
            "--password-stdin",
            "--token-name",
            "cli-test",
        ],
        &[],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(out.status.code(), Some(0), "login");
    let mode = std::fs::metadata(sh.credentials())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "credentials file mode");
    assert!(sh.expect(0, &["whoami"]).contains("admin (administrator)"));

    // Empty inventory, in words.
    assert!(
        sh.expect(0, &["machines", "list"])
            .contains("No machines yet")
    );

    // A machine registers (the simulated agent, through apid's agents' listener).
    let mac = MacAddr::new([0x52, 0x54, 0x00, 0xc1, 0x10, 0x01]);
    let store = lab.dir().join("state/dragonfly.db");
    // Made in the namespace: its client's thread lives where it was made.
    let agent = lab.in_namespace(|| SimAgent::new(AGENT_URL, KEY, &store, mac).unwrap());
    let registered = lab
        .in_namespace(|| agent.register(&agent.report("sim-host")))
        .unwrap();
    let name = registered["name"].as_str().unwrap().to_owned();
    let list = sh.json(&["machines", "list"]);
    assert_eq!(list["items"][0]["name"], name.as_str());
    assert_eq!(
        sh.expect(0, &["machines", "list", "-o", "name"]).trim(),
        name
    );
    let table = sh.expect(0, &["machines", "list"]);
    assert!(table.starts_with("NAME") && table.contains(&name) && table.contains("Registered"));
    let detail = sh.expect(0, &["machines", "show", &name]);
    for want in [
        "Simulated CPU",
        "8.0 GiB",
        "vda",
        "20.0 GiB",
        "eth0",
        "up",
        "1000 Mb/s",
        "no BMC",
    ] {
        assert!(
            detail.contains(want),
            "machines show lacks {want:?}:\n{detail}"
        );
    }
    assert!(
        detail.contains("History:") && detail.contains("Created"),
        "{detail}"
    );
    assert_eq!(
        sh.expect(4, &["machines", "show", "NoSuchMachineAtAll"]),
        ""
    );

    // Labels: set, select by them, remove one.
    sh.expect(0, &["machines", "label", &name, "rack=r1", "role=web"]);
    assert_eq!(
        sh.expect(0, &["machines", "list", "-l", "rack=r1", "-o", "name"])
            .trim(),
        name
    );
    sh.expect(0, &["machines", "label", &name, "role-"]);
    let labels = &sh.json(&["machines", "show", &name])["labels"];
    assert_eq!(labels, &serde_json::json!({"rack": "r1"}));
    assert!(
        sh.expect(0, &["machines", "list", "-l", "rack=r9"])
            .contains("No machine matches")
    );
    sh.expect(2, &["machines", "label", &name, "nonsense"]);

    // Templates: created, unchanged, configured; a bad one refused with apid's words.
    let file = lab.write_file("template.yaml", TEMPLATE);
    let f = file.to_str().unwrap();
    assert!(
        sh.expect(0, &["templates", "apply", "-f", f])
            .contains("template/cli-test created")
    );
    assert!(
        sh.expect(0, &["templates", "apply", "-f", f])
            .contains("unchanged")
    );
    lab.write_file(
        "template.yaml",
        &TEMPLATE.replace("/etc/hostname", "/etc/hostname2"),
    );
    assert!(
        sh.expect(0, &["templates", "apply", "-f", f])
            .contains("configured")
    );
    let bad = lab.write_file("bad.yaml", &TEMPLATE.replace("writefile", "teleport"));
    let out = sh.run_with(
        &["templates", "apply", "-f", bad.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(5), "an invalid template is 422 → 5");
    assert!(String::from_utf8_lossy(&out.stderr).contains("422"));
    assert!(sh.expect(0, &["templates", "list"]).contains("cli-test"));
    assert_eq!(
        sh.json(&["templates", "show", "cli-test"])["spec"]["actions"][0]["path"],
        "/etc/hostname2"
    );

    // Provision, then watch the workflow while the agent runs it.
    let provisioned = sh.json(&[
        "provision",
        &name,
        "--template",
        "cli-test",
        "--set",
        "hostname=web1",
    ]);
    let workflow = provisioned["id"].as_str().unwrap().to_owned();
    assert!(provisioned["power"].as_str().unwrap().contains("no BMC"));
    assert_eq!(
        sh.expect(0, &["workflows", "list", "-o", "name"]).trim(),
        provisioned["name"].as_str().unwrap()
    );
    let watcher: Child = sh
        .command(&["workflows", "watch", &workflow, "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    lab.in_namespace(|| {
        let step = agent.wait_for_action(Duration::from_secs(20)).unwrap();
        assert_eq!(step["action"]["name"], "hostname");
        // Slow enough that the watcher sees the progress reports one by one.
        agent
            .run_action(&step, 1_048_576_000, 4, Duration::from_millis(700))
            .unwrap();
    });
    let watched = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&watched.stdout);
    println!(
        "$ dragonfly workflows watch {workflow} (after {:?})\n{text}{}",
        started.elapsed(),
        String::from_utf8_lossy(&watched.stderr)
    );
    assert_eq!(watched.status.code(), Some(0), "watch ends 0 on success");
    assert!(text.contains("Succeeded"), "{text}");
    let progress_lines = text.lines().filter(|l| l.contains("MiB/s")).count();
    assert!(
        progress_lines >= 3,
        "watch followed each progress report live (over /api/events):\n{text}"
    );
    let shown = sh.expect(0, &["workflows", "show", &workflow]);
    assert!(
        shown.contains("Succeeded") && shown.contains("hostname"),
        "{shown}"
    );
    // Watching a finished workflow answers at once, with its outcome.
    sh.expect(0, &["workflows", "watch", &workflow]);

    // Power: no BMC is a refusal (409 → 5); with Wake-on-LAN, `on` reaches bmcd and is done.
    let out = sh.run_with(&["power", &name, "status"], &[], None);
    assert_eq!(out.status.code(), Some(5), "power without a BMC");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("bmc")
    );
    let token = toml_token(&sh.credentials());
    let set = sh.expect(
        0,
        &[
            "bmc",
            "set",
            &name,
            "--type",
            "wol",
            "--address",
            "10.99.0.255",
        ],
    );
    assert!(set.contains("BMC wol 10.99.0.255 configured"), "{set}");
    assert!(
        sh.expect(0, &["bmc", "show", &name])
            .contains("Type:       wol")
    );
    sh.expect(
        5,
        &[
            "bmc",
            "set",
            &name,
            "--type",
            "ipmi",
            "--address",
            "not a host!",
        ],
    );
    assert!(sh.expect(0, &["power", &name, "on"]).contains("on done"));

    // A reserved address: set, shown with the machine, released. dhcpd (socket-activated)
    // publishes the subnets it serves when it starts: wake it with a datagram first.
    lab.in_namespace(|| {
        let s = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
        s.send_to(b"wake up", "10.99.0.1:67").unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while sh
        .run_with(&["address", "set", &name, "10.99.0.77"], &[], None)
        .status
        .code()
        != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "dhcpd never published its subnets"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let reserved = sh.expect(0, &["address", "set", &name, "10.99.0.77"]);
    assert!(reserved.contains("10.99.0.77 reserved"), "{reserved}");
    assert_eq!(
        sh.json(&["machines", "show", &name])["reservedIp"],
        "10.99.0.77"
    );
    sh.expect(5, &["address", "set", &name, "192.0.2.1"]);
    sh.expect(0, &["address", "remove", &name]);
    sh.expect(4, &["address", "show", &name]);

    // Approval is for machines waiting in Discovered: this one is not (409 → 5).
    sh.expect(5, &["machines", "approve", &name]);

    // The image library: a remote image added, listed, deleted.
    let image = lab.write_file(
        "image.yaml",
        &format!(
            "apiVersion: dragonfly.computer/v1\nkind: Image\nmetadata: {{name: remote-os}}\n\
             spec: {{url: \"http://10.99.0.1:8090/os.img\", format: raw, sha256: {}}}\n",
            "ab".repeat(32)
        ),
    );
    assert!(
        sh.expect(0, &["images", "add", "-f", image.to_str().unwrap()])
            .contains("image/remote-os added")
    );
    assert_eq!(
        sh.expect(0, &["images", "list", "-o", "name"]).trim(),
        "remote-os"
    );
    assert!(
        sh.expect(0, &["images", "list"])
            .contains("http://10.99.0.1:8090/os.img")
    );
    sh.expect(0, &["images", "delete", "remote-os"]);
    sh.expect(4, &["images", "show", "remote-os"]);

    // Tokens: create (shown once), use, list, revoke; a revoked token is refused (exit 3).
    let created = sh.json(&["tokens", "create", "ci"]);
    let ci = created["token"].as_str().unwrap().to_owned();
    assert!(ci.starts_with("dft_"));
    let env = [("DRAGONFLY_URL", URL), ("DRAGONFLY_TOKEN", ci.as_str())];
    assert!(sh.expect_env(0, &["whoami"], &env).contains("admin"));
    let tokens = sh.json(&["tokens", "list"]);
    assert_eq!(tokens.as_array().unwrap().len(), 2, "{tokens}");
    assert!(!tokens.to_string().contains("dft_"), "secrets never listed");
    sh.expect(0, &["tokens", "revoke", created["id"].as_str().unwrap()]);
    sh.expect_env(3, &["whoami"], &env);

    // Users: create an operator (password from stdin), who logs in; disable, refused; enable.
    let out = sh.run_with(
        &["users", "create", "ops1"],
        &[],
        Some("ops1-correct-horse-battery\n"),
    );
    assert_eq!(out.status.code(), Some(0), "users create");
    assert!(sh.expect(0, &["users", "list"]).contains("ops1"));
    let ops_home = sh.home.join("ops1");
    std::fs::create_dir_all(&ops_home).unwrap();
    let ops = Shell {
        lab: sh.lab,
        home: ops_home,
        binary: sh.binary.clone(),
    };
    let out = ops.run_with(
        &["login", URL, "--username", "ops1", "--password-stdin"],
        &[],
        Some("ops1-correct-horse-battery\n"),
    );
    assert_eq!(out.status.code(), Some(0), "the new operator logs in");
    assert!(ops.expect(0, &["whoami"]).contains("ops1 (operator)"));
    sh.expect(3, &["users", "list", "--credentials", "/nonexistent"]);
    ops.expect(3, &["users", "list"]);
    sh.expect(0, &["users", "disable", "ops1"]);
    ops.expect(3, &["whoami"]);
    sh.expect(0, &["users", "enable", "ops1"]);
    ops.expect(0, &["whoami"]);
    sh.expect(0, &["users", "revoke", "ops1"]);
    ops.expect(3, &["whoami"]);
    sh.expect(4, &["users", "disable", "nobody-here"]);

    // Delete: refused without --yes when nobody can be asked, then done.
    sh.expect(2, &["machines", "delete", &name]);
    sh.expect(0, &["machines", "delete", &name, "--yes"]);
    sh.expect(4, &["machines", "show", &name]);

    // A credentials file others can read is refused.
    std::fs::set_permissions(sh.credentials(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sh.run_with(&["whoami"], &[], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(sh.credentials(), std::fs::Permissions::from_mode(0o600)).unwrap();

    // Logout revokes the saved token: it no longer works from anywhere.
    sh.expect(0, &["logout"]);
    assert!(!sh.credentials().exists());
    let env = [("DRAGONFLY_URL", URL), ("DRAGONFLY_TOKEN", token.as_str())];
    sh.expect_env(3, &["whoami"], &env);

    // Shell completions and the man page come from the same definitions.
    assert!(sh.expect(0, &["completions", "bash"]).contains("workflows"));
    let man = sh.expect(0, &["man"]);
    assert!(man.contains(".TH dragonfly 1") && man.contains("Exit codes"));
}

/// The token in a credentials file.
fn toml_token(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["token"].as_str().unwrap().to_owned()
}
