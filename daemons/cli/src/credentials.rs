//! Where the client's credentials live: a TOML file only its owner can read.
//!
//! `dragonfly login` writes `$XDG_CONFIG_HOME/dragonfly/credentials.toml` (by default
//! `~/.config/dragonfly/credentials.toml`; `--credentials` or `DRAGONFLY_CREDENTIALS` name
//! another) with mode 0600 in a 0700 directory, replacing it atomically. Like ssh with a
//! private key, the client refuses a credentials file that anyone but its owner can read or
//! write: the token in it is as good as the operator's password until revoked.
//!
//! The file's token is sent only to the file's own URL: `--url` or `DRAGONFLY_URL` naming
//! another server never carries it there ([`Target::resolve`]).

use std::io::Write as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// What `dragonfly login` saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// apid's operators' URL, e.g. `https://dragonfly.example:3000`.
    pub url: String,
    /// The API token (`dft_…`).
    pub token: String,
    /// The token's id, so `dragonfly logout` can revoke it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Who the token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A CA certificate (PEM) that apid's TLS certificate is checked against, besides the
    /// host's trusted CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The default credentials file: `$XDG_CONFIG_HOME/dragonfly/credentials.toml`, else
/// `$HOME/.config/dragonfly/credentials.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("dragonfly").join("credentials.toml"))
}

/// Reads the credentials at `path`; `None` when there is no such file.
///
/// # Errors
/// [`CliError::NotLoggedIn`] when the file is readable or writable by others, or is not a
/// valid credentials file; [`CliError::Io`] when it cannot be read.
pub fn load(path: &Path) -> Result<Option<Credentials>, CliError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CliError::Io {
                what: "reading the credentials file",
                path: path.to_owned(),
                source,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CliError::NotLoggedIn(format!(
            "{} is accessible by others (mode {mode:04o}): its token must stay secret; \
             run `chmod 600 {}` or log in again",
            path.display(),
            path.display()
        )));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(CliError::NotLoggedIn(format!(
            "{} belongs to uid {}, not to you (uid {uid}): refusing a token someone else \
             controls",
            path.display(),
            meta.uid()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        what: "reading the credentials file",
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map(Some).map_err(|e| {
        CliError::NotLoggedIn(format!(
            "{} is not a credentials file ({}): log in again",
            path.display(),
            e.message()
        ))
    })
}

/// Writes `creds` to `path` with mode 0600 (its directory created 0700), atomically: a
/// temporary file beside it, renamed over it.
///
/// # Errors
/// [`CliError::Io`] when the directory or file cannot be written.
pub fn save(path: &Path, creds: &Credentials) -> Result<(), CliError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| CliError::Io { what, path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() && !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating the directory", dir))?;
    }
    let text = toml::to_string(creds)
        .map_err(|e| CliError::Usage(format!("cannot encode the credentials: {e}")))?;
    let tmp = path.with_extension("toml.tmp");
    // A stale temporary file (an earlier write that died) may have any mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("replacing", path))
}

/// Deletes the credentials file; a missing one is not an error.
///
/// # Errors
/// [`CliError::Io`] when it exists and cannot be removed.
pub fn remove(path: &Path) -> Result<(), CliError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CliError::Io {
            what: "removing the credentials file",
            path: path.to_owned(),
            source,
        }),
    }
}

/// The server a command talks to, and with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl Target {
    /// Chooses the URL (`--url`/`DRAGONFLY_URL`, else the file's) and the token
    /// (`DRAGONFLY_TOKEN`, else the file's when the URL is the file's own).
    ///
    /// # Errors
    /// [`CliError::NotLoggedIn`] when no URL is known.
    pub fn resolve(
        url: Option<&str>,
        env_token: Option<&str>,
        ca_file: Option<&Path>,
        file: Option<&Credentials>,
    ) -> Result<Self, CliError> {
        let url = match (url, file) {
            (Some(u), _) => normalize_url(u)?,
            (None, Some(f)) => normalize_url(&f.url)?,
            (None, None) => {
                return Err(CliError::NotLoggedIn(
                    "no apid URL: run `dragonfly login URL`, or set DRAGONFLY_URL and \
                     DRAGONFLY_TOKEN"
                        .into(),
                ));
            }
        };
        let same_server = file.filter(|f| normalize_url(&f.url).is_ok_and(|u| u == url));
        let token = env_token
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .or_else(|| same_server.map(|f| f.token.clone()));
        let ca_file = ca_file
            .map(Path::to_owned)
            .or_else(|| same_server.and_then(|f| f.ca_file.clone()));
        Ok(Self {
            url,
            token,
            ca_file,
        })
    }
}

/// `url` without a trailing slash, checked to be http(s) with a host and no path, query or
/// credentials.
///
/// # Errors
/// [`CliError::Usage`] naming what is wrong.
pub fn normalize_url(url: &str) -> Result<String, CliError> {
    let trimmed = url.trim().trim_end_matches('/');
    let bad = |why: &str| CliError::Usage(format!("apid URL {url:?}: {why}"));
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    if rest.is_empty() {
        return Err(bad("has no host"));
    }
    if rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad(
            "must be scheme://host[:port] only (no path, query or user)",
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(url: &str) -> Credentials {
        Credentials {
            url: url.into(),
            token: "dft_secret".into(),
            token_id: Some("0193a5c0-0000-7000-8000-000000000001".into()),
            username: Some("admin".into()),
            ca_file: None,
        }
    }

    #[test]
    fn saved_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/credentials.toml");
        let c = creds("http://127.0.0.1:3000");
        save(&path, &c).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(load(&path).unwrap(), Some(c.clone()));
        // Saved again (a second login): replaced, still private.
        save(&path, &creds("http://10.0.0.1:3000")).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().url, "http://10.0.0.1:3000");
        remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
        remove(&path).unwrap();
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        save(&path, &creds("http://127.0.0.1:3000")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        std::fs::write(&path, "url = 3\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.to_string().contains("not a credentials file"), "{e}");
    }

    #[test]
    fn the_file_token_goes_only_to_its_own_server() {
        let file = creds("http://127.0.0.1:3000/");
        let t = Target::resolve(None, None, None, Some(&file)).unwrap();
        assert_eq!(t.url, "http://127.0.0.1:3000");
        assert_eq!(t.token.as_deref(), Some("dft_secret"));
        let t = Target::resolve(Some("http://127.0.0.1:3000"), None, None, Some(&file)).unwrap();
        assert_eq!(t.token.as_deref(), Some("dft_secret"));
        let other = Target::resolve(Some("http://evil:3000"), None, None, Some(&file)).unwrap();
        assert_eq!(other.token, None, "the saved token must not go elsewhere");
        let env = Target::resolve(Some("http://x:1"), Some("dft_env"), None, Some(&file)).unwrap();
        assert_eq!(env.token.as_deref(), Some("dft_env"));
        assert_eq!(
            Target::resolve(None, None, None, None)
                .unwrap_err()
                .exit_code(),
            3
        );
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            normalize_url("https://h.example:3000/").unwrap(),
            "https://h.example:3000"
        );
        for bad in [
            "h:3000",
            "ftp://h",
            "http://",
            "http://h/api",
            "http://u@h",
            "http://h?x",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
    }
}
