//! Which database a [`Db`](crate::Db) is: a schema descriptor per database file.
//!
//! Two files exist: the database every daemon shares ([`Shared`]: machines, leases), and
//! apid's own ([`ApidAuth`]: users, sessions, API tokens; mode 0600, migrated by apid itself,
//! since nothing else may open it). Each is a unit struct implementing [`Schema`] with its own
//! migration list and file mode, and its handles are methods of `Db<ThatSchema>`, so the
//! compiler refuses `auth()` on the shared file and `machines()` on apid's: nothing in how a
//! `Db` is opened, pooled or migrated differs between them.
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
/// their MACs, identity conflicts, DHCP leases, boot sightings and sessions, workflows, the
/// agents' console lines. Its `users`, `sessions` and `api_tokens` tables (from migration
/// 0001) are no longer used: apid moves their rows into [`ApidAuth`] once and empties them.
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
        Migration {
            name: "0004_workflows",
            sql: include_str!("migrations/0004_workflows.sql"),
        },
        Migration {
            name: "0005_agent_console",
            sql: include_str!("migrations/0005_agent_console.sql"),
        },
        Migration {
            name: "0006_bmc",
            sql: include_str!("migrations/0006_bmc.sql"),
        },
        Migration {
            name: "0007_reservations",
            sql: include_str!("migrations/0007_reservations.sql"),
        },
        Migration {
            name: "0008_images",
            sql: include_str!("migrations/0008_images.sql"),
        },
        Migration {
            name: "0009_machine_history",
            sql: include_str!("migrations/0009_machine_history.sql"),
        },
    ];
    // Every daemon's user (group `dragonfly`) writes this file, and SQLite gives the -wal and
    // -shm files the database's mode.
    const FILE_MODE: u32 = 0o660;
}

/// apid's own database (`/var/lib/dragonfly-apid/auth.db` by default): operators, browser
/// sessions and API tokens. Only apid's user can read it, so a bug in a daemon that parses
/// hostile packets (dhcpd, ipxed) cannot read a hash or mint a session.
#[derive(Debug, Clone, Copy)]
pub struct ApidAuth;

impl Schema for ApidAuth {
    const NAME: &'static str = "auth";
}

impl sealed::Sealed for ApidAuth {
    const MIGRATIONS: &'static [Migration] = &[Migration {
        name: "0001_initial",
        sql: include_str!("migrations/auth/0001_initial.sql"),
    }];
    // apid's user alone; its -wal and -shm files get the same mode.
    const FILE_MODE: u32 = 0o600;
}

/// The schema version of the shared database this build reads and writes.
pub const SCHEMA_VERSION: i64 = <Shared as Schema>::VERSION;
