//! Redfish (DMTF DSP0266) over HTTP: the REST interface of current BMCs (iDRAC, iLO,
//! XClarity, OpenBMC, Supermicro), where IPMI is often disabled by default.
//!
//! Every operation is a few stateless requests with HTTP basic authentication — no session is
//! kept, so a BMC reboot or a session limit (many BMCs allow only a handful) cannot break the
//! driver, at the cost of the BMC checking the password on every request. These are all the
//! calls it makes, so that an operator can check that a BMC supports them:
//!
//! | operation | requests |
//! |-----------|----------|
//! | (first use, unless the system is configured) | `GET /redfish/v1/Systems`: the one member's `@odata.id` is the system |
//! | status | `GET {system}`: `PowerState` |
//! | power on / off (soft) / off (hard) / reset | `POST {system}/Actions/ComputerSystem.Reset` with `ResetType` `On` / `GracefulShutdown` / `ForceOff` / `ForceRestart` |
//! | power cycle | `GET {system}`; then `ResetType` `PowerCycle` when the reset action's `ResetType@Redfish.AllowableValues` lists it, else `ForceOff` (unless already `Off`), `GET {system}` until `PowerState` is `Off`, and `On` |
//! | set boot device | `PATCH {system}` with `Boot`: `BootSourceOverrideTarget` `Pxe`/`Hdd`, `BootSourceOverrideEnabled` `Once`/`Continuous`, `BootSourceOverrideMode` `UEFI`/`Legacy` |
//!
//! Answers: 401 and 403 are refused credentials; any other status outside 2xx is the BMC's
//! error, with its Redfish `error.message` and `@Message.ExtendedInfo` text; no connection is
//! an unreachable BMC; and the whole operation, polls included, is bounded by the timeout.
//!
//! Over `https://` the BMC's certificate is checked against what the BMC's configuration
//! trusts ([`Trust`]): the host's trust store, the site's BMC CA, or one certificate pinned by
//! its SHA-256 fingerprint — the usual case, since BMCs ship self-signed certificates. A
//! certificate the trust refuses is [`BmcError::Untrusted`], never a silent fallback to "accept
//! anything". Plain `http://` sends the password in the clear (basic authentication): only on
//! an isolated management network.
//!
//! What this module must never do: put the password anywhere but the `Authorization` header
//! (not in a URL, a log line or an error), or use a proxy from the environment (a management
//! network's credentials have no business crossing an HTTP proxy).

mod transport;
mod wire;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;

use transport::Transport;
pub use transport::{
    Trust, certificate_fingerprint, check_ca_pem, fingerprint_hex, parse_fingerprint,
};

use crate::{BmcError, BootTarget, Operation, Password, PowerAction, PowerDriver, PowerState};

/// How to reach one Redfish service.
#[derive(Debug, Clone)]
pub struct RedfishConfig {
    /// `http(s)://host[:port]`; no path, and no user or password in it.
    pub endpoint: String,
    /// What to trust as the BMC's certificate over `https://` (ignored over `http://`).
    pub trust: Trust,
    pub username: String,
    pub password: Password,
    /// The machine's system: its id in `/redfish/v1/Systems` (`1`, `System.Embedded.1`) or
    /// its path. `None`: the service's only system, found on first use.
    pub system: Option<String>,
    /// The most one operation may take, every request (and a cycle's polling) included.
    pub timeout: Duration,
    /// How often a power cycle without `PowerCycle` reads the state while waiting for off.
    pub poll_interval: Duration,
}

impl RedfishConfig {
    /// A configuration with the defaults: the service's only system, a 30 s timeout per
    /// operation and a 1 s poll interval.
    pub fn new(
        endpoint: impl Into<String>,
        username: impl Into<String>,
        password: Password,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            username: username.into(),
            password,
            trust: Trust::System,
            system: None,
            timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// The Redfish driver for one BMC.
#[derive(Debug)]
pub struct RedfishDriver {
    config: RedfishConfig,
    transport: Transport,
    /// The system's path, once configured or discovered.
    system: OnceLock<String>,
}

impl RedfishDriver {
    /// Builds the driver and its HTTP client; no request is made yet.
    ///
    /// # Errors
    /// [`BmcError::Local`] when the endpoint is not an `http(s)://host[:port]` URL, or the
    /// trust cannot be set up (a CA that is not PEM).
    pub fn new(config: RedfishConfig) -> Result<Self, BmcError> {
        let endpoint = parse_endpoint(&config.endpoint)?;
        let transport = Transport::new(
            &endpoint,
            &config.trust,
            &config.username,
            config.password.expose(),
        )
        .map_err(|why| {
            local(
                "the Redfish endpoint's TLS",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
            )
        })?;
        let system = OnceLock::new();
        if let Some(configured) = &config.system {
            let _ = system.set(wire::system_path(configured));
        }
        Ok(Self {
            config,
            transport,
            system,
        })
    }

    pub fn config(&self) -> &RedfishConfig {
        &self.config
    }

    /// Runs one operation within the timeout.
    async fn bounded<T>(
        &self,
        operation: Operation,
        work: impl Future<Output = Result<T, BmcError>>,
    ) -> Result<T, BmcError> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.config.timeout, work)
            .await
            .unwrap_or(Err(BmcError::TimedOut {
                after: self.config.timeout,
            }));
        tracing::debug!(
            endpoint = %self.transport.base(),
            %operation,
            elapsed_ms = started.elapsed().as_millis(),
            ok = outcome.is_ok(),
            "redfish"
        );
        outcome
    }

    /// The system's path: configured, found before, or the service's only system.
    async fn system(&self) -> Result<&str, BmcError> {
        if let Some(path) = self.system.get() {
            return Ok(path);
        }
        let body = self.send(Method::GET, wire::SYSTEMS, None).await?;
        let path = wire::only_system(wire::parse_members(&body)?)?;
        Ok(self.system.get_or_init(|| path))
    }

    async fn read_system(&self, system: &str) -> Result<wire::System, BmcError> {
        wire::parse_system(&self.send(Method::GET, system, None).await?)
    }

    async fn reset(&self, system: &str, reset_type: &str) -> Result<(), BmcError> {
        self.send(
            Method::POST,
            &wire::reset_path(system),
            Some(&wire::reset_body(reset_type)),
        )
        .await
        .map(drop)
    }

    /// `PowerCycle` when the BMC has it; else off (hard), wait for `Off`, on.
    async fn cycle(&self, system: &str) -> Result<(), BmcError> {
        let mut state = self.read_system(system).await?;
        if wire::has_power_cycle(&state) {
            return self.reset(system, "PowerCycle").await;
        }
        // `On` right after `ForceOff` would reach a BMC that still reports On and ignores it
        // (sushy-tools does, and so do BMCs whose power-off takes a few seconds).
        if state.power_state.as_deref() != Some("Off") {
            self.reset(system, "ForceOff").await?;
            loop {
                tokio::time::sleep(self.config.poll_interval).await;
                state = self.read_system(system).await?;
                if state.power_state.as_deref() == Some("Off") {
                    break;
                }
            }
        }
        self.reset(system, "On").await
    }

    /// One request; the answer's body when its status is a success.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, BmcError> {
        let body = match body {
            Some(body) => Some(
                serde_json::to_vec(body)
                    .map_err(|e| local("encoding a Redfish request", std::io::Error::other(e)))?,
            ),
            None => None,
        };
        let (status, answer) = self.transport.exchange(method.clone(), path, body).await?;
        if status.is_success() {
            return Ok(answer.to_vec());
        }
        let text = wire::error_text(&answer);
        let said = if text.is_empty() {
            format!("{method} {path}: HTTP {status}")
        } else {
            format!("{method} {path}: HTTP {status}: {text}")
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Err(BmcError::AuthRefused { detail: said })
        } else {
            Err(BmcError::Rejected { message: said })
        }
    }
}

impl PowerDriver for RedfishDriver {
    fn kind(&self) -> &'static str {
        "redfish"
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        self.bounded(Operation::Power(action), async {
            let system = self.system().await?;
            match wire::reset_type(action) {
                Some(reset_type) => self.reset(system, reset_type).await,
                None => self.cycle(system).await,
            }
        })
        .await
    }

    async fn status(&self) -> Result<PowerState, BmcError> {
        self.bounded(Operation::Status, async {
            let system = self.system().await?;
            wire::power_state(&self.read_system(system).await?)
        })
        .await
    }

    async fn set_boot(&self, target: BootTarget) -> Result<(), BmcError> {
        self.bounded(Operation::SetBoot, async {
            let system = self.system().await?;
            self.send(Method::PATCH, system, Some(&wire::boot_body(target)))
                .await
                .map(drop)
        })
        .await
    }
}

/// A Redfish endpoint, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    https: bool,
    /// The host to connect to and to check the certificate against: an IP address (without
    /// brackets) or a name.
    host: String,
    port: u16,
    /// `host[:port]` as the `Host:` header says it (brackets around an IPv6 address, no
    /// default port).
    authority: String,
    /// `scheme://authority`, without a trailing `/`.
    base: String,
}

/// `scheme://host[:port]` of an endpoint, which must be nothing more.
fn parse_endpoint(endpoint: &str) -> Result<Endpoint, BmcError> {
    let invalid = |why: &str| {
        local(
            "the Redfish endpoint",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned()),
        )
    };
    // The URL's own text is not quoted: it might hold a password.
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| invalid(&format!("not a URL ({e})")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(invalid("the scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            "credentials belong in the configuration, not in the URL",
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("only scheme://host[:port], without a path"));
    }
    let bracketed = authority.host();
    if bracketed.is_empty() {
        return Err(invalid("no host"));
    }
    let host = bracketed
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(bracketed);
    let default_port = if https { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let authority = if port == default_port {
        bracketed.to_owned()
    } else {
        format!("{bracketed}:{port}")
    };
    let scheme = if https { "https" } else { "http" };
    Ok(Endpoint {
        https,
        host: host.to_owned(),
        port,
        base: format!("{scheme}://{authority}"),
        authority,
    })
}

fn local(what: &str, source: std::io::Error) -> BmcError {
    BmcError::Local {
        what: what.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn base(endpoint: &str) -> String {
        parse_endpoint(endpoint).unwrap().base
    }

    #[test]
    fn endpoints_are_scheme_host_and_port_only() {
        assert_eq!(base("http://10.0.0.5"), "http://10.0.0.5");
        assert_eq!(base("http://127.0.0.1:8000/"), "http://127.0.0.1:8000");
        assert_eq!(base("http://[fd00::5]:8080"), "http://[fd00::5]:8080");
        assert_eq!(base("http://bmc.example:80"), "http://bmc.example");
        assert_eq!(base("https://bmc.example:443"), "https://bmc.example");
        assert_eq!(base("https://10.0.0.5:8443"), "https://10.0.0.5:8443");
        let v6 = parse_endpoint("https://[fd00::5]").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.authority.as_str()),
            ("fd00::5", 443, "[fd00::5]")
        );
        for bad in [
            "10.0.0.5",
            "ftp://10.0.0.5",
            "http://10.0.0.5/redfish/v1",
            "http://10.0.0.5?x=1",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(BmcError::Local { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_password_in_the_endpoint_is_refused_and_not_repeated() {
        let err = parse_endpoint("http://admin:hunter2@10.0.0.5").unwrap_err();
        let text = format!(
            "{err}: {}",
            err.source().map(ToString::to_string).unwrap_or_default()
        );
        assert!(text.contains("not in the URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn the_driver_is_built_without_a_request_and_never_shows_the_password() {
        let mut config = RedfishConfig::new("http://192.0.2.7", "root", Password::new("calvin-Q9"));
        config.system = Some("System.Embedded.1".to_owned());
        let driver = RedfishDriver::new(config).unwrap();
        assert_eq!(
            driver.system.get().map(String::as_str),
            Some("/redfish/v1/Systems/System.Embedded.1")
        );
        assert_eq!(driver.kind(), "redfish");
        assert!(!format!("{driver:?}").contains("calvin-Q9"));
    }
}
