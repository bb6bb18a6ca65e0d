//! Secrets (NATS credentials, BMC passwords, signing keys), read from files only.
//!
//! Under systemd a unit says `LoadCredential=nats.creds:/etc/dragonfly/nats.creds`; systemd
//! copies the file into a private, read-only `$CREDENTIALS_DIRECTORY` only this service can
//! read, even after it dropped privileges. Outside systemd the config names a fallback path.
//!
//! A secret is never taken from the command line (visible in `ps`) or from an environment value
//! (visible in `/proc/<pid>/environ`, inherited by children, dumped by crash reporters), and a
//! file that every local user can read is refused rather than trusted.
//!
//! This module must never put a secret's bytes into an error, a log line or a `Debug` string:
//! [`Secret`] prints as `Secret([redacted])`, and errors carry only paths and modes.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Secret bytes. Printing shows `Secret([redacted])`; the bytes are overwritten with zeros when
/// dropped (best effort: earlier copies made by the allocator or the caller are not reached).
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap bytes that are already in memory (e.g. in tests).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Keep the borrow short and never log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for byte in &mut self.0 {
            *byte = 0;
        }
        // Keep the compiler from deleting the stores above as dead (it may see that the buffer is
        // freed right after). Not a guarantee, but no `unsafe` and no extra crate.
        std::hint::black_box(&mut self.0);
    }
}

/// Why a credential could not be loaded. Never contains secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The name would escape the credentials directory.
    #[error("invalid credential name {name:?}: must be a plain file name")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// Neither systemd nor the config provides it.
    #[error(
        "credential {name:?} not found (looked in: {}); add LoadCredential={name}:PATH to the unit \
         or configure a file path",
        display_paths(.tried)
    )]
    NotFound {
        /// The name.
        name: String,
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The file is readable by every local user.
    #[error(
        "{} is readable by other users (mode {mode:04o}); refusing to use it as a secret: \
         run `chmod o-rwx` on it, or pass it with LoadCredential=",
        path.display()
    )]
    WorldReadable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Reading failed.
    #[error("reading credential file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere: no $CREDENTIALS_DIRECTORY and no configured path".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Load credential `name` from `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), falling back
/// to the configured `fallback` path when systemd does not provide it.
pub fn load_credential(name: &str, fallback: Option<&Path>) -> Result<Secret, CredentialError> {
    let directory = std::env::var_os("CREDENTIALS_DIRECTORY");
    load_credential_from(name, directory.as_deref(), fallback)
}

/// [`load_credential`] with the value of `$CREDENTIALS_DIRECTORY` passed in, for tests. The
/// value is a directory *path*; the secret itself is never read from the environment.
pub fn load_credential_from(
    name: &str,
    credentials_directory: Option<&OsStr>,
    fallback: Option<&Path>,
) -> Result<Secret, CredentialError> {
    let tried = candidates(name, credentials_directory, fallback)?;
    for path in &tried {
        match read_private(path) {
            Err(CredentialError::Read { source, .. })
                if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
    }
    Err(CredentialError::NotFound {
        name: name.to_owned(),
        tried,
    })
}

/// Where credential `name` is (as [`load_credential`] finds it, checked private the same
/// way), for a library that insists on reading the file itself, such as a TLS client key
/// given to the NATS client by path.
pub fn credential_path(name: &str, fallback: Option<&Path>) -> Result<PathBuf, CredentialError> {
    let directory = std::env::var_os("CREDENTIALS_DIRECTORY");
    let tried = candidates(name, directory.as_deref(), fallback)?;
    for path in &tried {
        match read_private(path) {
            Err(CredentialError::Read { source, .. })
                if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(_) => return Ok(path.clone()),
        }
    }
    Err(CredentialError::NotFound {
        name: name.to_owned(),
        tried,
    })
}

/// Where to look, in order. Pure.
fn candidates(
    name: &str,
    credentials_directory: Option<&OsStr>,
    fallback: Option<&Path>,
) -> Result<Vec<PathBuf>, CredentialError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(CredentialError::InvalidName {
            name: name.to_owned(),
        });
    }
    let systemd = credentials_directory
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name));
    Ok(systemd
        .into_iter()
        .chain(fallback.map(Path::to_owned))
        .collect())
}

fn read_private(path: &Path) -> Result<Secret, CredentialError> {
    let read_error = |source| CredentialError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    // Check the opened file, not the path, so a swapped file cannot slip in between.
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(CredentialError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(CredentialError::WorldReadable {
            path: path.to_owned(),
            mode,
        });
    }
    // Size the buffer up front so it is not reallocated (leaving copies behind) while reading.
    let capacity = usize::try_from(metadata.len())
        .unwrap_or(0)
        .saturating_add(1);
    let mut bytes = Secret(Vec::with_capacity(capacity));
    file.read_to_end(&mut bytes.0).map_err(read_error)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn secret_never_prints_its_bytes() {
        let secret = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(format!("{secret}"), "Secret([redacted])");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret([redacted]))");
        assert_eq!(secret.expose(), b"hunter2");
    }

    #[test]
    fn systemd_directory_wins() {
        let creds = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        write(creds.path(), "nats.creds", b"from-systemd", 0o400);
        let fallback = write(other.path(), "nats.creds", b"from-config", 0o600);
        let secret = load_credential_from(
            "nats.creds",
            Some(creds.path().as_os_str()),
            Some(&fallback),
        )
        .unwrap();
        assert_eq!(secret.expose(), b"from-systemd");
    }

    #[test]
    fn fallback_is_used_when_systemd_does_not_provide_it() {
        let creds = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let fallback = write(other.path(), "bmc.pw", b"from-config", 0o640);
        let dir = Some(creds.path().as_os_str());
        assert_eq!(
            load_credential_from("bmc.pw", dir, Some(&fallback))
                .unwrap()
                .expose(),
            b"from-config"
        );
        assert_eq!(
            load_credential_from("bmc.pw", None, Some(&fallback))
                .unwrap()
                .expose(),
            b"from-config"
        );
    }

    #[test]
    fn missing_everywhere_lists_what_was_tried() {
        let creds = tempfile::tempdir().unwrap();
        let fallback = creds.path().join("nope");
        let err =
            load_credential_from("k", Some(creds.path().as_os_str()), Some(&fallback)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("credential \"k\" not found (looked in: "),
            "{text}"
        );
        assert!(text.contains(&fallback.display().to_string()), "{text}");
        let err = load_credential_from("k", None, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("no $CREDENTIALS_DIRECTORY and no configured path")
        );
    }

    #[test]
    fn world_readable_file_is_refused_without_leaking_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "token", b"hunter2", 0o644);
        let err = load_credential_from("token", None, Some(&path)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(
            err,
            CredentialError::WorldReadable { mode: 0o644, .. }
        ));
        assert!(
            text.contains("readable by other users (mode 0644)"),
            "{text}"
        );
        assert!(!text.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn group_readable_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "token", b"s", 0o640);
        assert!(load_credential_from("token", None, Some(&path)).is_ok());
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        for bad in ["", ".", "..", "../etc/shadow", "a/b"] {
            let err = candidates(bad, Some(OsStr::new("/run/creds")), None).unwrap_err();
            assert!(matches!(err, CredentialError::InvalidName { .. }), "{bad}");
        }
    }

    #[test]
    fn candidates_are_ordered_systemd_then_config() {
        let found = candidates("x", Some(OsStr::new("/run/c")), Some(Path::new("/etc/x"))).unwrap();
        assert_eq!(found, [PathBuf::from("/run/c/x"), PathBuf::from("/etc/x")]);
        let found = candidates("x", Some(OsStr::new("")), None).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn directories_are_not_secrets() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let err = load_credential_from("x", None, Some(dir.path())).unwrap_err();
        assert!(matches!(err, CredentialError::NotAFile { .. }), "{err}");
    }
}
