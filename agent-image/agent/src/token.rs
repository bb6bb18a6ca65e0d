//! The boot token, held in memory and renewed while the agent runs.
//!
//! ipxed's token lives minutes (docs/security.md: a copied token is useful only briefly), so
//! the agent asks apid for a fresh one for the same boot (`POST /api/agent/renew`) before it
//! expires: first right after it registered (it does not know how long the kernel command
//! line's token lives), then after each answer's `renewAfterSeconds`. Durations only: a
//! machine's clock may be anything at boot. The token is never printed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dragonfly_core::Chain;
use dragonfly_core::agent_api::{RENEW_PATH, RenewedToken};

use crate::Console;
use crate::http::{self, Url};

/// The current token and when to renew it. Clones share it: an action downloading a library
/// image sends the token the imaging loop keeps renewed.
#[derive(Clone)]
pub struct Token {
    inner: std::sync::Arc<Mutex<State>>,
}

struct State {
    token: String,
    renew_at: Instant,
    /// The last renewal failed this way (said once on the console, not at every poll).
    failing: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").finish_non_exhaustive()
    }
}

/// What one renewal attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Not due yet.
    NotDue,
    Renewed,
    /// 401: this boot is over for the server (a newer boot of this machine, the machine is
    /// provisioned, or the session ended). Retrying will not help.
    Refused,
    /// Anything else: tried again at the next poll.
    Failed(String),
}

impl Token {
    /// The token from the kernel command line, due for renewal at once.
    pub fn new(initial: String) -> Self {
        Self {
            inner: std::sync::Arc::new(Mutex::new(State {
                token: initial,
                renew_at: Instant::now(),
                failing: None,
            })),
        }
    }

    /// The token to send now.
    pub fn get(&self) -> String {
        self.lock().token.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews the token if it is due; says on the console when renewal starts or stops
    /// failing.
    pub fn renew_if_due(&self, base: &Url, timeout: Duration, console: &dyn Console) -> Renewal {
        let current = {
            let s = self.lock();
            if Instant::now() < s.renew_at {
                return Renewal::NotDue;
            }
            s.token.clone()
        };
        let outcome = match http::post_json(base, RENEW_PATH, &current, b"", timeout) {
            Ok(r) if r.status == 200 => match serde_json::from_slice::<RenewedToken>(&r.body) {
                Ok(renewed) => {
                    let mut s = self.lock();
                    s.token = renewed.token;
                    s.renew_at = Instant::now()
                        + Duration::from_secs(renewed.renew_after_seconds.clamp(1, 24 * 3600));
                    if s.failing.take().is_some() {
                        drop(s);
                        console.say("the boot token is renewed again.");
                    }
                    return Renewal::Renewed;
                }
                Err(e) => Renewal::Failed(format!(
                    "the server's answer is not understood: {}",
                    Chain(&e)
                )),
            },
            Ok(r) if r.status == 401 => Renewal::Refused,
            Ok(r) => Renewal::Failed(format!("the server answered HTTP {}", r.status)),
            Err(e) => Renewal::Failed(Chain(&e).to_string()),
        };
        let why = match &outcome {
            Renewal::Refused => "the server no longer accepts this boot's token (the machine \
                                 booted again elsewhere, or it is provisioned); it cannot be \
                                 renewed"
                .to_owned(),
            Renewal::Failed(why) => format!("cannot renew the boot token yet ({why})"),
            Renewal::NotDue | Renewal::Renewed => return outcome,
        };
        let mut s = self.lock();
        // Try again in a little while, not at every poll.
        s.renew_at = Instant::now() + Duration::from_secs(30);
        if s.failing.as_deref() != Some(why.as_str()) {
            s.failing = Some(why.clone());
            drop(s);
            console.say(&why);
        }
        outcome
    }
}
