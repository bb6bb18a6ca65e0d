//! `dragonfly-apid create-admin`: the only way the first operator account comes to exist.
//!
//! There is no default password and no first-visitor-becomes-admin page: an operator with
//! shell access to the server creates the account, with the password on stdin or in a file
//! (never on the command line, where `ps` and shell history would keep it).
//!
//! The command runs before (and instead of) apid's tokio runtime, after dropping privileges,
//! and writes apid's own database (`[apid] auth_db`, created 0600 if apid never ran, after
//! importing any operators an older release kept in the shared database, as apid would): it
//! goes through the store's `BlockingDb`, which drives the same async `auth()` handle the
//! daemon uses on a small current-thread runtime of its own. No second, synchronous path to
//! the users table exists to drift from the daemon's. Run it as apid's user
//! (`sudo -u dragonfly-apid -g dragonfly`), so the file is apid's.

use std::io::Read;
use std::path::Path;

use dragonfly_store::auth::User;
use dragonfly_store::{BlockingDb, StoreError};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;

/// Why the account was not created.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("username must be 1 to 64 characters of a-z, A-Z, 0-9, '.', '_' or '-'")]
    Username,
    #[error("password must be at least {MIN_PASSWORD_LEN} characters")]
    ShortPassword,
    #[error("reading the password")]
    Read(#[source] std::io::Error),
    #[error("hashing the password")]
    Hash(#[source] crate::error::ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Privileges(#[from] dragonfly_runtime::PrivilegeError),
}

/// `dragonfly-apid create-admin` from `main`: the shared config (for the store's path) and
/// logging, then [`command`]; exit codes as every daemon's.
pub fn main(
    common: &dragonfly_runtime::CommonArgs,
    username: &str,
    password_file: Option<&Path>,
) -> std::process::ExitCode {
    use dragonfly_runtime::cli;
    let config = match cli::load_config::<crate::ApidConfig>(common) {
        std::ops::ControlFlow::Continue(config) => config,
        std::ops::ControlFlow::Break(code) => return code,
    };
    dragonfly_runtime::logging::init(&config.log, "dragonfly-apid");
    match command(
        &config.daemon.auth_db,
        &config.store.path,
        username,
        password_file,
    ) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %cli::Chain(&e), "create-admin failed");
            cli::exit_code_for(&e)
        }
    }
}

/// The whole `create-admin` command: drop privileges, read the password, create the account
/// in apid's database at `auth_db` (importing first from the shared one at `shared`).
pub fn command(
    auth_db: &Path,
    shared: &Path,
    username: &str,
    password_file: Option<&Path>,
) -> Result<User, AdminError> {
    dragonfly_runtime::privileges::lock_down(&[])?;
    let password = read_password(password_file)?;
    let user = create_admin(auth_db, shared, username, &password)?;
    tracing::info!(username = %user.username, "administrator created");
    Ok(user)
}

/// Reads a password: the first line of `file`, or of stdin when no file is given.
pub fn read_password(file: Option<&Path>) -> Result<String, AdminError> {
    let mut text = String::new();
    match file {
        Some(f) => text = std::fs::read_to_string(f).map_err(AdminError::Read)?,
        None => {
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .map_err(AdminError::Read)?;
        }
    }
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// Whether `username` is acceptable: 1 to 64 characters of a-z, A-Z, 0-9, '.', '_' or '-'
/// (safe in logs, URLs and shells).
pub fn valid_username(username: &str) -> bool {
    (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Creates an administrator in apid's database at `auth_db` (created if missing), after
/// importing the operators an older release kept in the shared database at `shared`.
pub fn create_admin(
    auth_db: &Path,
    shared: &Path,
    username: &str,
    password: &str,
) -> Result<User, AdminError> {
    if !valid_username(username) {
        return Err(AdminError::Username);
    }
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AdminError::ShortPassword);
    }
    let hash = crate::auth::hash_password(password).map_err(AdminError::Hash)?;
    let store = BlockingDb::create_or_open_auth(auth_db)?;
    store.block_on(store.db().import_from_shared(shared))?;
    let create = store
        .db()
        .auth()
        .create_user(username, &hash, true, jiff::Timestamp::now());
    Ok(store.block_on(create)?)
}
