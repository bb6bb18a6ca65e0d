//! `dragonfly workflows watch`: a workflow's progress, live, until it ends.
//!
//! The truth is the workflow's progress document (`GET /api/workflows/{id}/progress`); the
//! event stream (`GET /api/events?workflow=<id>`, Server-Sent Events) only says *when* to read
//! it again. So a lost or reordered event costs nothing: every event, every `resync`, every
//! reconnect and a slow timer (in case the stream is quiet or the bus lost something) lead to
//! one more read of the document, and what changed is printed. An apid without the event
//! stream (404) is polled instead. A dropped connection is retried with `Last-Event-ID`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::client::{Client, segment};
use crate::commands::say;
use crate::error::CliError;
use crate::http::Streaming;
use crate::output::{self, Format, Table, cell, clean};
use crate::sse;

/// How often the document is read even when no event came.
const REREAD_EVERY: Duration = Duration::from_secs(10);
/// How often an apid without the event stream is polled.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// Wait before reconnecting after the stream broke.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What was last printed of each action, to print changes only.
#[derive(Debug, Default)]
struct Printed {
    workflow_state: Option<String>,
    actions: BTreeMap<usize, (String, u64, String)>,
    last_json: Option<Value>,
}

/// Follows workflow `id` until it ends: `Ok` when it succeeded, [`CliError::Failed`] when
/// it failed, timed out or was cancelled, or when `timeout` seconds passed first.
///
/// # Errors
/// As above, and any API error reading the workflow (a 404: no such workflow).
pub(crate) async fn watch(
    client: &Client,
    format: Format,
    id: &str,
    timeout: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let deadline = timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let progress = format!("/api/workflows/{}/progress", segment(id));
    let mut printed = Printed::default();
    let view = client.get(&progress).await?;
    if let Some(end) = show(out, format, &view, &mut printed)? {
        return end;
    }
    // Events name the workflow by its id, whatever the operator typed.
    let wf_id = view["id"].as_str().unwrap_or(id).to_owned();
    let mut decoder = sse::Decoder::new();
    let mut stream_missing = false;
    loop {
        let until = |d: Instant| d.saturating_duration_since(Instant::now());
        if deadline.is_some_and(|d| until(d).is_zero()) {
            return Err(timed_out(id, timeout));
        }
        let resp = if stream_missing {
            None
        } else {
            match open_stream(client, &wf_id, decoder.last_id()).await {
                Ok(r) => Some(r),
                Err(e) if e.is_not_found() => {
                    stream_missing = true;
                    None
                }
                Err(e @ CliError::Api { .. }) => return Err(e),
                Err(e) => {
                    say(&format!(
                        "event stream: {}; retrying",
                        dragonfly_core::Chain(&e)
                    ));
                    None
                }
            }
        };
        let Some(mut resp) = resp else {
            // Polling: apid has no stream, or it could not be opened just now.
            let wait = if stream_missing {
                POLL_EVERY
            } else {
                RECONNECT_AFTER
            };
            sleep_until_or(deadline, wait).await;
            let view = client.get(&progress).await?;
            if let Some(end) = show(out, format, &view, &mut printed)? {
                return end;
            }
            continue;
        };
        // Whatever happened while we were not connected is in the document.
        let view = client.get(&progress).await?;
        if let Some(end) = show(out, format, &view, &mut printed)? {
            return end;
        }
        loop {
            let wait = deadline.map_or(REREAD_EVERY, |d| until(d).min(REREAD_EVERY));
            let chunk = tokio::time::timeout(wait, resp.chunk()).await;
            let reread = match chunk {
                // Quiet for a while: read the document anyway.
                Err(_) => true,
                Ok(Ok(Some(bytes))) => !decoder.feed(&bytes).is_empty(),
                // The stream ended or broke: reconnect.
                Ok(Ok(None) | Err(_)) => break,
            };
            if reread {
                let view = client.get(&progress).await?;
                if let Some(end) = show(out, format, &view, &mut printed)? {
                    return end;
                }
            }
            if deadline.is_some_and(|d| until(d).is_zero()) {
                return Err(timed_out(id, timeout));
            }
        }
        sleep_until_or(deadline, RECONNECT_AFTER).await;
    }
}

fn timed_out(id: &str, timeout: Option<u64>) -> CliError {
    CliError::Failed(format!(
        "workflow {} still running after {}s (--timeout)",
        clean(id),
        timeout.unwrap_or(0)
    ))
}

async fn sleep_until_or(deadline: Option<Instant>, wait: Duration) {
    let wait = deadline.map_or(wait, |d| {
        d.saturating_duration_since(Instant::now()).min(wait)
    });
    tokio::time::sleep(wait).await;
}

async fn open_stream(
    client: &Client,
    workflow: &str,
    last_id: Option<&str>,
) -> Result<Streaming, CliError> {
    client
        .events(
            &format!("/api/events?workflow={}", segment(workflow)),
            last_id,
        )
        .await
}

/// Prints what changed in `view`; `Some(result)` once the workflow has ended.
fn show(
    out: &mut dyn Write,
    format: Format,
    view: &Value,
    printed: &mut Printed,
) -> Result<Option<Result<(), CliError>>, CliError> {
    let state = view["state"].as_str().unwrap_or("?").to_owned();
    match format {
        Format::Json | Format::Yaml | Format::Name => {
            // One compact document per change (JSON Lines), for scripts.
            if printed.last_json.as_ref() != Some(view) {
                serde_json::to_writer(&mut *out, view).map_err(|e| CliError::Output(e.into()))?;
                writeln!(out)?;
                out.flush()?;
                printed.last_json = Some(view.clone());
            }
        }
        Format::Table => {
            let now = jiff::Timestamp::now().strftime("%H:%M:%S").to_string();
            if printed.workflow_state.as_deref() != Some(&state) {
                writeln!(
                    out,
                    "{now}  workflow {} on {}: {}",
                    cell(&view["name"]),
                    cell(&view["machineId"]),
                    clean(&state)
                )?;
                printed.workflow_state = Some(state.clone());
            }
            for (i, a) in view["actions"].as_array().into_iter().flatten().enumerate() {
                let a_state = a["state"].as_str().unwrap_or("?").to_owned();
                let percent = a["percent"].as_u64().unwrap_or(0);
                let message = a["message"].as_str().unwrap_or_default().to_owned();
                let changed = match printed.actions.get(&i) {
                    None => a_state != "Pending",
                    Some((s, p, m)) => {
                        *s != a_state
                            || *m != message
                            || percent >= p + 5
                            || (percent == 100 && *p != 100)
                    }
                };
                if changed {
                    writeln!(out, "{now}  {}", action_line(a))?;
                    printed.actions.insert(i, (a_state, percent, message));
                }
            }
            out.flush()?;
        }
    }
    let end = match state.as_str() {
        "Succeeded" => Some(Ok(())),
        "Failed" | "TimedOut" | "Cancelled" => {
            let why = view["error"]
                .as_str()
                .map_or_else(String::new, |e| format!(": {}", clean(e)));
            if format == Format::Table {
                for a in view["actions"].as_array().into_iter().flatten() {
                    for line in a["logTail"].as_array().into_iter().flatten() {
                        writeln!(out, "    | {}", cell(line))?;
                    }
                }
            }
            Some(Err(CliError::Failed(format!(
                "workflow {} {state}{why}",
                cell(&view["name"])
            ))))
        }
        _ => None,
    };
    Ok(end)
}

/// One action on one line: `image2disk  Running  45%  1.2 GiB/2.0 GiB  110.0 MiB/s  ETA 8s`.
fn action_line(a: &Value) -> String {
    let mut parts = vec![
        format!("{:<12}", cell(&a["name"])),
        format!("{:<10}", cell(&a["state"])),
        format!("{:>3}%", a["percent"].as_u64().unwrap_or(0)),
    ];
    let done = a["bytesDone"].as_u64();
    let total = a["bytesTotal"].as_u64();
    let rate = a["bytesPerSecond"].as_u64().filter(|r| *r > 0);
    match (done, total) {
        (Some(d), Some(t)) => parts.push(format!("{}/{}", output::bytes(d), output::bytes(t))),
        (Some(d), None) => parts.push(output::bytes(d)),
        _ => {}
    }
    if let Some(r) = rate {
        parts.push(format!("{}/s", output::bytes(r)));
        if let (Some(d), Some(t)) = (done, total)
            && t > d
            && a["state"] == "Running"
        {
            parts.push(format!("ETA {}", output::duration((t - d).div_ceil(r))));
        }
    }
    if let Some(m) = a["message"].as_str() {
        parts.push(clean(m));
    }
    parts.join("  ")
}

/// `workflows show`: the workflow and a table of its actions.
pub(crate) fn workflow_detail(out: &mut dyn Write, view: &Value) -> Result<(), CliError> {
    writeln!(out, "Name:      {}", cell(&view["name"]))?;
    writeln!(out, "ID:        {}", cell(&view["id"]))?;
    writeln!(out, "Machine:   {}", cell(&view["machineId"]))?;
    writeln!(out, "Template:  {}", cell(&view["template"]))?;
    writeln!(out, "State:     {}", cell(&view["state"]))?;
    writeln!(out, "Attempt:   {}", cell(&view["attempt"]))?;
    if !view["error"].is_null() {
        writeln!(out, "Error:     {}", cell(&view["error"]))?;
    }
    writeln!(out)?;
    let mut t = Table::new(&[
        "ACTION", "STATE", "PROGRESS", "BYTES", "RATE", "TRIES", "MESSAGE",
    ]);
    for a in view["actions"].as_array().into_iter().flatten() {
        let bytes = match (a["bytesDone"].as_u64(), a["bytesTotal"].as_u64()) {
            (Some(d), Some(t)) => format!("{}/{}", output::bytes(d), output::bytes(t)),
            (Some(d), None) => output::bytes(d),
            _ => "-".into(),
        };
        t.row(vec![
            cell(&a["name"]),
            cell(&a["state"]),
            format!("{}%", a["percent"].as_u64().unwrap_or(0)),
            bytes,
            a["bytesPerSecond"]
                .as_u64()
                .map_or_else(|| "-".into(), |r| format!("{}/s", output::bytes(r))),
            cell(&a["tries"]),
            cell(&a["message"]),
        ]);
    }
    t.write(out)?;
    for a in view["actions"].as_array().into_iter().flatten() {
        if let Some(lines) = a["logTail"].as_array().filter(|l| !l.is_empty()) {
            writeln!(out, "\nLast console lines of {}:", cell(&a["name"]))?;
            for l in lines {
                writeln!(out, "  | {}", cell(l))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(state: &str, percent: u64) -> Value {
        json!({
            "id": "0193a5c0-0000-7000-8000-00000000000a", "name": "wf-1",
            "machineId": "m", "template": "t", "state": state, "attempt": 1,
            "actions": [{"name": "image2disk", "state": "Running", "percent": percent,
                "bytesDone": percent * 10_485_760, "bytesTotal": 1_048_576_000u64,
                "bytesPerSecond": 104_857_600u64, "tries": 1}]
        })
    }

    #[test]
    fn prints_changes_only_and_ends_on_terminal_states() {
        let mut out = Vec::new();
        let mut p = Printed::default();
        assert!(
            show(&mut out, Format::Table, &view("Running", 10), &mut p)
                .unwrap()
                .is_none()
        );
        assert!(
            show(&mut out, Format::Table, &view("Running", 12), &mut p)
                .unwrap()
                .is_none()
        );
        assert!(
            show(&mut out, Format::Table, &view("Running", 50), &mut p)
                .unwrap()
                .is_none()
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("10%") && text.contains("50%") && !text.contains("12%"));
        assert!(
            text.contains("100.0 MiB/s") && text.contains("ETA 5s"),
            "{text}"
        );
        assert!(matches!(
            show(&mut out, Format::Table, &view("Succeeded", 100), &mut p).unwrap(),
            Some(Ok(()))
        ));
        let mut failed = view("Failed", 50);
        failed["error"] = json!("image2disk: checksum mismatch");
        failed["actions"][0]["logTail"] = json!(["\u{1b}[31mbad\u{1b}[0m"]);
        let mut out = Vec::new();
        let end = show(&mut out, Format::Table, &failed, &mut Printed::default()).unwrap();
        let e = end.unwrap().unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains('\u{1b}'),
            "agent output reaches the terminal escaped"
        );
    }

    #[test]
    fn json_lines_for_scripts() {
        let mut out = Vec::new();
        let mut p = Printed::default();
        show(&mut out, Format::Json, &view("Running", 10), &mut p).unwrap();
        show(&mut out, Format::Json, &view("Running", 10), &mut p).unwrap();
        show(&mut out, Format::Json, &view("Running", 11), &mut p).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        for l in text.lines() {
            let _: Value = serde_json::from_str(l).unwrap();
        }
    }
}
