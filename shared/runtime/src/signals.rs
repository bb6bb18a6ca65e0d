//! Shutdown: SIGTERM/SIGINT become a [`CancellationToken`], and [`drain`] bounds how long the
//! daemon may take to wind down.
//!
//! systemd stops a service with SIGTERM and, after `TimeoutStopSec=`, SIGKILL; a developer
//! presses Ctrl-C (SIGINT). Both mean the same thing: stop accepting work, finish what is in
//! flight, exit 0. Every task that must react takes a clone of the token (or a child token) —
//! passed in, never a global — so tests can cancel it themselves.
//!
//! **A second signal while draining exits the process immediately with status 1.** Someone
//! pressing Ctrl-C twice wants out now, and systemd never sends two SIGTERMs, so this only
//! shortens a drain a human gave up on. Exit status 1 (not 0) because in-flight work was
//! abandoned.
//!
//! This module must never decide *what* draining means for a daemon (that is `run`'s job) and
//! must never exit the process except on that second signal.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::notify;

/// Why the shutdown token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Called outside a tokio runtime.
    #[error("shutdown_token must be called inside a tokio runtime")]
    NoRuntime,
    /// The signal handler could not be installed.
    #[error("installing the {signal} handler")]
    Install {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The daemon's work did not finish within the grace period after shutdown was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutdown grace period of {grace:?} elapsed with work still running; abandoning it")]
pub struct GraceElapsed {
    /// The grace period that ran out.
    pub grace: Duration,
}

/// A token cancelled on the first SIGTERM or SIGINT. A second one exits with status 1 (see the
/// module docs). Call it once, early, inside the runtime: the handlers are installed before it
/// returns, so no signal is lost after that point.
pub fn shutdown_token() -> Result<CancellationToken, SignalError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(SignalError::NoRuntime);
    }
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| SignalError::Install {
            signal: name,
            source,
        })
    };
    let signals = UnixSignals {
        term: install(SignalKind::terminate(), "SIGTERM")?,
        int: install(SignalKind::interrupt(), "SIGINT")?,
    };
    let token = CancellationToken::new();
    tokio::spawn(supervise(signals, token.clone(), |_| std::process::exit(1)));
    Ok(token)
}

/// Where signals come from; a trait so tests can feed fake ones.
trait SignalSource {
    /// The next signal's name, or `None` when no more can arrive.
    async fn next(&mut self) -> Option<&'static str>;
}

struct UnixSignals {
    term: Signal,
    int: Signal,
}

impl SignalSource for UnixSignals {
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            Some(()) = self.term.recv() => Some("SIGTERM"),
            Some(()) = self.int.recv() => Some("SIGINT"),
            else => None,
        }
    }
}

async fn supervise<S: SignalSource>(
    mut signals: S,
    token: CancellationToken,
    on_second: impl FnOnce(&'static str),
) {
    let Some(first) = signals.next().await else {
        return;
    };
    tracing::info!(signal = first, "shutdown requested; draining");
    token.cancel();
    if let Some(second) = signals.next().await {
        tracing::error!(signal = second, "second signal while draining; exiting now");
        on_second(second);
    }
}

/// Run `work` to completion, but once `shutdown` is cancelled give it at most `grace` more.
///
/// `work` is expected to watch the same token and wind down by itself; `drain` only bounds how
/// long that may take. On cancellation it sends `STOPPING=1` and a status line to systemd.
/// `work` is polled at least once after cancellation even when `grace` is zero.
/// Returns `work`'s output, or [`GraceElapsed`] (after dropping `work`) if it overran. If `work`
/// finishes before any shutdown request — a fatal error, say — its output is returned at once.
pub async fn drain<F: Future>(
    shutdown: CancellationToken,
    grace: Duration,
    work: F,
) -> Result<F::Output, GraceElapsed> {
    drain_reporting(shutdown, grace, work, || {
        notify::stopping();
        notify::status("draining");
    })
    .await
}

/// [`drain`], with what tells systemd that the stop began passed in (for tests).
async fn drain_reporting<F: Future>(
    shutdown: CancellationToken,
    grace: Duration,
    work: F,
    stopping: impl FnOnce(),
) -> Result<F::Output, GraceElapsed> {
    let mut work = std::pin::pin!(work);
    // Cancellation first: work that stops the moment it sees the token must still be reported
    // to systemd as stopping, not as having simply finished.
    let finished = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        output = &mut work => Some(output),
    };
    if let Some(output) = finished {
        // The token can be cancelled (on another thread) after the first branch was polled and
        // before the work saw it: work that ended because of the shutdown is a stop all the
        // same. (The demo's test caught STOPPING=1 missing this way under load.)
        if shutdown.is_cancelled() {
            stopping();
        }
        return Ok(output);
    }
    stopping();
    tracing::info!(?grace, "waiting for in-flight work to finish");
    match tokio::time::timeout(grace, work).await {
        Ok(output) => Ok(output),
        Err(_) => {
            tracing::warn!(?grace, "grace period elapsed; abandoning in-flight work");
            Err(GraceElapsed { grace })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;

    struct Fake(mpsc::UnboundedReceiver<&'static str>);

    impl SignalSource for Fake {
        async fn next(&mut self) -> Option<&'static str> {
            self.0.recv().await
        }
    }

    #[tokio::test]
    async fn first_signal_cancels_second_forces_exit() {
        let (tx, rx) = mpsc::unbounded_channel();
        let token = CancellationToken::new();
        let exited = Arc::new(Mutex::new(None));
        let record = Arc::clone(&exited);
        let task = tokio::spawn(supervise(Fake(rx), token.clone(), move |sig| {
            *record.lock().unwrap() = Some(sig);
        }));

        tx.send("SIGTERM").unwrap();
        token.cancelled().await;
        assert_eq!(*exited.lock().unwrap(), None, "one signal must only cancel");

        tx.send("SIGINT").unwrap();
        task.await.unwrap();
        assert_eq!(*exited.lock().unwrap(), Some("SIGINT"));
    }

    #[tokio::test]
    async fn closed_source_neither_cancels_nor_exits() {
        let (tx, rx) = mpsc::unbounded_channel::<&'static str>();
        drop(tx);
        let token = CancellationToken::new();
        supervise(Fake(rx), token.clone(), |_| panic!("must not exit")).await;
        assert!(!token.is_cancelled());
    }

    #[tokio::test]
    async fn real_sigterm_cancels_the_token() {
        let token = shutdown_token().unwrap();
        // Our own SIGTERM is caught by the handler installed above, so the test process lives.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(10), token.cancelled())
            .await
            .expect("SIGTERM should cancel the token");
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        assert!(matches!(shutdown_token(), Err(SignalError::NoRuntime)));
    }

    /// `drain_reporting` and whether it reported a stop.
    async fn drained<F: Future>(
        token: CancellationToken,
        grace: Duration,
        work: F,
    ) -> (Result<F::Output, GraceElapsed>, bool) {
        let mut stopped = false;
        let out = drain_reporting(token, grace, work, || stopped = true).await;
        (out, stopped)
    }

    #[tokio::test(start_paused = true)]
    async fn work_finishing_first_returns_its_output() {
        let token = CancellationToken::new();
        let out = drained(token, Duration::from_secs(5), async { 7 }).await;
        assert_eq!(out, (Ok(7), false), "no shutdown, so no stop to report");
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_sees_a_cancellation_the_select_missed_is_still_a_stop() {
        // The race the frame hit: the token is cancelled after drain polled its branch, before
        // the work polled the token. Cancelling inside the work reproduces it exactly.
        let token = CancellationToken::new();
        let work = {
            let token = token.clone();
            async move {
                token.cancel();
                token.cancelled().await;
                8
            }
        };
        let out = drained(token, Duration::from_secs(5), work).await;
        assert_eq!(out, (Ok(8), true));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_winds_down_within_grace_returns_ok() {
        let token = CancellationToken::new();
        let work = {
            let token = token.clone();
            async move {
                token.cancelled().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                "done"
            }
        };
        let start = Instant::now();
        let canceller = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            canceller.cancel();
        });
        let out = drained(token, Duration::from_secs(5), work).await;
        assert_eq!(out, (Ok("done"), true));
        assert_eq!(start.elapsed(), Duration::from_secs(13));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_overruns_is_abandoned_after_grace() {
        let token = CancellationToken::new();
        token.cancel();
        let start = Instant::now();
        let out = drain(token, Duration::from_secs(5), std::future::pending::<()>()).await;
        assert_eq!(
            out,
            Err(GraceElapsed {
                grace: Duration::from_secs(5)
            })
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn already_finished_work_wins_over_cancellation() {
        let token = CancellationToken::new();
        token.cancel();
        assert_eq!(drain(token, Duration::ZERO, async { 1 }).await, Ok(1));
    }
}
