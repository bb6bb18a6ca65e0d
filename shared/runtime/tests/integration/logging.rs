//! `logging::init` installs a process-global subscriber, so it is tested here, in its own
//! process, rather than in the unit tests whose output it would take over.

use dragonfly_runtime::config::LogConfig;
use dragonfly_runtime::logging::{LogTarget, init};

#[test]
fn init_twice_is_harmless() {
    let log = LogConfig::default();
    let first = init(&log, "dragonfly-test");
    assert_ne!(first, LogTarget::AlreadyInitialised);
    assert_eq!(init(&log, "dragonfly-test"), LogTarget::AlreadyInitialised);
}
