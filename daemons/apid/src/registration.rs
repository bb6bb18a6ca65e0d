//! How fast, and how far, agents may grow the inventory: new-machine registrations are
//! rate-limited (a token bucket: per second and burst) and capped (`max_machines`).
//!
//! Registering a *new* machine takes nothing but a token for a MAC nobody owns; before boot
//! tokens were tied to witnessed boots, one host made 200 machines in 0.2 s, and nothing
//! stopped it at 2 000 000. The bucket bounds the rate for everyone together (the agents of a
//! rack powered on at once share one burst; beyond it they get 429 with `Retry-After` and
//! retry with backoff), the cap bounds the total (503 with `Retry-After`, checked inside the
//! registration's transaction), and `[apid] auto_register = false` makes each new machine wait
//! for an operator's approval. Machines already known are never limited: their re-registration
//! (the agent's heartbeat) costs no token (one taken is refunded). Policy only: the store
//! enforces the cap, and refuses to create a machine when apid had no token left.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `[apid]`'s registration limits, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// New machines per second, sustained.
    pub per_second: u32,
    /// New machines at once.
    pub burst: u32,
    /// Machines stored at most.
    pub max_machines: u64,
    /// New machines are `Registered` at once (`true`) or wait in `Discovered` for
    /// `POST /api/machines/{id}/approve`.
    pub auto_register: bool,
}

/// The one bucket all new-machine registrations share.
#[derive(Debug)]
pub struct NewMachineLimiter {
    limits: RegistrationLimits,
    /// Tokens left and when they were counted.
    bucket: Mutex<(f64, Option<Instant>)>,
}

impl NewMachineLimiter {
    pub fn new(limits: RegistrationLimits) -> Self {
        Self {
            limits,
            bucket: Mutex::new((f64::from(limits.burst), None)),
        }
    }

    pub fn limits(&self) -> RegistrationLimits {
        self.limits
    }

    /// Takes a token for one new machine at `now`, or says how long until one is available.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limits.per_second);
        let cap = f64::from(self.limits.burst);
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = &mut *b;
        if let Some(then) = *at {
            *tokens = (*tokens + now.saturating_duration_since(then).as_secs_f64() * rate).min(cap);
        }
        *at = Some(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        } else {
            Err(Duration::from_secs(60))
        }
    }
}

impl NewMachineLimiter {
    /// Gives back a token taken for a registration that created nothing.
    pub fn refund(&self) {
        let cap = f64::from(self.limits.burst);
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.0 = (b.0 + 1.0).min(cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> NewMachineLimiter {
        NewMachineLimiter::new(RegistrationLimits {
            per_second,
            burst,
            max_machines: 100,
            auto_register: true,
        })
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = limiter(2, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.admit(t0).is_ok());
        }
        let wait = l.admit(t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Half a second later one more; a second later two.
        assert!(l.admit(t0 + Duration::from_millis(500)).is_ok());
        assert!(l.admit(t0 + Duration::from_millis(500)).is_err());
        assert!(l.admit(t0 + Duration::from_millis(1500)).is_ok());
        assert!(l.admit(t0 + Duration::from_millis(1500)).is_ok());
        assert!(l.admit(t0 + Duration::from_millis(1500)).is_err());
        // A refund gives one back, never beyond the burst.
        l.refund();
        assert!(l.admit(t0 + Duration::from_millis(1500)).is_ok());
        // Refills up to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(l.admit(later).is_ok());
        }
        assert!(l.admit(later).is_err());
    }
}
