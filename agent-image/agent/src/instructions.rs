//! Asking apid what to do next (`GET /api/agent/instructions`, boot token only).
//!
//! A registered agent polls this so an operator's OS assignment reaches a machine waiting in
//! discovery within seconds. Polling (rather than a stream) survives every kind of network
//! hiccup with no state on either side.

use std::time::Duration;

use dragonfly_core::Chain;
use serde::Deserialize;

use crate::http::{self, Url};

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instructions {
    pub name: String,
    pub state: String,
    /// `discovery`, `imaging` or `localDisk`.
    pub fate: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub workflow_id: Option<String>,
    pub poll_after_seconds: u32,
}

/// One poll's outcome.
#[derive(Debug)]
pub enum Poll {
    Answer(Instructions),
    /// 404: the server does not know this machine (deleted by an operator): register again.
    Unknown,
    /// Anything else: try again later.
    Failed(String),
}

/// Asks once.
pub fn ask(base: &Url, token: &str, timeout: Duration) -> Poll {
    match http::get(base, "/api/agent/instructions", token, timeout) {
        Ok(r) if r.status == 200 => match serde_json::from_slice(&r.body) {
            Ok(i) => Poll::Answer(i),
            Err(e) => Poll::Failed(format!(
                "the server's answer is not understood: {}",
                Chain(&e)
            )),
        },
        Ok(r) if r.status == 404 => Poll::Unknown,
        Ok(r) => Poll::Failed(format!("the server answered HTTP {}", r.status)),
        Err(e) => Poll::Failed(Chain(&e).to_string()),
    }
}

/// The sentence an operator at the console reads for an answer.
pub fn describe(i: &Instructions) -> String {
    match (i.fate.as_str(), i.reason.as_deref()) {
        ("imaging", _) => format!(
            "an OS was assigned to {} (workflow {}): restarting to install it.",
            i.name,
            i.workflow_id.as_deref().unwrap_or("?")
        ),
        ("localDisk", _) => format!("{} is provisioned: restarting to boot its disk.", i.name),
        (_, Some("awaitingWorkflow")) => {
            format!(
                "{}: an OS is assigned; waiting for its workflow to be created.",
                i.name
            )
        }
        (_, Some("heldAfterError")) => format!(
            "{}: the last installation failed; waiting for an operator to retry.",
            i.name
        ),
        _ => format!(
            "{} ({}): waiting for an operator to assign an OS.",
            i.name, i.state
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(fate: &str, reason: Option<&str>) -> Instructions {
        Instructions {
            name: "HungryDynamicHybridSwear".into(),
            state: "Registered".into(),
            fate: fate.into(),
            reason: reason.map(Into::into),
            workflow_id: Some("wf".into()),
            poll_after_seconds: 10,
        }
    }

    #[test]
    fn every_fate_reads_plainly() {
        assert!(
            describe(&answer("discovery", Some("awaitingAssignment")))
                .contains("waiting for an operator")
        );
        assert!(describe(&answer("imaging", None)).contains("restarting to install"));
        assert!(describe(&answer("localDisk", None)).contains("boot its disk"));
        assert!(describe(&answer("discovery", Some("heldAfterError"))).contains("failed"));
    }

    #[test]
    fn parses_the_server_answer() {
        let body = br#"{"machineId":"0196d6a2-0000-7000-8000-000000000001","name":"N","state":"Registered","fate":"discovery","reason":"awaitingAssignment","pollAfterSeconds":10}"#;
        let i: Instructions = serde_json::from_slice(body).unwrap();
        assert_eq!(i.fate, "discovery");
        assert_eq!(i.poll_after_seconds, 10);
    }
}
