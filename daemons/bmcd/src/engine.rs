//! What bmcd does to one machine: build its driver from the store, run one operation on it
//! under the per-BMC lock and the global limit, retry what got no answer, and store what the
//! BMC said.
//!
//! Policy lives here, not in the drivers (which do exactly one operation): "cycle an Off
//! machine" means power it on (IPMI lets a BMC ignore a cycle of an Off chassis); a command
//! that got no answer (unreachable, timed out) is sent again `retries` times, `retry_delay`
//! apart; a refusal (credentials, an error answer) is not retried, since it would be refused
//! again. Every outcome is stored: a state read becomes the machine's power state (and a
//! `dragonfly.power.changed` event when it changed), and a BMC that cannot be driven becomes
//! the machine's condition (and `dragonfly.power.condition`), so an operator sees it with the
//! machine instead of in a log.
//!
//! The password exists in the clear only inside a driver built for one operation, opened
//! from the store with the private key this engine holds; it is never logged (`Password`'s
//! `Debug` is redacted, and no message here formats a configuration).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dragonfly_bmc::ipmi::{IpmiConfig, IpmiDriver};
use dragonfly_bmc::redfish::{RedfishConfig, RedfishDriver, Trust, parse_fingerprint};
use dragonfly_bmc::seal::OpeningKey;
use dragonfly_bmc::wol::{WolConfig, WolDriver};
use dragonfly_bmc::{
    BmcError, BootDevice, BootMode, BootPersistence, BootTarget, PowerAction, PowerDriver,
    PowerState,
};
use dragonfly_bus::Publisher;
use dragonfly_bus::events::{PowerChanged, PowerCondition};
use dragonfly_bus::power::{PowerFailure, PowerOp, PowerReply};
use dragonfly_core::{Chain, MachineId};
use dragonfly_store::bmc::{Bmc, BmcKind, Reading};
use dragonfly_store::{Db, StoreError};
use jiff::Timestamp;
use tokio::sync::Semaphore;

use crate::config::BmcdConfig;

/// One machine's driver, whichever kind.
#[derive(Debug)]
pub(crate) enum Driver {
    Ipmi(IpmiDriver),
    // Boxed: its TLS set-up makes it several times the others' size.
    Redfish(Box<RedfishDriver>),
    Wol(WolDriver),
}

impl Driver {
    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        match self {
            Self::Ipmi(d) => d.power(action).await,
            Self::Redfish(d) => d.power(action).await,
            Self::Wol(d) => d.power(action).await,
        }
    }

    async fn status(&self) -> Result<PowerState, BmcError> {
        match self {
            Self::Ipmi(d) => d.status().await,
            Self::Redfish(d) => d.status().await,
            Self::Wol(d) => d.status().await,
        }
    }

    async fn set_boot(&self, target: BootTarget) -> Result<(), BmcError> {
        match self {
            Self::Ipmi(d) => d.set_boot(target).await,
            Self::Redfish(d) => d.set_boot(target).await,
            Self::Wol(d) => d.set_boot(target).await,
        }
    }
}

/// Why an operation did not happen, with the kind a caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: PowerFailure,
    pub message: String,
}

impl Failure {
    fn new(kind: PowerFailure, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn internal(what: &str, e: &StoreError) -> Self {
        Self::new(PowerFailure::Internal, format!("{what}: {}", Chain(e)))
    }

    /// Whether trying again later may succeed (nothing answered).
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            PowerFailure::Unreachable | PowerFailure::TimedOut | PowerFailure::Internal
        )
    }

    /// Whether it says the BMC cannot be driven at all (a machine condition), rather than
    /// that this one operation failed.
    fn is_condition(&self) -> bool {
        matches!(
            self.kind,
            PowerFailure::Unreachable
                | PowerFailure::AuthRefused
                | PowerFailure::Untrusted
                | PowerFailure::TimedOut
                | PowerFailure::NotConfigured
        )
    }
}

fn failure(e: &BmcError) -> Failure {
    let kind = match e {
        BmcError::Unreachable { .. } => PowerFailure::Unreachable,
        BmcError::AuthRefused { .. } => PowerFailure::AuthRefused,
        BmcError::Untrusted { .. } => PowerFailure::Untrusted,
        BmcError::TimedOut { .. } => PowerFailure::TimedOut,
        BmcError::Rejected { .. } | BmcError::UnexpectedOutput { .. } => PowerFailure::Rejected,
        BmcError::NoSingleSystem { .. } => PowerFailure::NotConfigured,
        BmcError::Unsupported { .. } => PowerFailure::Unsupported,
        BmcError::Local { .. } => PowerFailure::Internal,
    };
    Failure::new(kind, Chain(e).to_string())
}

/// What an operation did: the state read, when it read one, and what to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub state: Option<PowerState>,
    pub message: String,
}

/// The outcome of one command, with the attempts it took.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Done, Failure>,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// Shared by the request server, the poller and the power-request worker.
#[derive(Debug)]
pub struct Engine {
    db: Db,
    key: OpeningKey,
    config: BmcdConfig,
    events: Publisher,
    limit: Semaphore,
    locks: Mutex<HashMap<MachineId, Arc<tokio::sync::Mutex<()>>>>,
    /// Machines whose power was just changed: polled again soon, so the stored state (and
    /// `power.changed`) follows a command within seconds rather than a poll interval.
    soon: Mutex<std::collections::HashSet<MachineId>>,
    metrics: crate::metrics::BmcdMetrics,
}

/// How a caller waits for a BMC that is busy with another operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Queue behind it (commands).
    Queue,
    /// Skip this time (polls: the command will tell the state anyway).
    Skip,
}

impl Engine {
    pub fn new(db: Db, key: OpeningKey, config: BmcdConfig, events: Publisher) -> Self {
        let limit = Semaphore::new(config.max_concurrent);
        Self {
            db,
            key,
            config,
            events,
            limit,
            locks: Mutex::new(HashMap::new()),
            soon: Mutex::new(std::collections::HashSet::new()),
            metrics: crate::metrics::BmcdMetrics::default(),
        }
    }

    /// Counts operations into `metrics` (registered in the frame's registry).
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::BmcdMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn config(&self) -> &BmcdConfig {
        &self.config
    }

    /// The machines to poll soon (see `soon`), taken.
    pub fn take_soon(&self) -> Vec<MachineId> {
        let mut soon = self.soon.lock().unwrap_or_else(|p| p.into_inner());
        soon.drain().collect()
    }

    fn lock_of(&self, machine: MachineId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the locks nobody holds, so the map does not keep every machine ever seen.
        if locks.len() > 4 * self.config.max_concurrent {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(locks.entry(machine).or_default())
    }

    /// Runs `op` on `machine`'s BMC (one at a time per BMC, at most `max_concurrent` over
    /// all), stores what it learned, and says what happened. `None` only with [`Wait::Skip`]
    /// when the BMC was busy.
    pub async fn run(
        &self,
        machine: MachineId,
        op: PowerOp,
        persistent: bool,
        wait: Wait,
    ) -> Option<Outcome> {
        let started = Instant::now();
        let lock = self.lock_of(machine);
        let _guard = match wait {
            Wait::Queue => lock.lock().await,
            Wait::Skip => lock.try_lock().ok()?,
        };
        let (result, attempts) = match self.prepare(machine).await {
            Err(f) => (Err(f), 0),
            Ok((bmc, driver)) => {
                let _permit = self.limit.acquire().await.ok()?;
                self.attempts(&bmc, &driver, op, persistent).await
            }
        };
        self.metrics.observe(
            op,
            wait == Wait::Skip,
            result.as_ref().err().map(|f| f.kind),
            started.elapsed().as_secs_f64(),
        );
        self.store_outcome(machine, op, &result).await;
        if result.is_ok()
            && matches!(
                op,
                PowerOp::On | PowerOp::Off | PowerOp::SoftOff | PowerOp::Cycle | PowerOp::Reset
            )
        {
            self.soon
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(machine);
        }
        Some(Outcome {
            result,
            attempts,
            elapsed: started.elapsed(),
        })
    }

    /// The machine's BMC and a driver for it, or why there is none.
    async fn prepare(&self, machine: MachineId) -> Result<(Bmc, Driver), Failure> {
        let Some(bmc) = self
            .db
            .bmcs()
            .get(machine)
            .await
            .map_err(|e| Failure::internal("reading the BMC", &e))?
        else {
            let exists = self
                .db
                .machines()
                .get(machine)
                .await
                .map_err(|e| Failure::internal("reading the machine", &e))?
                .is_some();
            return Err(if exists {
                Failure::new(PowerFailure::NoBmc, "the machine has no BMC configured")
            } else {
                Failure::new(PowerFailure::NoMachine, "no such machine")
            });
        };
        let driver = self.driver(&bmc).await?;
        Ok((bmc, driver))
    }

    async fn driver(&self, bmc: &Bmc) -> Result<Driver, Failure> {
        let not_configured = |m: String| Failure::new(PowerFailure::NotConfigured, m);
        let timeout = self.config.command_timeout;
        if bmc.spec.kind == BmcKind::Wol {
            let machine = self
                .db
                .machines()
                .get(bmc.machine_id)
                .await
                .map_err(|e| Failure::internal("reading the machine", &e))?
                .ok_or_else(|| Failure::new(PowerFailure::NoMachine, "no such machine"))?;
            let mut c = WolConfig::new(machine.macs().to_vec());
            c.target = match bmc.spec.address.as_deref() {
                Some(a) => a
                    .parse::<std::net::Ipv4Addr>()
                    .map(|ip| std::net::SocketAddrV4::new(ip, 9).into())
                    .map_err(|_| {
                        not_configured(format!(
                            "the Wake-on-LAN address {a:?} is not an IPv4 broadcast address"
                        ))
                    })?,
                None => self.config.wol_target,
            };
            if let Some(port) = bmc.spec.port {
                c.target.set_port(port);
            }
            c.timeout = timeout;
            return WolDriver::new(c)
                .map(Driver::Wol)
                .map_err(|e| not_configured(e.to_string()));
        }
        let address = bmc
            .spec
            .address
            .clone()
            .ok_or_else(|| not_configured("the BMC has no address".into()))?;
        let (username, sealed) = self
            .db
            .bmcs()
            .credentials(bmc.machine_id)
            .await
            .map_err(|e| Failure::internal("reading the BMC's credentials", &e))?
            .unwrap_or_default();
        let sealed = sealed.ok_or_else(|| {
            not_configured(
                "no password is set for the BMC: set it with PUT /api/machines/{id}/bmc".into(),
            )
        })?;
        let password = self
            .key
            .open(&sealed.sealed, &sealed.key_id)
            .map_err(|e| not_configured(e.to_string()))?;
        let username = username.unwrap_or_default();
        if bmc.spec.kind == BmcKind::Ipmi {
            let mut c = IpmiConfig::new(address, username, password);
            if let Some(port) = bmc.spec.port {
                c.port = port;
            }
            c.binary.clone_from(&self.config.ipmitool);
            c.timeout = timeout;
            return Ok(Driver::Ipmi(IpmiDriver::new(c)));
        }
        let mut c = RedfishConfig::new(address, username, password);
        c.system.clone_from(&bmc.spec.system);
        c.trust = match (&bmc.spec.tls_fingerprint, &bmc.spec.tls_ca) {
            (Some(pin), _) => Trust::Pinned(parse_fingerprint(pin).map_err(|e| {
                not_configured(format!("the BMC's pinned certificate fingerprint: {e}"))
            })?),
            (None, Some(pem)) => Trust::Ca(pem.clone()),
            (None, None) => Trust::System,
        };
        c.timeout = timeout;
        RedfishDriver::new(c)
            .map(|d| Driver::Redfish(Box::new(d)))
            .map_err(|e| not_configured(Chain(&e).to_string()))
    }

    /// `op`, sent again while nothing answers, up to `retries` more times.
    async fn attempts(
        &self,
        bmc: &Bmc,
        driver: &Driver,
        op: PowerOp,
        persistent: bool,
    ) -> (Result<Done, Failure>, u32) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = execute(driver, op, persistent, bmc.spec.uefi).await;
            match r {
                Err(e)
                    if matches!(e, BmcError::Unreachable { .. } | BmcError::TimedOut { .. })
                        && attempt <= self.config.retries =>
                {
                    tracing::debug!(machine = %bmc.machine_id, %op, attempt, error = %Chain(&e), "no answer from the BMC; trying again");
                    tokio::time::sleep(self.config.retry_delay).await;
                }
                r => return (r.map_err(|e| failure(&e)), attempt),
            }
        }
    }

    /// Stores what the outcome says about the BMC and publishes the changes.
    async fn store_outcome(&self, machine: MachineId, op: PowerOp, result: &Result<Done, Failure>) {
        let reading = match result {
            Ok(Done { state: Some(s), .. }) => Reading::State(stored(*s)),
            Ok(_) => Reading::Answered,
            Err(f) if f.is_condition() => Reading::Failed(f.message.clone()),
            Err(_) => return,
        };
        let condition = match &reading {
            Reading::Failed(m) => Some(m.clone()),
            _ => None,
        };
        match self
            .db
            .bmcs()
            .record(machine, reading, Timestamp::now())
            .await
        {
            Ok(Some(r)) => {
                if let Some(from) = r.changed_from {
                    let to = match result {
                        Ok(Done { state: Some(s), .. }) => stored(*s).as_str().to_owned(),
                        _ => "unknown".into(),
                    };
                    tracing::info!(%machine, from = from.map_or("none", |f| f.as_str()), %to, "power state changed");
                    self.events.publish(&PowerChanged {
                        machine_id: machine,
                        from: from.map(|f| f.as_str().to_owned()),
                        to,
                    });
                }
                if r.condition_raised || r.condition_cleared {
                    if let Some(c) = &condition {
                        tracing::warn!(%machine, %op, condition = %c, "the BMC cannot be driven");
                    } else {
                        tracing::info!(%machine, "the BMC answers again");
                    }
                    self.events.publish(&PowerCondition {
                        machine_id: machine,
                        condition,
                    });
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(%machine, error = %Chain(&e), "storing what the BMC answered");
            }
        }
    }
}

fn stored(s: PowerState) -> dragonfly_store::bmc::PowerState {
    match s {
        PowerState::On => dragonfly_store::bmc::PowerState::On,
        PowerState::Off => dragonfly_store::bmc::PowerState::Off,
        PowerState::Unknown => dragonfly_store::bmc::PowerState::Unknown,
    }
}

fn state_word(s: PowerState) -> &'static str {
    stored(s).as_str()
}

/// One operation, with bmcd's policy: a cycle of an Off machine powers it on, and Wake-on-LAN
/// "cycles" by waking (it cannot read or cut power).
async fn execute(
    driver: &Driver,
    op: PowerOp,
    persistent: bool,
    uefi: bool,
) -> Result<Done, BmcError> {
    let done = |m: &str| Done {
        state: None,
        message: m.to_owned(),
    };
    let boot = |device| BootTarget {
        device,
        persistence: if persistent {
            BootPersistence::Persistent
        } else {
            BootPersistence::Once
        },
        mode: if uefi {
            BootMode::Uefi
        } else {
            BootMode::Legacy
        },
    };
    match op {
        PowerOp::On => driver
            .power(PowerAction::On)
            .await
            .map(|()| done("powered on")),
        PowerOp::Off => driver
            .power(PowerAction::OffHard)
            .await
            .map(|()| done("powered off")),
        PowerOp::SoftOff => driver
            .power(PowerAction::OffSoft)
            .await
            .map(|()| done("asked the operating system to shut down")),
        PowerOp::Reset => driver
            .power(PowerAction::Reset)
            .await
            .map(|()| done("reset")),
        PowerOp::Cycle => {
            if matches!(driver, Driver::Wol(_)) {
                return driver
                    .power(PowerAction::On)
                    .await
                    .map(|()| done("woken by Wake-on-LAN (it cannot power off)"));
            }
            match driver.status().await? {
                PowerState::Off => driver
                    .power(PowerAction::On)
                    .await
                    .map(|()| done("it was off: powered on")),
                _ => driver
                    .power(PowerAction::Cycle)
                    .await
                    .map(|()| done("power cycled")),
            }
        }
        PowerOp::Status => {
            let s = driver.status().await?;
            Ok(Done {
                state: Some(s),
                message: format!("power is {}", state_word(s)),
            })
        }
        PowerOp::BootPxe => driver
            .set_boot(boot(BootDevice::Pxe))
            .await
            .map(|()| done("next boot from the network")),
        PowerOp::BootDisk => driver
            .set_boot(boot(BootDevice::Disk))
            .await
            .map(|()| done("next boot from disk")),
    }
}

/// A reply for the bus from an outcome.
pub fn reply(machine: MachineId, op: PowerOp, outcome: Option<Outcome>) -> PowerReply {
    let Some(o) = outcome else {
        return PowerReply {
            machine_id: machine,
            op,
            ok: false,
            power_state: None,
            failure: Some(PowerFailure::Internal),
            message: "bmcd is stopping".into(),
            attempts: 0,
            elapsed_ms: 0,
        };
    };
    let elapsed_ms = u64::try_from(o.elapsed.as_millis()).unwrap_or(u64::MAX);
    match o.result {
        Ok(done) => PowerReply {
            machine_id: machine,
            op,
            ok: true,
            power_state: done.state.map(|s| state_word(s).to_owned()),
            failure: None,
            message: done.message,
            attempts: o.attempts,
            elapsed_ms,
        },
        Err(f) => PowerReply {
            machine_id: machine,
            op,
            ok: false,
            power_state: None,
            failure: Some(f.kind),
            message: f.message,
            attempts: o.attempts,
            elapsed_ms,
        },
    }
}
