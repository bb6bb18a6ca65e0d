//! The SQLite store: Dragonfly's one source of truth, shared by every daemon.
//!
//! One database file (`/var/lib/dragonfly/dragonfly.db` by default) is opened by several
//! processes at once, each as its own user in the `dragonfly` group. That works because of
//! how every connection is set up here: WAL journaling so readers never block the writer,
//! `synchronous=NORMAL` (and `FULL` for the commit of a write acknowledged to an agent, such as
//! a registration, which must survive power loss), foreign keys on, a busy timeout, and every write transaction begun
//! `IMMEDIATE` so two writers queue on the lock instead of failing mid-transaction with
//! `SQLITE_BUSY` on upgrade.
//!
//! **One way in.** A [`Db`] is opened with [`Db::open`] and gives typed handles per table
//! group — [`Db::machines`], [`Db::leases`], [`Db::boot`], [`Db::templates`],
//! [`Db::workflows`], [`Db::console`], [`Db::bmcs`], and on apid's own file [`AuthDb`]'s `auth()` — whose
//! async methods run on tokio's blocking pool. The SQL library is private to this crate: no
//! public item names a connection, a statement or its error type, and no daemon depends on
//! it, so "no SQL in daemons" is enforced by the compiler. Callers without a runtime use
//! [`BlockingDb`]; a stream of writes that must each be durable before they are answered uses
//! a [`GroupWriter`] (one transaction per batch, a completion per write after the commit).
//!
//! The schema is versioned, and changed in exactly one place: the `dragonfly-migrate`
//! oneshot, through [`migrate_file`]. Daemons only check that the file's version is the one
//! they were built for and refuse anything else. A [`Db`] is typed by its [`Schema`], so the
//! second database file, apid's own ([`AuthDb`]: operators and their credentials, 0600), has
//! its own migrations and handles ([`mod@schema`]); apid creates and migrates that one
//! itself, since no other process may open it. Time is one representation in every table, converted in one module.
//!
//! Rows that two daemons may change carry a `resource_version`, and updates name the version
//! they read ([`StoreError::Conflict`] otherwise), so a lost update is impossible.

pub mod auth;
pub mod bmc;
pub mod boot;
pub mod console;
mod db;
mod error;
pub mod group;
pub mod images;
pub mod leases;
pub mod machines;
mod migrate;
pub mod reservations;
pub mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod time;
pub mod workflows;

pub use auth::AuthDb;
pub use db::{BlockingDb, Db};
pub use error::{SqliteError, StoreError};
pub use group::{GroupConfig, GroupStats, GroupWriter, Rejected};
pub use migrate::{Migrated, migrate_file};
pub use schema::{ApidAuth, SCHEMA_VERSION, Schema, Shared};
