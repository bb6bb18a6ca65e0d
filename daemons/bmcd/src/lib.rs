//! bmcd: power control of machines through their BMCs (IPMI, Redfish) or Wake-on-LAN.
//!
//! "No human at the console" needs power: provisioning a machine means setting its next boot
//! to the network and cycling it, and a finished install means booting it from disk. bmcd is
//! the one process that talks to BMCs and the one that can read their passwords: it holds the
//! private key (systemd credential `bmc-key`) the passwords are sealed to, and publishes the
//! public key in the store at start for apid to seal new ones.
//!
//! It does three things, all through one [`engine::Engine`] (one operation at a time per BMC,
//! at most `max_concurrent` over all, bounded retries, outcomes stored):
//! - answers commands on `dragonfly.power.<op>` (NATS request/reply; apid's
//!   `POST /api/machines/{id}/power` sends them) with what the BMC said;
//! - polls every BMC's power state each `poll_interval` (jittered), storing it and publishing
//!   `dragonfly.power.changed`; a BMC it cannot drive becomes the machine's condition;
//! - carries out the durable power requests provisioning makes (`power_requests`, written in
//!   the same transaction as a workflow's creation or success): next boot from the network,
//!   then power on a machine that is off, or cycle one that is on when it was `Ready` (an
//!   installed OS runs on it: a re-image) — a machine that was not `Ready` and is on runs the
//!   agent, which takes the workflow without a reboot (cycling it would race the agent's fast
//!   track); next boot from disk when it succeeded. `dragonfly.workflow.created`
//!   and `.succeeded` are hints only: the table is read at start, on every tick and after a
//!   reconnect, so a lost message or a bmcd restart loses no request.
//!
//! A request found `running` at start was interrupted mid-way: it is tried again, but a retry
//! of "provision" never cycles a machine that is already on (the interrupted attempt may have
//! cycled it, and a second cycle would cut its network boot short): it sets the boot device
//! again (idempotent) and powers the machine on only if it is off. So an interrupted request
//! completes once, or fails visibly after `request_attempts`.
//!
//! It must never log or return a password, and never run two operations on one BMC at once.

pub mod config;
pub mod engine;
pub mod metrics;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dragonfly_bmc::seal::{MIN_KEY_LEN, OpeningKey, SealError};
use dragonfly_bus::Follower;
use dragonfly_bus::events::{WorkflowCreated, WorkflowSucceeded};
use dragonfly_bus::power::{self, PowerFailure, PowerOp};
use dragonfly_core::{Chain, MachineId};
use dragonfly_runtime::{
    Context, CredentialSpec, CredentialsError, Daemon, Health, SocketError, Sockets,
};
use dragonfly_store::bmc::{BmcKind, PowerRequest, PowerRequestKind, PowerRequestState};
use dragonfly_store::{Db, StoreError};
use jiff::Timestamp;
use rand::RngExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::BmcdConfig;
use engine::{Engine, Failure, Wait};

/// The credential holding bmcd's private key.
pub const BMC_KEY: &str = "bmc-key";

/// The daemon, as the frame runs it.
#[derive(Debug)]
pub struct Bmcd;

impl Daemon for Bmcd {
    const NAME: &'static str = "bmcd";
    const ABOUT: &'static str =
        "Dragonfly power controller: drives machines' BMCs (IPMI, Redfish) and Wake-on-LAN";
    // Its loop beats on every tick, and its work is the store.
    const HEALTH: Health = Health::MainLoopAndStore;
    type Config = BmcdConfig;
    // No sockets: it talks to BMCs (outgoing), the store and NATS.
    type Sockets = ();
    type Store = Db;
    type Error = BmcdError;

    fn sockets(_: &BmcdConfig, _: &mut Sockets) -> Result<(), SocketError> {
        Ok(())
    }

    fn credentials(config: &BmcdConfig) -> Vec<CredentialSpec> {
        vec![CredentialSpec {
            name: BMC_KEY,
            fallback: config.key_file.clone(),
            min_len: MIN_KEY_LEN,
        }]
    }

    async fn run(ctx: Context<Self>, (): (), shutdown: CancellationToken) -> Result<(), BmcdError> {
        run(ctx, shutdown).await
    }
}

/// Why bmcd stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BmcdError {
    #[error("the BMC key credential")]
    Credentials(#[from] CredentialsError),
    #[error("the BMC key")]
    Key(#[from] SealError),
    #[error("publishing the public key in the store")]
    PublishKey(#[source] StoreError),
    #[error("serving power requests")]
    Serve(#[source] dragonfly_bus::BusError),
    #[error("subscribing to workflow hints")]
    Subscribe(#[source] dragonfly_bus::BusError),
}

/// Serves until `shutdown`.
pub async fn run(ctx: Context<Bmcd>, shutdown: CancellationToken) -> Result<(), BmcdError> {
    let key = OpeningKey::from_credential(ctx.credentials.get(BMC_KEY)?.expose())?;
    let public = key.public_key();
    ctx.store
        .bmcs()
        .set_key(public.to_bytes(), public.id(), Timestamp::now())
        .await
        .map_err(BmcdError::PublishKey)?;
    tracing::info!(key_id = %public.id(), "BMC public key published");
    let engine = Arc::new(
        Engine::new(
            ctx.store.clone(),
            key,
            ctx.config.clone(),
            ctx.events.clone(),
        )
        .with_metrics(metrics::BmcdMetrics::register(&ctx.metrics)),
    );
    let period = Some(ctx.config.reconcile_period);
    let mut servers = Vec::new();
    let (mut created, mut succeeded) = match &ctx.bus {
        Some(bus) => {
            servers = serve_all(bus, &engine, &shutdown).await?;
            (
                Some(
                    Follower::<WorkflowCreated>::new(bus, period)
                        .await
                        .map_err(BmcdError::Subscribe)?,
                ),
                Some(
                    Follower::<WorkflowSucceeded>::new(bus, period)
                        .await
                        .map_err(BmcdError::Subscribe)?,
                ),
            )
        }
        None => (None, None),
    };
    let mut work = Work::new(Arc::clone(&engine));
    let mut tick = tokio::time::interval(ctx.config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!("bmcd running");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            Some(_) = next(&mut created) => {}
            Some(_) = next(&mut succeeded) => {}
            Some(joined) = work.tasks.join_next(), if !work.tasks.is_empty() => {
                work.joined(joined);
                continue;
            }
        }
        ctx.heartbeat.beat();
        work.pass().await;
    }
    tracing::info!(
        in_flight = work.tasks.len(),
        "stopping: waiting for BMC operations in flight"
    );
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(joined) = work.tasks.join_next().await {
            work.joined(joined);
        }
    })
    .await;
    if drained.is_err() {
        // Their requests stay `running` and are resumed (without a second cycle) next start.
        tracing::warn!(
            abandoned = work.tasks.len(),
            "BMC operations still running at stop were abandoned"
        );
    }
    for s in servers {
        let _ = s.await;
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

/// Answers every `dragonfly.power.<op>` subject.
async fn serve_all(
    bus: &dragonfly_bus::Bus,
    engine: &Arc<Engine>,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, BmcdError> {
    macro_rules! serve {
        ($($ty:ident => $op:expr),* $(,)?) => {
            vec![$(
                {
                    let engine = Arc::clone(engine);
                    bus.serve::<power::$ty, _, _>(shutdown.clone(), move |power::$ty(cmd)| {
                        let engine = Arc::clone(&engine);
                        async move { command(&engine, $op, cmd).await }
                    })
                    .await
                    .map_err(BmcdError::Serve)?
                }
            ),*]
        };
    }
    Ok(serve![
        PowerOn => PowerOp::On,
        PowerOff => PowerOp::Off,
        PowerSoftOff => PowerOp::SoftOff,
        PowerCycle => PowerOp::Cycle,
        PowerReset => PowerOp::Reset,
        PowerStatus => PowerOp::Status,
        PowerBootPxe => PowerOp::BootPxe,
        PowerBootDisk => PowerOp::BootDisk,
    ])
}

/// One command from the bus.
async fn command(engine: &Engine, op: PowerOp, cmd: power::PowerCommand) -> power::PowerReply {
    let machine = cmd.machine_id;
    let outcome = engine.run(machine, op, cmd.persistent, Wait::Queue).await;
    let reply = engine::reply(machine, op, outcome);
    if reply.ok {
        tracing::info!(%machine, %op, attempts = reply.attempts, elapsed_ms = reply.elapsed_ms, message = %reply.message, "power command done");
    } else {
        tracing::warn!(%machine, %op, attempts = reply.attempts, elapsed_ms = reply.elapsed_ms, failure = reply.failure.map_or("", PowerFailure::as_str), message = %reply.message, "power command failed");
    }
    reply
}

/// What a finished task was.
#[derive(Debug)]
enum Job {
    Poll(MachineId),
    /// A power request; `Some(delay)` when it went back to pending to be tried after `delay`.
    Request(i64, Option<Duration>),
}

/// The polls and power requests in flight, and when each BMC is polled next.
struct Work {
    engine: Arc<Engine>,
    tasks: JoinSet<Job>,
    polling: HashSet<MachineId>,
    next_poll: HashMap<MachineId, Instant>,
    /// When the BMC list was last read from the store.
    listed: Option<Instant>,
    pollable: Vec<MachineId>,
    requests: HashSet<i64>,
    not_before: HashMap<i64, Instant>,
}

impl Work {
    fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            tasks: JoinSet::new(),
            polling: HashSet::new(),
            next_poll: HashMap::new(),
            listed: None,
            pollable: Vec::new(),
            requests: HashSet::new(),
            not_before: HashMap::new(),
        }
    }

    fn joined(&mut self, joined: Result<Job, tokio::task::JoinError>) {
        match joined {
            Ok(Job::Poll(m)) => {
                self.polling.remove(&m);
            }
            Ok(Job::Request(id, retry)) => {
                self.requests.remove(&id);
                if let Some(delay) = retry {
                    self.not_before.insert(id, Instant::now() + delay);
                }
            }
            Err(e) => tracing::error!(error = %Chain(&e), "a BMC task failed"),
        }
    }

    /// The interval, moved by up to the jitter share either way.
    fn jittered(&self) -> Duration {
        let c = self.engine.config();
        let base = c.poll_interval.as_secs_f64();
        let j = f64::from(c.poll_jitter_percent) / 100.0;
        let factor = if j > 0.0 {
            rand::rng().random_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        Duration::from_secs_f64(base * factor)
    }

    /// Starts the polls that are due and the power requests that are open.
    async fn pass(&mut self) {
        let now = Instant::now();
        let relist = Duration::from_secs(10).min(self.engine.config().poll_interval);
        if self.listed.is_none_or(|t| now.duration_since(t) >= relist) {
            match self.engine.db().bmcs().list().await {
                Ok(bmcs) => {
                    self.pollable = bmcs
                        .iter()
                        .filter(|b| b.spec.kind != BmcKind::Wol)
                        .map(|b| b.machine_id)
                        .collect();
                    let known: HashSet<_> = self.pollable.iter().copied().collect();
                    self.next_poll.retain(|m, _| known.contains(m));
                    self.listed = Some(now);
                }
                Err(e) => tracing::error!(error = %Chain(&e), "listing the BMCs"),
            }
        }
        // A machine whose power was just changed is read again soon (a BMC may take a few
        // seconds to report it), then on its interval.
        let soon = now + Duration::from_secs(2).min(self.engine.config().poll_interval);
        for m in self.engine.take_soon() {
            self.next_poll
                .entry(m)
                .and_modify(|t| *t = (*t).min(soon))
                .or_insert(soon);
        }
        for &m in &self.pollable {
            if self.polling.contains(&m) {
                continue;
            }
            // A BMC seen for the first time is read within the first interval, spread out.
            let due = match self.next_poll.get(&m) {
                Some(&t) => t,
                None => {
                    let first = now + self.jittered().mul_f64(rand::rng().random_range(0.0..=0.1));
                    self.next_poll.insert(m, first);
                    first
                }
            };
            if due > now {
                continue;
            }
            let next = now + self.jittered();
            self.next_poll.insert(m, next);
            self.polling.insert(m);
            let engine = Arc::clone(&self.engine);
            self.tasks.spawn(async move {
                let _ = engine.run(m, PowerOp::Status, false, Wait::Skip).await;
                Job::Poll(m)
            });
        }
        match self.engine.db().bmcs().open_requests(256).await {
            Ok(open) => {
                let open_ids: HashSet<i64> = open.iter().map(|r| r.id).collect();
                self.not_before.retain(|id, _| open_ids.contains(id));
                for r in open {
                    if self.requests.contains(&r.id)
                        || self.not_before.get(&r.id).is_some_and(|&t| t > now)
                    {
                        continue;
                    }
                    match self
                        .engine
                        .db()
                        .bmcs()
                        .begin_request(r.id, Timestamp::now())
                        .await
                    {
                        Ok(Some(begun)) => {
                            self.requests.insert(begun.id);
                            let engine = Arc::clone(&self.engine);
                            self.tasks.spawn(async move {
                                let id = begun.id;
                                let retry = carry_out(&engine, begun).await;
                                Job::Request(id, retry)
                            });
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(request = r.id, error = %Chain(&e), "beginning a power request")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %Chain(&e), "reading the open power requests"),
        }
    }
}

/// Carries out one begun power request and stores its end. Returns the delay before the
/// next try when it went back to pending.
async fn carry_out(engine: &Engine, req: PowerRequest) -> Option<Duration> {
    let machine = req.machine_id;
    let result = steps(engine, &req).await;
    let db = engine.db().bmcs();
    let now = Timestamp::now();
    let (state, text, retry) = match result {
        Ok(text) => (PowerRequestState::Done, text, None),
        Err(f) if f.retryable() && req.attempts < engine.config().request_attempts => {
            let delay = engine.config().retry_delay * req.attempts.max(1) * 5;
            (
                PowerRequestState::Pending,
                format!("attempt {} failed: {}", req.attempts, f.message),
                Some(delay),
            )
        }
        Err(f) => (
            PowerRequestState::Failed,
            format!("failed after {} attempt(s): {}", req.attempts, f.message),
            None,
        ),
    };
    match state {
        PowerRequestState::Done => {
            tracing::info!(%machine, request = req.id, kind = req.kind.as_str(), result = %text, "power request done");
        }
        PowerRequestState::Pending => {
            tracing::warn!(%machine, request = req.id, kind = req.kind.as_str(), result = %text, "power request will be tried again");
        }
        _ => {
            tracing::error!(%machine, request = req.id, kind = req.kind.as_str(), result = %text, "power request failed");
        }
    }
    if let Err(e) = db.finish_request(req.id, state, text, now).await {
        tracing::error!(request = req.id, error = %Chain(&e), "storing the end of a power request");
    }
    retry
}

/// The operations of a power request, in order; the text says what was done.
async fn steps(engine: &Engine, req: &PowerRequest) -> Result<String, Failure> {
    let machine = req.machine_id;
    let op = |op: PowerOp, persistent: bool| async move {
        engine
            .run(machine, op, persistent, Wait::Queue)
            .await
            .map(|o| o.result)
            .unwrap_or_else(|| {
                Err(Failure {
                    kind: PowerFailure::Internal,
                    message: "bmcd is stopping".into(),
                })
            })
    };
    let bmc = engine.db().bmcs().get(machine).await.map_err(|e| Failure {
        kind: PowerFailure::Internal,
        message: format!("reading the BMC: {}", Chain(&e)),
    })?;
    let Some(bmc) = bmc else {
        return Err(Failure {
            kind: PowerFailure::NoBmc,
            message: "the machine no longer has a BMC".into(),
        });
    };
    let wol = bmc.spec.kind == BmcKind::Wol;
    match req.kind {
        PowerRequestKind::Provision => {
            if let Some(wf) = req.workflow_id
                && let Ok(Some(w)) = engine.db().workflows().get(wf).await
                && w.state.is_terminal()
            {
                return Ok(format!(
                    "nothing to do: workflow {} already ended ({})",
                    w.name,
                    w.state.as_str()
                ));
            }
            if wol {
                return op(PowerOp::On, false)
                    .await
                    .map(|_| "woken by Wake-on-LAN".into());
            }
            op(PowerOp::BootPxe, false).await?;
            let status = op(PowerOp::Status, false).await?;
            if status.state == Some(dragonfly_bmc::PowerState::Off) {
                op(PowerOp::On, false).await?;
                return Ok("next boot from the network; it was off: powered on".into());
            }
            if req.cycle && req.attempts <= 1 {
                op(PowerOp::Cycle, false).await?;
                return Ok(
                    "next boot from the network; it was on (an installed OS): power cycled".into(),
                );
            }
            Ok(if req.cycle {
                // A retry: the interrupted attempt may have cycled it already.
                "next boot from the network; already on (an earlier attempt may have cycled it)"
            } else {
                // Not Ready when assigned: it runs the agent, which takes the workflow now.
                "next boot from the network; already on, running the agent: no reboot needed"
            }
            .into())
        }
        PowerRequestKind::Provisioned => {
            if wol {
                return Ok("nothing to do: Wake-on-LAN sets no boot device".into());
            }
            op(PowerOp::BootDisk, true)
                .await
                .map(|_| "next boot from disk (persistent)".into())
        }
    }
}
