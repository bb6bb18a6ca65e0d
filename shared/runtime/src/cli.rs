//! Command-line arguments and exit codes shared by every daemon.
//!
//! Every daemon accepts `--config PATH` and `--check-config`, and every daemon exits with the same
//! codes, so units and packaging scripts can treat them alike:
//!
//! | code | meaning                                                                       |
//! |------|-------------------------------------------------------------------------------|
//! | 0    | success (or `--check-config` found the file valid)                            |
//! | 1    | any other failure: a socket could not be bound, the store is broken, …       |
//! | 2    | usage or configuration error (clap already uses 2 for bad arguments)         |
//!
//! A daemon that failed to start must never exit 0, or `Restart=on-failure` never fires.
//! `ExecStartPre=dragonfly-x --check-config` stops a bad config before the old process is gone.
//!
//! This module prints only before logging exists (config errors and `--check-config`), and never
//! prints configuration values.

use std::error::Error as StdError;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, ConfigError, DEFAULT_CONFIG_PATH, DaemonConfig, Loaded};

/// Exit code for success.
pub const EXIT_SUCCESS: u8 = 0;
/// Exit code for any failure that is not a usage or configuration error.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for usage and configuration errors.
pub const EXIT_USAGE: u8 = 2;

/// The arguments every daemon shares; `#[command(flatten)]` them into the daemon's own parser.
///
/// ```
/// use clap::Parser;
///
/// #[derive(Debug, Parser)]
/// #[command(version, about = "Dragonfly TFTP server")]
/// struct Args {
///     #[command(flatten)]
///     common: dragonfly_runtime::cli::CommonArgs,
/// }
///
/// let args = Args::parse_from(["dragonfly-tftpd", "--config", "/tmp/df.toml", "--check-config"]);
/// assert!(args.common.check_config);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CommonArgs {
    /// Configuration file shared by all Dragonfly daemons.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Validate the configuration file, report the result and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,
}

/// The exit code for an error that ended the daemon: 2 if a [`ConfigError`] is anywhere in its
/// source chain, 1 otherwise. Works with `anyhow::Error` via `err.as_ref()`.
pub fn exit_code_for(err: &(dyn StdError + 'static)) -> ExitCode {
    ExitCode::from(exit_status_for(err))
}

fn exit_status_for(err: &(dyn StdError + 'static)) -> u8 {
    let mut current = Some(err);
    while let Some(error) = current {
        if error.is::<ConfigError>() {
            return EXIT_USAGE;
        }
        current = error.source();
    }
    EXIT_FAILURE
}

/// Load the configuration named by `args` and handle `--check-config`.
///
/// Returns `Continue(config)` when the daemon should start, or `Break(code)` when `main` should
/// return `code` now: after printing `config OK: <path>` to stdout (exit 0) for
/// `--check-config`, or the error to stderr (exit 2). Logging is not set up yet at this point
/// (its level comes from the file), which is why this prints.
pub fn load_config<C: DaemonConfig>(args: &CommonArgs) -> ControlFlow<ExitCode, Loaded<C>> {
    let result = config::load::<C>(&args.config);
    match report(
        result,
        args.check_config,
        &mut io::stdout(),
        &mut io::stderr(),
    ) {
        ControlFlow::Continue(loaded) => ControlFlow::Continue(loaded),
        ControlFlow::Break(code) => ControlFlow::Break(ExitCode::from(code)),
    }
}

fn report<C>(
    result: Result<Loaded<C>, ConfigError>,
    check_only: bool,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> ControlFlow<u8, Loaded<C>> {
    // A failed write to stdout/stderr cannot be reported anywhere; the exit code still is.
    match result {
        Err(err) => {
            let _ = writeln!(stderr, "error: {}", Chain(&err));
            ControlFlow::Break(EXIT_USAGE)
        }
        Ok(loaded) if check_only => {
            let _ = writeln!(stdout, "config OK: {}", loaded.path.display());
            ControlFlow::Break(EXIT_SUCCESS)
        }
        Ok(loaded) => ControlFlow::Continue(loaded),
    }
}

/// Displays an error with every cause (`error = %Chain(&e)`); defined in `dragonfly_core`, the
/// lowest crate, so the store and the bus print errors the same way.
pub use dragonfly_core::Chain;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;
    use crate::config::{Invalid, parse_str};

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawT {}

    #[derive(Debug, PartialEq)]
    struct T;

    impl DaemonConfig for T {
        const SECTION: &'static str = "tftpd";
        type Raw = RawT;
        fn validate(_: RawT) -> Result<Self, Invalid> {
            Ok(T)
        }
    }

    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn run_report(text: &str, check_only: bool) -> (ControlFlow<u8, Loaded<T>>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = parse_str::<T>(Path::new("/x/df.toml"), text);
        let flow = report(result, check_only, &mut out, &mut err);
        let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
        (flow, text(out), text(err))
    }

    #[test]
    fn args_default_to_the_shared_file() {
        let args = Args::parse_from(["d"]);
        assert_eq!(args.common.config, Path::new(DEFAULT_CONFIG_PATH));
        assert!(!args.common.check_config);
        let args = Args::parse_from(["d", "--config", "/tmp/a.toml", "--check-config"]);
        assert_eq!(args.common.config, Path::new("/tmp/a.toml"));
        assert!(args.common.check_config);
    }

    #[test]
    fn unknown_flag_is_a_usage_error_with_code_2() {
        let err = Args::try_parse_from(["d", "--frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn check_config_ok_prints_path_and_exits_0() {
        let (flow, out, err) = run_report("[tftpd]\n", true);
        assert_eq!(flow, ControlFlow::Break(EXIT_SUCCESS));
        assert_eq!(out, "config OK: /x/df.toml\n");
        assert_eq!(err, "");
    }

    #[test]
    fn bad_config_prints_error_and_exits_2_with_or_without_check() {
        for check in [true, false] {
            let (flow, out, err) = run_report("[tftpd]\nport = 69\n", check);
            assert_eq!(flow, ControlFlow::Break(EXIT_USAGE));
            assert_eq!(out, "");
            assert!(
                err.starts_with("error: /x/df.toml:2:1: tftpd.port: "),
                "{err}"
            );
        }
    }

    #[test]
    fn valid_config_without_check_continues() {
        let (flow, out, err) = run_report("", false);
        assert!(matches!(flow, ControlFlow::Continue(_)));
        assert_eq!((out.as_str(), err.as_str()), ("", ""));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Outer(#[source] ConfigError);

    #[test]
    fn exit_codes_follow_the_convention() {
        let config = parse_str::<T>(Path::new("/x"), "[nope]\n").unwrap_err();
        assert_eq!(exit_status_for(&config), EXIT_USAGE);
        let wrapped = Outer(parse_str::<T>(Path::new("/x"), "[nope]\n").unwrap_err());
        assert_eq!(exit_status_for(&wrapped), EXIT_USAGE);
        let other = io::Error::other("disk on fire");
        assert_eq!(exit_status_for(&other), EXIT_FAILURE);
    }

    #[test]
    fn chain_prints_every_cause_once() {
        let err = Outer(parse_str::<T>(Path::new("/x"), "[store]\npath = \"rel\"\n").unwrap_err());
        assert_eq!(
            Chain(&err).to_string(),
            "starting: /x: store.path: must be an absolute path, got \"rel\""
        );
    }
}
