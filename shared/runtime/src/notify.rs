//! Telling systemd how the daemon is doing (`sd_notify`): ready, status, stopping, watchdog.
//!
//! Units use `Type=notify`, so systemd considers a daemon started only when it sends
//! `READY=1` — which it must do from inside `run`, once it is really serving (sockets adopted,
//! store open, bus connected), never from `main` before `run`. `STATUS=` text shows up in
//! `systemctl status`. With `WatchdogSec=`, systemd kills and restarts a daemon that stops
//! sending `WATCHDOG=1`.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a silent no-op, so tests and
//! development runs need no special casing. A failed send is logged, never returned: there is
//! nothing a daemon could do about it, and systemd will notice on its own.
//!
//! This module must never ping the watchdog from a task that keeps running when the daemon's
//! real work is stuck: a watchdog fed by an independent timer proves only that the tokio runtime
//! is alive. See [`spawn_watchdog`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dragonfly_core::Chain;
use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(error = %Chain(&error), "could not notify the service manager");
    }
}

/// `READY=1`: start-up is complete and the daemon is serving.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `STATUS=<msg>`: one line for `systemctl status`.
pub fn status(msg: &str) {
    // A newline would end the STATUS= field and start a bogus assignment.
    let line = msg.replace('\n', " ");
    send(&[NotifyState::Status(&line)]);
}

/// `STOPPING=1`: shutdown has begun. [`crate::signals::drain`] sends this for you.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC=` that systemd ≥ 253 requires alongside it. Send
/// [`ready`] when the reload is done.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(error) => {
            tracing::warn!(error = %Chain(&error), "could not read the monotonic clock");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// Ping `WATCHDOG=1` at half the `WatchdogSec=` interval while `healthy()` returns true.
///
/// Returns `None` (and spawns nothing) when the unit has no watchdog. Must be called inside a
/// tokio runtime.
///
/// **Only ping while the daemon is actually healthy.** `healthy` is called before every ping;
/// it must answer "is my main loop still making progress?" — [`Heartbeat::progressed`] does
/// exactly that for a loop that calls [`Heartbeat::beat`]. When it returns false the ping is skipped and systemd will
/// restart the daemon after `WatchdogSec=` — which is the point. Passing `|| true` only proves
/// the runtime is alive; do it only where nothing better exists.
///
/// The task stops when `stop` is cancelled. systemd keeps enforcing the watchdog while the
/// service is stopping, so pass the shutdown token only if the drain grace period is shorter
/// than `WatchdogSec=`; otherwise pass a token `main` cancels after draining.
pub fn spawn_watchdog<H>(stop: CancellationToken, healthy: H) -> Option<JoinHandle<()>>
where
    H: FnMut() -> bool + Send + 'static,
{
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        tracing::debug!("no systemd watchdog configured");
        return None;
    };
    let every = timeout / 2;
    tracing::debug!(?timeout, ?every, "pinging the systemd watchdog");
    Some(tokio::spawn(watchdog_loop(every, stop, healthy, || {
        send(&[NotifyState::Watchdog]);
    })))
}

/// Feeds the watchdog from a periodic self-check: every `every`, run `check`; ping only while
/// checks succeed (a failure is logged). For daemons whose health is "my store answers" —
/// the check runs through the same blocking pool and connection as the request handlers, so
/// a wedged disk or an exhausted pool stops the pings and systemd restarts the daemon.
///
/// A no-op besides the checks when the unit has no watchdog. The same shutdown caveat as
/// [`spawn_watchdog`] applies.
pub fn spawn_self_checked_watchdog<F, Fut, E>(
    stop: CancellationToken,
    every: Duration,
    mut check: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::error::Error,
{
    let heartbeat = Heartbeat::new();
    let _ = spawn_watchdog(stop.clone(), heartbeat.progressed());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match check().await {
                Ok(()) => heartbeat.beat(),
                Err(e) => {
                    tracing::error!(error = %Chain(&e), "self-check failed; not feeding the watchdog")
                }
            }
        }
    });
}

/// Proof of progress for [`spawn_watchdog`]: the main loop calls [`beat`](Self::beat) on every
/// iteration, and [`progressed`](Self::progressed) is the health check.
///
/// Make sure the loop iterates even when idle (a periodic `tick` arm in its `select!`), more
/// often than half of `WatchdogSec=`; otherwise an idle daemon looks stuck.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// A heartbeat that has not beaten yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record one iteration of the main loop.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A health check for [`spawn_watchdog`]: true on its first call, then true only if
    /// [`beat`](Self::beat) was called since the previous call.
    pub fn progressed(&self) -> impl FnMut() -> bool + Send + 'static + use<> {
        let beats = Arc::clone(&self.0);
        let mut last = None;
        move || {
            let now = beats.load(Ordering::Relaxed);
            let moved = last != Some(now);
            last = Some(now);
            moved
        }
    }
}

async fn watchdog_loop<H, P>(every: Duration, stop: CancellationToken, mut healthy: H, mut ping: P)
where
    H: FnMut() -> bool,
    P: FnMut(),
{
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
    // After a stall, ping once, not a burst: a burst would hide how late we were.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let is_healthy = healthy();
        if is_healthy {
            ping();
        }
        if is_healthy != was_healthy {
            if is_healthy {
                tracing::info!("health check passes again; resuming watchdog pings");
            } else {
                tracing::error!("health check failed; withholding watchdog pings");
            }
            was_healthy = is_healthy;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn self_checks_run_every_period_until_stopped() {
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let c = Arc::clone(&calls);
        spawn_self_checked_watchdog(stop.clone(), Duration::from_secs(5), move || {
            let c = Arc::clone(&c);
            async move {
                // Every other check fails: logged, never fatal.
                let n = c.fetch_add(1, Ordering::SeqCst);
                if n.is_multiple_of(2) {
                    Ok(())
                } else {
                    Err(std::io::Error::other("store did not answer"))
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 5, "at 0, 5, 10, 15 and 20 s");
        stop.cancel();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 5, "no check after stop");
    }

    fn counter() -> (Arc<AtomicUsize>, impl FnMut() + use<>) {
        let pings = Arc::new(AtomicUsize::new(0));
        let inner = Arc::clone(&pings);
        (pings, move || {
            inner.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[tokio::test(start_paused = true)]
    async fn pings_at_the_given_period_until_stopped() {
        let (pings, ping) = counter();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watchdog_loop(
            Duration::from_secs(5),
            stop.clone(),
            || true,
            ping,
        ));
        // Ticks at 0s, 5s, 10s, 15s, 20s.
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 5);
        stop.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn withholds_pings_while_unhealthy() {
        let (pings, ping) = counter();
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&healthy);
        let stop = CancellationToken::new();
        let task = tokio::spawn(watchdog_loop(
            Duration::from_secs(5),
            stop.clone(),
            move || flag.load(Ordering::SeqCst),
            ping,
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 1);
        healthy.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 1, "no pings while unhealthy");
        healthy.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 2);
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn heartbeat_reports_progress_only_when_beaten() {
        let heartbeat = Heartbeat::new();
        let mut progressed = heartbeat.progressed();
        assert!(
            progressed(),
            "first check passes: the loop may not have run yet"
        );
        assert!(!progressed(), "no beat since the last check");
        heartbeat.clone().beat();
        heartbeat.beat();
        assert!(progressed());
        assert!(!progressed());
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_loop_stops_the_pings() {
        let (pings, ping) = counter();
        let heartbeat = Heartbeat::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watchdog_loop(
            Duration::from_secs(5),
            stop.clone(),
            heartbeat.progressed(),
            ping,
        ));
        // Beats at 1, 6, 11 and 16s, between the watchdog's ticks at 0, 5, 10, 15 and 20s.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..4 {
            heartbeat.beat();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert_eq!(pings.load(Ordering::SeqCst), 5);
        // The loop has stopped beating: no more pings, so systemd would restart us.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 5);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn everything_is_a_no_op_outside_systemd() {
        // The test runner has no NOTIFY_SOCKET or WATCHDOG_USEC: nothing may fail or panic.
        ready();
        status("testing\nwith a newline");
        reloading();
        stopping();
        if std::env::var_os("WATCHDOG_USEC").is_none() {
            assert!(spawn_watchdog(CancellationToken::new(), || true).is_none());
        }
    }
}
