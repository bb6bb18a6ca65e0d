//! Runs a template's actions on this machine, as the imaging loop will:
//! `dragonfly-actions TEMPLATE.json` (a `TemplateSpec`, as JSON: the agent links no YAML).
//!
//! For trying actions by hand and for `integration/bench/image2disk.sh`. It prints progress
//! to stderr and, at the end, the peak RSS (`VmHWM`) so the benchmark can check the agent's
//! memory. It never reboots: a kexec action's [`Reboot`](dragonfly_agent::actions::kexec::Reboot)
//! is printed, not performed.
#![allow(clippy::print_stdout, reason = "a command-line tool")]

use std::process::ExitCode;

use dragonfly_agent::actions::{self, Context, Print};
use dragonfly_core::template::TemplateSpec;

fn main() -> ExitCode {
    let Some(file) = std::env::args().nth(1) else {
        println!("usage: dragonfly-actions TEMPLATE.json");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            println!("{file}: {e}");
            return ExitCode::from(2);
        }
    };
    let spec: TemplateSpec = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            println!("{file}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = spec.validate() {
        println!("{file}: {e}");
        return ExitCode::from(2);
    }
    let ctx = Context::default();
    let mut code = ExitCode::SUCCESS;
    for a in &spec.actions {
        match actions::run(a, &ctx, &mut Print) {
            Ok(o) => {
                if let Some(r) = o.reboot {
                    println!("{}: would now {r:?}", a.name);
                }
            }
            Err(_) => {
                code = ExitCode::FAILURE;
                break;
            }
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(l) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!("peak RSS {}", l.trim_start_matches("VmHWM:").trim());
    }
    code
}
