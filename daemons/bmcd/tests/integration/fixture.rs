//! A store, a NATS server, a key and a config for bmcd; the daemon started as its binary.

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_bmc::seal::SealingKey;
use dragonfly_bus::power::{PowerCommand, PowerOp, PowerReply};
use dragonfly_core::{HardwareReport, MacAddr, Machine, MachineId};
use dragonfly_store::bmc::{Bmc, BmcKind, BmcSpec, SealedSecret};
use dragonfly_store::testing::TestDb;
use dragonfly_testkit::{NatsServer, chown_for_unprivileged, require_nats_servers, unprivileged};
use jiff::Timestamp;
use tokio::process::{Child, Command};

pub(crate) const BMCD: &str = env!("CARGO_BIN_EXE_dragonfly-bmcd");

pub(crate) struct Fixture {
    pub(crate) store: TestDb,
    pub(crate) cfg: PathBuf,
    _nats: NatsServer,
    pub(crate) log: PathBuf,
    pub(crate) client: async_nats::Client,
}

impl Fixture {
    /// `extra` goes into `[bmcd]`.
    pub(crate) async fn new(extra: &str) -> Option<Self> {
        if require_nats_servers().is_empty() {
            return None;
        }
        let nats = NatsServer::start().await.unwrap();
        let store = TestDb::new();
        let dir = store.dir.path();
        let key = dir.join("bmc-key");
        std::fs::write(&key, [0x5a; 32]).unwrap();
        let cfg = dir.join("dragonfly.toml");
        std::fs::write(
            &cfg,
            format!(
                "[store]\npath = {db:?}\n[nats]\nurl = {url:?}\n[log]\nlevel = \"debug\"\n\
                 [bmcd]\ntick = \"100ms\"\nkey_file = {key:?}\nipmitool = \"/usr/bin/ipmitool\"\n\
                 retry_delay = \"200ms\"\ncommand_timeout = \"10s\"\n{extra}\n",
                db = store.path.display().to_string(),
                url = nats.url(),
                key = key.display().to_string(),
            ),
        )
        .unwrap();
        chown_for_unprivileged(dir).unwrap();
        for f in std::fs::read_dir(dir).unwrap() {
            chown_for_unprivileged(f.unwrap().path()).unwrap();
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(90)))
            .connect(nats.url())
            .await
            .unwrap();
        let log = dir.join("bmcd.log");
        Some(Self {
            store,
            cfg,
            _nats: nats,
            log,
            client,
        })
    }

    /// Starts bmcd, its output appended to [`Fixture::log`], and waits until it has published
    /// its key.
    pub(crate) async fn start(&self) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::from(unprivileged(BMCD));
        cmd.arg("--config")
            .arg(&self.cfg)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("starting dragonfly-bmcd");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.store.db.bmcs().key().await.unwrap().is_none()
            || !self.log_text().contains("bmcd running")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "bmcd did not start: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) async fn machine(&self, n: u8) -> Machine {
        let report = HardwareReport {
            macs: vec![MacAddr::new([2, 0, 0, 0, 1, n])],
            ..Default::default()
        };
        self.store
            .db
            .machines()
            .register(report, Timestamp::now())
            .await
            .unwrap()
            .machine()
            .clone()
    }

    /// What apid does for `PUT /api/machines/{id}/bmc`: the password sealed to bmcd's
    /// published key.
    pub(crate) async fn set_bmc(&self, machine: MachineId, spec: BmcSpec, password: &str) -> Bmc {
        let (public, key_id) = self.store.db.bmcs().key().await.unwrap().unwrap();
        let sealed = SealingKey::from_bytes(&public)
            .unwrap()
            .seal(password)
            .unwrap();
        self.store
            .db
            .bmcs()
            .put(
                machine,
                spec,
                Some(SealedSecret { sealed, key_id }),
                None,
                Timestamp::now(),
            )
            .await
            .unwrap()
    }

    /// What apid does for `POST /api/machines/{id}/power`.
    pub(crate) async fn power(
        &self,
        machine: MachineId,
        op: PowerOp,
        persistent: bool,
    ) -> PowerReply {
        let body = serde_json::to_vec(&PowerCommand {
            machine_id: machine,
            persistent,
        })
        .unwrap();
        let msg = self
            .client
            .request(dragonfly_bus::power::subject(op), body.into())
            .await
            .unwrap_or_else(|e| panic!("no answer from bmcd: {e}\n{}", self.log_text()));
        serde_json::from_slice(&msg.payload).unwrap()
    }

    /// Waits until `check` holds for the machine's stored BMC.
    pub(crate) async fn wait_bmc(
        &self,
        machine: MachineId,
        what: &str,
        check: impl Fn(&Bmc) -> bool,
    ) -> Bmc {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let b = self.store.db.bmcs().get(machine).await.unwrap().unwrap();
            if check(&b) {
                return b;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: still {b:#?}\nbmcd log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Collects the payloads of the events on `subject`.
pub(crate) async fn watch(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let s = client.subscribe(subject.to_owned()).await.unwrap();
    client.flush().await.unwrap();
    s
}

/// The `data` of the next event on `sub` within `within`.
pub(crate) async fn next_event(
    sub: &mut async_nats::Subscriber,
    within: Duration,
) -> serde_json::Value {
    use futures::StreamExt as _;
    let msg = tokio::time::timeout(within, sub.next())
        .await
        .expect("no event in time")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    v["data"].clone()
}

/// Whether any process's command line holds every one of `needles` (arguments are separated
/// by NUL).
pub(crate) fn in_any_cmdline(needles: &[&str]) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                needles
                    .iter()
                    .all(|n| c.windows(n.len()).any(|w| w == n.as_bytes()))
            })
        })
}

/// The machine behind a power request's `workflow`, as `dragonfly-workflowd` would save a
/// success.
pub(crate) async fn succeed(store: &TestDb, wf: dragonfly_core::workflow::Workflow) {
    let mut w = wf;
    w.state = dragonfly_core::workflow::WorkflowState::Succeeded;
    store
        .db
        .workflows()
        .save(
            dragonfly_store::workflows::Save {
                workflow: w,
                applied: vec![],
                clear_request: false,
                machine: vec![],
            },
            Timestamp::now(),
        )
        .await
        .unwrap();
}

/// A workflow for `machine`, as apid's `POST /api/machines/{id}/provision` creates it.
pub(crate) async fn provision(
    store: &TestDb,
    machine: &Machine,
) -> dragonfly_core::workflow::Workflow {
    let spec: dragonfly_core::template::TemplateSpec = serde_json::from_value(serde_json::json!({
        "actions": [{"name": "disk", "type": "partition", "disk": "/dev/vda", "table": "gpt",
                     "partitions": [{"label": "root", "size": "rest", "type": "linux"}]}]
    }))
    .unwrap();
    let now = Timestamp::now();
    let wf = dragonfly_store::workflows::new_workflow(
        machine,
        "debian",
        spec.actions,
        Default::default(),
        600,
        3600,
        now,
    );
    store.db.workflows().create(wf, None, now).await.unwrap().0
}

/// An IPMI BMC on 127.0.0.1:`port`, user `user`.
pub(crate) fn ipmi(port: u16, user: &str) -> BmcSpec {
    BmcSpec {
        kind: BmcKind::Ipmi,
        address: Some("127.0.0.1".into()),
        port: Some(port),
        username: Some(user.into()),
        system: None,
        uefi: false,
        tls_ca: None,
        tls_fingerprint: None,
    }
}

/// A Redfish service at `endpoint`, user `user`, the system `system` (or its only one).
pub(crate) fn redfish(endpoint: &str, user: &str, system: Option<&str>) -> BmcSpec {
    BmcSpec {
        kind: BmcKind::Redfish,
        address: Some(endpoint.into()),
        port: None,
        username: Some(user.into()),
        system: system.map(Into::into),
        uefi: true,
        tls_ca: None,
        tls_fingerprint: None,
    }
}
