//! `/api/machines/{id}/bmc`: how a machine's power is controlled (IPMI, Redfish,
//! Wake-on-LAN), as an operator configures it and as bmcd last found it.
//!
//! The BMC password is write-only. apid seals it to bmcd's public key (published in the store
//! by bmcd, `dragonfly_bmc::seal`) the moment it arrives and stores only the sealed bytes:
//! apid can seal but never open, so neither apid nor a copy of the database can give it back.
//! This module must never return the password, log it, put it in an error message, or
//! `Debug`-print a value holding it ([`BmcRequest`]'s `Debug` is written by hand to redact it;
//! a password of the wrong JSON type is refused without quoting it).

use std::net::{IpAddr, Ipv4Addr};

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use dragonfly_bmc::seal::SealingKey;
use dragonfly_core::MachineId;
use dragonfly_store::bmc::{Bmc, BmcKind, BmcSpec, PowerRequest, SealedSecret};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::routes::machines::find;

/// How many of a machine's power requests its BMC view shows.
pub const LAST_REQUESTS: usize = 5;
/// The longest password accepted (Redfish; IPMI 2.0 allows 20 bytes).
pub const MAX_PASSWORD_BYTES: usize = 256;
/// IPMI 2.0 passwords are at most 20 bytes.
pub const MAX_IPMI_PASSWORD_BYTES: usize = 20;
/// The longest CA bundle accepted for a Redfish BMC (a few certificates).
pub const MAX_CA_PEM_BYTES: usize = 64 * 1024;
/// The longest user name and Redfish system id accepted.
pub const MAX_NAME_CHARS: usize = 128;

/// The 503 when bmcd has not published its key: nothing could ever open a password sealed
/// without it, and storing it in the clear is not an option.
const NO_KEY: &str =
    "bmcd has not published its key yet: start dragonfly-bmcd, then set the password again";

/// How a machine's power is controlled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BmcType {
    /// IPMI 2.0 over LAN (lanplus).
    Ipmi,
    /// Redfish over HTTP(S).
    Redfish,
    /// Wake-on-LAN: power on only.
    Wol,
}

impl From<BmcType> for BmcKind {
    fn from(t: BmcType) -> Self {
        match t {
            BmcType::Ipmi => Self::Ipmi,
            BmcType::Redfish => Self::Redfish,
            BmcType::Wol => Self::Wol,
        }
    }
}

impl From<BmcKind> for BmcType {
    fn from(k: BmcKind) -> Self {
        match k {
            BmcKind::Ipmi => Self::Ipmi,
            BmcKind::Redfish => Self::Redfish,
            BmcKind::Wol => Self::Wol,
        }
    }
}

/// The firmware's boot mode, for the next-boot override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    #[default]
    Uefi,
    Legacy,
}

/// The body of `PUT /api/machines/{id}/bmc`: the whole configuration (absent optional fields
/// are cleared), except the password, which is kept when absent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BmcRequest {
    #[serde(rename = "type")]
    pub kind: BmcType,
    /// IPMI: the BMC's host name or IP address (no scheme, no port). Redfish: the service's
    /// base URL, `http://host[:port]` or `https://host[:port]`. Wake-on-LAN: an IPv4
    /// broadcast address, or absent for the default (255.255.255.255).
    pub address: Option<String>,
    /// IPMI: the UDP port (default 623). Wake-on-LAN: the UDP port (default 9). Redfish: put
    /// it in the URL.
    pub port: Option<u16>,
    /// IPMI and Redfish: the BMC user.
    pub username: Option<String>,
    /// IPMI and Redfish: write-only. Absent: the stored password is kept.
    #[serde(default, deserialize_with = "secret")]
    #[schema(value_type = Option<String>, format = Password, write_only)]
    pub password: Option<dragonfly_bmc::Password>,
    /// Redfish: which ComputerSystem, when the service manages several.
    pub system: Option<String>,
    /// Default `uefi`.
    #[serde(default)]
    pub boot_mode: BootMode,
    /// Redfish over `https://`: trust only certificates issued by these CA certificates
    /// (PEM), for the URL's host name or address. Absent (and no `tlsFingerprint`): the
    /// host's trust store.
    pub tls_ca: Option<String>,
    /// Redfish over `https://`: trust exactly the certificate with this SHA-256 fingerprint
    /// (64 hex digits, `:` between bytes allowed), whatever its issuer, name or dates — a
    /// BMC's self-signed factory certificate.
    pub tls_fingerprint: Option<String>,
    /// Refuse the change (409) unless the BMC configuration is still at this version.
    pub resource_version: Option<i64>,
}

impl std::fmt::Debug for BmcRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcRequest")
            .field("kind", &self.kind)
            .field("address", &self.address)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("system", &self.system)
            .field("boot_mode", &self.boot_mode)
            .field("tls_ca", &self.tls_ca.as_ref().map(String::len))
            .field("tls_fingerprint", &self.tls_fingerprint)
            .field("resource_version", &self.resource_version)
            .finish()
    }
}

/// Reads the password as any JSON value first, so that a number or an object sent by mistake
/// is refused without serde quoting it back ("invalid type: integer `1234`").
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<dragonfly_bmc::Password>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(dragonfly_bmc::Password::new(s))),
        _ => Err(serde::de::Error::custom("password: must be a string")),
    }
}

impl BmcRequest {
    /// Checks the request and turns it into what the store keeps (the password apart).
    /// Messages never quote the password, nor an address that might hold one.
    pub fn validate(&self) -> Result<BmcSpec, String> {
        let address = self.address.as_deref().map(str::trim);
        let address = match (self.kind, address) {
            (BmcType::Ipmi, None | Some("")) => {
                return Err("address: IPMI needs the BMC's host name or IP address".into());
            }
            (BmcType::Ipmi, Some(a)) => Some(ipmi_host(a)?),
            (BmcType::Redfish, None | Some("")) => {
                return Err(
                    "address: Redfish needs the service's base URL, e.g. https://10.0.0.5".into(),
                );
            }
            (BmcType::Redfish, Some(a)) => Some(redfish_base(a)?),
            (BmcType::Wol, None | Some("")) => None,
            (BmcType::Wol, Some(a)) => Some(
                a.parse::<Ipv4Addr>()
                    .map_err(|_| {
                        "address: Wake-on-LAN needs no address; if given, an IPv4 broadcast \
                         address such as 10.0.0.255"
                            .to_owned()
                    })?
                    .to_string(),
            ),
        };
        if self.kind == BmcType::Redfish && self.port.is_some() {
            return Err("port: for Redfish the port is part of the URL (https://host:8443)".into());
        }
        if self.port == Some(0) {
            return Err("port: must be between 1 and 65535".into());
        }
        if self.kind == BmcType::Wol {
            for (field, set) in [
                ("username", self.username.is_some()),
                ("password", self.password.is_some()),
                ("system", self.system.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{field}: Wake-on-LAN has no {field} (it sends a packet to the MACs)"
                    ));
                }
            }
        }
        let https = self.kind == BmcType::Redfish
            && address
                .as_deref()
                .is_some_and(|a| a.starts_with("https://"));
        let tls_ca = match self.tls_ca.as_deref().map(str::trim) {
            None => None,
            Some(_) if !https => {
                return Err("tlsCa: only for a Redfish service at an https:// URL".into());
            }
            Some(pem) if pem.len() > MAX_CA_PEM_BYTES => {
                return Err(format!("tlsCa: longer than {MAX_CA_PEM_BYTES} bytes"));
            }
            Some(pem) => {
                dragonfly_bmc::redfish::check_ca_pem(pem).map_err(|e| format!("tlsCa: {e}"))?;
                Some(pem.to_owned())
            }
        };
        let tls_fingerprint = match self.tls_fingerprint.as_deref() {
            None => None,
            Some(_) if !https => {
                return Err("tlsFingerprint: only for a Redfish service at an https:// URL".into());
            }
            Some(_) if tls_ca.is_some() => {
                return Err(
                    "tlsFingerprint: give either tlsCa (trust an issuer) or tlsFingerprint                      (trust one certificate), not both"
                        .into(),
                );
            }
            Some(f) => Some(dragonfly_bmc::redfish::fingerprint_hex(
                &dragonfly_bmc::redfish::parse_fingerprint(f)
                    .map_err(|e| format!("tlsFingerprint: {e}"))?,
            )),
        };
        if self.kind != BmcType::Redfish && self.system.is_some() {
            return Err("system: only a Redfish service manages several systems".into());
        }
        let username = self.username.as_deref().map(str::trim).map(|u| {
            if u.is_empty() || u.chars().count() > MAX_NAME_CHARS || u.chars().any(char::is_control)
            {
                Err(format!(
                    "username: 1 to {MAX_NAME_CHARS} characters, no control characters"
                ))
            } else {
                Ok(u.to_owned())
            }
        });
        let system = self.system.as_deref().map(str::trim).map(|s| {
            if s.is_empty()
                || s.chars().count() > MAX_NAME_CHARS
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
            {
                Err(format!(
                    "system: a Redfish system id (1 to {MAX_NAME_CHARS} of A-Z a-z 0-9 . _ - :), \
                     e.g. System.Embedded.1"
                ))
            } else {
                Ok(s.to_owned())
            }
        });
        if let Some(p) = &self.password {
            let p = p.expose();
            if p.is_empty() {
                return Err("password: empty; leave it out to keep the stored one".into());
            }
            if p.len() > MAX_PASSWORD_BYTES {
                return Err(format!("password: longer than {MAX_PASSWORD_BYTES} bytes"));
            }
            if self.kind == BmcType::Ipmi && p.len() > MAX_IPMI_PASSWORD_BYTES {
                return Err(format!(
                    "password: IPMI 2.0 passwords are at most {MAX_IPMI_PASSWORD_BYTES} bytes"
                ));
            }
            if p.chars().any(char::is_control) {
                return Err("password: control characters are not allowed".into());
            }
        }
        Ok(BmcSpec {
            kind: self.kind.into(),
            address,
            port: self.port,
            username: username.transpose()?,
            system: system.transpose()?,
            uefi: self.boot_mode == BootMode::Uefi,
            tls_ca,
            tls_fingerprint,
        })
    }
}

/// An IPMI BMC's host: an IP address or a DNS name, nothing else.
fn ipmi_host(a: &str) -> Result<String, String> {
    if a.contains("://") {
        return Err("address: IPMI takes a host name or IP address, without a scheme".into());
    }
    let bare = a.strip_prefix('[').and_then(|a| a.strip_suffix(']'));
    if let Ok(ip) = bare.unwrap_or(a).parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if a.contains(':') {
        return Err("address: a host name or IP address only; the port goes in \"port\"".into());
    }
    dragonfly_core::hardware::validate_hostname(a)
        .map(|()| a.to_owned())
        .map_err(|_| "address: not a host name or IP address".into())
}

/// A Redfish service's base URL: `http(s)://host[:port]`, as bmcd's driver takes it.
fn redfish_base(a: &str) -> Result<String, String> {
    // The address is not quoted in these messages: it might hold a password (user:pass@).
    let uri: http::Uri = a.parse().map_err(|_| {
        "address: not a URL; Redfish needs the service's base URL, e.g. https://10.0.0.5".to_owned()
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(
                "address: Redfish needs an http:// or https:// base URL, e.g. https://10.0.0.5"
                    .into(),
            );
        }
    }
    let Some(authority) = uri.authority() else {
        return Err("address: the URL has no host".into());
    };
    if authority.as_str().contains('@') {
        return Err(
            "address: credentials belong in \"username\" and \"password\", not in the URL".into(),
        );
    }
    if authority.host().is_empty() {
        return Err("address: the URL has no host".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(
            "address: only scheme://host[:port], without a path (bmcd adds /redfish/v1)".into(),
        );
    }
    Ok(a.trim_end_matches('/').to_owned())
}

/// One power request, as the BMC view lists it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerRequestView {
    /// `provision` (next boot from the network, then on) or `provisioned` (next boot from
    /// disk).
    pub kind: String,
    /// `pending`, `running`, `done`, `failed`, `superseded`.
    pub state: String,
    pub attempts: u32,
    /// What the BMC answered, once finished.
    pub result: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: jiff::Timestamp,
}

impl From<&PowerRequest> for PowerRequestView {
    fn from(r: &PowerRequest) -> Self {
        Self {
            kind: r.kind.as_str().to_owned(),
            state: r.state.as_str().to_owned(),
            attempts: r.attempts,
            result: r.result.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A machine's BMC as the API shows it. Never the password: only whether one is set.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BmcView {
    #[serde(rename = "type")]
    pub kind: BmcType,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub system: Option<String>,
    pub boot_mode: BootMode,
    /// Redfish over https: the CA certificates trusted (PEM), when set.
    pub tls_ca: Option<String>,
    /// Redfish over https: the pinned certificate's SHA-256 fingerprint (hex), when set.
    pub tls_fingerprint: Option<String>,
    /// A password is stored (sealed to bmcd's key).
    pub password_set: bool,
    /// `operator`, or `agent` when it came from the agent's hardware report and no operator
    /// has set it since.
    pub source: String,
    /// What bmcd last read: `on`, `off`, `unknown`; null before its first reading.
    pub power_state: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub power_checked_at: Option<jiff::Timestamp>,
    /// Why bmcd cannot drive this BMC (unreachable, credentials refused, …), while that
    /// lasts.
    pub condition: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub condition_since: Option<jiff::Timestamp>,
    pub resource_version: i64,
    /// The machine's newest power requests (made when a workflow is created or succeeds),
    /// newest first.
    pub last_requests: Vec<PowerRequestView>,
}

impl BmcView {
    fn new(b: Bmc, requests: &[PowerRequest]) -> Self {
        Self {
            kind: b.spec.kind.into(),
            address: b.spec.address,
            port: b.spec.port,
            username: b.spec.username,
            system: b.spec.system,
            boot_mode: if b.spec.uefi {
                BootMode::Uefi
            } else {
                BootMode::Legacy
            },
            tls_ca: b.spec.tls_ca,
            tls_fingerprint: b.spec.tls_fingerprint,
            password_set: b.password_set,
            source: if b.from_agent { "agent" } else { "operator" }.to_owned(),
            power_state: b.power_state.map(|s| s.as_str().to_owned()),
            power_checked_at: b.power_checked_at,
            condition: b.condition,
            condition_since: b.condition_since,
            resource_version: b.resource_version,
            last_requests: requests.iter().map(PowerRequestView::from).collect(),
        }
    }
}

async fn view(state: &AppState, b: Bmc) -> Result<BmcView, ApiError> {
    let requests = state
        .db
        .bmcs()
        .requests_of(b.machine_id, LAST_REQUESTS)
        .await?;
    Ok(BmcView::new(b, &requests))
}

/// Seals `password` to the key bmcd published; 503 when it has published none.
async fn seal(
    state: &AppState,
    password: &dragonfly_bmc::Password,
) -> Result<SealedSecret, ApiError> {
    let Some((bytes, key_id)) = state.db.bmcs().key().await? else {
        return Err(ApiError::Unavailable {
            message: NO_KEY,
            retry_after_secs: 60,
        });
    };
    let key = SealingKey::from_bytes(&bytes)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("bmcd's published key")))?;
    if key.id() != key_id {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "bmcd's published key has id {}, but is stored with id {key_id}",
            key.id()
        )));
    }
    let sealed = key
        .seal(password.expose())
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("sealing a BMC password")))?;
    Ok(SealedSecret { sealed, key_id })
}

/// Sets how a machine's power is controlled. The password, when given, is sealed to bmcd's
/// public key at once and never returned (503 while bmcd has published no key); when absent,
/// the stored one is kept. The condition bmcd reported is cleared: its next reading tells.
#[utoipa::path(put, path = "/api/machines/{id}/bmc", tag = "power",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    request_body = BmcRequest,
    responses((status = 200, body = BmcView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<BmcRequest>,
) -> Result<ApiJson<BmcView>, ApiError> {
    let spec = body.validate().map_err(ApiError::Unprocessable)?;
    let m = find(&state, id).await?;
    let secret = match &body.password {
        Some(p) => Some(seal(&state, p).await?),
        None => None,
    };
    let password_changed = secret.is_some();
    let b = state
        .db
        .bmcs()
        .put(
            m.id,
            spec,
            secret,
            body.resource_version,
            jiff::Timestamp::now(),
        )
        .await?;
    tracing::info!(machine = %m.name, by = %who.user.username, kind = b.spec.kind.as_str(),
        password_changed, "BMC configured");
    Ok(ApiJson(view(&state, b).await?))
}

/// A machine's BMC: its configuration (without the password), what bmcd last read from it,
/// and the newest power requests. 404 when the machine has none.
#[utoipa::path(get, path = "/api/machines/{id}/bmc", tag = "power",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 200, body = BmcView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<BmcView>, ApiError> {
    let m = find(&state, id).await?;
    let b = bmc_of(&state, m.id).await?;
    Ok(ApiJson(view(&state, b).await?))
}

/// The BMC row of `machine`, or 404 "the machine has no BMC".
pub(crate) async fn bmc_of(state: &AppState, machine: MachineId) -> Result<Bmc, ApiError> {
    state
        .db
        .bmcs()
        .get(machine)
        .await?
        .ok_or(ApiError::Absent("the machine has no BMC"))
}

/// Removes a machine's BMC (and its sealed password); its open power requests are
/// superseded. 404 when it had none.
#[utoipa::path(delete, path = "/api/machines/{id}/bmc", tag = "power",
    params(("id" = String, Path, description = "Machine id (UUID) or memorable name")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let m = find(&state, id).await?;
    if !state.db.bmcs().delete(m.id, jiff::Timestamp::now()).await? {
        return Err(ApiError::Absent("the machine has no BMC"));
    }
    tracing::info!(machine = %m.name, by = %who.user.username, "BMC removed");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> Result<BmcRequest, serde_json::Error> {
        serde_json::from_value(json)
    }

    fn check(json: serde_json::Value) -> Result<BmcSpec, String> {
        req(json).unwrap().validate()
    }

    #[test]
    fn ipmi_needs_a_host_without_scheme_or_port() {
        let s =
            check(serde_json::json!({"type": "ipmi", "address": "10.0.0.5", "port": 623})).unwrap();
        assert_eq!(s.address.as_deref(), Some("10.0.0.5"));
        assert!(s.uefi, "UEFI by default");
        check(serde_json::json!({"type": "ipmi", "address": "bmc-r1.example"})).unwrap();
        check(serde_json::json!({"type": "ipmi", "address": "fd00::5"})).unwrap();
        for (address, says) in [
            (None, "IPMI needs"),
            (Some("http://10.0.0.5"), "without a scheme"),
            (Some("10.0.0.5:623"), "\"port\""),
            (Some("bmc_1"), "not a host name"),
        ] {
            let e = check(serde_json::json!({"type": "ipmi", "address": address})).unwrap_err();
            assert!(e.contains(says), "{address:?}: {e}");
        }
    }

    #[test]
    fn redfish_over_https_trusts_a_ca_or_one_pinned_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        let https = |extra: serde_json::Value| {
            let mut body = serde_json::json!({"type": "redfish", "address": "https://10.0.0.5"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            check(body)
        };
        let s = https(serde_json::json!({"tlsCa": ca})).unwrap();
        assert_eq!(s.tls_ca.as_deref(), Some(ca.trim()));
        assert_eq!(s.tls_fingerprint, None);
        let pin = "AB:".repeat(31) + "AB";
        let s = https(serde_json::json!({"tlsFingerprint": pin})).unwrap();
        assert_eq!(
            s.tls_fingerprint,
            Some("ab".repeat(32)),
            "stored as plain hex"
        );
        let s = https(serde_json::json!({})).unwrap();
        assert_eq!((s.tls_ca, s.tls_fingerprint), (None, None));
        for (extra, says) in [
            (
                serde_json::json!({"tlsCa": "not pem"}),
                "tlsCa: no certificate",
            ),
            (
                serde_json::json!({"tlsFingerprint": "abcd"}),
                "tlsFingerprint: not a SHA-256",
            ),
            (
                serde_json::json!({"tlsCa": ca, "tlsFingerprint": pin}),
                "not both",
            ),
        ] {
            let e = https(extra.clone()).unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
        for (body, says) in [
            (
                serde_json::json!({"type": "redfish", "address": "http://10.0.0.5", "tlsFingerprint": pin}),
                "https://",
            ),
            (
                serde_json::json!({"type": "ipmi", "address": "10.0.0.5", "tlsCa": ca}),
                "https://",
            ),
        ] {
            let e = check(body.clone()).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn redfish_needs_a_base_url() {
        for ok in [
            "http://10.0.0.5",
            "https://bmc.example:8443/",
            "http://[fd00::5]:8000",
        ] {
            check(serde_json::json!({"type": "redfish", "address": ok})).unwrap();
        }
        for (bad, says) in [
            ("10.0.0.5", "http:// or https://"),
            ("ftp://10.0.0.5", "http:// or https://"),
            ("https://10.0.0.5/redfish/v1", "without a path"),
            ("https://root:calvin@10.0.0.5", "not in the URL"),
        ] {
            let e = check(serde_json::json!({"type": "redfish", "address": bad})).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("calvin"), "{e}");
        }
        let e = check(serde_json::json!({"type": "redfish", "address": "https://h", "port": 1}))
            .unwrap_err();
        assert!(e.contains("part of the URL"), "{e}");
    }

    #[test]
    fn wol_needs_no_address_and_takes_no_credentials() {
        let s = check(serde_json::json!({"type": "wol"})).unwrap();
        assert_eq!(s.address, None);
        check(serde_json::json!({"type": "wol", "address": "10.0.0.255"})).unwrap();
        let e = check(serde_json::json!({"type": "wol", "address": "bcast"})).unwrap_err();
        assert!(e.contains("IPv4 broadcast"), "{e}");
        let e = check(serde_json::json!({"type": "wol", "password": "x"})).unwrap_err();
        assert!(e.starts_with("password:"), "{e}");
    }

    #[test]
    fn the_password_is_never_shown() {
        let r = req(serde_json::json!({"type": "ipmi", "address": "h", "password": "hunter2-Q9"}))
            .unwrap();
        let debug = format!("{r:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
        // A password of the wrong type is refused without serde quoting the value back.
        let e = req(serde_json::json!({"type": "ipmi", "password": 98_765_432}))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("98765432"), "{e}");
        let long = "x".repeat(21);
        let e = check(serde_json::json!({"type": "ipmi", "address": "h", "password": long}))
            .unwrap_err();
        assert!(e.contains("20 bytes") && !e.contains(&long), "{e}");
        let e =
            check(serde_json::json!({"type": "ipmi", "address": "h", "password": ""})).unwrap_err();
        assert!(e.contains("leave it out"), "{e}");
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(req(serde_json::json!({"type": "ipmi", "adress": "h"})).is_err());
        assert!(req(serde_json::json!({"type": "ilo"})).is_err());
        assert!(req(serde_json::json!({"type": "ipmi", "bootMode": "bios"})).is_err());
    }
}
