//! The agent's boot parameters, read from the kernel command line.
//!
//! ipxed puts `dragonfly.url`, `dragonfly.mode`, `dragonfly.mac`, `dragonfly.token` (and, when
//! imaging, `dragonfly.workflow`) on the command line it boots us with. Parsing is pure: it
//! takes the text of `/proc/cmdline` and never reads a file itself. It must never print the
//! token (see `docs/security.md`): [`BootParams`]'s `Debug` redacts it.

use std::fmt;

use dragonfly_core::MacAddr;

/// What the agent was booted to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An unknown machine: report the hardware and wait for an operator.
    Discovery,
    /// A machine with an assigned OS: run its workflow (not implemented yet; the agent
    /// registers and waits, as in discovery).
    Imaging,
}

/// The parameters the boot path gave the agent.
#[derive(Clone, PartialEq, Eq)]
pub struct BootParams {
    /// apid's agents' listener, e.g. `http://10.99.0.1:3001` (no trailing slash).
    pub url: String,
    pub mode: Mode,
    /// The MAC of the NIC the machine booted from.
    pub mac: MacAddr,
    /// The per-boot token (`dfb1.…`).
    pub token: String,
    /// The workflow to run, in imaging mode.
    pub workflow: Option<String>,
}

impl fmt::Debug for BootParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootParams")
            .field("url", &self.url)
            .field("mode", &self.mode)
            .field("mac", &self.mac)
            .field("token", &"<redacted>")
            .field("workflow", &self.workflow)
            .finish()
    }
}

/// Why the command line cannot be used. Each message tells the operator what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("the kernel command line has no {0}= (the boot server must add it)")]
    Missing(&'static str),
    #[error("dragonfly.url={0:?} is not an http:// URL")]
    BadUrl(String),
    #[error("dragonfly.mode={0:?} is neither discovery nor imaging")]
    BadMode(String),
    #[error("dragonfly.mac={0:?} is not a MAC address")]
    BadMac(String),
    #[error("dragonfly.token does not look like a boot token (dfb1.…)")]
    BadToken,
    /// ipxed served the agent without a token: it did not see this boot (docs/security.md).
    #[error(
        "the boot server gave this boot no token (dhcpd did not see this machine boot moments \
         before, or this boot's token went to an earlier request), so this agent cannot \
         register. Restart the machine from the network; if it keeps happening, an operator \
         should read ipxed's log"
    )]
    NoToken,
}

/// Splits a kernel command line into `key[=value]` words the way the kernel does: spaces
/// separate words except inside double quotes, and the quotes themselves are dropped
/// (`a="b c"` and `"a=b c"` both give `a` = `b c`).
pub fn words(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if any {
                    out.push(split_word(&word));
                }
                word.clear();
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(split_word(&word));
    }
    out
}

fn split_word(w: &str) -> (String, Option<String>) {
    match w.split_once('=') {
        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
        None => (w.to_owned(), None),
    }
}

/// Reads the agent's parameters from the text of `/proc/cmdline`. The last occurrence of a
/// key wins, as for the kernel's own parameters.
pub fn parse(cmdline: &str) -> Result<BootParams, CmdlineError> {
    let mut url = None;
    let mut mode = None;
    let mut mac = None;
    let mut token = None;
    let mut workflow = None;
    for (k, v) in words(cmdline) {
        let slot = match k.as_str() {
            "dragonfly.url" => &mut url,
            "dragonfly.mode" => &mut mode,
            "dragonfly.mac" => &mut mac,
            "dragonfly.token" => &mut token,
            "dragonfly.workflow" => &mut workflow,
            _ => continue,
        };
        *slot = Some(v.unwrap_or_default());
    }
    let url = url.ok_or(CmdlineError::Missing("dragonfly.url"))?;
    let url = url.trim_end_matches('/').to_owned();
    if crate::http::Url::parse(&url).is_err() {
        return Err(CmdlineError::BadUrl(url));
    }
    let mode = match mode.as_deref() {
        None | Some("discovery") => Mode::Discovery,
        Some("imaging") => Mode::Imaging,
        Some(other) => return Err(CmdlineError::BadMode(other.to_owned())),
    };
    let mac_text = mac.ok_or(CmdlineError::Missing("dragonfly.mac"))?;
    // iPXE's `${net0/mac}` is colon-separated; accept its hyphenated form too.
    let mac = mac_text
        .replace('-', ":")
        .parse::<MacAddr>()
        .map_err(|_| CmdlineError::BadMac(mac_text.clone()))?;
    let token = token.ok_or(CmdlineError::NoToken)?;
    if !token.starts_with("dfb1.") || token.len() > 256 || token.contains(char::is_whitespace) {
        return Err(CmdlineError::BadToken);
    }
    Ok(BootParams {
        url,
        mode,
        mac,
        token,
        workflow: workflow.filter(|w| !w.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str =
        "dfb1.UlQAEjRWAAAAAAAAAAAAAAAAAAAAAAAAAGXyM4A.q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA";

    fn ipxe_cmdline() -> String {
        // What ipxed's discovery script boots with, plus what Debian's kernel adds.
        format!(
            "BOOT_IMAGE=vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200n8 \
             dragonfly.url=http://10.99.0.1:3000/ dragonfly.mode=discovery \
             dragonfly.mac=52:54:00:12:34:56 dragonfly.token={TOKEN} panic=-1 quiet\n"
        )
    }

    #[test]
    fn parses_what_ipxed_boots_with() {
        let p = parse(&ipxe_cmdline()).unwrap();
        assert_eq!(p.url, "http://10.99.0.1:3000");
        assert_eq!(p.mode, Mode::Discovery);
        assert_eq!(p.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(p.token, TOKEN);
        assert_eq!(p.workflow, None);
    }

    #[test]
    fn quoting_and_repeats_follow_the_kernel() {
        let line = format!(
            "ro \"dragonfly.url=http://10.0.0.1:3000\" dragonfly.mode=\"imaging\" \
             dragonfly.workflow=\"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\" \
             dragonfly.mac=52-54-00-AA-BB-01 dragonfly.mac=52:54:00:aa:bb:02 \
             foo=\"a b  c\" dragonfly.token={TOKEN}"
        );
        let p = parse(&line).unwrap();
        assert_eq!(p.url, "http://10.0.0.1:3000");
        assert_eq!(p.mode, Mode::Imaging);
        assert_eq!(p.mac.to_string(), "52:54:00:aa:bb:02", "the last one wins");
        assert_eq!(
            p.workflow.as_deref(),
            Some("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
        );
        assert!(words(&line).contains(&("foo".into(), Some("a b  c".into()))));
        assert!(words(&line).contains(&("ro".into(), None)));
    }

    #[test]
    fn each_problem_is_named() {
        let base = ipxe_cmdline();
        let cases = [
            (
                base.replace("dragonfly.url=http://10.99.0.1:3000/ ", ""),
                "no dragonfly.url",
            ),
            (
                base.replace("http://10.99", "https://10.99"),
                "not an http:// URL",
            ),
            (base.replace("=discovery", "=wipe"), "neither discovery"),
            (
                base.replace("52:54:00:12:34:56", "52:54:00:12:34"),
                "not a MAC",
            ),
            (base.replace("dfb1.", "xyz."), "boot token"),
            (
                base.replace(&format!("dragonfly.token={TOKEN}"), ""),
                "gave this boot no token",
            ),
        ];
        for (line, want) in cases {
            let err = parse(&line).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let p = parse(&ipxe_cmdline()).unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("dfb1"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
