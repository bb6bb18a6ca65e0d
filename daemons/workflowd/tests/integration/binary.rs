//! The real `dragonfly-workflowd` binary (as an unprivileged user), a real `nats-server` and
//! a real SQLite file: what the agent reports through apid (inserted here with the same store
//! call apid makes before its 202) drives workflows to their end, across a `kill -9`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use dragonfly_core::agent_api::{ActionReport, ReportEvent};
use dragonfly_core::template::TemplateSpec;
use dragonfly_core::workflow::{Request, Workflow, WorkflowState};
use dragonfly_core::{HardwareReport, MacAddr, MachineState};
use dragonfly_store::testing::TestDb;
use dragonfly_testkit::{NatsServer, chown_for_unprivileged, require_nats_servers, unprivileged};
use jiff::Timestamp;
use tokio::process::{Child, Command};

const WORKFLOWD: &str = env!("CARGO_BIN_EXE_dragonfly-workflowd");

struct Fixture {
    store: TestDb,
    cfg: PathBuf,
    nats: NatsServer,
}

impl Fixture {
    async fn new() -> Option<Self> {
        if require_nats_servers().is_empty() {
            return None;
        }
        let nats = NatsServer::start().await.unwrap();
        let store = TestDb::new();
        let cfg = store.dir.path().join("dragonfly.toml");
        std::fs::write(
            &cfg,
            format!(
                "[store]\npath = {db:?}\n[nats]\nurl = {url:?}\n[log]\nlevel = \"info\"\n\
                 [workflowd]\ntick = \"200ms\"\n",
                db = store.path.display().to_string(),
                url = nats.url(),
            ),
        )
        .unwrap();
        chown_for_unprivileged(store.dir.path()).unwrap();
        Some(Self { store, cfg, nats })
    }

    fn start(&self) -> Child {
        let mut cmd = Command::from(unprivileged(WORKFLOWD));
        cmd.arg("--config")
            .arg(&self.cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        cmd.spawn().expect("starting dragonfly-workflowd")
    }

    async fn workflow(&self, mac: u8, timeout: u32) -> Workflow {
        let now = Timestamp::now();
        let report = HardwareReport {
            macs: vec![MacAddr::new([2, 0, 0, 0, 0, mac])],
            ..Default::default()
        };
        let m = self
            .store
            .db
            .machines()
            .register(report, now)
            .await
            .unwrap();
        let spec: TemplateSpec = serde_json::from_value(serde_json::json!({"actions": [
            {"name": "disk", "type": "partition", "disk": "/dev/vda", "table": "gpt",
             "timeoutSeconds": timeout,
             "partitions": [{"label": "root", "size": "rest", "type": "linux"}]},
            {"name": "image", "type": "image2disk", "url": "http://192.0.2.1/os.img.zst",
             "disk": "/dev/vda"},
            {"name": "boot", "type": "kexec", "device": {"disk": "/dev/vda", "partition": 1},
             "filesystem": "ext4", "kernel": "/boot/vmlinuz"}
        ]}))
        .unwrap();
        let wf = dragonfly_store::workflows::new_workflow(
            m.machine(),
            "debian",
            spec.actions,
            Default::default(),
            timeout,
            3600,
            now,
        );
        self.store
            .db
            .workflows()
            .create(wf, None, now)
            .await
            .unwrap()
            .0
    }

    /// What apid does for `POST /api/agent/report` before answering 202.
    async fn report(&self, wf: &Workflow, attempt: u32, action: u32, seq: u64, e: ReportEvent) {
        let r = ActionReport {
            workflow_id: wf.id,
            attempt,
            action,
            seq,
            event: e,
        };
        self.store
            .db
            .workflows()
            .report(r, Timestamp::now())
            .await
            .unwrap();
    }

    /// The whole action: started, progress, succeeded.
    async fn run_action(&self, wf: &Workflow, attempt: u32, action: u32) {
        self.report(wf, attempt, action, 0, ReportEvent::Started)
            .await;
        self.report(
            wf,
            attempt,
            action,
            1,
            ReportEvent::Progress {
                bytes_done: 50,
                bytes_total: Some(100),
                bytes_per_second: 10,
                message: None,
            },
        )
        .await;
        self.report(
            wf,
            attempt,
            action,
            2,
            ReportEvent::Succeeded { message: None },
        )
        .await;
    }

    async fn wait_for(&self, wf: &Workflow, want: WorkflowState) -> Workflow {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let w = self.store.db.workflows().get(wf.id).await.unwrap().unwrap();
            if w.state == want {
                return w;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "workflow still {:?} (wanted {want:?}): {w:#?}",
                w.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn machine_state(&self, wf: &Workflow) -> MachineState {
        self.store
            .db
            .machines()
            .get(wf.machine_id)
            .await
            .unwrap()
            .unwrap()
            .state
    }
}

#[tokio::test]
async fn reports_complete_a_workflow_and_events_are_published() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let watcher = async_nats_connect(&fx.nats.url()).await;
    let mut _daemon = fx.start();
    let wf = fx.workflow(1, 600).await;
    for i in 0..3 {
        fx.run_action(&wf, 1, i).await;
    }
    let done = fx.wait_for(&wf, WorkflowState::Succeeded).await;
    assert_eq!(fx.machine_state(&wf).await, MachineState::Ready);
    assert!(done.status.iter().all(|a| a.percent == 100));
    assert!(
        fx.store
            .db
            .workflows()
            .unapplied(10)
            .await
            .unwrap()
            .is_empty()
    );
    let seen = watcher.await;
    assert!(
        seen.contains(&"dragonfly.workflow.succeeded".to_owned()),
        "{seen:?}"
    );
}

/// Subscribes to `dragonfly.workflow.>` and returns, when awaited, the subjects seen within
/// a few seconds.
async fn async_nats_connect(url: &str) -> impl std::future::Future<Output = Vec<String>> + use<> {
    use futures::StreamExt;
    let client = async_nats::connect(url).await.unwrap();
    let mut sub = client.subscribe("dragonfly.workflow.>").await.unwrap();
    client.flush().await.unwrap();
    async move {
        let mut seen = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(m)) = tokio::time::timeout_at(end, sub.next()).await {
            seen.push(m.subject.to_string());
            if m.subject.as_str() == "dragonfly.workflow.succeeded" {
                break;
            }
        }
        drop(client);
        seen
    }
}

#[tokio::test]
async fn kill_9_mid_workflow_loses_no_acknowledged_report() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut daemon = fx.start();
    let wf = fx.workflow(2, 600).await;
    fx.run_action(&wf, 1, 0).await;
    fx.report(&wf, 1, 1, 0, ReportEvent::Started).await;
    let w = fx.wait_for(&wf, WorkflowState::Running).await;
    // Wait until the first action is applied, then kill -9 workflowd.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fx
        .store
        .db
        .workflows()
        .get(w.id)
        .await
        .unwrap()
        .unwrap()
        .current_action
        < 1
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    daemon.wait().await.unwrap();
    // Reports acknowledged while workflowd is down (apid keeps answering 202).
    fx.report(&wf, 1, 1, 1, ReportEvent::Succeeded { message: None })
        .await;
    fx.run_action(&wf, 1, 2).await;
    assert_eq!(
        fx.store
            .db
            .workflows()
            .get(wf.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        WorkflowState::Running,
        "nothing applies them while workflowd is down"
    );
    let _daemon = fx.start();
    fx.wait_for(&wf, WorkflowState::Succeeded).await;
    assert_eq!(fx.machine_state(&wf).await, MachineState::Ready);
    assert_eq!(
        fx.store.db.workflows().report_count(wf.id).await.unwrap(),
        3 + 2 + 3
    );
    assert!(
        fx.store
            .db
            .workflows()
            .unapplied(10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_silent_agent_times_out_and_a_retry_runs_again() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let _daemon = fx.start();
    let wf = fx.workflow(3, 1).await;
    // The agent was served the first action, then said nothing.
    fx.store
        .db
        .workflows()
        .serve(wf.id, Timestamp::now())
        .await
        .unwrap();
    let w = fx.wait_for(&wf, WorkflowState::TimedOut).await;
    let why = w.error.unwrap();
    assert!(why.contains("\"disk\""), "{why}");
    assert_eq!(fx.machine_state(&wf).await, MachineState::Error);
    fx.store
        .db
        .workflows()
        .request(wf.id, Request::Retry)
        .await
        .unwrap();
    let w = fx.wait_for(&wf, WorkflowState::Pending).await;
    assert_eq!(w.attempt, 2);
    assert_eq!(fx.machine_state(&wf).await, MachineState::OsAssigned);
    // This time the agent answers, quickly enough for the 1 s action timeout.
    for i in 0..3 {
        fx.run_action(&wf, 2, i).await;
    }
    fx.wait_for(&wf, WorkflowState::Succeeded).await;
    assert_eq!(fx.machine_state(&wf).await, MachineState::Ready);
}
