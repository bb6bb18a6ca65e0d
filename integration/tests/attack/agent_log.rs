//! Log flood: an attacker holding boot tokens for many machines sends their consoles' worth of
//! lines as fast as apid takes them.
//!
//! On main before the budgets, 40 machines' lines added 54 MB to apid in 1.3 s, with a bound
//! of gigabytes. Now apid keeps `agent_log_bytes_per_machine` per machine and
//! `agent_log_bytes_total` in all (32 KiB and 32 MiB by default), refuses a token's requests
//! beyond `agent_log_requests_per_minute` with 429, and a legitimate agent's lines still reach
//! an operator.
//!
//! The lines are kept in the store (`agent_console`), not in apid's memory: the total budget
//! bounds the database file, which is checked here too, and apid's RSS bounds what the flood
//! costs in flight and in SQLite's caches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dragonfly_core::{HardwareReport, MacAddr};

use crate::stack::AttackLab;

/// Machines the attacker has tokens for: more than the total budget holds full buffers of.
const ATTACKER_MACHINES: u32 = 1_200;
/// Requests per attacker machine (each 100 lines of 1 000 characters, ~100 KB).
const REQUESTS_EACH: usize = 2;
/// Flooding threads in the attacker's namespace.
const THREADS: u32 = 8;

fn mac(i: u32) -> MacAddr {
    let [_, a, b, c] = i.to_be_bytes();
    MacAddr::new([0x02, 0x66, 0x00, a, b, c])
}

/// The pid of the `dragonfly-apid` in the lab's network namespace.
pub(crate) fn apid_pid(lab: &AttackLab) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(format!("/run/netns/{}", lab.lab.name()))
        .unwrap()
        .ino();
    let wanted = format!("net:[{ns}]");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap_or_default();
        if comm.trim() == "dragonfly-apid" && net.to_string_lossy() == wanted {
            return pid;
        }
    }
    panic!("no dragonfly-apid in {}", lab.lab.name());
}

/// VmRSS of `pid`, in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

pub(crate) fn mib(bytes: u64) -> f64 {
    // Figures for a person: the precision lost above 2^52 bytes does not matter.
    #[allow(clippy::cast_precision_loss, reason = "a printed figure")]
    let b = bytes as f64;
    b / f64::from(1u32 << 20)
}

/// Registers the machines straight into the store: how the attacker came by registered
/// machines (a registration flood) is another attack's concern; here they exist.
fn register_all(lab: &mut AttackLab, macs: &[MacAddr]) -> Vec<String> {
    let path = lab.lab.store();
    let store = dragonfly_store::BlockingDb::open(&path).unwrap();
    let names = macs
        .iter()
        .map(|m| {
            let report = HardwareReport {
                macs: vec![*m],
                ..Default::default()
            };
            let r = store
                .block_on(
                    store
                        .db()
                        .machines()
                        .register(report, jiff::Timestamp::now()),
                )
                .unwrap();
            r.machine().name.to_string()
        })
        .collect();
    drop(store);
    dragonfly_testkit::chown_for_unprivileged(path.parent().unwrap()).unwrap();
    names
}

fn post_lines(
    client: &reqwest::blocking::Client,
    agents: &str,
    token: &str,
    lines: &serde_json::Value,
) -> reqwest::blocking::Response {
    client
        .post(format!("{agents}/api/agent/log"))
        .bearer_auth(token)
        .json(lines)
        .send()
        .unwrap()
}

/// An operator's session cookie.
fn operator_cookie(client: &reqwest::blocking::Client, apid: &str) -> String {
    let login = client
        .post(format!("{apid}/api/auth/login"))
        .json(&serde_json::json!({"username": crate::common::ADMIN, "password": crate::common::PASSWORD}))
        .send()
        .unwrap();
    assert!(login.status().is_success(), "login: {}", login.status());
    login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The lines an operator reads for `machine`.
fn operator_reads(
    client: &reqwest::blocking::Client,
    apid: &str,
    cookie: &str,
    machine: &str,
) -> Vec<String> {
    let r = client
        .get(format!("{apid}/api/machines/{machine}/agent-log"))
        .header("cookie", cookie)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "reading the log: {}", r.status());
    r.json::<serde_json::Value>()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_log_flood_from_many_tokens_stays_within_the_budgets() {
    let Some(mut lab) = AttackLab::start() else {
        return;
    };
    let legit_mac = MacAddr::new([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
    let mut macs: Vec<MacAddr> = (0..ATTACKER_MACHINES).map(mac).collect();
    macs.push(legit_mac);
    let names = register_all(&mut lab, &macs);
    let legit_name = names.last().unwrap().clone();
    // Tokens as booting machines get them: each boot seen by dhcpd, then its script from ipxed.
    let tokens: Vec<String> = lab.agent_tokens(
        &(0..ATTACKER_MACHINES)
            .map(|i| mac(i).to_string())
            .collect::<Vec<_>>(),
    );
    let legit_token = lab.agent_token(&legit_mac.to_string());
    let apid = lab.apid.clone();
    let agents = lab.apid_agent.clone();
    let pid = apid_pid(&lab);
    let before = rss(pid);

    let flood = serde_json::json!({
        "lines": (0..100).map(|i| format!("{i:03}{}", "A".repeat(997))).collect::<Vec<_>>()
    });
    let accepted = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let sent_bytes = AtomicUsize::new(0);
    let body_len = serde_json::to_vec(&flood).unwrap().len();
    let started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (legit_statuses, unseen, last_legit) = std::thread::scope(|s| {
        let attack = s.spawn(|| {
            lab.as_attacker(|| {
                std::thread::scope(|s| {
                    for t in 0..THREADS {
                        let (tokens, agents, flood) = (&tokens, &agents, &flood);
                        let (accepted, refused, sent_bytes) = (&accepted, &refused, &sent_bytes);
                        s.spawn(move || {
                            let client = reqwest::blocking::Client::builder()
                                .timeout(Duration::from_secs(30))
                                .build()
                                .unwrap();
                            for token in tokens.iter().skip(t as usize).step_by(THREADS as usize) {
                                for _ in 0..REQUESTS_EACH {
                                    let r = post_lines(&client, agents, token, flood);
                                    sent_bytes.fetch_add(body_len, Ordering::Relaxed);
                                    if r.status() == 204 {
                                        accepted.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        refused.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                        });
                    }
                });
            });
            done.store(true, Ordering::Relaxed);
        });
        // Meanwhile a legitimate agent, on the lab's side, reports its progress every second
        // (a real one flushes after each poll, every 10 s), and an operator reads each line
        // back right after it was sent.
        let legit = lab.as_client(|| {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let cookie = operator_cookie(&client, &apid);
            let mut statuses = Vec::new();
            let mut unseen = Vec::new();
            let mut last = String::new();
            for i in 0.. {
                last = format!("legit step {i}");
                let line = serde_json::json!({ "lines": [&last] });
                statuses.push(post_lines(&client, &agents, &legit_token, &line).status());
                if !operator_reads(&client, &apid, &cookie, &legit_name).contains(&last) {
                    unseen.push(last.clone());
                }
                if done.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (statuses, unseen, last)
        });
        attack.join().unwrap();
        legit
    });
    let elapsed = started.elapsed();
    // The allocator may keep freed pages a moment; what is held afterwards is the figure.
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(pid);

    // And after the flood.
    let legit_lines = lab.as_client(|| {
        let client = reqwest::blocking::Client::new();
        let cookie = operator_cookie(&client, &apid);
        operator_reads(&client, &apid, &cookie, &legit_name)
    });

    // The rate: one token sending as fast as it can is told to wait.
    let (ok, too_many, retry_after) = lab.as_attacker(|| {
        let client = reqwest::blocking::Client::new();
        let small = serde_json::json!({"lines": ["x"]});
        let (mut ok, mut too_many, mut retry_after) = (0, 0, None);
        for _ in 0..40 {
            let r = post_lines(&client, &agents, &tokens[0], &small);
            match r.status().as_u16() {
                204 => ok += 1,
                429 => {
                    too_many += 1;
                    retry_after = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned());
                }
                other => panic!("unexpected {other}"),
            }
        }
        (ok, too_many, retry_after)
    });

    // The lines are in the store: its file holds the total budget (32 MiB counted as text and
    // a row overhead each) and what SQLite keeps around it (free pages of evicted lines,
    // reused; partly filled pages). The WAL is printed: it is reused after each checkpoint,
    // and how large it grew depends on how often readers let a checkpoint finish.
    let store = lab.lab.store();
    let file_len = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", store.display()))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let (stored, wal) = (file_len(""), file_len("-wal"));

    // apid's own log got a sample of the flood, not the flood.
    let journal_lines = lab
        .lab
        .log("apid")
        .lines()
        .filter(|l| l.contains("AAAAAAAAAA"))
        .count();
    let grown = after.saturating_sub(before);
    println!(
        "log flood: {} machines × {REQUESTS_EACH} requests of 100 × 1 000 characters \
         ({:.0} MiB sent) in {:.1} s: {} accepted, {} refused; apid RSS {:.1} → {:.1} MiB \
         (+{:.1} MiB; budget 32 MiB); legitimate agent {:?}, each line read back by an operator during the flood \
         ({} not), {} readable after; \
         one token's 40 quick requests: {ok} accepted, {too_many} × 429 (Retry-After {:?}); \
         {journal_lines} flood lines in apid's log of {} sent; database {:.1} MiB, WAL {:.1} MiB",
        ATTACKER_MACHINES,
        mib(sent_bytes.load(Ordering::Relaxed) as u64),
        elapsed.as_secs_f64(),
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        mib(before),
        mib(after),
        mib(grown),
        legit_statuses
            .iter()
            .map(reqwest::StatusCode::as_u16)
            .collect::<Vec<_>>(),
        unseen.len(),
        legit_lines.len(),
        retry_after,
        accepted.load(Ordering::Relaxed) * 100,
        mib(stored),
        mib(wal),
    );
    assert!(
        journal_lines <= 3_000,
        "{journal_lines} flood lines reached apid's log"
    );
    assert!(
        unseen.is_empty(),
        "the operator did not see, right after they were sent: {unseen:?}"
    );
    assert!(
        legit_statuses.iter().all(|s| s.as_u16() == 204),
        "the legitimate agent was refused: {legit_statuses:?}"
    );
    assert!(
        legit_lines.contains(&last_legit),
        "the operator sees the legitimate agent's newest line: {legit_lines:?}"
    );
    // The total budget (32 MiB) and what the flood's requests cost in flight, with room for
    // the allocator's keeping of freed memory; before the budgets this flood held gigabytes'
    // worth (240 MB of lines kept whole).
    assert!(
        grown < 96 << 20,
        "apid grew by {:.1} MiB under the flood",
        mib(grown)
    );
    assert!(
        stored < 96 << 20,
        "the database holds {:.1} MiB after the flood",
        mib(stored)
    );
    assert!(too_many >= 5, "{ok} accepted, {too_many} refused");
    let wait: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
}
