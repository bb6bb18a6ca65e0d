//! What can go wrong, and the exit code each failure gives a script.
//!
//! The codes are part of the interface (documented in `dragonfly --help` and the man page):
//! a script tells "not logged in" from "no such machine" from "apid is down" without reading
//! messages, which are for people and may change.

use std::path::PathBuf;

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation failed (a workflow failed or timed out, a BMC refused, apid erred)
  2  usage error (bad arguments or input file)
  3  not logged in, or the credentials were refused (401, 403)
  4  not found (404)
  5  refused as conflicting or invalid (409, 422, 400)
  6  apid unreachable or busy (connection, TLS, timeout, 429, 503)";

/// A failure of one command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments or an input file cannot be used.
    #[error("{0}")]
    Usage(String),
    /// No credentials for the server, or the file holding them is unsafe.
    #[error("{0}")]
    NotLoggedIn(String),
    /// apid answered with an error.
    #[error("{method} {path}: {status} {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        /// apid's error code (`not_found`, `conflict`, …), when it sent its error body.
        code: Option<String>,
        message: String,
    },
    /// No answer from apid.
    #[error("cannot reach apid at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// apid answered something that is not what its API documents.
    #[error("{what}: unexpected answer from apid: {detail}")]
    Protocol { what: String, detail: String },
    /// The operation was carried out and did not succeed (a failed workflow, a refused power
    /// command).
    #[error("{0}")]
    Failed(String),
    /// A local file could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing to the terminal or a pipe failed (e.g. the reader went away).
    #[error("writing the output")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// The process's exit code for this failure (see [`EXIT_CODES`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Failed(_) | Self::Protocol { .. } | Self::Io { .. } | Self::Output(_) => 1,
            Self::Usage(_) => 2,
            Self::NotLoggedIn(_) => 3,
            Self::Unreachable { .. } => 6,
            Self::Api { status, .. } => match status {
                401 | 403 => 3,
                404 => 4,
                400 | 409 | 422 => 5,
                429 | 502..=504 => 6,
                _ => 1,
            },
        }
    }

    /// Whether this is apid's 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::Output(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> CliError {
        CliError::Api {
            method: "GET".into(),
            path: "/api/machines".into(),
            status,
            code: None,
            message: "x".into(),
        }
    }

    #[test]
    fn statuses_map_to_the_documented_codes() {
        for (status, code) in [
            (401, 3),
            (403, 3),
            (404, 4),
            (409, 5),
            (422, 5),
            (400, 5),
            (429, 6),
            (503, 6),
            (500, 1),
        ] {
            assert_eq!(api(status).exit_code(), code, "status {status}");
        }
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::NotLoggedIn("x".into()).exit_code(), 3);
        assert_eq!(CliError::Failed("x".into()).exit_code(), 1);
    }

    #[test]
    fn every_code_is_documented() {
        for code in 0..=6 {
            assert!(
                EXIT_CODES.contains(&format!("\n  {code}  ")),
                "exit code {code} missing from EXIT_CODES"
            );
        }
    }
}
