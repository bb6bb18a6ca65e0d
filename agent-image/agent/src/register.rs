//! Registering with apid: retried until it works, explained on the console when it does not.
//!
//! An unreachable server or a 5xx is retried with exponential backoff and jitter (so a rack
//! that powers on at once does not hammer apid in lockstep). A refused token (401/403) or a
//! refused report (other 4xx) will not fix itself by retrying fast, but an operator may fix
//! the server, so it is shown and retried slowly. This loop never gives up and never reboots:
//! a reboot loop hides the reason from the person at the console.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dragonfly_core::agent_api::{ErrorBody, REGISTER_PATH};
use dragonfly_core::{Chain, HardwareReport, Machine};

use crate::Console;
use crate::http::{self, Url};

/// Timing of the registration loop.
#[derive(Debug, Clone)]
pub struct Timing {
    /// First retry delay after a transient failure.
    pub initial: Duration,
    /// Cap on the transient-failure delay.
    pub max: Duration,
    /// Delay after the server refused us (bad token, bad report).
    pub refused: Duration,
    /// Per-request connect/read/write timeout.
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            refused: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The result of one attempt.
#[derive(Debug)]
pub enum Attempt {
    /// 201: a new machine; 200: a known one, updated.
    Registered {
        machine: Box<Machine>,
        created: bool,
    },
    /// The server will keep refusing until someone changes something.
    Refused { status: u16, why: String },
    /// Worth retrying soon: no route, connection refused, timeout, 5xx.
    Transient(String),
}

/// Posts the report once.
pub fn attempt(base: &Url, token: &str, report: &HardwareReport, timeout: Duration) -> Attempt {
    let body = match serde_json::to_vec(report) {
        Ok(b) => b,
        Err(e) => return Attempt::Transient(format!("cannot encode the report: {}", Chain(&e))),
    };
    let resp = match http::post_json(base, REGISTER_PATH, token, &body, timeout) {
        Ok(r) => r,
        Err(e) => return Attempt::Transient(Chain(&e).to_string()),
    };
    let message = || {
        serde_json::from_slice::<ErrorBody>(&resp.body)
            .map(|e| e.message)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&resp.body)
                    .chars()
                    .take(200)
                    .collect()
            })
    };
    match resp.status {
        200 | 201 => match serde_json::from_slice::<Machine>(&resp.body) {
            Ok(m) => Attempt::Registered {
                machine: Box::new(m),
                created: resp.status == 201,
            },
            Err(e) => Attempt::Transient(format!(
                "the server's answer is not a machine: {}",
                Chain(&e)
            )),
        },
        401 => Attempt::Refused {
            status: 401,
            why: "the server does not accept this machine's boot token (expired, from an \
                  earlier boot of this machine, or the server's key changed). Booting the \
                  machine from the network again gets a fresh token"
                .into(),
        },
        403 => Attempt::Refused {
            status: 403,
            why: format!("the server refused the boot token: {}", message()),
        },
        s @ 400..=499 if s != 408 && s != 429 => Attempt::Refused {
            status: s,
            why: format!("the server refused the hardware report: {}", message()),
        },
        s => Attempt::Transient(format!("the server answered {s}: {}", message())),
    }
}

/// The delay before retry number `n` (0-based) after a transient failure: exponential from
/// `initial`, capped at `max`, with "equal jitter" (between half and all of it).
pub fn backoff(t: &Timing, n: u32, random: u64) -> Duration {
    let exp = t.initial.saturating_mul(1u32 << n.min(20)).min(t.max);
    let half = exp / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
}

/// A random number for jitter, from [`crate::random`] like every random value of the agent.
pub fn jitter_random() -> u64 {
    crate::random::u64()
}

/// Registers, retrying until it works or `stop` is set (tests; the agent never sets it).
/// Returns `None` only when stopped.
pub fn register_until_done(
    base: &Url,
    token: &str,
    report: &HardwareReport,
    t: &Timing,
    console: &dyn Console,
    stop: &AtomicBool,
) -> Option<(Machine, bool)> {
    let mut failures = 0u32;
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let wait = match attempt(base, token, report, t.request_timeout) {
            Attempt::Registered { machine, created } => return Some((*machine, created)),
            Attempt::Refused { status, why } => {
                console.say(&format!(
                    "PROBLEM: {why} (HTTP {status}). Trying again in {} s; this machine will \
                     not reboot by itself.",
                    t.refused.as_secs()
                ));
                failures = 0;
                t.refused
            }
            Attempt::Transient(why) => {
                let wait = backoff(t, failures, jitter_random());
                failures = failures.saturating_add(1);
                console.say(&format!(
                    "cannot register yet ({why}). Attempt {failures}; trying again in {:.1} s.",
                    wait.as_secs_f64()
                ));
                wait
            }
        };
        sleep_unless_stopped(wait, stop);
    }
}

/// Sleeps in short slices so a stop request is honoured promptly.
pub fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let t = Timing {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            ..Timing::default()
        };
        // With no randomness the delay is half the exponential step.
        let lows: Vec<_> = (0..8).map(|n| backoff(&t, n, 0).as_millis()).collect();
        assert_eq!(lows, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        // With the most, all of it, and never above the cap even after many failures.
        assert!(backoff(&t, 3, u64::MAX - 1).as_millis() <= 8000);
        assert_eq!(backoff(&t, 1000, 4_000_000_000).as_secs(), 19);
        for r in [1, 7, 123_456_789, u64::MAX] {
            let d = backoff(&t, 40, r);
            assert!(d >= Duration::from_secs(15) && d <= t.max, "{d:?}");
        }
    }

    #[test]
    fn jitter_differs_between_calls() {
        let a: Vec<u64> = (0..4).map(|_| jitter_random()).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]), "{a:?}");
    }
}
