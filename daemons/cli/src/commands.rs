//! One function per command: the API calls it makes and what it prints.

use std::io::{BufRead as _, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory as _;
use http::Method;
use serde_json::{Map, Value, json};

use crate::cli::{
    self, Address, Bmc, Command, Images, Machines, Templates, Tokens, Users, Workflows,
};
use crate::client::{Auth, Client, query_value, segment};
use crate::credentials::{self, Credentials, Target, normalize_url};
use crate::error::CliError;
use crate::output::{self, Format, Table, cell, clean};
use crate::{Env, credentials_path, watch};

/// The resource paths of the Kubernetes-shaped API.
const TEMPLATES: &str = "/apis/dragonfly.computer/v1/templates";
const WORKFLOWS: &str = "/apis/dragonfly.computer/v1/workflows";
const IMAGES: &str = "/apis/dragonfly.computer/v1/images";

/// The global options every command sees.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) format: Format,
    pub(crate) timeout: Duration,
    pub(crate) url: Option<String>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) credentials: Option<PathBuf>,
    pub(crate) env: Env,
}

impl Ctx {
    fn saved(&self) -> Result<Option<Credentials>, CliError> {
        match &self.credentials {
            Some(p) => credentials::load(p),
            None => Ok(None),
        }
    }

    /// A client with the operator's token, or why there is none.
    fn client(&self) -> Result<Client, CliError> {
        let saved = if self.env.token.is_some() && self.url.is_some() {
            // Everything is given: a broken or foreign credentials file must not stop it.
            None
        } else {
            self.saved()?
        };
        let target = Target::resolve(
            self.url.as_deref(),
            self.env.token.as_deref(),
            self.ca_file.as_deref(),
            saved.as_ref(),
        )?;
        let Some(token) = target.token else {
            return Err(CliError::NotLoggedIn(format!(
                "no token for {}: run `dragonfly login {}` or set DRAGONFLY_TOKEN",
                target.url, target.url
            )));
        };
        Client::new(
            &target.url,
            Auth::Token(token),
            target.ca_file.as_deref(),
            self.timeout,
        )
    }
}

pub(crate) async fn dispatch(
    ctx: &Ctx,
    command: Command,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        Command::Login(l) => login(ctx, l, out).await,
        Command::Logout => logout(ctx, out).await,
        Command::Whoami => whoami(ctx, out).await,
        Command::Machines(m) => machines(ctx, m, out).await,
        Command::Templates(t) => templates(ctx, t, out).await,
        Command::Provision(p) => provision(ctx, p, out).await,
        Command::Workflows(w) => workflows(ctx, w, out).await,
        Command::Power(p) => power(ctx, p, out).await,
        Command::Tokens(t) => tokens(ctx, t, out).await,
        Command::Bmc(b) => bmc(ctx, b, out).await,
        Command::Address(a) => address(ctx, a, out).await,
        Command::Images(i) => images(ctx, i, out).await,
        Command::Users(u) => users(ctx, u, out).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut cli::Cli::command(), "dragonfly", out);
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(cli::Cli::command()).render(out)?;
            Ok(())
        }
    }
}

/// Writes a line for people on stderr (stdout stays the command's result).
pub(crate) fn say(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Reads one line from stdin, without its line end.
fn read_line(what: &str) -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| CliError::Io {
            what: "reading standard input for",
            path: PathBuf::from(what),
            source,
        })?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Asks for a line on the terminal; with `secret`, without echoing it.
fn prompt(question: &str, secret: bool) -> Result<String, CliError> {
    let mut err = std::io::stderr().lock();
    write!(err, "{question}")?;
    err.flush()?;
    if !secret {
        return read_line(question);
    }
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(|e| CliError::Output(e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| CliError::Output(e.into()))?;
    let line = read_line(question);
    // Restored whatever the read did: a terminal left without echo is unusable.
    let restored = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    writeln!(err)?;
    restored.map_err(|e| CliError::Output(e.into()))?;
    line
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

async fn login(ctx: &Ctx, l: cli::Login, out: &mut dyn Write) -> Result<(), CliError> {
    let path = credentials_path(ctx.credentials.as_ref())?;
    // A file others can read is refused by `load`; a login replaces it, so read it leniently.
    let saved = credentials::load(path).ok().flatten();
    let url = l
        .url
        .as_deref()
        .or(ctx.url.as_deref())
        .or(saved.as_ref().map(|s| s.url.as_str()))
        .ok_or_else(|| CliError::Usage("which apid? `dragonfly login URL`".into()))?;
    let url = normalize_url(url)?;
    let ca_file = ctx.ca_file.clone().or_else(|| {
        saved
            .as_ref()
            .filter(|s| normalize_url(&s.url).is_ok_and(|u| u == url))
            .and_then(|s| s.ca_file.clone())
    });
    let anonymous = Client::new(&url, Auth::None, ca_file.as_deref(), ctx.timeout)?;
    let creds = if l.with_token {
        let token = read_line("the token")?;
        if token.is_empty() {
            return Err(CliError::Usage("no token on standard input".into()));
        }
        let me = anonymous
            .with_auth(Auth::Token(token.clone()))
            .get("/api/auth/me")
            .await?;
        Credentials {
            url: url.clone(),
            token,
            token_id: None,
            username: me["username"].as_str().map(str::to_owned),
            ca_file,
        }
    } else {
        let username = match l.username {
            Some(u) => u,
            None if ctx.env.interactive => prompt("Username: ", false)?,
            None => {
                return Err(CliError::Usage(
                    "--username is needed when standard input is not a terminal".into(),
                ));
            }
        };
        let password = if l.password_stdin {
            read_line("the password")?
        } else if ctx.env.interactive {
            prompt("Password: ", true)?
        } else {
            return Err(CliError::Usage(
                "--password-stdin (or a terminal to ask on) is needed for the password".into(),
            ));
        };
        let cookie = session(&anonymous, &username, &password).await?;
        let logged_in = anonymous.with_auth(Auth::Session(cookie));
        let name = l
            .token_name
            .unwrap_or_else(|| format!("dragonfly-cli@{}", host_name()));
        let mut body = json!({ "name": name });
        if let Some(days) = l.expires_in_days {
            body["expiresInDays"] = json!(days);
        }
        let created = logged_in
            .call(Method::POST, "/api/tokens", Some(&body))
            .await;
        // The session was only the way to the token: end it whatever happened.
        let _ = logged_in.call(Method::POST, "/api/auth/logout", None).await;
        let created = created?;
        let token = created["token"]
            .as_str()
            .ok_or_else(|| CliError::Protocol {
                what: "POST /api/tokens".into(),
                detail: "no token in the answer".into(),
            })?
            .to_owned();
        Credentials {
            url: url.clone(),
            token,
            token_id: created["id"].as_str().map(str::to_owned),
            username: Some(username),
            ca_file,
        }
    };
    credentials::save(path, &creds)?;
    let who = creds.username.as_deref().unwrap_or("?");
    writeln!(
        out,
        "Logged in to {url} as {}; the token is saved in {}.",
        clean(who),
        path.display()
    )?;
    Ok(())
}

/// Logs in with a password; the session cookie (`name=value`).
///
/// A login apid throttles (429 after a failed password, 503 while its password slots are
/// busy) is tried again after the `Retry-After` it asks for, when that is short.
async fn session(client: &Client, username: &str, password: &str) -> Result<String, CliError> {
    const MAX_WAIT: u64 = 10;
    let path = "/api/auth/login";
    let mut tries = 0;
    let body = json!({"username": username, "password": password});
    let answer = loop {
        let a = client.raw(Method::POST, path, Some(&body)).await?;
        let wait = a
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match (a.status.as_u16(), wait) {
            (429 | 503, Some(secs)) if secs <= MAX_WAIT && tries < 3 => {
                tries += 1;
                say(&format!(
                    "apid asks to wait {secs} s before logging in again; waiting"
                ));
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            _ => break a,
        }
    };
    if !answer.status.is_success() {
        return Err(crate::client::api_error(
            &Method::POST,
            path,
            answer.status,
            &answer.body,
        ));
    }
    answer
        .headers
        .get(http::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| CliError::Protocol {
            what: format!("POST {path}"),
            detail: "no session cookie".into(),
        })
}

async fn logout(ctx: &Ctx, out: &mut dyn Write) -> Result<(), CliError> {
    let path = credentials_path(ctx.credentials.as_ref())?;
    let Some(saved) = credentials::load(path)? else {
        writeln!(out, "Not logged in.")?;
        return Ok(());
    };
    match &saved.token_id {
        Some(id) => {
            let client = Client::new(
                &saved.url,
                Auth::Token(saved.token.clone()),
                saved.ca_file.as_deref(),
                ctx.timeout,
            )?;
            match client.delete(&format!("/api/tokens/{}", segment(id))).await {
                // Already revoked or expired: nothing left to revoke.
                Ok(_) => {}
                Err(CliError::Api {
                    status: 401 | 404, ..
                }) => {}
                Err(e) => return Err(e),
            }
            credentials::remove(path)?;
            writeln!(out, "Logged out of {}; the token is revoked.", saved.url)?;
        }
        None => {
            credentials::remove(path)?;
            writeln!(
                out,
                "Logged out of {}. The token was given with --with-token: it is not revoked \
                 (`dragonfly tokens revoke ID`).",
                saved.url
            )?;
        }
    }
    Ok(())
}

async fn whoami(ctx: &Ctx, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let me = client.get("/api/auth/me").await?;
    match ctx.format {
        Format::Table | Format::Name => {
            let role = if me["isAdmin"].as_bool() == Some(true) {
                "administrator"
            } else {
                "operator"
            };
            writeln!(
                out,
                "{} ({role}) at {}",
                cell(&me["username"]),
                client.base()
            )?;
        }
        f => output::document(out, f, &me)?,
    }
    Ok(())
}

fn machine_path(machine: &str) -> String {
    format!("/api/machines/{}", segment(machine))
}

/// Every machine matching the filters, following the list's pages.
async fn all_machines(
    client: &Client,
    state: Option<cli::MachineState>,
    selector: Option<&str>,
) -> Result<Vec<Value>, CliError> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec!["limit=500".to_owned()];
        if let Some(s) = state {
            q.push(format!("state={}", s.api_name()));
        }
        if let Some(sel) = selector {
            q.push(format!("labelSelector={}", query_value(sel)));
        }
        if let Some(a) = &after {
            q.push(format!("after={}", query_value(a)));
        }
        let page = client
            .get(&format!("/api/machines?{}", q.join("&")))
            .await?;
        if let Some(list) = page["items"].as_array() {
            items.extend(list.iter().cloned());
        }
        match page["next"].as_str() {
            Some(n) if !n.is_empty() => after = Some(n.to_owned()),
            _ => return Ok(items),
        }
    }
}

async fn machines(ctx: &Ctx, m: Machines, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let now = jiff::Timestamp::now();
    match m {
        Machines::List { state, selector } => {
            let items = all_machines(&client, state, selector.as_deref()).await?;
            match ctx.format {
                Format::Table => {
                    if items.is_empty() {
                        let filtered = state.is_some() || selector.is_some();
                        writeln!(
                            out,
                            "{}",
                            if filtered {
                                "No machine matches."
                            } else {
                                "No machines yet: power one on in the provisioning network."
                            }
                        )?;
                        return Ok(());
                    }
                    let mut t = Table::new(&[
                        "NAME", "STATE", "MAC", "IP", "POWER", "TEMPLATE", "LABELS", "AGE",
                    ]);
                    for m in &items {
                        t.row(vec![
                            cell(&m["name"]),
                            cell(&m["state"]),
                            cell(&m["hardware"]["macs"][0]),
                            cell(&m["reservedIp"]),
                            power_cell(&m["power"]),
                            cell(&m["osTemplate"]),
                            cell(&m["labels"]),
                            output::age(&m["createdAt"], now),
                        ]);
                    }
                    t.write(out)?;
                }
                Format::Name => names(out, &items, |m| &m["name"])?,
                f => output::document(out, f, &json!({ "items": items }))?,
            }
        }
        Machines::Show { machine } => {
            let m = client.get(&machine_path(&machine)).await?;
            match ctx.format {
                Format::Table => {
                    machine_detail(out, &m, now)?;
                    let id = m["id"].as_str().unwrap_or(&machine).to_owned();
                    let history = client
                        .get(&format!("{}/history", machine_path(&id)))
                        .await?;
                    writeln!(out, "\nHistory:")?;
                    let mut t = Table::new(&["  WHEN", "STATE", "FROM", "WHY"]);
                    for e in history.as_array().into_iter().flatten() {
                        t.row(vec![
                            format!("  {} ago", output::age(&e["at"], now)),
                            cell(&e["to"]),
                            cell(&e["from"]),
                            cell(&e["event"]),
                        ]);
                    }
                    t.write(out)?;
                }
                Format::Name => writeln!(out, "{}", cell(&m["name"]))?,
                f => output::document(out, f, &m)?,
            }
        }
        Machines::Label { machine, labels } => {
            let changes = parse_labels(&labels)?;
            let m = label(&client, &machine, &changes).await?;
            match ctx.format {
                Format::Table | Format::Name => {
                    writeln!(out, "{} labels: {}", cell(&m["name"]), cell(&m["labels"]))?
                }
                f => output::document(out, f, &m)?,
            }
        }
        Machines::Approve { machine } => {
            let m = client
                .call(
                    Method::POST,
                    &format!("{}/approve", machine_path(&machine)),
                    None,
                )
                .await?;
            match ctx.format {
                Format::Table | Format::Name => {
                    writeln!(out, "{} approved: {}.", cell(&m["name"]), cell(&m["state"]))?;
                }
                f => output::document(out, f, &m)?,
            }
        }
        Machines::Delete { machine, yes } => {
            if !yes {
                if !ctx.env.interactive {
                    return Err(CliError::Usage(
                        "deleting needs --yes when standard input is not a terminal".into(),
                    ));
                }
                let answer = prompt(
                    &format!("Delete machine {}? [y/N] ", clean(&machine)),
                    false,
                )?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Err(CliError::Failed("not deleted".into()));
                }
            }
            client.delete(&machine_path(&machine)).await?;
            writeln!(out, "Deleted {}.", clean(&machine))?;
        }
    }
    Ok(())
}

fn power_cell(power: &Value) -> String {
    if power.is_null() {
        return "-".to_owned();
    }
    match (power["state"].as_str(), power["condition"].as_str()) {
        (_, Some(c)) => format!("! {}", clean(c)),
        (Some(s), None) => clean(s),
        (None, None) => "?".to_owned(),
    }
}

fn names(
    out: &mut dyn Write,
    items: &[Value],
    name: impl Fn(&Value) -> &Value,
) -> Result<(), CliError> {
    for i in items {
        writeln!(out, "{}", cell(name(i)))?;
    }
    Ok(())
}

/// `key=value` sets, `key-` removes.
fn parse_labels(args: &[String]) -> Result<Vec<(String, Option<String>)>, CliError> {
    args.iter()
        .map(|a| {
            if let Some((k, v)) = a.split_once('=') {
                if k.is_empty() {
                    return Err(CliError::Usage(format!("label {a:?}: no key")));
                }
                Ok((k.to_owned(), Some(v.to_owned())))
            } else if let Some(k) = a.strip_suffix('-').filter(|k| !k.is_empty()) {
                Ok((k.to_owned(), None))
            } else {
                Err(CliError::Usage(format!(
                    "label {a:?}: expected KEY=VALUE to set or KEY- to remove"
                )))
            }
        })
        .collect()
}

/// Applies label changes with the machine's `resourceVersion`, again on a conflict (someone
/// else changed the machine in between), a few times.
async fn label(
    client: &Client,
    machine: &str,
    changes: &[(String, Option<String>)],
) -> Result<Value, CliError> {
    let path = machine_path(machine);
    let mut tries = 0;
    loop {
        let m = client.get(&path).await?;
        let mut labels = m["labels"].as_object().cloned().unwrap_or_default();
        for (k, v) in changes {
            match v {
                Some(v) => labels.insert(k.clone(), json!(v)),
                None => labels.remove(k),
            };
        }
        let body = json!({"labels": labels, "resourceVersion": m["resourceVersion"]});
        match client.call(Method::PATCH, &path, Some(&body)).await {
            Err(CliError::Api { status: 409, .. }) if tries < 3 => tries += 1,
            other => return other,
        }
    }
}

fn machine_detail(out: &mut dyn Write, m: &Value, now: jiff::Timestamp) -> Result<(), CliError> {
    let hw = &m["hardware"];
    let mut rows: Vec<(&str, String)> = vec![
        ("Name", cell(&m["name"])),
        ("ID", cell(&m["id"])),
        ("State", cell(&m["state"])),
        ("Hostname", cell(&m["hostname"])),
        ("MACs", cell(&hw["macs"])),
        ("Reserved IP", cell(&m["reservedIp"])),
        ("Labels", cell(&m["labels"])),
        ("Template", cell(&m["osTemplate"])),
        ("Workflow", cell(&m["workflowId"])),
    ];
    let power = &m["power"];
    rows.push((
        "Power",
        if power.is_null() {
            "no BMC configured".to_owned()
        } else {
            let mut p = format!("{} via {}", cell(&power["state"]), cell(&power["type"]));
            if !power["checkedAt"].is_null() {
                p.push_str(&format!(
                    ", checked {} ago",
                    output::age(&power["checkedAt"], now)
                ));
            }
            if !power["condition"].is_null() {
                p.push_str(&format!(
                    "; cannot drive the BMC: {}",
                    cell(&power["condition"])
                ));
            }
            p
        },
    ));
    let cpu = &hw["cpu"];
    rows.push((
        "CPU",
        if cpu.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{}, {} cores / {} threads",
                cell(&cpu["model"]),
                cell(&cpu["cores"]),
                cell(&cpu["threads"])
            )
        },
    ));
    rows.push((
        "Memory",
        hw["memoryBytes"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), output::bytes),
    ));
    rows.push(("Firmware", cell(&hw["firmware"])));
    let sys = &hw["system"];
    rows.push((
        "System",
        if sys.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{} {} (serial {})",
                cell(&sys["vendor"]),
                cell(&sys["product"]),
                cell(&sys["serial"])
            )
        },
    ));
    rows.push(("SMBIOS UUID", cell(&hw["smbiosUuid"])));
    rows.push(("Virtualization", cell(&hw["virtualization"])));
    let bmc = &hw["bmc"];
    if !bmc.is_null() {
        rows.push((
            "BMC (reported)",
            format!("{} {}", cell(&bmc["kind"]), cell(&bmc["address"])),
        ));
    }
    rows.push((
        "Created",
        format!(
            "{} ({} ago)",
            cell(&m["createdAt"]),
            output::age(&m["createdAt"], now)
        ),
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{:width$}  {v}", format!("{k}:"), width = width + 1)?;
    }
    let disks = hw["disks"].as_array().cloned().unwrap_or_default();
    writeln!(out, "\nDisks:")?;
    if disks.is_empty() {
        writeln!(out, "  none reported")?;
    } else {
        let mut t = Table::new(&["  NAME", "SIZE", "MODEL", "SERIAL", "ROTATIONAL"]);
        for d in &disks {
            t.row(vec![
                format!("  {}", cell(&d["name"])),
                d["sizeBytes"]
                    .as_u64()
                    .map_or_else(|| "-".into(), output::bytes),
                cell(&d["model"]),
                cell(&d["serial"]),
                cell(&d["rotational"]),
            ]);
        }
        t.write(out)?;
    }
    let nics = hw["nics"].as_array().cloned().unwrap_or_default();
    writeln!(out, "\nNICs:")?;
    if nics.is_empty() {
        writeln!(out, "  none reported")?;
    } else {
        let mut t = Table::new(&["  NAME", "MAC", "LINK", "SPEED", "DRIVER"]);
        for n in &nics {
            let link = match n["carrier"].as_bool() {
                Some(true) => "up",
                Some(false) => "down",
                None => "-",
            };
            t.row(vec![
                format!("  {}", cell(&n["name"])),
                cell(&n["mac"]),
                link.to_owned(),
                n["speedMbps"]
                    .as_u64()
                    .map_or_else(|| "-".into(), |s| format!("{s} Mb/s")),
                cell(&n["driver"]),
            ]);
        }
        t.write(out)?;
    }
    Ok(())
}

/// The documents of a YAML or JSON file (`-`: stdin), in order.
fn read_documents(file: &Path) -> Result<Vec<Value>, CliError> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s).map_err(|source| {
            CliError::Io {
                what: "reading",
                path: file.to_owned(),
                source,
            }
        })?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|source| CliError::Io {
            what: "reading",
            path: file.to_owned(),
            source,
        })?
    };
    let mut docs = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(d).map_err(|e| {
            CliError::Usage(format!("{} (document {}): {e}", file.display(), i + 1))
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    if docs.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: no document in it",
            file.display()
        )));
    }
    Ok(docs)
}

async fn templates(ctx: &Ctx, t: Templates, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let now = jiff::Timestamp::now();
    match t {
        Templates::Apply { file } => {
            let docs = read_documents(&file)?;
            for doc in docs {
                let (name, outcome) = apply_template(&client, doc).await?;
                writeln!(out, "template/{} {outcome}", clean(&name))?;
            }
        }
        Templates::List => {
            let list = client.get(TEMPLATES).await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            match ctx.format {
                Format::Table => {
                    if items.is_empty() {
                        writeln!(
                            out,
                            "No templates yet: `dragonfly templates apply -f FILE`."
                        )?;
                        return Ok(());
                    }
                    let mut table = Table::new(&["NAME", "ACTIONS", "VERSION", "AGE"]);
                    for i in &items {
                        let actions: Vec<Value> = i["spec"]["actions"]
                            .as_array()
                            .map(|a| a.iter().map(|x| x["name"].clone()).collect())
                            .unwrap_or_default();
                        table.row(vec![
                            cell(&i["metadata"]["name"]),
                            cell(&Value::Array(actions)),
                            cell(&i["metadata"]["resourceVersion"]),
                            output::age(&i["metadata"]["creationTimestamp"], now),
                        ]);
                    }
                    table.write(out)?;
                }
                Format::Name => names(out, &items, |i| &i["metadata"]["name"])?,
                f => output::document(out, f, &list)?,
            }
        }
        Templates::Show { name } => {
            let doc = client
                .get(&format!("{TEMPLATES}/{}", segment(&name)))
                .await?;
            match ctx.format {
                // A template reads best as the YAML it was written in.
                Format::Table | Format::Yaml => output::document(out, Format::Yaml, &doc)?,
                Format::Name => writeln!(out, "{}", cell(&doc["metadata"]["name"]))?,
                Format::Json => output::document(out, Format::Json, &doc)?,
            }
        }
        Templates::Delete { name } => {
            client
                .delete(&format!("{TEMPLATES}/{}", segment(&name)))
                .await?;
            writeln!(out, "template/{} deleted", clean(&name))?;
        }
    }
    Ok(())
}

/// Creates or replaces one template: (its name, `created`/`configured`/`unchanged`).
async fn apply_template(
    client: &Client,
    mut doc: Value,
) -> Result<(String, &'static str), CliError> {
    let name = doc["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CliError::Usage("a document without metadata.name".into()))?
        .to_owned();
    let path = format!("{TEMPLATES}/{}", segment(&name));
    match client.get(&path).await {
        Err(e) if e.is_not_found() => {
            client.call(Method::POST, TEMPLATES, Some(&doc)).await?;
            Ok((name, "created"))
        }
        Err(e) => Err(e),
        Ok(current) => {
            if same_spec(&current["spec"], &doc["spec"]) {
                return Ok((name, "unchanged"));
            }
            if doc["metadata"]["resourceVersion"].is_null()
                && let Some(meta) = doc["metadata"].as_object_mut()
            {
                meta.insert(
                    "resourceVersion".into(),
                    current["metadata"]["resourceVersion"].clone(),
                );
            }
            client.call(Method::PUT, &path, Some(&doc)).await?;
            Ok((name, "configured"))
        }
    }
}

/// Whether two template specs say the same, once both are read the way apid reads them (a
/// default spelled out in one and left out in the other is the same template). A spec this
/// client cannot read (a newer apid's field) is never "the same": it is sent.
fn same_spec(current: &Value, desired: &Value) -> bool {
    use dragonfly_core::template::TemplateSpec;
    let read = |v: &Value| {
        serde_json::from_value::<TemplateSpec>(v.clone())
            .ok()
            .and_then(|s| serde_json::to_value(s).ok())
    };
    matches!((read(current), read(desired)), (Some(a), Some(b)) if a == b)
}

/// `--set KEY=VALUE` values: JSON when the value is valid JSON, else text.
fn parse_values(args: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut values = Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| CliError::Usage(format!("--set {a:?}: expected KEY=VALUE")))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        values.insert(k.to_owned(), v);
    }
    Ok(values)
}

async fn provision(ctx: &Ctx, p: cli::Provision, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let body = json!({
        "template": p.template,
        "values": parse_values(&p.values)?,
        "reimage": p.reimage,
    });
    let w = client
        .call(
            Method::POST,
            &format!("{}/provision", machine_path(&p.machine)),
            Some(&body),
        )
        .await?;
    match ctx.format {
        Format::Table => {
            writeln!(
                out,
                "Workflow {} ({}) installs {} on {}.",
                cell(&w["name"]),
                cell(&w["id"]),
                cell(&w["template"]),
                clean(&p.machine)
            )?;
            writeln!(out, "Power: {}.", cell(&w["power"]))?;
        }
        Format::Name => writeln!(out, "{}", cell(&w["name"]))?,
        f => output::document(out, f, &w)?,
    }
    if p.watch {
        let id = w["id"].as_str().unwrap_or_default().to_owned();
        watch::watch(&client, ctx.format, &id, None, out).await?;
    }
    Ok(())
}

fn workflow_path(w: &str) -> String {
    format!("/api/workflows/{}", segment(w))
}

async fn workflows(ctx: &Ctx, w: Workflows, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let now = jiff::Timestamp::now();
    match w {
        Workflows::List => {
            let list = client.get(WORKFLOWS).await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            match ctx.format {
                Format::Table => {
                    if items.is_empty() {
                        writeln!(
                            out,
                            "No workflows yet: `dragonfly provision MACHINE --template T`."
                        )?;
                        return Ok(());
                    }
                    let mut t =
                        Table::new(&["NAME", "MACHINE", "TEMPLATE", "STATE", "ACTION", "AGE"]);
                    for i in &items {
                        let actions = i["status"]["actions"].as_array().map_or(0, Vec::len);
                        let current = i["status"]["currentAction"].as_u64().unwrap_or(0);
                        t.row(vec![
                            cell(&i["metadata"]["name"]),
                            cell(&i["spec"]["hardwareRef"]),
                            cell(&i["spec"]["templateRef"]),
                            cell(&i["status"]["state"]),
                            format!("{}/{actions}", (current + 1).min(actions as u64)),
                            output::age(&i["metadata"]["creationTimestamp"], now),
                        ]);
                    }
                    t.write(out)?;
                }
                Format::Name => names(out, &items, |i| &i["metadata"]["name"])?,
                f => output::document(out, f, &list)?,
            }
        }
        Workflows::Show { workflow } => {
            let view = client
                .get(&format!("{}/progress", workflow_path(&workflow)))
                .await?;
            match ctx.format {
                Format::Table => watch::workflow_detail(out, &view)?,
                Format::Name => writeln!(out, "{}", cell(&view["name"]))?,
                f => output::document(out, f, &view)?,
            }
        }
        Workflows::Watch { workflow, timeout } => {
            watch::watch(&client, ctx.format, &workflow, timeout, out).await?;
        }
        Workflows::Cancel { workflow } => {
            client
                .call(
                    Method::POST,
                    &format!("{}/cancel", workflow_path(&workflow)),
                    None,
                )
                .await?;
            writeln!(out, "Cancel of {} requested.", clean(&workflow))?;
        }
        Workflows::Retry { workflow } => {
            client
                .call(
                    Method::POST,
                    &format!("{}/retry", workflow_path(&workflow)),
                    None,
                )
                .await?;
            writeln!(out, "Retry of {} requested.", clean(&workflow))?;
        }
    }
    Ok(())
}

async fn power(ctx: &Ctx, p: cli::Power, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let body = json!({"action": p.action.api_name(), "persistent": p.persistent});
    let path = format!("{}/power", machine_path(&p.machine));
    let r = match client.call(Method::POST, &path, Some(&body)).await {
        // bmcd answered that the BMC failed (unreachable, refused, timed out): the operation
        // failed, apid did not.
        Err(CliError::Api {
            status: 502 | 504,
            message,
            ..
        }) => {
            return Err(CliError::Failed(format!(
                "power {} of {}: {message}",
                p.action.api_name(),
                clean(&p.machine)
            )));
        }
        other => other?,
    };
    match ctx.format {
        Format::Table | Format::Name => {
            let state = r["powerState"]
                .as_str()
                .map_or_else(String::new, |s| format!("; power is {}", clean(s)));
            writeln!(
                out,
                "{}: {} done{state} ({}).",
                clean(&p.machine),
                p.action.api_name(),
                cell(&r["message"])
            )?;
        }
        f => output::document(out, f, &r)?,
    }
    Ok(())
}

async fn bmc(ctx: &Ctx, b: Bmc, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let now = jiff::Timestamp::now();
    match b {
        Bmc::Show { machine } => {
            let v = client
                .get(&format!("{}/bmc", machine_path(&machine)))
                .await?;
            match ctx.format {
                Format::Table | Format::Name => {
                    let mut rows = vec![
                        ("Type", cell(&v["type"])),
                        ("Address", cell(&v["address"])),
                        ("Port", cell(&v["port"])),
                        ("User", cell(&v["username"])),
                        (
                            "Password",
                            if v["passwordSet"] == true {
                                "set"
                            } else {
                                "none"
                            }
                            .into(),
                        ),
                        ("System", cell(&v["system"])),
                        ("Boot mode", cell(&v["bootMode"])),
                        (
                            "TLS",
                            if !v["tlsFingerprint"].is_null() {
                                format!("pinned {}", cell(&v["tlsFingerprint"]))
                            } else if !v["tlsCa"].is_null() {
                                "the site's CA".into()
                            } else {
                                "the host's CAs".into()
                            },
                        ),
                        (
                            "Power",
                            format!(
                                "{} (checked {} ago)",
                                cell(&v["powerState"]),
                                output::age(&v["powerCheckedAt"], now)
                            ),
                        ),
                    ];
                    if !v["condition"].is_null() {
                        rows.push(("Condition", cell(&v["condition"])));
                    }
                    for (k, val) in rows {
                        writeln!(out, "{:11} {val}", format!("{k}:"))?;
                    }
                    let reqs = v["lastRequests"].as_array().cloned().unwrap_or_default();
                    if !reqs.is_empty() {
                        writeln!(out, "\nPower requests:")?;
                        let mut t = Table::new(&["  KIND", "STATE", "ATTEMPTS", "RESULT", "WHEN"]);
                        for r in &reqs {
                            t.row(vec![
                                format!("  {}", cell(&r["kind"])),
                                cell(&r["state"]),
                                cell(&r["attempts"]),
                                cell(&r["result"]),
                                format!("{} ago", output::age(&r["updatedAt"], now)),
                            ]);
                        }
                        t.write(out)?;
                    }
                }
                f => output::document(out, f, &v)?,
            }
        }
        Bmc::Set {
            machine,
            kind,
            address,
            port,
            username,
            password_stdin,
            system,
            boot_mode,
            tls_fingerprint,
            tls_ca,
        } => {
            let mut body = json!({ "type": value_name(&kind) });
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    body[k] = v;
                }
            };
            set("address", address.map(Value::from));
            set("port", port.map(Value::from));
            set("username", username.map(Value::from));
            set("system", system.map(Value::from));
            set("bootMode", boot_mode.map(|m| Value::from(value_name(&m))));
            set("tlsFingerprint", tls_fingerprint.map(Value::from));
            if let Some(path) = tls_ca {
                let pem = std::fs::read_to_string(&path).map_err(|source| CliError::Io {
                    what: "reading the BMC's CA file",
                    path: path.clone(),
                    source,
                })?;
                set("tlsCa", Some(Value::from(pem)));
            }
            if password_stdin {
                set(
                    "password",
                    Some(Value::from(read_line("the BMC password")?)),
                );
            }
            let v = client
                .call(
                    Method::PUT,
                    &format!("{}/bmc", machine_path(&machine)),
                    Some(&body),
                )
                .await?;
            match ctx.format {
                Format::Table | Format::Name => writeln!(
                    out,
                    "{}: BMC {} {} configured (password {}).",
                    clean(&machine),
                    cell(&v["type"]),
                    cell(&v["address"]),
                    if v["passwordSet"] == true {
                        "set"
                    } else {
                        "none"
                    }
                )?,
                f => output::document(out, f, &v)?,
            }
        }
        Bmc::Remove { machine } => {
            client
                .delete(&format!("{}/bmc", machine_path(&machine)))
                .await?;
            writeln!(out, "{}: BMC removed.", clean(&machine))?;
        }
    }
    Ok(())
}

/// A clap value's name (what the API calls it too).
fn value_name(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

async fn address(ctx: &Ctx, a: Address, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    match a {
        Address::Show { machine } => {
            let v = client
                .get(&format!("{}/address", machine_path(&machine)))
                .await?;
            match ctx.format {
                Format::Table | Format::Name => {
                    writeln!(out, "{} {}", cell(&v["ip"]), cell(&v["mac"]))?;
                }
                f => output::document(out, f, &v)?,
            }
        }
        Address::Set { machine, ip, mac } => {
            let mut body = json!({ "ip": ip });
            if let Some(m) = mac {
                body["mac"] = json!(m);
            }
            let v = client
                .call(
                    Method::PUT,
                    &format!("{}/address", machine_path(&machine)),
                    Some(&body),
                )
                .await?;
            match ctx.format {
                Format::Table | Format::Name => writeln!(
                    out,
                    "{}: {} reserved for {}.",
                    clean(&machine),
                    cell(&v["ip"]),
                    cell(&v["mac"])
                )?,
                f => output::document(out, f, &v)?,
            }
        }
        Address::Remove { machine } => {
            client
                .delete(&format!("{}/address", machine_path(&machine)))
                .await?;
            writeln!(out, "{}: reservation released.", clean(&machine))?;
        }
    }
    Ok(())
}

async fn images(ctx: &Ctx, i: Images, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let now = jiff::Timestamp::now();
    match i {
        Images::List => {
            let list = client.get(IMAGES).await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            match ctx.format {
                Format::Table => {
                    if items.is_empty() {
                        writeln!(out, "No images yet: `dragonfly images add -f FILE`.")?;
                        return Ok(());
                    }
                    let mut t = Table::new(&["NAME", "SOURCE", "PHASE", "SIZE", "PUBLIC", "AGE"]);
                    for i in &items {
                        let spec = &i["spec"];
                        let source = if spec["url"].is_string() {
                            &spec["url"]
                        } else {
                            &spec["file"]
                        };
                        t.row(vec![
                            cell(&i["metadata"]["name"]),
                            cell(source),
                            cell(&i["status"]["phase"]),
                            i["status"]["size"]
                                .as_u64()
                                .map_or_else(|| "-".into(), output::bytes),
                            cell(&spec["public"]),
                            output::age(&i["metadata"]["creationTimestamp"], now),
                        ]);
                    }
                    t.write(out)?;
                }
                Format::Name => names(out, &items, |i| &i["metadata"]["name"])?,
                f => output::document(out, f, &list)?,
            }
        }
        Images::Show { name } => {
            let doc = client.get(&format!("{IMAGES}/{}", segment(&name))).await?;
            match ctx.format {
                Format::Table | Format::Yaml => output::document(out, Format::Yaml, &doc)?,
                Format::Name => writeln!(out, "{}", cell(&doc["metadata"]["name"]))?,
                Format::Json => output::document(out, Format::Json, &doc)?,
            }
        }
        Images::Add { file } => {
            for doc in read_documents(&file)? {
                let v = client.call(Method::POST, IMAGES, Some(&doc)).await?;
                writeln!(
                    out,
                    "image/{} added ({})",
                    cell(&v["metadata"]["name"]),
                    cell(&v["status"]["phase"])
                )?;
            }
        }
        Images::Delete { name } => {
            client
                .delete(&format!("{IMAGES}/{}", segment(&name)))
                .await?;
            writeln!(out, "image/{} deleted", clean(&name))?;
        }
    }
    Ok(())
}

/// A secret: from stdin when it is not a terminal, else asked without echo.
fn secret(ctx: &Ctx, question: &str) -> Result<String, CliError> {
    if ctx.env.interactive {
        prompt(question, true)
    } else {
        read_line(question)
    }
}

async fn users(ctx: &Ctx, u: Users, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let now = jiff::Timestamp::now();
    // An account by name: the API names it by id.
    let id_of = |list: &Value, name: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|u| u["username"] == name)
            .map(|u| u["id"].clone())
            .ok_or_else(|| CliError::Api {
                method: "GET".into(),
                path: "/api/users".into(),
                status: 404,
                code: Some("not_found".into()),
                message: format!("no user {}", clean(name)),
            })
    };
    match u {
        Users::List => {
            let list = client.get("/api/users").await?;
            match ctx.format {
                Format::Table => {
                    let mut t = Table::new(&["USERNAME", "ROLE", "STATUS", "CREATED"]);
                    for u in list.as_array().into_iter().flatten() {
                        t.row(vec![
                            cell(&u["username"]),
                            if u["isAdmin"] == true {
                                "administrator"
                            } else {
                                "operator"
                            }
                            .into(),
                            if u["disabled"] == true {
                                "disabled"
                            } else {
                                "active"
                            }
                            .into(),
                            format!("{} ago", output::age(&u["createdAt"], now)),
                        ]);
                    }
                    t.write(out)?;
                }
                Format::Name => names(out, list.as_array().map_or(&[][..], Vec::as_slice), |u| {
                    &u["username"]
                })?,
                f => output::document(out, f, &list)?,
            }
        }
        Users::Create { username, admin } => {
            let password = secret(ctx, &format!("Password for {username}: "))?;
            let body = json!({"username": username, "password": password, "isAdmin": admin});
            let u = client.call(Method::POST, "/api/users", Some(&body)).await?;
            writeln!(out, "User {} created.", cell(&u["username"]))?;
        }
        Users::Disable { username } => {
            let list = client.get("/api/users").await?;
            let id = id_of(&list, &username)?;
            let body = json!({"disabled": true});
            client
                .call(Method::PATCH, &format!("/api/users/{id}"), Some(&body))
                .await?;
            writeln!(out, "{} disabled.", clean(&username))?;
        }
        Users::Enable { username } => {
            let list = client.get("/api/users").await?;
            let id = id_of(&list, &username)?;
            let body = json!({"disabled": false});
            client
                .call(Method::PATCH, &format!("/api/users/{id}"), Some(&body))
                .await?;
            writeln!(out, "{} enabled.", clean(&username))?;
        }
        Users::Revoke { username } => {
            let list = client.get("/api/users").await?;
            let id = id_of(&list, &username)?;
            let r = client
                .call(Method::POST, &format!("/api/users/{id}/revoke"), None)
                .await?;
            writeln!(
                out,
                "{}: {} sessions and {} API tokens revoked.",
                clean(&username),
                cell(&r["sessions"]),
                cell(&r["apiTokens"])
            )?;
        }
        Users::Password => {
            let current = secret(ctx, "Current password: ")?;
            let new = secret(ctx, "New password: ")?;
            client
                .call(
                    Method::POST,
                    "/api/auth/password",
                    Some(&json!({"currentPassword": current, "newPassword": new})),
                )
                .await?;
            writeln!(out, "Password changed; your other sessions were ended.")?;
        }
    }
    Ok(())
}

async fn tokens(ctx: &Ctx, t: Tokens, out: &mut dyn Write) -> Result<(), CliError> {
    let client = ctx.client()?;
    let now = jiff::Timestamp::now();
    match t {
        Tokens::Create {
            name,
            expires_in_days,
        } => {
            let mut body = json!({"name": name});
            if let Some(d) = expires_in_days {
                body["expiresInDays"] = json!(d);
            }
            let created = client
                .call(Method::POST, "/api/tokens", Some(&body))
                .await?;
            match ctx.format {
                Format::Table | Format::Name => {
                    writeln!(out, "{}", cell(&created["token"]))?;
                    say(&format!(
                        "Token {} ({}) created. It is shown only now: store it safely.",
                        cell(&created["name"]),
                        cell(&created["id"])
                    ));
                }
                f => output::document(out, f, &created)?,
            }
        }
        Tokens::List => {
            let list = client.get("/api/tokens").await?;
            let items = list.as_array().cloned().unwrap_or_default();
            match ctx.format {
                Format::Table => {
                    if items.is_empty() {
                        writeln!(out, "No API tokens.")?;
                        return Ok(());
                    }
                    let mut table = Table::new(&["ID", "NAME", "CREATED", "EXPIRES", "LAST USED"]);
                    for i in &items {
                        let last = if i["lastUsed"].is_null() {
                            "never".to_owned()
                        } else {
                            format!("{} ago", output::age(&i["lastUsed"], now))
                        };
                        table.row(vec![
                            cell(&i["id"]),
                            cell(&i["name"]),
                            format!("{} ago", output::age(&i["createdAt"], now)),
                            cell(&i["expiresAt"]),
                            last,
                        ]);
                    }
                    table.write(out)?;
                }
                Format::Name => names(out, &items, |i| &i["id"])?,
                f => output::document(out, f, &list)?,
            }
        }
        Tokens::Revoke { id } => {
            client
                .delete(&format!("/api/tokens/{}", segment(&id)))
                .await?;
            writeln!(out, "Token {} revoked.", clean(&id))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_set_and_remove() {
        let l = parse_labels(&["rack=r1".into(), "role-".into(), "empty=".into()]).unwrap();
        assert_eq!(
            l,
            vec![
                ("rack".into(), Some("r1".into())),
                ("role".into(), None),
                ("empty".into(), Some(String::new())),
            ]
        );
        for bad in ["=x", "-", "plain"] {
            assert_eq!(
                parse_labels(&[bad.into()]).unwrap_err().exit_code(),
                2,
                "{bad}"
            );
        }
    }

    #[test]
    fn values_are_json_or_text() {
        let v = parse_values(&[
            "hostname=web1".into(),
            "sshKeys=[\"ssh-ed25519 AAAA\"]".into(),
            "count=3".into(),
            "note=a=b".into(),
        ])
        .unwrap();
        assert_eq!(v["hostname"], "web1");
        assert_eq!(v["sshKeys"][0], "ssh-ed25519 AAAA");
        assert_eq!(v["count"], 3);
        assert_eq!(v["note"], "a=b");
        assert!(parse_values(&["=x".into()]).is_err());
        assert!(parse_values(&["novalue".into()]).is_err());
    }

    #[test]
    fn documents_split_and_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.yaml");
        std::fs::write(&f, "metadata: {name: a}\n---\nmetadata: {name: b}\n").unwrap();
        assert_eq!(read_documents(&f).unwrap().len(), 2);
        std::fs::write(&f, "{\"metadata\": {\"name\": \"j\"}}").unwrap();
        assert_eq!(read_documents(&f).unwrap()[0]["metadata"]["name"], "j");
        std::fs::write(&f, "metadata: [unclosed\n").unwrap();
        let e = read_documents(&f).unwrap_err();
        assert!(e.to_string().contains("document 1"), "{e}");
        std::fs::write(&f, "").unwrap();
        assert!(
            read_documents(&f)
                .unwrap_err()
                .to_string()
                .contains("no document")
        );
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn same_spec_reads_like_apid() {
        let yaml = "actions:\n  - name: hostname\n    type: writefile\n    device: {disk: /dev/vda, partition: 1}\n    filesystem: ext4\n    path: /etc/hostname\n    contents: \"{{hostname}}\"\n";
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let r = serde_json::from_value::<dragonfly_core::template::TemplateSpec>(v.clone());
        assert!(r.is_ok(), "{r:?}");
        assert!(same_spec(&v, &v));
    }
}
