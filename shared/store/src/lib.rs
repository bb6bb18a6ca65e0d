//! The SQLite store: Dragonfly's one source of truth, shared by every daemon.
//!
//! One database file (`/var/lib/dragonfly/dragonfly.db` by default) is opened by several
//! processes at once, each as its own user in the `dragonfly` group. That works because of
//! how every connection is set up here ([`db`]): WAL journaling so readers never block the
//! writer, `synchronous=NORMAL`, foreign keys on, a busy timeout, and every write transaction
//! begun `IMMEDIATE` so two writers queue on the lock instead of failing mid-transaction with
//! `SQLITE_BUSY` on upgrade.
//!
//! The schema is versioned ([`mod@migrate`]) and changed in exactly one place, the
//! `dragonfly-migrate` oneshot; daemons only check that the file's version is the one they
//! were built for and refuse anything else.
//!
//! Daemons never write SQL: they call the typed repository functions in [`machines`] and
//! [`auth`]. Rows that two daemons may change carry a `resource_version`, and updates name the
//! version they read ([`StoreError::Conflict`] otherwise), so a lost update is impossible.

pub mod auth;
pub mod db;
mod error;
pub mod leases;
pub mod machines;
pub mod migrate;

pub use db::{Db, open_connection};
pub use error::StoreError;
pub use migrate::{SCHEMA_VERSION, check_schema, migrate};

/// Where the database lives unless configured otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/dragonfly/dragonfly.db";
