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
use dragonfly_integration::{DhcpdConfig, Lab, SimAgent, profile_dir};
use serde_json::Value;

use crate::common::{ADMIN, PASSWORD, create_admin, start_dragonfly_with};

const URL: &str = "http://10.99.0.1:3000";
const AGENT_URL: &str = "http://10.99.0.1:3001";
/// The boot-token key the lab's daemons use (`start_dragonfly_with`).
const KEY: &[u8] = b"e2e-test-key-0123456789abcdef0123456789abcdef0123456789abcdef";

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

/// Root (the lab), NATS and Debian's iPXE binaries (the lab's tftpd serves them).
fn requirements() -> bool {
    dragonfly_testkit::require_root()
        && !dragonfly_testkit::require_nats_servers().is_empty()
        && (Path::new("/usr/lib/ipxe/undionly.kpxe").is_file()
            || dragonfly_testkit::require_binary(
                "/usr/lib/ipxe/undionly.kpxe",
                "apt-get install ipxe",
            )
            .is_some())
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
    if !requirements() {
        return;
    }
    let mut lab = Lab::new();
    create_admin(&mut lab);
    // No VM boots here: ipxed needs an agent directory, not an agent.
    let agent_dir = lab.dir().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let _stack = start_dragonfly_with(&mut lab, &agent_dir, DhcpdConfig::lab("reservation"), true);
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
        progress_lines >= 2,
        "watch followed the progress live:\n{text}"
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
    let put = lab.in_namespace(|| {
        reqwest::blocking::Client::new()
            .put(format!("{URL}/api/machines/{name}/bmc"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"type": "wol", "address": "10.99.0.255"}))
            .send()
            .unwrap()
            .status()
    });
    assert!(put.is_success(), "PUT bmc: {put}");
    assert!(sh.expect(0, &["power", &name, "on"]).contains("on done"));

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
