//! The `ipmi_sim` BMC of `dragonfly_testkit::ipmi_sim`, and this crate's driver configuration
//! for it.

use std::time::Duration;

use dragonfly_bmc::Password;
use dragonfly_bmc::ipmi::IpmiConfig;
pub(crate) use dragonfly_testkit::ipmi_sim::{IpmiSim as Sim, PASSWORD, USER};

/// The driver's configuration for a simulator.
pub(crate) trait SimConfig {
    /// With a generous timeout.
    fn config(&self) -> IpmiConfig;
}

impl SimConfig for Sim {
    fn config(&self) -> IpmiConfig {
        let mut config = IpmiConfig::new("127.0.0.1", USER, Password::new(PASSWORD));
        config.port = self.port;
        config.binary = self.ipmitool.clone();
        config.timeout = Duration::from_secs(30);
        config
    }
}
