//! The metadata service: what an installed OS's cloud-init reads on its first boot, and the
//! phone home that tells Dragonfly the install really came up.
//!
//! Two ways a request says which machine it is for:
//! - **by secret** (`/metadata/{machine}/{secret}/…`): the datasource URL apid rendered into
//!   the install (`dragonfly_core::metadata`: an HMAC of the machine and its workflow under
//!   the boot-token key). A wrong secret, another machine's id or a past install's secret is
//!   403; the phone home is accepted only this way.
//! - **by address** (`/metadata/…` and EC2's `/latest/…`): the request's source address → the
//!   unexpired DHCP lease of that address → its MAC → the machine. Any host on the same L2
//!   segment can take an address, so this is only as strong as that segment
//!   (docs/security.md); `metadata_by_address = false` turns it off.
//!
//! Formats: NoCloud-net (`meta-data`, `user-data`, `vendor-data`, `network-config`), with
//! cloud-init's `seedfrom` pointing at the directory; and the EC2 paths cloud-init and
//! Tinkerbell users know (`/latest/meta-data/…` with trailing-slash listings,
//! `/latest/user-data`). `instance-id` is the workflow's id, so a re-install is a new instance
//! to cloud-init. user-data is the rendered `userData` of the workflow's `cloudinit` action;
//! vendor-data asks cloud-init to phone home, so operators' user-data need not.
//!
//! ipxed writes nothing here but the phone home's report (`workflow_reports`, the same durable
//! path as an agent's reports through apid); workflowd applies it, which makes the machine
//! Ready. This module must never serve one machine's data on another's secret, nor trust an
//! address when `metadata_by_address` is off.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dragonfly_bus::events::WorkflowReported;
use dragonfly_core::agent_api::{ActionReport, ReportEvent};
use dragonfly_core::template::Action;
use dragonfly_core::workflow::{Workflow, WorkflowState};
use dragonfly_core::{Machine, MachineId, metadata};
use dragonfly_runtime::cli::Chain;
use dragonfly_store::StoreError;
use uuid::Uuid;

use crate::AppState;

/// What a metadata request is about: the machine, its current workflow, and how it was
/// identified.
struct Subject {
    machine: Machine,
    workflow: Option<Workflow>,
    /// The base the machine's own URLs start from (`…/metadata/{id}/{secret}` or
    /// `…/metadata`), for vendor-data's phone-home URL.
    secret: Option<String>,
}

enum Refused {
    /// 403: a secret that is not this machine's current install's.
    Forbidden,
    /// 404 with a reason (no machine for this address, no such document).
    NotFound(&'static str),
    /// 503: the store failed.
    Store(StoreError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Forbidden => (StatusCode::FORBIDDEN, "forbidden\n").into_response(),
            Refused::NotFound(why) => (StatusCode::NOT_FOUND, format!("{why}\n")).into_response(),
            Refused::Store(e) => {
                tracing::error!(error = %Chain(&e), "metadata: cannot read the store");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store cannot be read\n",
                )
                    .into_response()
            }
        }
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

fn text(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn workflow_of(state: &AppState, m: &Machine) -> Result<Option<Workflow>, Refused> {
    match m.workflow_id {
        Some(id) => Ok(state.db.workflows().get(id).await?),
        None => Ok(None),
    }
}

/// The machine of `/metadata/{machine}/{secret}/…`, or 403.
async fn by_secret(state: &AppState, machine: &str, secret: &str) -> Result<Subject, Refused> {
    let Ok(id) = machine.parse::<Uuid>() else {
        return Err(Refused::Forbidden);
    };
    let Some(m) = state.db.machines().get(MachineId(id)).await? else {
        return Err(Refused::Forbidden);
    };
    let workflow = workflow_of(state, &m).await?;
    let ok = workflow
        .as_ref()
        .is_some_and(|w| metadata::verify(state.boot_token_key.expose(), m.id, w.id, secret));
    if !ok {
        tracing::warn!(machine = %m.name, "metadata request with a wrong secret refused");
        return Err(Refused::Forbidden);
    }
    Ok(Subject {
        machine: m,
        workflow,
        secret: Some(secret.to_owned()),
    })
}

/// The machine whose unexpired lease is `peer`'s address, when identification by address is
/// on.
async fn by_address(state: &AppState, peer: Option<IpAddr>) -> Result<Subject, Refused> {
    if !state.config.metadata_by_address {
        return Err(Refused::NotFound(
            "metadata by address is off: use the datasource URL with the machine's secret",
        ));
    }
    let Some(IpAddr::V4(ip)) = peer.map(|p| match p {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(p, IpAddr::V4),
        v4 => v4,
    }) else {
        return Err(Refused::NotFound(
            "no machine holds a lease on this address",
        ));
    };
    let Some(lease) = state
        .db
        .leases()
        .bound_at(ip, jiff::Timestamp::now())
        .await?
    else {
        return Err(Refused::NotFound(
            "no machine holds a lease on this address",
        ));
    };
    let Some(mac) = lease.mac else {
        return Err(Refused::NotFound(
            "no machine holds a lease on this address",
        ));
    };
    let Some(m) = state.db.machines().get_by_mac(mac).await? else {
        return Err(Refused::NotFound(
            "no machine holds a lease on this address",
        ));
    };
    let workflow = workflow_of(state, &m).await?;
    Ok(Subject {
        machine: m,
        workflow,
        secret: None,
    })
}

fn peer_of(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<IpAddr> {
    peer.map(|Extension(ConnectInfo(a))| a.ip())
}

/// The host name: the assignment's `values.hostname`, else the agent's, else the memorable
/// name in lower case.
fn hostname(s: &Subject) -> String {
    s.workflow
        .as_ref()
        .and_then(|w| w.values.get("hostname"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or_else(|| s.machine.hostname.clone())
        .unwrap_or_else(|| s.machine.name.to_lowercase())
}

/// The assignment's `values.sshKeys` (strings only).
fn ssh_keys(s: &Subject) -> Vec<String> {
    s.workflow
        .as_ref()
        .and_then(|w| w.values.get("sshKeys"))
        .and_then(|v| v.as_array())
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.as_str())
                .filter(|k| !k.contains(['\n', '\r']))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn instance_id(s: &Subject) -> String {
    s.workflow
        .as_ref()
        .map_or_else(|| s.machine.id.to_string(), |w| w.id.to_string())
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's).
fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn meta_data(s: &Subject) -> String {
    let mut out = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(&instance_id(s)),
        q(&hostname(s))
    );
    let keys = ssh_keys(s);
    if !keys.is_empty() {
        out.push_str("public-keys:\n");
        for k in keys {
            let _ = writeln!(out, "  - {}", q(&k));
        }
    }
    out
}

fn user_data(s: &Subject) -> String {
    s.workflow
        .as_ref()
        .and_then(|w| {
            w.actions.iter().find_map(|a| match &a.action {
                Action::Cloudinit { user_data } => Some(user_data.clone()),
                _ => None,
            })
        })
        .unwrap_or_else(|| "#cloud-config\n{}\n".to_owned())
}

fn vendor_data(state: &AppState, s: &Subject) -> String {
    match &s.secret {
        Some(secret) => format!(
            "#cloud-config\nphone_home:\n  url: {}\n  post: [instance_id, hostname, fqdn]\n  tries: 10\n",
            q(&format!(
                "{}/metadata/{}/{secret}/phone-home",
                state.config.public_url, s.machine.id
            ))
        ),
        // Phoning home needs the secret: without it there is nothing to ask for.
        None => "#cloud-config\n{}\n".to_owned(),
    }
}

/// network-config v2 ([`dragonfly_core::metadata::network_config`]), as JSON (which YAML
/// readers, cloud-init's included, read as YAML in flow style).
async fn network_config(state: &AppState, s: &Subject) -> Result<String, Refused> {
    let fixed = state.db.reservations().fixed_address(s.machine.id).await?;
    let doc = dragonfly_core::metadata::network_config(&s.machine.hardware.macs, fixed.as_ref());
    Ok(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n")
}

/// One NoCloud document.
async fn nocloud(state: &AppState, s: &Subject, doc: &str) -> Response {
    match doc {
        "meta-data" => text(meta_data(s)),
        "user-data" => text(user_data(s)),
        "vendor-data" => text(vendor_data(state, s)),
        "network-config" => match network_config(state, s).await {
            Ok(t) => text(t),
            Err(r) => r.into_response(),
        },
        "" => text("meta-data\nuser-data\nvendor-data\nnetwork-config\n".into()),
        _ => Refused::NotFound("no such metadata document").into_response(),
    }
}

/// One EC2-style path under `latest/`.
fn ec2(s: &Subject, path: &str) -> Response {
    let keys = ssh_keys(s);
    let p = path.trim_start_matches('/');
    let body = match p {
        "" => Some("meta-data/\nuser-data\n".to_owned()),
        "user-data" => Some(user_data(s)),
        "meta-data" | "meta-data/" => Some(
            "instance-id\nhostname\nlocal-hostname\nlocal-ipv4\nmac\npublic-keys/\n".to_owned(),
        ),
        "meta-data/instance-id" => Some(instance_id(s)),
        "meta-data/hostname" | "meta-data/local-hostname" => Some(hostname(s)),
        "meta-data/mac" => s.machine.hardware.macs.first().map(ToString::to_string),
        "meta-data/public-keys" | "meta-data/public-keys/" => Some(
            (0..keys.len())
                .map(|i| format!("{i}=key{i}\n"))
                .collect::<String>(),
        ),
        other => other
            .strip_prefix("meta-data/public-keys/")
            .and_then(|rest| {
                let (n, tail) = rest.split_once('/').unwrap_or((rest, ""));
                let key = keys.get(n.parse::<usize>().ok()?)?;
                match tail {
                    "" => Some("openssh-key\n".to_owned()),
                    "openssh-key" => Some(format!("{key}\n")),
                    _ => None,
                }
            }),
    };
    match body {
        Some(b) => text(b),
        None => Refused::NotFound("no such metadata path").into_response(),
    }
}

/// `local-ipv4`: the address the machine's lease or reservation gives it.
async fn local_ipv4(state: &AppState, s: &Subject) -> Result<Option<Ipv4Addr>, Refused> {
    if let Some(r) = state.db.reservations().get(s.machine.id).await? {
        return Ok(Some(r.ip));
    }
    for mac in &s.machine.hardware.macs {
        if let Some(l) = state.db.leases().get_by_mac(*mac).await?
            && l.expires_at > jiff::Timestamp::now()
        {
            return Ok(Some(l.ip));
        }
    }
    Ok(None)
}

async fn ec2_answer(state: &AppState, s: &Subject, path: &str) -> Response {
    if path.trim_matches('/') == "meta-data/local-ipv4" {
        return match local_ipv4(state, s).await {
            Ok(Some(ip)) => text(ip.to_string()),
            Ok(None) => Refused::NotFound("the machine has no address").into_response(),
            Err(r) => r.into_response(),
        };
    }
    ec2(s, path)
}

/// `GET /metadata/{machine}/{secret}/{doc}`.
pub(crate) async fn nocloud_by_secret(
    State(state): State<AppState>,
    Path((machine, secret, doc)): Path<(String, String, String)>,
) -> Response {
    match by_secret(&state, &machine, &secret).await {
        Ok(s) => nocloud(&state, &s, &doc).await,
        Err(r) => r.into_response(),
    }
}

/// `GET /metadata/{machine}/{secret}/` (the directory: a listing).
pub(crate) async fn nocloud_dir_by_secret(
    State(state): State<AppState>,
    Path((machine, secret)): Path<(String, String)>,
) -> Response {
    match by_secret(&state, &machine, &secret).await {
        Ok(s) => nocloud(&state, &s, "").await,
        Err(r) => r.into_response(),
    }
}

/// `GET /metadata/{machine}/{secret}/latest/{*path}`.
pub(crate) async fn ec2_by_secret(
    State(state): State<AppState>,
    Path((machine, secret, path)): Path<(String, String, String)>,
) -> Response {
    match by_secret(&state, &machine, &secret).await {
        Ok(s) => ec2_answer(&state, &s, &path).await,
        Err(r) => r.into_response(),
    }
}

/// `GET /metadata/{doc}`: NoCloud by source address.
pub(crate) async fn nocloud_by_address(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(doc): Path<String>,
) -> Response {
    match by_address(&state, peer_of(peer)).await {
        Ok(s) => nocloud(&state, &s, &doc).await,
        Err(r) => r.into_response(),
    }
}

/// `GET /latest/{*path}` and `GET /latest/`: EC2-style by source address.
pub(crate) async fn ec2_by_address(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    path: Option<Path<String>>,
) -> Response {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    match by_address(&state, peer_of(peer)).await {
        Ok(s) => ec2_answer(&state, &s, &path).await,
        Err(r) => r.into_response(),
    }
}

/// `POST /metadata/{machine}/{secret}/phone-home`: cloud-init's phone_home on the installed
/// OS's first boot. Stored as the report that completes the workflow's `cloudinit` action
/// (durably, before the answer), then hinted to workflowd, which makes the machine Ready.
pub(crate) async fn phone_home(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((machine, secret)): Path<(String, String)>,
) -> Response {
    let s = match by_secret(&state, &machine, &secret).await {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Some(wf) = s.workflow else {
        return Refused::Forbidden.into_response();
    };
    let current = wf.actions.get(wf.current_action as usize);
    let waiting =
        wf.state == WorkflowState::Running && current.is_some_and(|a| !a.action.runs_on_agent());
    if wf.state == WorkflowState::Succeeded {
        return text("already ready\n".into());
    }
    if !waiting {
        return (
            StatusCode::CONFLICT,
            "the install is not waiting for its first boot\n",
        )
            .into_response();
    }
    let from = peer_of(peer).map_or_else(|| "?".to_owned(), |p| p.to_string());
    let report = ActionReport {
        workflow_id: wf.id,
        attempt: wf.attempt,
        action: wf.current_action,
        // The first boot has no agent and one report: a repeated phone home is the same
        // report, kept once.
        seq: 0,
        event: ReportEvent::Succeeded {
            message: Some(format!("first boot phoned home from {from}")),
        },
    };
    match state
        .db
        .workflows()
        .report(report, jiff::Timestamp::now())
        .await
    {
        Ok(_) => {
            tracing::info!(machine = %s.machine.name, workflow = %wf.name, %from, "first boot phoned home");
            state.events.publish(&WorkflowReported {
                workflow_id: wf.id,
                machine_id: s.machine.id,
            });
            text("ok\n".into())
        }
        Err(e) => Refused::Store(e).into_response(),
    }
}
