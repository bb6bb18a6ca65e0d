//! One simulated agent that goes all the way: registers its machine and, once an operator
//! assigned a template, runs the workflow by reporting each action as the real agent does
//! (started, progress, succeeded) — without a VM, so the operator's tools (the CLI, the web
//! UI) can be tested against real daemons in seconds.
//!
//! Its boot token is minted under apid's key with its boot session opened in the store, as
//! ipxed does when it mints (apid accepts a token only within its MAC's current session).
//! Blocking: call it from a test thread. Make it where it will talk (inside the lab's namespace
//! when apid listens there: `Lab::in_namespace`): its HTTP client's thread is started by
//! [`SimAgent::new`], in the namespace of the thread that calls it.

use std::path::Path;
use std::time::{Duration, Instant};

use dragonfly_core::MacAddr;
use dragonfly_core::agent_api::{REGISTER_PATH, REPORT_PATH, WORKFLOW_PATH};
use dragonfly_core::boot_token::{self, BootClaims};
use serde_json::{Value, json};

/// A simulated agent on apid's agents' listener.
#[derive(Debug)]
pub struct SimAgent {
    base: String,
    token: String,
    mac: MacAddr,
    http: reqwest::blocking::Client,
}

/// Why a simulated agent's request failed.
#[derive(Debug, thiserror::Error)]
pub enum SimAgentError {
    #[error("{0}: {1}")]
    Http(String, #[source] reqwest::Error),
    #[error("{what}: status {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("opening the boot session in the store")]
    Store(#[source] dragonfly_store::StoreError),
    #[error("minting the boot token")]
    Token(#[source] boot_token::TokenError),
    #[error("no workflow to run within {0:?}")]
    NoWorkflow(Duration),
}

impl SimAgent {
    /// An agent for `mac`, talking to `base` (apid's agents' listener, e.g.
    /// `http://10.99.0.1:3001`), with a token under `key`, its session opened in `store`.
    ///
    /// # Errors
    /// When the store refuses the session or the key is too short for a token.
    pub fn new(base: &str, key: &[u8], store: &Path, mac: MacAddr) -> Result<Self, SimAgentError> {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce);
        let now = jiff::Timestamp::now();
        let expires = now + jiff::SignedDuration::from_hours(2);
        let db = dragonfly_store::BlockingDb::open(store).map_err(SimAgentError::Store)?;
        db.block_on(db.db().boot().open_session(mac, nonce, now, expires))
            .map_err(SimAgentError::Store)?;
        drop(db);
        let token = boot_token::mint(
            key,
            &BootClaims {
                mac,
                nonce,
                expires,
            },
        )
        .map_err(SimAgentError::Token)?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SimAgentError::Http("building the client".into(), e))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            mac,
            http,
        })
    }

    fn send(
        &self,
        what: &str,
        req: reqwest::blocking::RequestBuilder,
    ) -> Result<Value, SimAgentError> {
        let r = req
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| SimAgentError::Http(what.to_owned(), e))?;
        let status = r.status();
        let body = r.text().unwrap_or_default();
        if !status.is_success() {
            return Err(SimAgentError::Status {
                what: what.to_owned(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Registers with `report` (its `macs` must hold this agent's MAC); the machine's JSON.
    ///
    /// # Errors
    /// When apid refuses.
    pub fn register(&self, report: &Value) -> Result<Value, SimAgentError> {
        self.send(
            "register",
            self.http
                .post(format!("{}{REGISTER_PATH}", self.base))
                .json(report),
        )
    }

    /// A plausible report for this agent, with `hostname` as the machine reports it.
    pub fn report(&self, hostname: &str) -> Value {
        json!({
            "macs": [self.mac.to_string()],
            "hostname": hostname,
            "cpu": {"model": "Simulated CPU @ 2.0GHz", "cores": 4, "threads": 8},
            "memoryBytes": 8_589_934_592_u64,
            "disks": [{"name": "vda", "sizeBytes": 21_474_836_480_u64, "model": "Sim disk",
                       "serial": "sim-0001"}],
            "nics": [{"name": "eth0", "mac": self.mac.to_string(), "driver": "virtio_net",
                      "carrier": true, "speedMbps": 1000}],
            "firmware": "uefi"
        })
    }

    /// The next step of this machine's workflow (`WorkflowStep` JSON).
    ///
    /// # Errors
    /// When apid refuses (404: no workflow).
    pub fn step(&self) -> Result<Value, SimAgentError> {
        self.send(
            "workflow step",
            self.http.get(format!("{}{WORKFLOW_PATH}", self.base)),
        )
    }

    /// Waits (up to `within`) for a workflow with an action to run; the step.
    ///
    /// # Errors
    /// [`SimAgentError::NoWorkflow`] when none came.
    pub fn wait_for_action(&self, within: Duration) -> Result<Value, SimAgentError> {
        let start = Instant::now();
        loop {
            match self.step() {
                Ok(s) if !s["action"].is_null() => return Ok(s),
                Ok(_) | Err(SimAgentError::Status { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() > within {
                return Err(SimAgentError::NoWorkflow(within));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reports `event` (`{"kind": "started"}`, …) for the step's action with sequence `seq`.
    ///
    /// # Errors
    /// When apid refuses.
    pub fn report_event(&self, step: &Value, seq: u64, event: Value) -> Result<(), SimAgentError> {
        let mut body = json!({
            "workflowId": step["workflowId"],
            "attempt": step["attempt"],
            "action": step["action"]["index"],
            "seq": seq,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), event.as_object()) {
            b.extend(e.clone());
        }
        self.send(
            "report",
            self.http
                .post(format!("{}{REPORT_PATH}", self.base))
                .json(&body),
        )
        .map(|_| ())
    }

    /// Runs the step's action: started, progress through `steps` increments of a
    /// `bytes_total` transfer `pause` apart, succeeded.
    ///
    /// # Errors
    /// When apid refuses a report.
    pub fn run_action(
        &self,
        step: &Value,
        bytes_total: u64,
        steps: u64,
        pause: Duration,
    ) -> Result<(), SimAgentError> {
        let mut seq = step["action"]["nextSeq"].as_u64().unwrap_or(0);
        self.report_event(step, seq, json!({"kind": "started"}))?;
        for i in 1..=steps {
            seq += 1;
            std::thread::sleep(pause);
            self.report_event(
                step,
                seq,
                json!({"kind": "progress", "bytesDone": bytes_total * i / steps,
                       "bytesTotal": bytes_total, "bytesPerSecond": 104_857_600_u64}),
            )?;
        }
        seq += 1;
        self.report_event(step, seq, json!({"kind": "succeeded"}))
    }
}
