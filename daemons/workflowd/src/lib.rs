//! workflowd: the one writer of provisioning workflows' state.
//!
//! Agents' reports reach the store through apid (durably, before apid acknowledges them);
//! operators' cancel and retry requests too. workflowd turns them into state: it reads the
//! unapplied reports in the order they were stored, runs `dragonfly_core::workflow`'s pure
//! state machine, and writes the workflow, the consumed reports (marked applied) and the
//! machine's lifecycle change (OsAssigned → Provisioning → Ready, or Error) in one
//! transaction. Then it publishes what happened. It also enforces timeouts: a workflow whose
//! agent stays silent times out and its machine goes to Error with a message naming the
//! action.
//!
//! NATS events (`dragonfly.workflow.reported`, `.requested`) are hints only: the follower
//! reconciles from the store at start, after every reconnect and on a period, and the main
//! loop also reads the store on every tick. A crash anywhere leaves unapplied reports in the
//! table, applied again after the restart: an acknowledged report is never lost, and since
//! applying is a function of the stored workflow and the report (stale and duplicate reports
//! change nothing), applying after a crash gives the same result.
//!
//! It must never write anything but workflows, their reports' applied flag and the machine
//! lifecycle moves that go with them; and never act on an event's payload.

pub mod config;
pub mod metrics;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dragonfly_bus::Follower;
use dragonfly_bus::events::{
    WorkflowCancelled, WorkflowFailed, WorkflowProgress, WorkflowReported, WorkflowRequested,
    WorkflowStarted, WorkflowSucceeded, WorkflowTimedout,
};
use dragonfly_core::Chain;
use dragonfly_core::lifecycle::LifecycleEvent;
use dragonfly_core::workflow::{Change, Workflow};
use dragonfly_runtime::{Context, Daemon, Health, SocketError, Sockets};
use dragonfly_store::workflows::{Save, StoredReport};
use dragonfly_store::{Db, StoreError};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::WorkflowdConfig;

/// The daemon, as the frame runs it.
#[derive(Debug)]
pub struct Workflowd;

impl Daemon for Workflowd {
    const NAME: &'static str = "workflowd";
    const ABOUT: &'static str =
        "Dragonfly workflow engine: applies agents' reports, enforces timeouts";
    // Its loop beats on every tick, and its work is the store.
    const HEALTH: Health = Health::MainLoopAndStore;
    type Config = WorkflowdConfig;
    // No sockets: it talks to the store and NATS only.
    type Sockets = ();
    type Store = Db;
    type Error = WorkflowdError;

    fn sockets(_: &WorkflowdConfig, _: &mut Sockets) -> Result<(), SocketError> {
        Ok(())
    }

    async fn run(
        ctx: Context<Self>,
        (): (),
        shutdown: CancellationToken,
    ) -> Result<(), WorkflowdError> {
        run(ctx, shutdown).await
    }
}

/// Why workflowd stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowdError {
    #[error("subscribing to workflow hints")]
    Subscribe(#[source] dragonfly_bus::BusError),
}

/// How often the workflows-by-state gauge is read from the store, at most.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// Serves until `shutdown`: a pass over the store at start, on every hint, reconcile and tick.
pub async fn run(
    ctx: Context<Workflowd>,
    shutdown: CancellationToken,
) -> Result<(), WorkflowdError> {
    let metrics = metrics::WorkflowdMetrics::register(&ctx.metrics);
    let mut engine = Engine::new(ctx.store.clone(), ctx.config.batch).with_metrics(metrics.clone());
    let mut counted: Option<Instant> = None;
    let period = Some(ctx.config.reconcile_period);
    let (mut reported, mut requested) = match &ctx.bus {
        Some(bus) => (
            Some(
                Follower::<WorkflowReported>::new(bus, period)
                    .await
                    .map_err(WorkflowdError::Subscribe)?,
            ),
            Some(
                Follower::<WorkflowRequested>::new(bus, period)
                    .await
                    .map_err(WorkflowdError::Subscribe)?,
            ),
        ),
        None => (None, None),
    };
    let mut tick = tokio::time::interval(ctx.config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!("workflowd running");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            Some(_) = next(&mut reported) => {}
            Some(_) = next(&mut requested) => {}
        }
        ctx.heartbeat.beat();
        for e in engine.pass(Timestamp::now()).await {
            e.publish(&ctx.events);
        }
        if counted.is_none_or(|t| t.elapsed() >= COUNT_EVERY) {
            counted = Some(Instant::now());
            match ctx.store.workflows().count_by_state().await {
                Ok(counts) => metrics.set_counts(&counts),
                Err(e) => tracing::warn!(error = %Chain(&e), "counting workflows by state"),
            }
        }
    }
    Ok(())
}

async fn next<E: dragonfly_bus::Event>(
    f: &mut Option<Follower<E>>,
) -> Option<dragonfly_bus::Change<E>> {
    match f {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

/// What a pass wants published, after its writes committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Started(WorkflowStarted),
    Progress(WorkflowProgress),
    Succeeded(WorkflowSucceeded),
    Failed(WorkflowFailed),
    TimedOut(WorkflowTimedout),
    Cancelled(WorkflowCancelled),
}

impl Published {
    fn publish(&self, p: &dragonfly_bus::Publisher) {
        match self {
            Self::Started(e) => p.publish(e),
            Self::Progress(e) => p.publish(e),
            Self::Succeeded(e) => p.publish(e),
            Self::Failed(e) => p.publish(e),
            Self::TimedOut(e) => p.publish(e),
            Self::Cancelled(e) => p.publish(e),
        }
    }
}

/// The state-machine runner over the store; one per process.
#[derive(Debug)]
pub struct Engine {
    db: Db,
    batch: usize,
    /// When each workflow's last progress event went out (at most one a second).
    last_progress: HashMap<Uuid, Instant>,
    metrics: metrics::WorkflowdMetrics,
}

/// The lifecycle events a workflow change moves its machine by.
fn machine_events(change: &Change) -> Vec<LifecycleEvent> {
    match change {
        Change::Started => vec![LifecycleEvent::StartProvisioning],
        Change::Succeeded => vec![LifecycleEvent::ProvisioningSucceeded],
        Change::Failed(_) | Change::TimedOut(_) | Change::Cancelled => vec![LifecycleEvent::Fail],
        Change::Restarted => vec![LifecycleEvent::Retry],
        Change::None | Change::Progress => vec![],
    }
}

impl Engine {
    pub fn new(db: Db, batch: usize) -> Self {
        Self {
            db,
            batch,
            last_progress: HashMap::new(),
            metrics: metrics::WorkflowdMetrics::default(),
        }
    }

    /// Counts transitions into `metrics` (registered in the frame's registry).
    #[must_use]
    pub fn with_metrics(mut self, metrics: metrics::WorkflowdMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// One pass: apply every unapplied report (in batches), then operators' requests and
    /// timeouts. Errors are logged and retried on the next pass (nothing is lost: the reports
    /// stay unapplied).
    pub async fn pass(&mut self, now: Timestamp) -> Vec<Published> {
        let mut out = Vec::new();
        loop {
            match self.apply_reports(now, &mut out).await {
                Ok(more) if more => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "applying reports; will retry");
                    break;
                }
            }
        }
        if let Err(e) = self.requests_and_time(now, &mut out).await {
            tracing::warn!(error = %Chain(&e), "checking workflows; will retry");
        }
        out
    }

    /// Applies one batch; `Ok(true)` when there may be more.
    async fn apply_reports(
        &mut self,
        now: Timestamp,
        out: &mut Vec<Published>,
    ) -> Result<bool, StoreError> {
        let db = self.db.clone();
        let w = db.workflows();
        let reports = w.unapplied(self.batch).await?;
        let full = reports.len() == self.batch;
        // Group by workflow, keeping the stored order inside each.
        let mut order: Vec<Uuid> = Vec::new();
        let mut by: HashMap<Uuid, Vec<StoredReport>> = HashMap::new();
        for r in reports {
            let id = r.report.workflow_id;
            if !by.contains_key(&id) {
                order.push(id);
            }
            by.entry(id).or_default().push(r);
        }
        for id in order {
            let reports = by.remove(&id).unwrap_or_default();
            let ids: Vec<i64> = reports.iter().map(|r| r.id).collect();
            let Some(mut wf) = w.get(id).await? else {
                w.mark_applied(ids).await?;
                continue;
            };
            let mut changes = Vec::new();
            for r in &reports {
                let c = wf.apply(&r.report, r.received_at);
                if c != Change::None {
                    changes.push(c);
                }
            }
            if changes.is_empty() {
                w.mark_applied(ids).await?;
                continue;
            }
            self.save(wf, ids, false, changes, now, out).await?;
        }
        Ok(full)
    }

    async fn save(
        &mut self,
        wf: Workflow,
        applied: Vec<i64>,
        clear_request: bool,
        changes: Vec<Change>,
        now: Timestamp,
        out: &mut Vec<Published>,
    ) -> Result<(), StoreError> {
        let machine = changes.iter().flat_map(machine_events).collect();
        let saved = self
            .db
            .workflows()
            .save(
                Save {
                    workflow: wf,
                    applied,
                    clear_request,
                    machine,
                },
                now,
            )
            .await?;
        for c in changes {
            self.metrics.changed(&c);
            self.announce(&saved, &c, out);
        }
        Ok(())
    }

    fn announce(&mut self, wf: &Workflow, change: &Change, out: &mut Vec<Published>) {
        let (workflow_id, machine_id) = (wf.id, wf.machine_id);
        match change {
            Change::None => {}
            Change::Started => {
                tracing::info!(workflow = %wf.name, attempt = wf.attempt, "workflow started");
                out.push(Published::Started(WorkflowStarted {
                    workflow_id,
                    machine_id,
                    attempt: wf.attempt,
                }));
            }
            Change::Restarted => {
                tracing::info!(workflow = %wf.name, attempt = wf.attempt, "workflow retried");
            }
            Change::Progress => {
                let now = Instant::now();
                let due = self
                    .last_progress
                    .get(&workflow_id)
                    .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(1));
                if due {
                    self.last_progress.insert(workflow_id, now);
                    let i = wf.current_action;
                    let a = wf.status.get(i as usize);
                    out.push(Published::Progress(WorkflowProgress {
                        workflow_id,
                        machine_id,
                        action: i,
                        action_name: a.map(|a| a.name.clone()).unwrap_or_default(),
                        state: a.map(|a| format!("{:?}", a.state)).unwrap_or_default(),
                        percent: a.map_or(0, |a| a.percent),
                    }));
                }
            }
            Change::Succeeded => {
                self.last_progress.remove(&workflow_id);
                tracing::info!(workflow = %wf.name, "workflow succeeded");
                out.push(Published::Succeeded(WorkflowSucceeded {
                    workflow_id,
                    machine_id,
                }));
            }
            Change::Failed(message) => {
                self.last_progress.remove(&workflow_id);
                tracing::warn!(workflow = %wf.name, %message, "workflow failed");
                out.push(Published::Failed(WorkflowFailed {
                    workflow_id,
                    machine_id,
                    message: message.clone(),
                }));
            }
            Change::TimedOut(message) => {
                self.last_progress.remove(&workflow_id);
                tracing::warn!(workflow = %wf.name, %message, "workflow timed out");
                out.push(Published::TimedOut(WorkflowTimedout {
                    workflow_id,
                    machine_id,
                    message: message.clone(),
                }));
            }
            Change::Cancelled => {
                self.last_progress.remove(&workflow_id);
                tracing::info!(workflow = %wf.name, "workflow cancelled");
                out.push(Published::Cancelled(WorkflowCancelled {
                    workflow_id,
                    machine_id,
                }));
            }
        }
    }

    async fn requests_and_time(
        &mut self,
        now: Timestamp,
        out: &mut Vec<Published>,
    ) -> Result<(), StoreError> {
        for mut wf in self.db.workflows().pending_work().await? {
            let mut changes = Vec::new();
            let requested = wf.request.take();
            if let Some(req) = requested {
                let c = wf.request(req, now);
                if c != Change::None {
                    changes.push(c);
                }
            }
            let c = wf.check_time(now);
            if c != Change::None {
                changes.push(c);
            }
            if changes.is_empty() && requested.is_none() {
                continue;
            }
            match self
                .save(wf, Vec::new(), requested.is_some(), changes, now, out)
                .await
            {
                // A report or apid changed it meanwhile: the next pass sees the new row.
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use dragonfly_core::agent_api::{ActionReport, ReportEvent};
    use dragonfly_core::template::TemplateSpec;
    use dragonfly_core::workflow::{Request, WorkflowState};
    use dragonfly_core::{HardwareReport, MacAddr, MachineState};
    use dragonfly_store::testing::TestDb;

    use super::*;

    fn spec(timeout: u32, retries: u32) -> TemplateSpec {
        serde_json::from_value(serde_json::json!({"actions": [
            {"name": "disk", "type": "partition", "disk": "/dev/vda", "table": "gpt",
             "retries": retries, "timeoutSeconds": timeout,
             "partitions": [{"label": "root", "size": "rest", "type": "linux"}]},
            {"name": "boot", "type": "kexec", "device": {"disk": "/dev/vda", "partition": 1},
             "filesystem": "ext4", "kernel": "/boot/vmlinuz"}
        ]}))
        .unwrap()
    }

    async fn setup(t: &TestDb, timeout: u32, retries: u32, now: Timestamp) -> Workflow {
        let report = HardwareReport {
            macs: vec![MacAddr::new([2, 0, 0, 0, 0, 1])],
            ..Default::default()
        };
        let m = t.db.machines().register(report, now).await.unwrap();
        let wf = dragonfly_store::workflows::new_workflow(
            m.machine(),
            "debian",
            spec(timeout, retries).actions,
            Default::default(),
            600,
            3600,
            now,
        );
        t.db.workflows().create(wf, None, now).await.unwrap().0
    }

    async fn send(t: &TestDb, wf: &Workflow, attempt: u32, action: u32, seq: u64, e: ReportEvent) {
        let r = ActionReport {
            workflow_id: wf.id,
            attempt,
            action,
            seq,
            event: e,
        };
        t.db.workflows().report(r, Timestamp::now()).await.unwrap();
    }

    async fn state(t: &TestDb, wf: &Workflow) -> (WorkflowState, MachineState) {
        let w = t.db.workflows().get(wf.id).await.unwrap().unwrap();
        let m = t.db.machines().get(w.machine_id).await.unwrap().unwrap();
        (w.state, m.state)
    }

    #[tokio::test]
    async fn reports_drive_the_workflow_and_the_machine_to_ready() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let wf = setup(&t, 60, 0, now).await;
        let mut e = Engine::new(t.db.clone(), 2);
        send(&t, &wf, 1, 0, 0, ReportEvent::Started).await;
        let p = e.pass(now).await;
        assert!(matches!(p[0], Published::Started(_)));
        assert_eq!(
            state(&t, &wf).await,
            (WorkflowState::Running, MachineState::Provisioning)
        );
        send(&t, &wf, 1, 0, 1, ReportEvent::Succeeded { message: None }).await;
        send(&t, &wf, 1, 1, 0, ReportEvent::Started).await;
        // A duplicate of an applied report and a stale attempt change nothing.
        send(&t, &wf, 0, 1, 0, ReportEvent::Started).await;
        send(&t, &wf, 1, 1, 1, ReportEvent::Succeeded { message: None }).await;
        let p = e.pass(now).await;
        assert!(
            p.iter().any(|p| matches!(p, Published::Succeeded(_))),
            "{p:?}"
        );
        assert_eq!(
            state(&t, &wf).await,
            (WorkflowState::Succeeded, MachineState::Ready)
        );
        assert!(t.db.workflows().unapplied(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_silent_agent_times_out_and_a_retry_runs_again() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let wf = setup(&t, 30, 0, now).await;
        let mut e = Engine::new(t.db.clone(), 100);
        // Served, then silence.
        t.db.workflows().serve(wf.id, now).await.unwrap();
        assert!(e.pass(now).await.is_empty());
        let later = now + jiff::SignedDuration::from_secs(31);
        let p = e.pass(later).await;
        let Published::TimedOut(ev) = &p[0] else {
            panic!("{p:?}")
        };
        assert!(ev.message.contains("\"disk\""), "{}", ev.message);
        assert_eq!(
            state(&t, &wf).await,
            (WorkflowState::TimedOut, MachineState::Error)
        );
        t.db.workflows()
            .request(wf.id, Request::Retry)
            .await
            .unwrap();
        e.pass(later).await;
        let w = t.db.workflows().get(wf.id).await.unwrap().unwrap();
        assert_eq!(
            (w.state, w.attempt, w.request),
            (WorkflowState::Pending, 2, None)
        );
        assert_eq!(state(&t, &wf).await.1, MachineState::OsAssigned);
        send(&t, &wf, 2, 0, 0, ReportEvent::Started).await;
        // The report's clock is the real one (received_at), so is this pass's.
        e.pass(Timestamp::now()).await;
        assert_eq!(
            state(&t, &wf).await,
            (WorkflowState::Running, MachineState::Provisioning)
        );
    }

    #[tokio::test]
    async fn an_action_retry_reruns_that_action_then_fails() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let wf = setup(&t, 60, 1, now).await;
        let mut e = Engine::new(t.db.clone(), 100);
        let failed = || ReportEvent::Failed {
            message: "disk too small".into(),
            log_tail: vec![],
        };
        send(&t, &wf, 1, 0, 0, ReportEvent::Started).await;
        send(&t, &wf, 1, 0, 1, failed()).await;
        e.pass(now).await;
        let w = t.db.workflows().get(wf.id).await.unwrap().unwrap();
        assert_eq!(
            (w.state, w.attempt, w.current_action),
            (WorkflowState::Running, 2, 0)
        );
        send(&t, &wf, 2, 0, 0, ReportEvent::Started).await;
        send(&t, &wf, 2, 0, 1, failed()).await;
        let p = e.pass(now).await;
        let Published::Failed(ev) = &p[0] else {
            panic!("{p:?}")
        };
        assert!(ev.message.contains("disk too small"));
        assert_eq!(
            state(&t, &wf).await,
            (WorkflowState::Failed, MachineState::Error)
        );
    }

    #[tokio::test]
    async fn cancel_holds_the_machine() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let wf = setup(&t, 60, 0, now).await;
        let mut e = Engine::new(t.db.clone(), 100);
        t.db.workflows()
            .request(wf.id, Request::Cancel)
            .await
            .unwrap();
        let p = e.pass(now).await;
        assert!(matches!(p[0], Published::Cancelled(_)));
        assert_eq!(
            state(&t, &wf).await,
            (WorkflowState::Cancelled, MachineState::Error)
        );
    }

    #[tokio::test]
    async fn progress_is_published_at_most_once_a_second_per_workflow() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let wf = setup(&t, 60, 0, now).await;
        let mut e = Engine::new(t.db.clone(), 1);
        send(&t, &wf, 1, 0, 0, ReportEvent::Started).await;
        let progress = |n: u64| ReportEvent::Progress {
            bytes_done: n,
            bytes_total: Some(100),
            bytes_per_second: 1,
            message: None,
        };
        for seq in 1..=5 {
            send(&t, &wf, 1, 0, seq, progress(seq * 10)).await;
        }
        // One report per batch: six saves, six changes, within a second.
        let p = e.pass(now).await;
        let count = |p: &[Published]| {
            p.iter()
                .filter(|p| matches!(p, Published::Progress(_)))
                .count()
        };
        assert_eq!(count(&p), 1, "{p:?}");
        assert!(matches!(p[0], Published::Started(_)));
        let w = t.db.workflows().get(wf.id).await.unwrap().unwrap();
        assert_eq!(w.status[0].percent, 50);
        assert_eq!(w.status[0].bytes_done, Some(50));
    }
}
