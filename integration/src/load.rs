//! The agent load generator: N simulated agents register with apid at the same moment, then
//! all poll at the same moment (a re-registration, as the agent's heartbeat does).
//!
//! Each agent is a machine of its own: its own MAC (`52:54:01:xx:xx:xx`, from its index), its
//! own boot token minted under apid's key with its boot session opened in the store (as ipxed
//! does when it mints, once dhcpd has seen the boot: apid accepts a token only within its
//! session), its own report, and its own TCP connection per request (no pooling, like the real
//! agent's HTTP/1.1 client). Nothing is retried: a refused or failed request is counted, not
//! hidden.
//!
//! Used by `agent-load` (src/bin) and by the e2e test `discovery::five_hundred_agents…`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dragonfly_core::MacAddr;
use dragonfly_core::boot_token::{self, BootClaims};
use serde_json::{Value, json};
use tokio::sync::Barrier;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// apid's agents' listener, e.g. `http://127.0.0.1:3001`.
    pub base: String,
    /// apid's boot-token key (the bytes of its key file).
    pub key: Vec<u8>,
    /// apid's database, where each agent's boot session is opened (as ipxed opens it).
    pub db: std::path::PathBuf,
    /// How many agents.
    pub agents: usize,
    /// Per-request limit.
    pub timeout: Duration,
}

/// One round of requests, all started together.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Latency of every request that got an answer.
    pub latencies: Vec<Duration>,
    /// How many answers of each HTTP status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests without an answer (connection refused, timeout, …), with the reason.
    pub errors: Vec<String>,
    /// From the first request's start to the last answer.
    pub wall: Duration,
}

impl Phase {
    /// The `q`-quantile (0.5, 0.99) of the latencies; zero when there are none.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into at most a few thousand latencies"
        )]
        let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    }

    /// Answers with `status`.
    pub fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{} answers {:?}, {} errors; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; wall {:.2} s",
            self.latencies.len(),
            self.statuses,
            self.errors.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.latencies.iter().max().copied().unwrap_or_default()),
            self.wall.as_secs_f64()
        )
    }
}

/// Both rounds.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// First registration: each should answer 201 Created.
    pub register: Phase,
    /// Heartbeat re-registration: each should answer 200 OK (the same machine).
    pub poll: Phase,
}

/// The MAC of simulated agent `i` (locally administered, `52:54:01:…`).
pub fn agent_mac(i: usize) -> MacAddr {
    let b = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    MacAddr::new([0x52, 0x54, 0x01, b[1], b[2], b[3]])
}

/// A report shaped like a small server's, for agent `i`.
fn report(mac: MacAddr) -> Value {
    json!({
        "macs": [mac.to_string()],
        "cpu": {"model": "Simulated CPU @ 2.0GHz", "cores": 8, "threads": 16},
        "memoryBytes": 34_359_738_368_u64,
        "disks": [
            {"name": "nvme0n1", "sizeBytes": 960_197_124_096_u64, "model": "Sim NVMe"},
            {"name": "sda", "sizeBytes": 4_000_787_030_016_u64, "rotational": true}
        ],
        "nics": [{"name": "eth0", "mac": mac.to_string(), "driver": "ixgbe", "speedMbps": 10000}],
        "firmware": "uefi"
    })
}

/// Runs the load and returns what happened; never fails itself (failures are in the phases).
///
/// # Panics
/// When a boot token cannot be minted (a key shorter than the minimum) or the store refuses
/// a boot session.
pub async fn run(config: &LoadConfig) -> LoadReport {
    let db = dragonfly_store::Db::open(&config.db)
        .await
        .expect("opening the store for boot sessions");
    let n = config.agents;
    let start = Arc::new(Barrier::new(n));
    let middle = Arc::new(Barrier::new(n));
    let url = format!(
        "{}/api/machines/register",
        config.base.trim_end_matches('/')
    );
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mac = agent_mac(i);
        let now = jiff::Timestamp::now();
        let expires = now + jiff::SignedDuration::from_hours(1);
        db.boot()
            .open_session(mac, nonce(i), now, expires)
            .await
            .expect("opening a boot session");
        let token = boot_token::mint(
            &config.key,
            &BootClaims {
                mac,
                nonce: nonce(i),
                expires,
            },
        )
        .expect("minting a boot token (key too short?)");
        let body = report(mac);
        let (start, middle, url, timeout) =
            (start.clone(), middle.clone(), url.clone(), config.timeout);
        tasks.push(tokio::spawn(async move {
            // One client per agent, no pooling: a new connection per request, as the agent.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(timeout)
                .build()
                .expect("building an HTTP client");
            let once = || async {
                let t = Instant::now();
                let r = http.post(&url).bearer_auth(&token).json(&body).send().await;
                let answer = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        // Read the body: the request is over when the answer is.
                        let _ = r.bytes().await;
                        Ok(status)
                    }
                    Err(e) => Err(format!("{e:?}")),
                };
                (t, t.elapsed(), answer)
            };
            start.wait().await;
            let first = once().await;
            middle.wait().await;
            let second = once().await;
            (first, second)
        }));
    }
    let mut report = LoadReport::default();
    let mut bounds = [(None::<Instant>, None::<Instant>); 2];
    for task in tasks {
        let Ok((first, second)) = task.await else {
            report.register.errors.push("agent task panicked".into());
            continue;
        };
        for ((t, latency, answer), (phase, bound)) in [first, second].into_iter().zip(
            [&mut report.register, &mut report.poll]
                .into_iter()
                .zip(bounds.iter_mut()),
        ) {
            let end = t + latency;
            bound.0 = Some(bound.0.map_or(t, |b: Instant| b.min(t)));
            bound.1 = Some(bound.1.map_or(end, |b: Instant| b.max(end)));
            match answer {
                Ok(status) => {
                    phase.latencies.push(latency);
                    *phase.statuses.entry(status).or_default() += 1;
                }
                Err(e) => phase.errors.push(e),
            }
        }
    }
    for (phase, (from, to)) in [&mut report.register, &mut report.poll]
        .into_iter()
        .zip(bounds)
    {
        if let (Some(from), Some(to)) = (from, to) {
            phase.wall = to - from;
        }
    }
    report
}

/// A nonce unique per agent: all a token needs here (the HMAC is what matters).
fn nonce(i: usize) -> [u8; 16] {
    let mut n = [0x5e; 16];
    n[..8].copy_from_slice(&(i as u64).to_le_bytes());
    n
}
