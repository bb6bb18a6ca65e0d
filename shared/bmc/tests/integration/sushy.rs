//! The sushy-emulator of `dragonfly_testkit::sushy`, this crate's driver configuration for
//! it, and plain GETs to cross-check the driver.

use std::time::Duration;

use dragonfly_bmc::Password;
use dragonfly_bmc::redfish::RedfishConfig;
pub(crate) use dragonfly_testkit::sushy::{PASSWORD, SYSTEM_UUID, Sushy, USER};
use serde_json::Value;

/// The driver's configuration, and the cross-check.
pub(crate) trait SushyExt {
    /// With a timeout that covers the fake driver's delays within a cycle, and a short poll.
    fn config(&self) -> RedfishConfig;
    /// GETs a resource with reqwest itself (not through the driver).
    async fn get(&self, path: &str) -> Value;
}

impl SushyExt for Sushy {
    fn config(&self) -> RedfishConfig {
        let mut config = RedfishConfig::new(self.endpoint(), USER, Password::new(PASSWORD));
        config.timeout = Duration::from_secs(60);
        config.poll_interval = Duration::from_millis(250);
        config
    }

    async fn get(&self, path: &str) -> Value {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.unwrap()
    }
}
