//! `privileges::lock_down` in real processes.
//!
//! This is its own test binary with `harness = false` because `lock_down` refuses to run once a
//! second thread exists, and libtest always runs tests on spawned threads. The parent (usually
//! root in CI) re-runs this binary as `nobody` through `setpriv`, optionally with ambient
//! capabilities, and the child checks what `lock_down` left behind.
#![allow(
    clippy::print_stderr,
    reason = "a harness-less test reports on stderr like libtest does"
)]

use std::collections::HashSet;
use std::process::{Command, ExitCode};

use caps::Capability;
use dragonfly_runtime::privileges::{PrivilegeError, current_capabilities, lock_down};

const CHILD_ENV: &str = "DRAGONFLY_LOCK_DOWN_SCENARIO";

fn main() -> ExitCode {
    if let Ok(scenario) = std::env::var(CHILD_ENV) {
        return match child(&scenario) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("child scenario {scenario}: {message}");
                ExitCode::FAILURE
            }
        };
    }
    // libtest-style filtering is not supported; `--list`-style flags are ignored on purpose.
    // Outside CI a non-root run skips the root scenarios (saying so); in CI it fails.
    let root = dragonfly_testkit::require_root();
    let mut failed = 0;
    let mut run = |name: &str, result: Result<(), String>| match result {
        Ok(()) => eprintln!("test {name} ... ok"),
        Err(message) => {
            eprintln!("test {name} ... FAILED: {message}");
            failed += 1;
        }
    };
    if root {
        run("root_is_refused_and_nothing_changes", root_is_refused());
        run(
            "keeps_only_the_named_capability",
            spawn("keep_one", &["net_bind_service", "net_raw"]),
        );
        run(
            "drops_the_bounding_set_with_setpcap",
            spawn(
                "keep_one_bounding",
                &["net_bind_service", "net_raw", "setpcap"],
            ),
        );
    } else {
        eprintln!("SKIP: the root refusal and ambient-capability scenarios");
    }
    run(
        "keeps_nothing_and_sets_no_new_privs",
        spawn("keep_none", &[]),
    );
    run("refuses_when_multithreaded", spawn("threads", &[]));
    if failed > 0 {
        eprintln!("{failed} lock_down scenario(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn root_is_refused() -> Result<(), String> {
    let before = current_capabilities().map_err(|e| e.to_string())?;
    match lock_down(&[]) {
        Err(PrivilegeError::Root { .. }) => {}
        other => return Err(format!("expected the root refusal, got {other:?}")),
    }
    let after = current_capabilities().map_err(|e| e.to_string())?;
    if before != after {
        return Err(format!("refusal changed capabilities: {before} -> {after}"));
    }
    Ok(())
}

/// Re-run this binary for `scenario`: as `nobody` with `ambient` capabilities when root, else
/// as ourselves.
fn spawn(scenario: &str, ambient: &[&str]) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = if nix::unistd::geteuid().is_root() {
        let mut setpriv = Command::new("setpriv");
        setpriv.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
        if !ambient.is_empty() {
            let list = ambient
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(",");
            setpriv.arg(format!("--inh-caps={list}"));
            setpriv.arg(format!("--ambient-caps={list}"));
        }
        setpriv.arg("--").arg(&me);
        setpriv
    } else {
        Command::new(&me)
    };
    let output = command
        .env(CHILD_ENV, scenario)
        .output()
        .map_err(|e| format!("spawning child: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "child exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn child(scenario: &str) -> Result<(), String> {
    let nbs: HashSet<Capability> = [Capability::CAP_NET_BIND_SERVICE].into();
    match scenario {
        "keep_none" => {
            let bounding_before = current_capabilities().map_err(|e| e.to_string())?.bounding;
            lock_down(&[]).map_err(|e| format!("lock_down: {e}"))?;
            let after = current_capabilities().map_err(|e| e.to_string())?;
            check(after.no_new_privs, "no_new_privs is set")?;
            check(after.effective.is_empty(), "effective is empty")?;
            check(after.permitted.is_empty(), "permitted is empty")?;
            check(after.ambient.is_empty(), "ambient is empty")?;
            check(
                after.bounding == bounding_before,
                "bounding untouched without CAP_SETPCAP",
            )
        }
        "keep_one" | "keep_one_bounding" => {
            let before = current_capabilities().map_err(|e| e.to_string())?;
            check(
                before.effective.contains(&Capability::CAP_NET_RAW),
                "setup gave CAP_NET_RAW",
            )?;
            lock_down(&[Capability::CAP_NET_BIND_SERVICE])
                .map_err(|e| format!("lock_down: {e}"))?;
            let after = current_capabilities().map_err(|e| e.to_string())?;
            check(after.no_new_privs, "no_new_privs is set")?;
            check(
                after.effective == nbs,
                &format!("effective is only NET_BIND_SERVICE: {after}"),
            )?;
            check(
                after.permitted == nbs,
                &format!("permitted is only NET_BIND_SERVICE: {after}"),
            )?;
            check(after.inheritable.is_subset(&nbs), "inheritable shrunk")?;
            check(after.ambient.is_subset(&nbs), "ambient shrunk")?;
            if scenario == "keep_one_bounding" {
                check(
                    after.bounding == nbs,
                    &format!("bounding is only NET_BIND_SERVICE: {after}"),
                )
            } else {
                check(
                    after.bounding == before.bounding,
                    "bounding untouched without CAP_SETPCAP",
                )
            }
        }
        "threads" => {
            let _parked = std::thread::spawn(std::thread::park);
            match lock_down(&[]) {
                Err(PrivilegeError::Threads { threads }) if threads >= 2 => Ok(()),
                other => Err(format!("expected the thread refusal, got {other:?}")),
            }
        }
        other => Err(format!("unknown scenario {other:?}")),
    }
}

fn check(condition: bool, what: &str) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(format!("expected: {what}"))
    }
}
