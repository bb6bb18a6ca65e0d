//! Which database a [`Db`](crate::Db) is: a schema descriptor per database file.
//!
//! Today every table lives in one file, the database every daemon shares ([`Shared`]). The next
//! issue moves users, sessions and API tokens into a file only apid can read (mode 0600, its
//! own migrations, applied by apid). A second database is then a second descriptor — a unit
//! struct implementing [`Schema`] with its own migration list and file mode — and its handles
//! are methods of `Db<ThatSchema>`, so the compiler refuses `auth()` on the shared file and
//! `machines()` on apid's: nothing in how a `Db` is opened, pooled or migrated changes.
//!
//! The trait is sealed: a schema, like every other piece of SQL, is defined in this crate only.

use crate::migrate::Migration;

/// A database file's schema: its migrations, its version, its mode. Sealed (see the module
/// documentation); implemented by [`Shared`].
pub trait Schema: sealed::Sealed + Send + Sync + 'static {
    /// For messages and logs (`"shared"`).
    const NAME: &'static str;
    /// The version this build reads and writes: the number of its migrations.
    const VERSION: i64 = Self::MIGRATIONS.len() as i64;
}

pub(crate) mod sealed {
    /// What only this crate may define about a schema.
    pub trait Sealed {
        /// The embedded migrations, in order: migration `n` (1-based) takes the file from
        /// version `n-1` to `n`. Append-only: a released one is never edited, because databases
        /// in the field have already run it.
        const MIGRATIONS: &'static [super::Migration];
        /// The mode a new file is given (and its `-wal`/`-shm` files inherit).
        const FILE_MODE: u32;
    }
}

/// The database every daemon shares (`/var/lib/dragonfly/dragonfly.db` by default): machines,
/// their MACs, identity conflicts, DHCP leases, boot sightings and sessions, and — until they move to apid's own file — users, sessions and API
/// tokens.
#[derive(Debug, Clone, Copy)]
pub struct Shared;

impl Schema for Shared {
    const NAME: &'static str = "shared";
}

impl sealed::Sealed for Shared {
    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            name: "0001_initial",
            sql: include_str!("migrations/0001_initial.sql"),
        },
        Migration {
            name: "0002_dhcp",
            sql: include_str!("migrations/0002_dhcp.sql"),
        },
        Migration {
            name: "0003_identity",
            sql: include_str!("migrations/0003_identity.sql"),
        },
    ];
    // Every daemon's user (group `dragonfly`) writes this file, and SQLite gives the -wal and
    // -shm files the database's mode.
    const FILE_MODE: u32 = 0o660;
}

/// The schema version of the shared database this build reads and writes.
pub const SCHEMA_VERSION: i64 = <Shared as Schema>::VERSION;
