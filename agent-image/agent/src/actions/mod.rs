//! The agent's native actions: what turns a blank disk into an installed OS.
//!
//! [`run`] is the one entry point: the imaging loop (fetch the workflow's actions from apid,
//! report) calls it once per [`ActionSpec`], in order, with a [`Progress`] that forwards
//! start, progress and end to apid. Every action is blocking, uses plain threads, and is safe
//! to run again after a failure or a reboot (a partition table is rewritten whole, an image
//! is rewritten whole, a file is replaced atomically).
//!
//! What an action must never do: reboot the machine itself (kexec returns an [`Outcome`]
//! whose [`Outcome::reboot`] the loop performs *after* apid has acknowledged the success, so a
//! completion report is never lost to the jump), run a shell (tools run with argument vectors),
//! hold an image in memory or on a temporary file, or send the boot token anywhere but apid.

pub mod disk;
pub mod image2disk;
pub mod kexec;
pub mod partition;
pub mod writefile;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dragonfly_core::template::{Action, ActionSpec};

/// Where the action's environment lives: the real `/sys` and `/dev` on a machine, a fixture in
/// tests.
#[derive(Debug, Clone)]
pub struct Context {
    pub sys: PathBuf,
    pub dev: PathBuf,
    /// How long to wait for partition device nodes after a table is re-read.
    pub settle: Duration,
    /// Per-read timeout of HTTP downloads.
    pub http_timeout: Duration,
    /// Set when the imaging loop has stopped waiting for the action (its timeout passed).
    pub cancel: Cancel,
    /// Where `https://` downloads find their trust anchors: PEM files, or directories of them
    /// (missing ones are skipped). See [`crate::http::tls_config`].
    pub ca_files: Vec<PathBuf>,
    /// The agent's boot token, for downloads that must present it (library images).
    pub token: Option<crate::token::Token>,
}

/// The CA files of the agent's initramfs: Debian's `ca-certificates` bundle (public image
/// servers) and a directory for a site's own CAs.
pub const CA_FILES: [&str; 2] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/dragonfly/ca.d"];

/// Asks a running action to stop: set by the imaging loop when the action's time is up, read
/// by the actions where they can stop (between image2disk's buffers and download reads).
/// An action blocked in the kernel (a `mount` of a dead disk) cannot see it: its thread is
/// left behind, and ends if the kernel ever returns.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Context {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            dev: "/dev".into(),
            settle: Duration::from_secs(10),
            http_timeout: Duration::from_secs(30),
            cancel: Cancel::default(),
            ca_files: CA_FILES.iter().map(PathBuf::from).collect(),
            token: None,
        }
    }
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Bytes done (for image2disk: decompressed bytes written or skipped).
    pub done: u64,
    /// Bytes in all, when known.
    pub total: Option<u64>,
    /// Percent done, when it can be known (image2disk: compressed bytes downloaded of the
    /// `Content-Length`, since the decompressed size is only known at the end).
    pub percent: Option<u8>,
    /// Average rate since the action started.
    pub bytes_per_sec: u64,
    pub message: String,
}

/// `part` of `whole` in percent, 0 to 100.
pub fn percent(part: u64, whole: u64) -> Option<u8> {
    (whole > 0)
        .then(|| u8::try_from((u128::from(part) * 100 / u128::from(whole)).min(100)).unwrap_or(100))
}

/// Receives an action's life: `start`, then `progress` (image2disk: at least every 2 s), then
/// `end` exactly once.
pub trait Progress {
    fn start(&mut self, action: &str);
    fn progress(&mut self, action: &str, report: &Report);
    fn end(&mut self, action: &str, result: Result<&Outcome, &ActionError>);
}

/// A [`Progress`] that only prints, for tools and tests.
#[derive(Debug, Default)]
pub struct Print;

impl Progress for Print {
    #[allow(clippy::print_stderr, reason = "a console tool's progress")]
    fn start(&mut self, action: &str) {
        eprintln!("{action}: started");
    }
    #[allow(clippy::print_stderr, reason = "a console tool's progress")]
    fn progress(&mut self, action: &str, r: &Report) {
        eprintln!(
            "{action}: {} MiB{} at {} MiB/s {}",
            r.done >> 20,
            r.percent.map(|p| format!(" ({p}%)")).unwrap_or_default(),
            r.bytes_per_sec >> 20,
            r.message
        );
    }
    #[allow(clippy::print_stderr, reason = "a console tool's progress")]
    fn end(&mut self, action: &str, result: Result<&Outcome, &ActionError>) {
        match result {
            Ok(o) => eprintln!("{action}: done: {}", o.message),
            Err(e) => eprintln!("{action}: failed: {}", dragonfly_core::Chain(e)),
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// One line for the operator (what was written where, how fast).
    pub message: String,
    /// Bytes the action moved, when it moves any.
    pub bytes: Option<u64>,
    /// What the imaging loop must do once this success is acknowledged (kexec only).
    pub reboot: Option<kexec::Reboot>,
}

impl Outcome {
    fn said(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            bytes: None,
            reboot: None,
        }
    }
}

/// Why an action failed; the Display is what the operator reads in the workflow's status.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("disk selection")]
    Disk(#[from] disk::DiskError),
    #[error("{0}")]
    Layout(#[from] partition::LayoutError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Download(String),
    /// An action that is not the agent's to run (the server never serves one).
    #[error("action type {0} is completed by the installed OS, not by the agent")]
    NotForAgent(&'static str),
    /// `at`: the image bytes decompressed before the error (the stream is bad about there).
    #[error("decompressing the image ({kind}) failed after {at} bytes of image")]
    Decompress {
        kind: &'static str,
        at: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{algorithm} mismatch: the template expects {expected}, the image is {actual}")]
    Checksum {
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error(
        "the image does not fit: it reached byte {image} of the disk {disk}, which has {size} bytes"
    )]
    TooLarge {
        image: u64,
        disk: PathBuf,
        size: u64,
    },
    #[error(
        "{device} has no {filesystem} filesystem the kernel can mount (blank, or formatted otherwise?)"
    )]
    NoFilesystem {
        device: PathBuf,
        filesystem: &'static str,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("partition table")]
    Gpt(#[from] gptman::Error),
    /// The imaging loop's verdict on an action that outlived its served timeout.
    #[error(
        "action {name} did not finish within its timeout of {seconds} s: the agent stopped \
         waiting for it"
    )]
    TimedOut { name: String, seconds: u32 },
    /// How a cancelled action ends (its report was already sent as [`ActionError::TimedOut`]).
    #[error("stopped: the action's time was up")]
    Cancelled,
}

impl ActionError {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

/// Runs one action, telling `progress` its start, progress and end.
pub fn run(
    spec: &ActionSpec,
    ctx: &Context,
    progress: &mut dyn Progress,
) -> Result<Outcome, ActionError> {
    let name = spec.name.as_str();
    progress.start(name);
    let started = Instant::now();
    let result = {
        let mut tick = |r: &Report| progress.progress(name, r);
        match &spec.action {
            Action::Partition {
                disk,
                table,
                partitions,
            } => partition::run(ctx, disk, *table, partitions),
            Action::Image2disk {
                url,
                image,
                authenticate,
                disk,
                sha256,
                sha512,
                compression,
            } => {
                let expected = match (sha256, sha512) {
                    (Some(s), _) => Some(image2disk::Expected::Sha256(s.clone())),
                    (None, Some(s)) => Some(image2disk::Expected::Sha512(s.clone())),
                    (None, None) => None,
                };
                if let Some(name) = image {
                    // apid resolves every name when it creates a workflow.
                    return Err(ActionError::Download(format!(
                        "image {name:?} was not resolved to a URL by the server"
                    )));
                }
                let target = disk::resolve(ctx, disk)?;
                image2disk::run(
                    ctx,
                    &image2disk::Job {
                        url: url.clone(),
                        authenticate: *authenticate,
                        disk: target,
                        expected,
                        compression: *compression,
                    },
                    &mut tick,
                )
            }
            Action::Writefile {
                device,
                filesystem,
                path,
                contents,
                url,
                mode,
                uid,
                gid,
            } => {
                let dev = disk::resolve_device(ctx, device)?;
                let source = match (contents, url) {
                    (Some(c), _) => writefile::Source::Inline(c.as_bytes()),
                    (None, Some(u)) => writefile::Source::Url(u),
                    (None, None) => writefile::Source::Inline(b""),
                };
                writefile::run(
                    ctx,
                    &dev,
                    *filesystem,
                    path,
                    source,
                    writefile::Owner {
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    },
                )
            }
            Action::Kexec {
                device,
                filesystem,
                kernel,
                initrd,
                cmdline,
            } => {
                let dev = disk::resolve_device(ctx, device)?;
                kexec::run(&dev, *filesystem, kernel, initrd.as_deref(), cmdline)
            }
            Action::Cloudinit { .. } => Err(ActionError::NotForAgent("cloudinit")),
        }
    };
    let result = result.map(|mut o| {
        if !o.message.is_empty() {
            o.message = format!(
                "{} (in {:.1} s)",
                o.message,
                started.elapsed().as_secs_f64()
            );
        }
        o
    });
    progress.end(name, result.as_ref());
    result
}
