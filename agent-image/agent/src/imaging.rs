//! The imaging loop: runs the machine's workflow, one served action at a time, and tells apid
//! what happened in reports that are never lost.
//!
//! The agent enters it when its instructions say `imaging`, whether it was booted for imaging
//! by ipxed or is still running from discovery when an operator assigns an OS (the fast track:
//! no reboot through PXE). It asks `GET /api/agent/workflow` for the next action, runs it with
//! a [`Runner`] ([`Native`]: [`actions::run`]) and sends, for that action, `started`,
//! `progress` at least every [`ImagingConfig::heartbeat`] (bytes done and in all, bytes/s),
//! then `succeeded` or `failed` (the error's chain and the console's last lines).
//!
//! Why reports go through an outbox and a sender thread: a report must reach the store exactly
//! once (apid answers 202 once it is durable, and keeps the first copy of a
//! `(workflowId, attempt, action, seq)`), yet a slow or restarting apid must not stall a disk
//! write. So each report gets its sequence number when it is queued, and the sender re-sends
//! the front of the queue, with the same number, until it is acknowledged; progress that piles
//! up behind an unreachable server is folded into the newest queued progress report. An action
//! is finished for the agent only when its last report is acknowledged: a kexec happens after
//! that, never before (the completion would be lost to the jump).
//!
//! Sequence numbers keep increasing for an action the server serves again, so a re-run's
//! reports are never mistaken for the first run's copies: within this process by memory, and
//! across a reboot (a new agent process) from the server, which serves each action with the
//! `nextSeq` past the reports it already keeps.
//!
//! What the loop must never do: reboot on a failure (the machine stays up, on the console and
//! shipping its lines, until an operator acts), run an action it was not served, or skip an
//! action the server insists on: one it already finished is run again if the server still
//! serves it after [`ImagingConfig::rerun_grace`] (the server did not see the end; actions are
//! safe to re-run).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dragonfly_core::Chain;
use dragonfly_core::agent_api::{
    ActionReport, REPORT_PATH, ReportEvent, ServedAction, WORKFLOW_PATH, WorkflowStep,
};
use dragonfly_core::template::ActionSpec;
use uuid::Uuid;

use crate::actions::{self, ActionError, Cancel, Outcome, Progress, Report, kexec::Reboot};
use crate::http::{self, Url};
use crate::register::sleep_unless_stopped;
use crate::token::Token;
use crate::{Console, Shipping};

/// One action's work, as the loop runs it: on a thread of its own, so that the loop can stop
/// waiting for it when its time is up (see [`Imaging`]'s timeout).
pub type Job = Box<dyn FnOnce(&mut dyn Progress) -> Result<Outcome, ActionError> + Send>;

/// Prepares each action's work; the seam between the loop and the actions (tests run fakes).
pub trait Runner {
    /// The work of `spec`. `cancel` is set when the loop stops waiting for it: the work should
    /// end soon after (what it returns then is not reported).
    fn prepare(&mut self, spec: &ActionSpec, cancel: &Cancel) -> Job;
}

/// The native actions on this machine's `/sys` and `/dev`.
#[derive(Debug, Default)]
pub struct Native(pub actions::Context);

impl Runner for Native {
    fn prepare(&mut self, spec: &ActionSpec, cancel: &Cancel) -> Job {
        let ctx = actions::Context {
            cancel: cancel.clone(),
            ..self.0.clone()
        };
        let spec = spec.clone();
        Box::new(move |progress| actions::run(&spec, &ctx, progress))
    }
}

/// The loop's timing (the agent uses the defaults; tests shorten them).
#[derive(Debug, Clone)]
pub struct ImagingConfig {
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Longest wait between two workflow polls (the server may ask for less).
    pub poll: Duration,
    /// First wait before re-sending an unacknowledged report; doubles up to `retry_max`.
    pub retry: Duration,
    pub retry_max: Duration,
    /// A progress report at least this often while an action runs.
    pub heartbeat: Duration,
    /// How long the server may keep serving an action this agent already finished and
    /// reported (it may not have applied the report yet) before the agent runs it again.
    pub rerun_grace: Duration,
    /// A progress line on the console at most this often.
    pub console_every: Duration,
    /// An action that reported nothing of its own for this long is said to be still running
    /// (and where the kernel holds it), then again at this period.
    pub quiet_after: Duration,
    /// How long the next action waits for the thread of one that timed out to end, before it
    /// runs anyway (the old one is then stuck in the kernel, and said to be).
    pub stopping_grace: Duration,
}

impl Default for ImagingConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            poll: Duration::from_secs(5),
            retry: Duration::from_millis(500),
            retry_max: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            rerun_grace: Duration::from_secs(30),
            console_every: Duration::from_secs(10),
            quiet_after: Duration::from_secs(30),
            // One HTTP read timeout (actions::Context::http_timeout) and some.
            stopping_grace: Duration::from_secs(45),
        }
    }
}

/// Why the loop returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The last action's success is acknowledged and it asks for a restart: do it now.
    Reboot(Reboot),
    /// The server has nothing for this agent to run (the workflow is over, or there is none):
    /// the instructions say what comes next.
    Over(String),
    Stopped,
}

/// One answer of `GET /api/agent/workflow`.
#[derive(Debug)]
pub enum Poll {
    Step(Box<WorkflowStep>),
    /// 404: no workflow for this machine (any more).
    NoWorkflow,
    Failed(String),
}

/// Asks once.
pub fn ask(base: &Url, token: &str, timeout: Duration) -> Poll {
    match http::get(base, WORKFLOW_PATH, token, timeout) {
        Ok(r) if r.status == 200 => match serde_json::from_slice(&r.body) {
            Ok(s) => Poll::Step(Box::new(s)),
            Err(e) => Poll::Failed(format!(
                "the server's answer is not understood: {}",
                Chain(&e)
            )),
        },
        Ok(r) if r.status == 404 => Poll::NoWorkflow,
        Ok(r) => Poll::Failed(format!("the server answered HTTP {}", r.status)),
        Err(e) => Poll::Failed(Chain(&e).to_string()),
    }
}

/// `(workflow, attempt, action index)`: one action of one start of a workflow.
type Key = (Uuid, u32, u32);

/// Everything the loop needs from the agent around it.
pub struct Imaging<'a> {
    pub base: &'a Url,
    pub token: &'a Token,
    pub console: &'a Shipping<'a>,
    pub cfg: &'a ImagingConfig,
    pub stop: &'a AtomicBool,
}

impl std::fmt::Debug for Imaging<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imaging").finish_non_exhaustive()
    }
}

/// How one action ended for the loop.
enum Finished {
    /// Ran, and its last report was acknowledged.
    Acked(Result<Outcome, String>),
    /// The server refused a report for good (e.g. a workflow that is no longer this one's).
    Refused(String),
    Stopped,
}

impl Imaging<'_> {
    /// Runs served actions until the workflow is over for this agent; see the module docs.
    pub fn run(&self, runner: &mut dyn Runner) -> Ended {
        // Actions this process finished and reported, and when the server was first seen
        // serving one of them again.
        let mut finished: HashMap<Key, Option<Instant>> = HashMap::new();
        let mut seqs: HashMap<Key, u64> = HashMap::new();
        let mut failing: Option<String> = None;
        let mut waiting_said = false;
        // Threads of actions that timed out and may still be ending.
        let mut stopping: Vec<Stopping> = Vec::new();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ended::Stopped;
            }
            self.token
                .renew_if_due(self.base, self.cfg.request_timeout, self.console);
            let wait = match ask(self.base, &self.token.get(), self.cfg.request_timeout) {
                Poll::Step(step) => {
                    failing = None;
                    let wait = self.cfg.poll.min(Duration::from_secs(u64::from(
                        step.poll_after_seconds.max(1),
                    )));
                    match &step.action {
                        None if step.state.is_terminal() => {
                            self.console.flush(
                                self.base,
                                &self.token.get(),
                                self.cfg.request_timeout,
                            );
                            return Ended::Over(format!("the workflow is {:?}", step.state));
                        }
                        None => {
                            if !waiting_said {
                                self.console.say(&format!(
                                    "workflow {} is {:?}: waiting for its next action.",
                                    step.workflow_id, step.state
                                ));
                                waiting_said = true;
                            }
                            wait
                        }
                        Some(action) => {
                            waiting_said = false;
                            let key = (step.workflow_id, step.attempt, action.index);
                            if let Some(seen) = finished.get_mut(&key) {
                                let first = *seen.get_or_insert_with(Instant::now);
                                if first.elapsed() < self.cfg.rerun_grace {
                                    // The server may not have applied the last report yet.
                                    self.pause(wait);
                                    continue;
                                }
                                self.console.say(&format!(
                                    "the server still serves {} ({}): running it again.",
                                    action.name, action.index
                                ));
                                finished.remove(&key);
                            }
                            // The server knows the seqs it keeps, also from this machine's
                            // earlier boots; this process knows those it used (kept or not).
                            let seq = seqs.entry(key).or_insert(0);
                            *seq = (*seq).max(action.next_seq);
                            self.wait_for_stopping(&mut stopping);
                            match self.run_one(&step, action, runner, seq, &mut stopping) {
                                Finished::Stopped => return Ended::Stopped,
                                Finished::Refused(why) => {
                                    self.console.say(&format!(
                                        "the server refused the report of {}: {why}; asking \
                                         it what to do next.",
                                        action.name
                                    ));
                                    wait
                                }
                                Finished::Acked(Ok(outcome)) => {
                                    finished.insert(key, None);
                                    if let Some(reboot) = outcome.reboot {
                                        self.console.flush(
                                            self.base,
                                            &self.token.get(),
                                            self.cfg.request_timeout,
                                        );
                                        return Ended::Reboot(reboot);
                                    }
                                    // Straight on to the next action.
                                    Duration::ZERO
                                }
                                Finished::Acked(Err(_)) => {
                                    finished.insert(key, None);
                                    self.console.say(
                                        "the installation stopped here. This machine stays up \
                                         and waits for an operator (retry or cancel).",
                                    );
                                    wait
                                }
                            }
                        }
                    }
                }
                Poll::NoWorkflow => {
                    return Ended::Over("the server has no workflow for this machine".into());
                }
                Poll::Failed(why) => {
                    if failing.as_deref() != Some(why.as_str()) {
                        self.console.say(&format!(
                            "cannot ask the server for the next action ({why}); will keep asking."
                        ));
                        failing = Some(why);
                    }
                    self.cfg.poll
                }
            };
            self.pause(wait);
        }
    }

    /// Ships the console's lines, then waits.
    fn pause(&self, wait: Duration) {
        self.console
            .flush(self.base, &self.token.get(), self.cfg.request_timeout);
        sleep_unless_stopped(wait, self.stop);
    }

    /// Runs one served action on a thread of its own, while a sender thread delivers its
    /// reports; gives up waiting for it after its `timeout_seconds` (see [`Imaging::run_job`]).
    fn run_one(
        &self,
        step: &WorkflowStep,
        action: &ServedAction,
        runner: &mut dyn Runner,
        seq: &mut u64,
        stopping: &mut Vec<Stopping>,
    ) -> Finished {
        let spec = ActionSpec {
            name: action.name.clone(),
            timeout_seconds: Some(action.timeout_seconds),
            // Retries are the server's: each is a new attempt, served like any action.
            retries: 0,
            action: action.spec.clone(),
        };
        let outbox = Outbox::new(step.workflow_id, step.attempt, action.index, *seq);
        outbox.lock().name.clone_from(&action.name);
        self.console.say(&format!(
            "action {} ({} of workflow {}, attempt {}): starting.",
            action.name,
            action.index + 1,
            step.workflow_id,
            step.attempt
        ));
        let result = std::thread::scope(|scope| {
            let sender = scope.spawn(|| self.send(&outbox));
            outbox.push(ReportEvent::Started);
            let mut sink = Sink {
                outbox: &outbox,
                console: self.console,
                every: self.cfg.console_every,
                said: None,
            };
            let cancel = Cancel::default();
            let job = runner.prepare(&spec, &cancel);
            let result = self.run_job(action, job, &cancel, &outbox, &mut sink, stopping);
            let result = match result {
                Ok(o) => {
                    self.console
                        .say(&format!("action {}: done. {}", action.name, o.message));
                    outbox.push(ReportEvent::Succeeded {
                        message: (!o.message.is_empty()).then(|| o.message.clone()),
                    });
                    Ok(o)
                }
                Err(e) => {
                    let message = cut(&Chain(&e).to_string(), ReportEvent::MAX_MESSAGE_CHARS);
                    self.console
                        .say(&format!("action {} FAILED: {message}", action.name));
                    outbox.push(ReportEvent::Failed {
                        message: message.clone(),
                        log_tail: self.console.tail(ReportEvent::MAX_LOG_TAIL),
                    });
                    Err(message)
                }
            };
            outbox.finish();
            // The sender returns once the queue is empty, the server refused, or stop.
            let _ = sender.join();
            result
        });
        let state = outbox.lock();
        *seq = state.next_seq;
        if let Some(why) = state.refused.clone() {
            return Finished::Refused(why);
        }
        if !state.queue.is_empty() {
            return Finished::Stopped;
        }
        Finished::Acked(result)
    }

    /// Runs `job` on its own thread and forwards its progress until it ends or its served
    /// `timeout_seconds` pass (0: no limit on the agent's side; the server still has one).
    ///
    /// Why a thread the loop can walk away from: an action may block where nothing can
    /// interrupt it (a `mount` or `sync` on a dying disk, a server that keeps a download
    /// trickling), and a loop stuck there would never report, never see an operator's retry,
    /// and leave the machine to the server's timeout and a reboot. At the deadline the loop
    /// sets `cancel` (image2disk stops between buffers, its download within one read timeout),
    /// reports the timeout as the action's failure, and goes on. The thread is left behind
    /// (in `stopping`) and ends when the action notices `cancel` or the kernel returns; a
    /// thread stuck in the kernel for good stays until the machine restarts.
    fn run_job(
        &self,
        action: &ServedAction,
        job: Job,
        cancel: &Cancel,
        outbox: &Outbox,
        sink: &mut Sink<'_>,
        stopping: &mut Vec<Stopping>,
    ) -> Result<Outcome, ActionError> {
        let (tx, rx) = mpsc::channel();
        let to_loop = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("action-{}", action.index))
            .spawn(move || {
                let _ = tx.send(FromJob::Tid(nix::unistd::gettid().as_raw()));
                let r = job(&mut ToLoop(to_loop));
                let _ = tx.send(FromJob::Done(r));
            });
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                return Err(ActionError::Unsupported(format!(
                    "cannot start a thread for the action: {e}"
                )));
            }
        };
        let deadline = (action.timeout_seconds > 0)
            .then(|| Instant::now().checked_add(Duration::from_secs(action.timeout_seconds.into())))
            .flatten();
        loop {
            let msg = match deadline {
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(FromJob::Tid(tid)) => outbox.lock().tid = tid,
                Ok(FromJob::Progress(name, r)) => sink.progress(&name, &r),
                Ok(FromJob::Done(r)) => {
                    let _ = handle.join();
                    return r;
                }
                Err(RecvTimeoutError::Timeout) => {
                    cancel.cancel();
                    stopping.push(Stopping {
                        name: action.name.clone(),
                        thread: handle,
                    });
                    return Err(ActionError::TimedOut {
                        name: action.name.clone(),
                        seconds: action.timeout_seconds,
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = handle.join();
                    return Err(ActionError::Unsupported(
                        "the action's thread ended without a result (it panicked)".into(),
                    ));
                }
            }
        }
    }

    /// Before the next action: gives the threads of timed-out actions
    /// [`ImagingConfig::stopping_grace`] to end, so two actions do not work on one disk at
    /// once; then goes on regardless (a thread stuck in the kernel never ends), saying so.
    fn wait_for_stopping(&self, stopping: &mut Vec<Stopping>) {
        stopping.retain(|s| !s.thread.is_finished());
        if stopping.is_empty() {
            return;
        }
        let names = stopping
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        self.console.say(&format!(
            "waiting up to {} s for the timed-out action {names} to stop.",
            self.cfg.stopping_grace.as_secs(),
        ));
        let since = Instant::now();
        while since.elapsed() < self.cfg.stopping_grace && !self.stop.load(Ordering::Relaxed) {
            stopping.retain(|s| !s.thread.is_finished());
            if stopping.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.console.say(&format!(
            "the timed-out action {names} has not stopped (held in the kernel?): going on \
             without it; restarting the machine ends it."
        ));
        // Waited for once: left to the kernel from now on.
        stopping.clear();
    }

    /// The sender: delivers the outbox's reports in order, each until acknowledged; adds a
    /// heartbeat progress report when the action has been quiet; keeps the token fresh and
    /// the console shipping while the action runs.
    fn send(&self, outbox: &Outbox) {
        let mut backoff = self.cfg.retry;
        let mut failing: Option<String> = None;
        let mut last_ship = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if last_ship.elapsed() >= self.cfg.heartbeat {
                self.token
                    .renew_if_due(self.base, self.cfg.request_timeout, self.console);
                self.console
                    .flush(self.base, &self.token.get(), self.cfg.request_timeout);
                last_ship = Instant::now();
            }
            let report = {
                let mut s = outbox.lock();
                if s.queue.is_empty() {
                    if s.finished {
                        return;
                    }
                    if s.last_queued.elapsed() >= self.cfg.heartbeat {
                        let event = s.heartbeat();
                        s.enqueue(event);
                        if s.said_quiet.elapsed() >= self.cfg.quiet_after
                            && s.last_said.elapsed() >= self.cfg.quiet_after
                        {
                            s.said_quiet = Instant::now();
                            let line = s.quiet_line();
                            drop(s);
                            self.console.say(&line);
                            continue;
                        }
                    } else {
                        let left = self.cfg.heartbeat.saturating_sub(s.last_queued.elapsed());
                        let (guard, _) = outbox
                            .wake
                            .wait_timeout(s, left.min(Duration::from_millis(200)))
                            .unwrap_or_else(|p| p.into_inner());
                        drop(guard);
                        continue;
                    }
                }
                s.in_flight = true;
                s.queue.front().cloned()
            };
            let Some(report) = report else { continue };
            let outcome = deliver(self.base, &self.token.get(), &report, self.cfg);
            let mut s = outbox.lock();
            s.in_flight = false;
            match outcome {
                Delivery::Acked => {
                    s.queue.pop_front();
                    backoff = self.cfg.retry;
                    if failing.take().is_some() {
                        drop(s);
                        self.console.say("reports reach the server again.");
                    }
                }
                Delivery::Refused(why) => {
                    s.refused = Some(why);
                    return;
                }
                Delivery::Retry(why) => {
                    drop(s);
                    if failing.as_deref() != Some(why.as_str()) {
                        self.console.say(&format!(
                            "cannot report to the server yet ({why}); the action goes on and \
                             its reports wait."
                        ));
                        failing = Some(why);
                    }
                    sleep_unless_stopped(backoff, self.stop);
                    backoff = (backoff * 2).min(self.cfg.retry_max);
                }
            }
        }
    }
}

enum Delivery {
    Acked,
    Refused(String),
    Retry(String),
}

/// Sends one report once.
fn deliver(base: &Url, token: &str, report: &ActionReport, cfg: &ImagingConfig) -> Delivery {
    let Ok(body) = serde_json::to_vec(report) else {
        // Plain data always encodes; were it not to, retrying would not help.
        return Delivery::Refused("the report cannot be encoded".into());
    };
    match http::post_json(base, REPORT_PATH, token, &body, cfg.request_timeout) {
        // 200 too: a server that kept an earlier copy may say so.
        Ok(r) if r.status == 202 || r.status == 200 => Delivery::Acked,
        // The request itself is wrong for the server (a stale attempt, a workflow that is
        // gone): sending it again cannot succeed.
        Ok(r) if matches!(r.status, 400 | 403 | 404 | 409 | 410 | 422) => {
            Delivery::Refused(format!(
                "HTTP {}{}",
                r.status,
                serde_json::from_slice::<dragonfly_core::agent_api::ErrorBody>(&r.body)
                    .map(|e| format!(": {}", e.message))
                    .unwrap_or_default()
            ))
        }
        // 401 (the token is renewed meanwhile), 429, 5xx: later.
        Ok(r) => Delivery::Retry(format!("the server answered HTTP {}", r.status)),
        Err(e) => Delivery::Retry(Chain(&e).to_string()),
    }
}

/// The reports of one action, queued in order with their sequence numbers.
struct Outbox {
    state: Mutex<OutboxState>,
    wake: Condvar,
}

struct OutboxState {
    workflow_id: Uuid,
    attempt: u32,
    action: u32,
    next_seq: u64,
    queue: VecDeque<ActionReport>,
    /// The front of the queue is being sent: it must not change.
    in_flight: bool,
    /// The action has ended (its last report is queued).
    finished: bool,
    refused: Option<String>,
    last_queued: Instant,
    /// The action's own last progress (not a heartbeat), and the last "still running" line.
    last_said: Instant,
    said_quiet: Instant,
    name: String,
    /// The thread running the action (`/proc/self/task/<tid>/wchan`).
    tid: i32,
    /// The newest progress, repeated by heartbeats.
    last_progress: Option<(u64, Option<u64>, u64)>,
    started: Instant,
}

impl Outbox {
    fn new(workflow_id: Uuid, attempt: u32, action: u32, next_seq: u64) -> Self {
        Self {
            state: Mutex::new(OutboxState {
                workflow_id,
                attempt,
                action,
                next_seq,
                queue: VecDeque::new(),
                in_flight: false,
                finished: false,
                refused: None,
                last_queued: Instant::now(),
                last_said: Instant::now(),
                said_quiet: Instant::now(),
                name: String::new(),
                tid: 0,
                last_progress: None,
                started: Instant::now(),
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, event: ReportEvent) {
        let mut s = self.lock();
        s.last_said = Instant::now();
        s.enqueue(event);
        drop(s);
        self.wake.notify_all();
    }

    fn finish(&self) {
        self.lock().finished = true;
        self.wake.notify_all();
    }
}

impl OutboxState {
    fn enqueue(&mut self, event: ReportEvent) {
        self.last_queued = Instant::now();
        if let ReportEvent::Progress {
            bytes_done,
            bytes_total,
            bytes_per_second,
            ..
        } = &event
        {
            self.last_progress = Some((*bytes_done, *bytes_total, *bytes_per_second));
            // Fold into a queued progress report that is not on its way yet.
            let sendable_back = self.queue.len() > usize::from(self.in_flight);
            if let Some(back) = self.queue.back_mut()
                && sendable_back
                && matches!(back.event, ReportEvent::Progress { .. })
            {
                back.event = event;
                return;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(ActionReport {
            workflow_id: self.workflow_id,
            attempt: self.attempt,
            action: self.action,
            seq,
            event,
        });
    }

    /// The console line for an action quiet for long: how long, and where the kernel holds
    /// its thread (`wchan`; `0` or empty when it is running, not waiting).
    fn quiet_line(&self) -> String {
        let wchan = std::fs::read_to_string(format!("/proc/self/task/{}/wchan", self.tid))
            .unwrap_or_default();
        let wchan = wchan.trim();
        format!(
            "action {}: still running after {} s{}.",
            self.name,
            self.started.elapsed().as_secs(),
            if wchan.is_empty() || wchan == "0" {
                String::new()
            } else {
                format!(" (waiting in the kernel at {wchan})")
            }
        )
    }

    /// A progress report saying the action is still running, with the newest figures.
    fn heartbeat(&self) -> ReportEvent {
        let (bytes_done, bytes_total, bytes_per_second) = self.last_progress.unwrap_or_default();
        ReportEvent::Progress {
            bytes_done,
            bytes_total,
            bytes_per_second,
            message: Some(format!(
                "running for {} s",
                self.started.elapsed().as_secs()
            )),
        }
    }
}

/// The thread of an action the loop stopped waiting for.
struct Stopping {
    name: String,
    thread: JoinHandle<()>,
}

/// What an action's thread tells the loop.
enum FromJob {
    /// Its kernel thread id, for the "still running" line's `wchan`.
    Tid(i32),
    Progress(String, Report),
    Done(Result<Outcome, ActionError>),
}

/// The action thread's [`Progress`]: to the loop, which forwards it to the [`Sink`]. Sends to
/// a loop that stopped waiting go nowhere.
struct ToLoop(mpsc::Sender<FromJob>);

impl Progress for ToLoop {
    // The loop reports the start and the end itself.
    fn start(&mut self, _: &str) {}
    fn end(&mut self, _: &str, _: Result<&Outcome, &ActionError>) {}

    fn progress(&mut self, action: &str, r: &Report) {
        let _ = self.0.send(FromJob::Progress(action.to_owned(), r.clone()));
    }
}

/// The actions' progress, into the outbox and (now and then) onto the console.
struct Sink<'a> {
    outbox: &'a Outbox,
    console: &'a dyn Console,
    every: Duration,
    said: Option<Instant>,
}

impl Progress for Sink<'_> {
    // The loop reports the start and the end itself, whatever the runner calls.
    fn start(&mut self, _: &str) {}
    fn end(&mut self, _: &str, _: Result<&Outcome, &ActionError>) {}

    fn progress(&mut self, action: &str, r: &Report) {
        self.outbox.push(ReportEvent::Progress {
            bytes_done: r.done,
            bytes_total: r.total,
            bytes_per_second: r.bytes_per_sec,
            message: (!r.message.is_empty()).then(|| r.message.clone()),
        });
        if self.said.is_none_or(|t| t.elapsed() >= self.every) {
            self.said = Some(Instant::now());
            self.console.say(&format!(
                "action {action}: {} MiB{} at {} MiB/s",
                r.done >> 20,
                r.percent.map(|p| format!(" ({p}%)")).unwrap_or_default(),
                r.bytes_per_sec >> 20,
            ));
        }
    }
}

/// `s` cut to at most `max` characters.
fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    use dragonfly_core::agent_api::RENEW_PATH;
    use dragonfly_core::template::Action;
    use dragonfly_core::workflow::WorkflowState;

    use super::*;

    const WF: Uuid = Uuid::from_u128(0xaa);

    /// A console that keeps nothing but what the Shipping around it keeps.
    struct Quiet;
    impl Console for Quiet {
        fn say(&self, _: &str) {}
    }

    /// The fake apid's answer to one request: `(status, body)`.
    type Handler = dyn Fn(&str, &str, &[u8]) -> (u16, Vec<u8>) + Send + Sync;

    /// A tiny HTTP/1.1 server on loopback, one request per connection, as the agent speaks.
    fn serve(handler: Arc<Handler>) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let h = handler.clone();
                std::thread::spawn(move || {
                    let _ = answer(s, &*h);
                });
            }
        });
        Url::parse(&format!("http://{addr}")).unwrap()
    }

    fn answer(s: TcpStream, handler: &Handler) -> std::io::Result<()> {
        let mut r = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let (status, out) = handler(&method, &path, &body);
        let mut w = s;
        write!(
            w,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            out.len()
        )?;
        w.write_all(&out)
    }

    /// What the fake workflow server saw and keeps.
    #[derive(Default)]
    struct Fake {
        /// Every report POSTed, acknowledged or not.
        posted: Vec<(ActionReport, u16)>,
        /// Reports kept: the first copy of each (action, seq).
        kept: Vec<ActionReport>,
        polls: u32,
    }

    impl Fake {
        fn kept_for(&self, action: u32) -> Vec<&ActionReport> {
            self.kept.iter().filter(|r| r.action == action).collect()
        }
    }

    /// A server for `actions` served in order: an action is served until its `succeeded` is
    /// kept (or for ever when `apply` is false); `refuse(n)` decides whether the n-th report
    /// POST is answered 503.
    fn workflow_server(
        actions: Vec<ServedAction>,
        apply: bool,
        refuse: impl Fn(usize) -> bool + Send + Sync + 'static,
    ) -> (Url, Arc<Mutex<Fake>>) {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let f = fake.clone();
        let url = serve(Arc::new(move |method: &str, path: &str, body: &[u8]| {
            let mut fk = f.lock().unwrap();
            match (method, path) {
                ("POST", RENEW_PATH) => (
                    200,
                    br#"{"token":"dfb1.renewed","expiresInSeconds":900,"renewAfterSeconds":3600}"#
                        .to_vec(),
                ),
                ("POST", dragonfly_core::agent_api::LOG_PATH) => (204, Vec::new()),
                ("POST", REPORT_PATH) => {
                    let report: ActionReport = serde_json::from_slice(body).unwrap();
                    let n = fk.posted.len();
                    let status = if refuse(n) { 503 } else { 202 };
                    fk.posted.push((report.clone(), status));
                    if status == 202
                        && !fk
                            .kept
                            .iter()
                            .any(|k| (k.action, k.seq) == (report.action, report.seq))
                    {
                        fk.kept.push(report);
                    }
                    (status, Vec::new())
                }
                ("GET", WORKFLOW_PATH) => {
                    fk.polls += 1;
                    let done = |i: u32| {
                        fk.kept.iter().any(|k| {
                            k.action == i
                                && matches!(
                                    k.event,
                                    ReportEvent::Succeeded { .. } | ReportEvent::Failed { .. }
                                )
                        })
                    };
                    let failed = fk
                        .kept
                        .iter()
                        .any(|k| matches!(k.event, ReportEvent::Failed { .. }));
                    let next = actions.iter().find(|a| !apply || !done(a.index)).cloned();
                    let state = match (&next, failed && apply) {
                        (_, true) => WorkflowState::Failed,
                        (None, _) => WorkflowState::Succeeded,
                        (Some(_), _) => WorkflowState::Running,
                    };
                    let step = WorkflowStep {
                        workflow_id: WF,
                        attempt: 1,
                        state,
                        action: if state.is_terminal() { None } else { next },
                        poll_after_seconds: 1,
                    };
                    (200, serde_json::to_vec(&step).unwrap())
                }
                _ => (404, Vec::new()),
            }
        }));
        (url, fake)
    }

    fn served(index: u32, name: &str) -> ServedAction {
        ServedAction {
            index,
            name: name.into(),
            timeout_seconds: 600,
            spec: Action::Kexec {
                device: serde_json::from_str(r#""/dev/vda2""#).unwrap(),
                filesystem: dragonfly_core::template::Filesystem::Ext4,
                kernel: "/boot/vmlinuz".into(),
                initrd: None,
                cmdline: String::new(),
            },
            next_seq: 0,
        }
    }

    fn quick() -> ImagingConfig {
        ImagingConfig {
            request_timeout: Duration::from_secs(2),
            poll: Duration::from_millis(50),
            retry: Duration::from_millis(20),
            retry_max: Duration::from_millis(100),
            heartbeat: Duration::from_millis(100),
            rerun_grace: Duration::from_millis(300),
            console_every: Duration::from_millis(100),
            quiet_after: Duration::from_millis(300),
            stopping_grace: Duration::from_secs(5),
        }
    }

    /// Plays a script per action name: progress reports for `busy`, then the result.
    struct Fake2 {
        runs: Vec<String>,
        busy: Duration,
        result: fn(&str) -> Result<Outcome, ActionError>,
    }

    impl Runner for Fake2 {
        fn prepare(&mut self, spec: &ActionSpec, _: &Cancel) -> Job {
            self.runs.push(spec.name.clone());
            let (name, busy, result) = (spec.name.clone(), self.busy, self.result);
            Box::new(move |progress| {
                let started = Instant::now();
                progress.progress(
                    &name,
                    &Report {
                        done: 1 << 20,
                        total: Some(4 << 20),
                        percent: Some(25),
                        bytes_per_sec: 1 << 20,
                        message: String::new(),
                    },
                );
                // Quiet for a while: the loop's heartbeat must speak for it.
                std::thread::sleep(busy.saturating_sub(started.elapsed()));
                result(&name)
            })
        }
    }

    fn ok(name: &str) -> Result<Outcome, ActionError> {
        Ok(Outcome {
            message: format!("{name} done"),
            bytes: None,
            reboot: (name == "kexec").then_some(Reboot::Kexec),
        })
    }

    fn run_loop(base: &Url, cfg: &ImagingConfig, runner: &mut dyn Runner) -> (Ended, Vec<String>) {
        let quiet = Quiet;
        let shipping = Shipping::new(&quiet);
        let token = Token::new("dfb1.first".into());
        let stop = AtomicBool::new(false);
        let ended = Imaging {
            base,
            token: &token,
            console: &shipping,
            cfg,
            stop: &stop,
        }
        .run(runner);
        (ended, shipping.tail(100))
    }

    /// Each action's kept reports: started at seq 0, numbered without gaps, one end last.
    fn assert_life(reports: &[&ActionReport], end: fn(&ReportEvent) -> bool) {
        assert!(
            matches!(reports[0].event, ReportEvent::Started),
            "{reports:?}"
        );
        for (i, r) in reports.iter().enumerate() {
            assert_eq!(r.seq, i as u64, "{reports:?}");
        }
        assert!(end(&reports.last().unwrap().event), "{reports:?}");
        assert_eq!(
            reports.iter().filter(|r| end(&r.event)).count(),
            1,
            "{reports:?}"
        );
    }

    #[test]
    fn runs_each_served_action_in_order_reports_its_life_and_jumps_after_the_ack() {
        let (base, fake) =
            workflow_server(vec![served(0, "image"), served(1, "kexec")], true, |_| {
                false
            });
        let mut runner = Fake2 {
            runs: Vec::new(),
            busy: Duration::from_millis(450),
            result: ok,
        };
        let (ended, lines) = run_loop(&base, &quick(), &mut runner);
        assert_eq!(ended, Ended::Reboot(Reboot::Kexec));
        assert_eq!(runner.runs, ["image", "kexec"]);
        // Quiet past `quiet_after` (300 ms): said on the console.
        assert!(
            lines
                .iter()
                .any(|l| l.contains("image: still running after")),
            "{lines:?}"
        );
        let fk = fake.lock().unwrap();
        for action in [0, 1] {
            let kept = fk.kept_for(action);
            assert_life(&kept, |e| matches!(e, ReportEvent::Succeeded { .. }));
            // The runner spoke once, then was quiet for 450 ms: heartbeats every 100 ms
            // carry its last figures.
            let progress: Vec<_> = kept
                .iter()
                .filter_map(|r| match &r.event {
                    ReportEvent::Progress {
                        bytes_done,
                        bytes_total,
                        bytes_per_second,
                        ..
                    } => Some((*bytes_done, *bytes_total, *bytes_per_second)),
                    _ => None,
                })
                .collect();
            assert!(progress.len() >= 3, "{kept:?}");
            assert!(
                progress
                    .iter()
                    .all(|p| *p == (1 << 20, Some(4 << 20), 1 << 20)),
                "{progress:?}"
            );
        }
        // Nothing was acknowledged twice: every POST got 202, once per (action, seq).
        assert_eq!(fk.posted.len(), fk.kept.len());
    }

    #[test]
    fn an_unacknowledged_report_is_sent_again_with_its_seq_and_kept_once() {
        // Every other POST, and the first four, fail with 503.
        let (base, fake) =
            workflow_server(vec![served(0, "image"), served(1, "kexec")], true, |n| {
                n < 4 || n % 2 == 1
            });
        let mut runner = Fake2 {
            runs: Vec::new(),
            busy: Duration::from_millis(300),
            result: ok,
        };
        let (ended, lines) = run_loop(&base, &quick(), &mut runner);
        assert_eq!(ended, Ended::Reboot(Reboot::Kexec));
        assert_eq!(runner.runs, ["image", "kexec"]);
        let fk = fake.lock().unwrap();
        for action in [0, 1] {
            assert_life(&fk.kept_for(action), |e| {
                matches!(e, ReportEvent::Succeeded { .. })
            });
        }
        // A refused report came back unchanged (same seq, same content) until acknowledged,
        // and no acknowledged report was ever sent again.
        let mut acked = std::collections::HashSet::new();
        for (i, (r, status)) in fk.posted.iter().enumerate() {
            assert!(
                !acked.contains(&(r.action, r.seq)),
                "{r:?} sent after its 202"
            );
            if *status == 202 {
                acked.insert((r.action, r.seq));
            } else {
                assert_eq!(
                    &fk.posted[i + 1].0,
                    r,
                    "a refused report is re-sent as it was"
                );
            }
        }
        assert!(
            lines
                .iter()
                .any(|l| l.contains("cannot report to the server yet")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_failed_action_reports_why_with_the_console_tail_and_is_not_run_again() {
        let (base, fake) =
            workflow_server(vec![served(0, "image"), served(1, "kexec")], true, |_| {
                false
            });
        let mut runner = Fake2 {
            runs: Vec::new(),
            busy: Duration::ZERO,
            result: |_| {
                Err(ActionError::Download(
                    "GET http://10.99.0.1/os.zst: connection refused".into(),
                ))
            },
        };
        let (ended, lines) = run_loop(&base, &quick(), &mut runner);
        assert!(
            matches!(ended, Ended::Over(ref why) if why.contains("Failed")),
            "{ended:?}"
        );
        assert_eq!(runner.runs, ["image"]);
        let fk = fake.lock().unwrap();
        let kept = fk.kept_for(0);
        assert_life(&kept, |e| matches!(e, ReportEvent::Failed { .. }));
        let ReportEvent::Failed { message, log_tail } = &kept.last().unwrap().event else {
            unreachable!()
        };
        assert!(message.contains("connection refused"), "{message}");
        assert!(
            log_tail
                .iter()
                .any(|l| l.contains("action image (1 of workflow")),
            "{log_tail:?}"
        );
        assert!(fk.kept_for(1).is_empty());
        assert!(lines.iter().any(|l| l.contains("stays up")), "{lines:?}");
    }

    /// A job that hangs until cancelled (or `hang` passes), then claims success.
    struct Hang {
        runs: Vec<String>,
        hang: Duration,
        saw_cancel: Arc<AtomicBool>,
    }

    impl Runner for Hang {
        fn prepare(&mut self, spec: &ActionSpec, cancel: &Cancel) -> Job {
            self.runs.push(spec.name.clone());
            if spec.name == "kexec" {
                return Box::new(|_| ok("kexec"));
            }
            let (cancel, hang, saw) = (cancel.clone(), self.hang, self.saw_cancel.clone());
            Box::new(move |_| {
                let started = Instant::now();
                while started.elapsed() < hang {
                    if cancel.is_cancelled() {
                        saw.store(true, Ordering::Relaxed);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Not reported: the loop has given up on it.
                ok("late")
            })
        }
    }

    #[test]
    fn an_action_that_outlives_its_timeout_is_failed_by_the_agent_which_goes_on() {
        let image = ServedAction {
            timeout_seconds: 1,
            ..served(0, "image")
        };
        let (base, fake) = workflow_server(vec![image, served(1, "kexec")], true, |_| false);
        let mut runner = Hang {
            runs: Vec::new(),
            hang: Duration::from_secs(20),
            saw_cancel: Arc::default(),
        };
        let started = Instant::now();
        let (ended, lines) = run_loop(&base, &quick(), &mut runner);
        // The loop did not wait for the hung action; the server's Failed workflow ended it.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(ended, Ended::Over(ref why) if why.contains("Failed")),
            "{ended:?}"
        );
        assert_eq!(runner.runs, ["image"]);
        let fk = fake.lock().unwrap();
        let kept = fk.kept_for(0);
        assert_life(&kept, |e| matches!(e, ReportEvent::Failed { .. }));
        let ReportEvent::Failed { message, .. } = &kept.last().unwrap().event else {
            unreachable!()
        };
        assert!(
            message.contains("action image") && message.contains("timeout of 1 s"),
            "{message}"
        );
        assert!(lines.iter().any(|l| l.contains("stays up")), "{lines:?}");
        // The action was told to stop.
        let asked = Instant::now();
        while !runner.saw_cancel.load(Ordering::Relaxed) {
            assert!(asked.elapsed() < Duration::from_secs(2), "never cancelled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_next_action_waits_a_while_for_a_timed_out_one_that_ignores_its_cancel() {
        // The server never applies reports (so it serves the failed action again after the
        // grace): the second run must wait for the first's thread, up to `stopping_grace`.
        let image = ServedAction {
            timeout_seconds: 1,
            ..served(0, "image")
        };
        let (base, _fake) = workflow_server(vec![image], false, |_| false);
        struct Deaf(Vec<Instant>);
        impl Runner for Deaf {
            fn prepare(&mut self, _: &ActionSpec, _: &Cancel) -> Job {
                self.0.push(Instant::now());
                Box::new(|_| {
                    std::thread::sleep(Duration::from_millis(1800));
                    ok("late")
                })
            }
        }
        let mut runner = Deaf(Vec::new());
        let quiet = Quiet;
        let shipping = Shipping::new(&quiet);
        let token = Token::new("dfb1.first".into());
        let stop = AtomicBool::new(false);
        let cfg = ImagingConfig {
            rerun_grace: Duration::from_millis(50),
            ..quick()
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(2500));
                stop.store(true, Ordering::Relaxed);
            });
            Imaging {
                base: &base,
                token: &token,
                console: &shipping,
                cfg: &cfg,
                stop: &stop,
            }
            .run(&mut runner);
        });
        let runs = &runner.0;
        assert!(runs.len() >= 2, "{runs:?}");
        // Timed out at 1 s, but the thread ran 1.8 s: the re-run waited for it.
        assert!(
            runs[1] - runs[0] >= Duration::from_millis(1800),
            "{:?}",
            runs[1] - runs[0]
        );
        let lines = shipping.tail(100);
        assert!(
            lines.iter().any(|l| l.contains("waiting up to 5 s")),
            "{lines:?}"
        );
    }

    #[test]
    fn after_a_failure_the_loop_keeps_polling_and_runs_the_operators_retry() {
        // Attempt 1's action fails; the server (workflowd not done yet) then has nothing to
        // serve for a few polls, until an operator's retry serves attempt 2.
        #[derive(Default)]
        struct Retry {
            kept: Vec<ActionReport>,
            polls_since_failure: u32,
        }
        let state = Arc::new(Mutex::new(Retry::default()));
        let st = state.clone();
        let base = serve(Arc::new(move |method: &str, path: &str, body: &[u8]| {
            let mut s = st.lock().unwrap();
            match (method, path) {
                ("POST", REPORT_PATH) => {
                    let r: ActionReport = serde_json::from_slice(body).unwrap();
                    if !s
                        .kept
                        .iter()
                        .any(|k| (k.attempt, k.action, k.seq) == (r.attempt, r.action, r.seq))
                    {
                        s.kept.push(r);
                    }
                    (202, Vec::new())
                }
                ("POST", _) => (204, Vec::new()),
                ("GET", WORKFLOW_PATH) => {
                    let ended = |s: &Retry, attempt: u32, action: u32| {
                        s.kept.iter().any(|k| {
                            (k.attempt, k.action) == (attempt, action)
                                && matches!(
                                    k.event,
                                    ReportEvent::Succeeded { .. } | ReportEvent::Failed { .. }
                                )
                        })
                    };
                    let (attempt, action) = if !ended(&s, 1, 0) {
                        (1, Some(served(0, "image")))
                    } else if s.polls_since_failure < 3 {
                        s.polls_since_failure += 1;
                        (1, None)
                    } else if !ended(&s, 2, 0) {
                        (2, Some(served(0, "image")))
                    } else {
                        (2, Some(served(1, "kexec")))
                    };
                    let step = WorkflowStep {
                        workflow_id: WF,
                        attempt,
                        state: WorkflowState::Running,
                        action,
                        poll_after_seconds: 1,
                    };
                    (200, serde_json::to_vec(&step).unwrap())
                }
                _ => (404, Vec::new()),
            }
        }));
        struct FailOnce(Vec<String>);
        impl Runner for FailOnce {
            fn prepare(&mut self, spec: &ActionSpec, _: &Cancel) -> Job {
                self.0.push(spec.name.clone());
                let (name, first) = (spec.name.clone(), self.0.len() == 1);
                Box::new(move |_| {
                    if first {
                        Err(ActionError::Download("connection refused".into()))
                    } else {
                        ok(&name)
                    }
                })
            }
        }
        let mut runner = FailOnce(Vec::new());
        let (ended, lines) = run_loop(&base, &quick(), &mut runner);
        assert_eq!(ended, Ended::Reboot(Reboot::Kexec));
        assert_eq!(runner.0, ["image", "image", "kexec"]);
        assert!(lines.iter().any(|l| l.contains("stays up")), "{lines:?}");
        let s = state.lock().unwrap();
        assert!(s.kept.iter().any(|k| k.attempt == 2
            && k.action == 0
            && matches!(k.event, ReportEvent::Succeeded { .. })));
    }

    #[test]
    fn reports_number_on_from_the_seq_the_server_serves() {
        // The server keeps seqs 0 to 3 of `image` from before this machine rebooted.
        let resumed = ServedAction {
            next_seq: 4,
            ..served(0, "image")
        };
        let (base, fake) = workflow_server(vec![resumed, served(1, "kexec")], true, |_| false);
        let mut runner = Fake2 {
            runs: Vec::new(),
            busy: Duration::ZERO,
            result: ok,
        };
        let (ended, _) = run_loop(&base, &quick(), &mut runner);
        assert_eq!(ended, Ended::Reboot(Reboot::Kexec));
        let fk = fake.lock().unwrap();
        let kept = fk.kept_for(0);
        assert!(matches!(kept[0].event, ReportEvent::Started), "{kept:?}");
        for (i, r) in kept.iter().enumerate() {
            assert_eq!(r.seq, 4 + i as u64, "{kept:?}");
        }
        assert!(matches!(
            kept.last().unwrap().event,
            ReportEvent::Succeeded { .. }
        ));
        assert_life(&fk.kept_for(1), |e| {
            matches!(e, ReportEvent::Succeeded { .. })
        });
    }

    #[test]
    fn an_action_the_server_keeps_serving_is_run_again_after_the_grace_with_new_seqs() {
        // The server never applies reports: it serves action 0 again and again.
        let (base, fake) = workflow_server(vec![served(0, "image")], false, |_| false);
        let mut runner = Fake2 {
            runs: Vec::new(),
            busy: Duration::ZERO,
            result: ok,
        };
        let quiet = Quiet;
        let shipping = Shipping::new(&quiet);
        let token = Token::new("dfb1.first".into());
        let stop = AtomicBool::new(false);
        let cfg = quick();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(900));
                stop.store(true, Ordering::Relaxed);
            });
            let ended = Imaging {
                base: &base,
                token: &token,
                console: &shipping,
                cfg: &cfg,
                stop: &stop,
            }
            .run(&mut runner);
            assert_eq!(ended, Ended::Stopped);
        });
        // Not at every poll (50 ms), but once per grace (300 ms) at most.
        assert!(
            (2..=4).contains(&runner.runs.len()),
            "{:?} runs",
            runner.runs.len()
        );
        let fk = fake.lock().unwrap();
        assert!(fk.polls >= 6, "{} polls", fk.polls);
        let kept = fk.kept_for(0);
        for (i, r) in kept.iter().enumerate() {
            assert_eq!(r.seq, i as u64, "seqs go on across runs: {kept:?}");
        }
        assert_eq!(
            kept.iter()
                .filter(|r| matches!(r.event, ReportEvent::Started))
                .count(),
            runner.runs.len()
        );
    }
}
