//! Dropping privileges before the daemon does any real work.
//!
//! Dragonfly daemons parse untrusted network input (DHCP, TFTP, HTTP from machines being
//! provisioned), so they run as an unprivileged user (`User=` in the unit) with only the
//! capabilities they name — typically none, since systemd passes privileged ports in as sockets.
//! [`lock_down`] makes that a guarantee rather than a unit-file convention:
//!
//! * it refuses to run as root (uid or euid 0);
//! * it sets `PR_SET_NO_NEW_PRIVS`, so no later `execve` can gain privileges;
//! * it drops every capability not in `keep` from the effective, permitted, inheritable and
//!   ambient sets, and from the bounding set when we hold `CAP_SETPCAP` (otherwise the bounding
//!   set is left alone, noted at debug level).
//!
//! Capabilities and `no_new_privs` are per *thread*: threads started later inherit them, threads
//! already running do not. So `lock_down` must run in `main` before the tokio runtime (or any
//! other thread) exists, and it refuses to run when it can see more than one thread.
//!
//! This module must never raise a capability that was not already held, and never be called
//! from inside the runtime.

use std::fmt;

use caps::{CapSet, Capability, CapsHashSet};
use dragonfly_core::Chain;

/// Why privileges could not be locked down. Every variant means "do not start".
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Running as root.
    #[error(
        "refusing to run as root (uid {uid}, euid {euid}): start it under systemd with User=, \
         or with setpriv/runuser"
    )]
    Root {
        /// Real uid.
        uid: u32,
        /// Effective uid.
        euid: u32,
    },
    /// Called after other threads were started.
    #[error(
        "lock_down must run before any other thread starts (capabilities are per-thread), \
         but this process already has {threads} threads"
    )]
    Threads {
        /// How many threads were found.
        threads: usize,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("setting PR_SET_NO_NEW_PRIVS")]
    NoNewPrivs(#[source] nix::Error),
    /// Reading a capability set failed.
    #[error("reading the {set} capability set")]
    Read {
        /// Which set.
        set: &'static str,
        /// What the caps crate said.
        #[source]
        source: caps::errors::CapsError,
    },
    /// Changing a capability set failed.
    #[error("dropping capabilities from the {set} set")]
    Drop {
        /// Which set.
        set: &'static str,
        /// What the caps crate said.
        #[source]
        source: caps::errors::CapsError,
    },
    /// A capability survived dropping (should be impossible; checked anyway).
    #[error("{capability} is still in the {set} set after dropping it")]
    StillHeld {
        /// Which set.
        set: &'static str,
        /// The capability.
        capability: Capability,
    },
}

/// A snapshot of the calling thread's capability state, for tests and start-up logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilitySets {
    /// Capabilities in use now.
    pub effective: CapsHashSet,
    /// Capabilities that may be made effective.
    pub permitted: CapsHashSet,
    /// Capabilities preserved across `execve` for privileged programs.
    pub inheritable: CapsHashSet,
    /// Capabilities preserved across `execve` for any program.
    pub ambient: CapsHashSet,
    /// The upper bound for this thread and its descendants.
    pub bounding: CapsHashSet,
    /// Whether `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
}

impl fmt::Display for CapabilitySets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &CapsHashSet| {
            let mut names: Vec<_> = set.iter().collect();
            names.sort_by_key(|c| c.index());
            names
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "effective=[{}] permitted=[{}] inheritable=[{}] ambient=[{}] bounding={} caps \
             no_new_privs={}",
            list(&self.effective),
            list(&self.permitted),
            list(&self.inheritable),
            list(&self.ambient),
            self.bounding.len(),
            self.no_new_privs,
        )
    }
}

fn set_name(set: CapSet) -> &'static str {
    match set {
        CapSet::Ambient => "ambient",
        CapSet::Bounding => "bounding",
        CapSet::Effective => "effective",
        CapSet::Inheritable => "inheritable",
        CapSet::Permitted => "permitted",
    }
}

fn read(set: CapSet) -> Result<CapsHashSet, PrivilegeError> {
    caps::read(None, set).map_err(|source| PrivilegeError::Read {
        set: set_name(set),
        source,
    })
}

/// The calling thread's capabilities and `no_new_privs` flag.
pub fn current_capabilities() -> Result<CapabilitySets, PrivilegeError> {
    Ok(CapabilitySets {
        effective: read(CapSet::Effective)?,
        permitted: read(CapSet::Permitted)?,
        inheritable: read(CapSet::Inheritable)?,
        ambient: read(CapSet::Ambient)?,
        bounding: read(CapSet::Bounding)?,
        no_new_privs: nix::sys::prctl::get_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?,
    })
}

/// Refuse root, set `no_new_privs` and drop every capability not in `keep`. Call from `main`,
/// single-threaded, after sockets are bound and before the tokio runtime is built.
///
/// A capability in `keep` that is not held is not an error (it is logged at warn): the daemon
/// will find out when it needs it, and a socket-activated daemon often does not.
pub fn lock_down(keep: &[Capability]) -> Result<(), PrivilegeError> {
    refuse_root(
        nix::unistd::getuid().as_raw(),
        nix::unistd::geteuid().as_raw(),
    )?;
    if let Some(threads) = thread_count().filter(|&n| n > 1) {
        return Err(PrivilegeError::Threads { threads });
    }
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;

    let keep: CapsHashSet = keep.iter().copied().collect();
    let effective = read(CapSet::Effective)?;
    let permitted = read(CapSet::Permitted)?;

    // The bounding set first: dropping from it needs CAP_SETPCAP in the effective set, which the
    // steps below remove (unless kept).
    if effective.contains(&Capability::CAP_SETPCAP) {
        for capability in read(CapSet::Bounding)?.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *capability).map_err(|source| {
                PrivilegeError::Drop {
                    set: "bounding",
                    source,
                }
            })?;
        }
    } else {
        tracing::debug!("no CAP_SETPCAP; leaving the capability bounding set as it is");
    }

    // Ambient must stay a subset of permitted and inheritable, so shrink it before them;
    // permitted goes last because effective must stay a subset of it.
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective] {
        let current = if matches!(set, CapSet::Effective) {
            // Kept capabilities we are permitted to use are made effective.
            permitted.clone()
        } else {
            read(set)?
        };
        let wanted: CapsHashSet = current.intersection(&keep).copied().collect();
        // Only call capset(2) when something changes: a unit with an empty
        // CapabilityBoundingSet= usually also filters @privileged syscalls, which makes
        // capset fail with EPERM even when it would drop nothing.
        if wanted != read(set)? {
            caps::set(None, set, &wanted).map_err(|source| PrivilegeError::Drop {
                set: set_name(set),
                source,
            })?;
        }
    }
    let wanted: CapsHashSet = permitted.intersection(&keep).copied().collect();
    if wanted != permitted {
        caps::set(None, CapSet::Permitted, &wanted).map_err(|source| PrivilegeError::Drop {
            set: "permitted",
            source,
        })?;
    }

    let after = current_capabilities()?;
    for (set, held) in [
        ("effective", &after.effective),
        ("permitted", &after.permitted),
        ("inheritable", &after.inheritable),
        ("ambient", &after.ambient),
    ] {
        if let Some(&capability) = held.iter().find(|c| !keep.contains(c)) {
            return Err(PrivilegeError::StillHeld { set, capability });
        }
    }
    for missing in keep.iter().filter(|c| !after.effective.contains(c)) {
        tracing::warn!(
            capability = %missing,
            "capability requested but not held; add it to AmbientCapabilities= if it is needed"
        );
    }
    tracing::info!(capabilities = %after, "privileges locked down");
    Ok(())
}

/// Root check, pure for testing.
fn refuse_root(uid: u32, euid: u32) -> Result<(), PrivilegeError> {
    if uid == 0 || euid == 0 {
        return Err(PrivilegeError::Root { uid, euid });
    }
    Ok(())
}

/// Threads in this process, if `/proc` can tell us.
fn thread_count() -> Option<usize> {
    match std::fs::read_dir("/proc/self/task") {
        Ok(entries) => Some(entries.count()),
        Err(error) => {
            tracing::debug!(error = %Chain(&error), "cannot count threads; assuming lock_down runs single-threaded");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_refused_with_guidance() {
        for (uid, euid) in [(0, 0), (0, 1000), (1000, 0)] {
            let err = refuse_root(uid, euid).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("refusing to run as root"), "{text}");
            assert!(
                text.contains("User=") && text.contains("setpriv/runuser"),
                "{text}"
            );
        }
        assert!(refuse_root(65534, 65534).is_ok());
    }

    #[test]
    fn lock_down_as_root_refuses_before_changing_anything() {
        // Only root can be refused (the `lock_down` test binary covers the rest,
        // single-threaded); CI runs as root, so there this may not be skipped.
        if !dragonfly_testkit::require_root() {
            return;
        }
        let before = current_capabilities().unwrap();
        let err = lock_down(&[]).unwrap_err();
        assert!(matches!(err, PrivilegeError::Root { .. }), "{err}");
        assert_eq!(
            current_capabilities().unwrap(),
            before,
            "nothing may change on refusal"
        );
    }

    #[test]
    fn test_harness_is_multithreaded_so_counting_works() {
        // libtest runs each test on its own thread: a useful check that the guard can fire.
        assert!(thread_count().is_some_and(|n| n > 1));
    }

    #[test]
    fn current_capabilities_reads_and_displays() {
        let sets = current_capabilities().unwrap();
        assert!(sets.effective.is_subset(&sets.permitted));
        let text = sets.to_string();
        assert!(text.starts_with("effective=["), "{text}");
        assert!(text.contains("no_new_privs="), "{text}");
    }
}
