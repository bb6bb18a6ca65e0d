//! Login flood and cross-origin requests: what an attacker on the network can do to apid's
//! operator side.
//!
//! On main before this change, failed logins from 20 source addresses took apid to 3.9 GB of
//! RSS (3.6 GB still held afterwards): every address's burst of attempts ran Argon2 at once,
//! 19 MiB each, on as many blocking threads. Now at most one Argon2 runs per CPU, a short queue
//! waits and the rest are told 503 at once, the 19 MiB buffers are reused, the account being
//! guessed backs off (but not for the address its operator logs in from), and a request that
//! carries the operator's cookie from another origin is refused.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent_log::{apid_pid, mib, rss};
use crate::common::{ADMIN, PASSWORD};
use crate::stack::{ATTACKER_ADDR, AttackLab};

/// Extra source addresses the attacker adds to its interface (41 with its own).
const EXTRA_ADDRESSES: u8 = 40;
/// Requests each address keeps in flight.
const IN_FLIGHT_PER_ADDRESS: usize = 10;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(20);
/// apid's peak RSS must stay under this (main: 3.9 GB with 20 addresses).
const PEAK_BOUND: u64 = 300 << 20;
/// An address the attacker never floods from: "the operator from somewhere new".
const NEW_PLACE: &str = "10.99.0.60";

/// Adds `addr`/24 to the attacker's eth0.
fn add_address(lab: &AttackLab, addr: &str) {
    let out = lab
        .attacker_command("ip")
        .args(["addr", "add", &format!("{addr}/24"), "dev", "eth0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip addr add {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A field of /proc/<pid>/status in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap()
        * 1024
}

/// Status counts of the flood's answers.
#[derive(Default)]
struct Tally {
    unauthorized: AtomicU64,
    /// Of which wrong passwords for the operator's account actually checked.
    account_checked: AtomicU64,
    limited: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
}

/// Logs in as the operator: retries while apid says 503 (as the web UI's user would, after
/// `Retry-After`), gives up after `within`. Returns the cookie and how long it took.
fn operator_login(
    client: &reqwest::blocking::Client,
    apid: &str,
    within: Duration,
) -> Result<(String, Duration), String> {
    let start = Instant::now();
    loop {
        let r = client
            .post(format!("{apid}/api/auth/login"))
            .json(&json!({"username": ADMIN, "password": PASSWORD}))
            .send()
            .map_err(|e| format!("login: {e}"))?;
        match r.status().as_u16() {
            200 => {
                let cookie = r.headers()["set-cookie"]
                    .to_str()
                    .unwrap()
                    .split(';')
                    .next()
                    .unwrap()
                    .to_owned();
                return Ok((cookie, start.elapsed()));
            }
            503 if start.elapsed() < within => {
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                std::thread::sleep(Duration::from_secs(wait));
            }
            other => {
                return Err(format!(
                    "login answered {other} after {:?}",
                    start.elapsed()
                ));
            }
        }
    }
}

#[test]
fn a_login_flood_from_many_addresses_stays_bounded_and_the_operator_gets_in() {
    let Some(mut lab) = AttackLab::start() else {
        return;
    };
    lab.lab.register_machine("52:54:00:00:00:01");
    let mut sources: Vec<IpAddr> = vec![ATTACKER_ADDR.parse().unwrap()];
    for i in 0..EXTRA_ADDRESSES {
        let addr = format!("10.99.0.{}", 10 + i);
        add_address(&lab, &addr);
        sources.push(addr.parse().unwrap());
    }
    add_address(&lab, NEW_PLACE);
    let apid = lab.apid.clone();
    let pid = apid_pid(&lab);

    // The operator logs in once before: the lab's address becomes the account's known one.
    lab.as_client(|| {
        let client = reqwest::blocking::Client::new();
        operator_login(&client, &apid, Duration::from_secs(5)).unwrap();
    });
    let before = status_bytes(pid, "VmRSS");

    let tally = Tally::default();
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(before);
    let operator_log: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let (logins, lists, new_place) = std::thread::scope(|s| {
        // apid's RSS, every 50 ms (until the flood is over, or a thread of this test panicked
        // and the scope is waiting for this one).
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) && started.elapsed() < FLOOD * 3 {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // The flood: every address keeps IN_FLIGHT_PER_ADDRESS wrong passwords in flight, half
        // for the operator's account, half for names that do not exist (each still costs a
        // dummy Argon2 verification on main), retrying 100 ms after each answer.
        let attack = s.spawn(|| {
            lab.as_attacker(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut tasks = Vec::new();
                    for (a, source) in sources.iter().enumerate() {
                        let client = reqwest::Client::builder()
                            .local_address(*source)
                            .timeout(Duration::from_secs(30))
                            .build()
                            .unwrap();
                        for t in 0..IN_FLIGHT_PER_ADDRESS {
                            let (client, apid, tally) = (client.clone(), apid.clone(), &tally);
                            tasks.push(async move {
                                let mut n = 0u64;
                                while started.elapsed() < FLOOD {
                                    n += 1;
                                    let username = if (t + a) % 2 == 0 {
                                        ADMIN.to_owned()
                                    } else {
                                        format!("guess-{a}-{t}-{n}")
                                    };
                                    let r = client
                                        .post(format!("{apid}/api/auth/login"))
                                        .json(&json!({"username": username, "password": format!("wrong-{n}")}))
                                        .send()
                                        .await;
                                    let status = r.as_ref().map(|r| r.status().as_u16());
                                    if username == ADMIN && matches!(status, Ok(401)) {
                                        tally.account_checked.fetch_add(1, Ordering::Relaxed);
                                    }
                                    let counter = match status {
                                        Ok(401) => &tally.unauthorized,
                                        Ok(429) => &tally.limited,
                                        Ok(503) => &tally.busy,
                                        Ok(_) => &tally.other,
                                        Err(_) => &tally.errors,
                                    };
                                    counter.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            });
                        }
                    }
                    futures::future::join_all(tasks).await;
                });
            });
        });
        // Meanwhile, from somewhere new, a wrong password and then at once the right one for
        // the guessed account: the right one is held back by the account's backoff too, like
        // every attempt from a stranger (only the operator's known address is spared).
        let new_place = s.spawn(|| {
            std::thread::sleep(Duration::from_secs(5));
            lab.as_attacker(|| {
                let client = reqwest::blocking::Client::builder()
                    .local_address(NEW_PLACE.parse::<IpAddr>().unwrap())
                    .build()
                    .unwrap();
                let try_login = |password: &str| {
                    client
                        .post(format!("{apid}/api/auth/login"))
                        .json(&json!({"username": ADMIN, "password": password}))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                };
                // Until the wrong one is checked (the account may be backing off already).
                let deadline = Instant::now() + Duration::from_secs(10);
                while try_login("a wrong guess") != 401 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(200));
                }
                try_login(PASSWORD)
            })
        });
        // Meanwhile the operator, from the known address, logs in afresh every 3 s (within
        // their address's 10 a minute) and lists the machines every half second.
        let (logins, lists) = lab.as_client(|| {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap();
            let (mut logins, mut lists) = (Vec::new(), Vec::new());
            let mut cookie = String::new();
            let mut last_login: Option<Instant> = None;
            while started.elapsed() < FLOOD {
                let took = if last_login.is_none_or(|t| t.elapsed() >= Duration::from_secs(3)) {
                    let (c, took) = operator_login(&client, &apid, Duration::from_secs(10))
                        .unwrap_or_else(|e| panic!("the operator could not log in: {e}"));
                    cookie = c;
                    last_login = Some(Instant::now());
                    logins.push(took);
                    format!("login {took:.2?}, ")
                } else {
                    String::new()
                };
                let t = Instant::now();
                let r = client
                    .get(format!("{apid}/api/machines"))
                    .header("cookie", &cookie)
                    .send()
                    .unwrap();
                lists.push(t.elapsed());
                let status = r.status();
                let body: Value = r.json().unwrap();
                operator_log.lock().unwrap().push(format!(
                    "{:>5.1}s {took}list {status} {:.2?}",
                    started.elapsed().as_secs_f64(),
                    lists.last().unwrap()
                ));
                assert_eq!(status, 200, "listing machines during the flood");
                assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
                std::thread::sleep(Duration::from_millis(500));
            }
            (logins, lists)
        });
        let flood = attack.join();
        let new_place = new_place.join();
        done.store(true, Ordering::Relaxed);
        flood.unwrap();
        (logins, lists, new_place.unwrap())
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = status_bytes(pid, "VmRSS");
    let hwm = status_bytes(pid, "VmHWM");
    let peak = peak.load(Ordering::Relaxed).max(hwm);
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let total = count(&tally.unauthorized)
        + count(&tally.limited)
        + count(&tally.busy)
        + count(&tally.other)
        + count(&tally.errors);
    for line in operator_log.lock().unwrap().iter() {
        println!("operator {line}");
    }
    let slowest_login = logins.iter().max().copied().unwrap_or_default();
    let slowest_list = lists.iter().max().copied().unwrap_or_default();
    println!(
        "login flood: {} addresses × {IN_FLIGHT_PER_ADDRESS} in flight for {FLOOD:?}: {total} \
         attempts: {} × 401 ({} of them guesses at the operator's account), {} × 429, {} × 503, \
         {} other, {} errors",
        sources.len(),
        count(&tally.unauthorized),
        count(&tally.account_checked),
        count(&tally.limited),
        count(&tally.busy),
        count(&tally.other),
        count(&tally.errors),
    );
    println!(
        "apid RSS: before {:.1} MiB, peak {:.1} MiB (VmHWM {:.1}), after {:.1} MiB",
        mib(before),
        mib(peak),
        mib(hwm),
        mib(after)
    );
    println!(
        "operator: {} logins (slowest {slowest_login:.2?}), {} listings (slowest \
         {slowest_list:.2?}); the right password from a new address right after a wrong one \
         during the flood: {new_place}",
        logins.len(),
        lists.len()
    );
    assert!(peak < PEAK_BOUND, "peak RSS {:.1} MiB", mib(peak));
    assert_eq!(count(&tally.other), 0, "no answer but 401, 429 or 503");
    assert!(
        count(&tally.unauthorized) > 0,
        "the flood reached password checks"
    );
    assert!(
        logins.len() >= 5,
        "the operator logged in {} times",
        logins.len()
    );
    assert!(
        lists.len() >= 20,
        "the operator listed {} times",
        lists.len()
    );
    assert!(slowest_login < Duration::from_secs(10));
    assert!(slowest_list < Duration::from_secs(2), "{slowest_list:?}");
    assert_eq!(
        new_place, 429,
        "the guessed account is held back for strangers"
    );
    // Backoff 1, 2, 4, 8 … s: a handful of guesses at the account in 20 s, whatever the number
    // of addresses (41 addresses' own limits alone would allow about 70).
    assert!(
        count(&tally.account_checked) <= 8,
        "{} guesses at the operator's account checked",
        count(&tally.account_checked)
    );
}

#[test]
fn cross_origin_requests_with_the_operators_cookie_change_nothing() {
    let Some(mut lab) = AttackLab::start() else {
        return;
    };
    let name = lab.lab.register_machine("52:54:00:00:00:02");
    let apid = lab.apid.clone();
    let (cookie, _) = lab.as_client(|| {
        operator_login(
            &reqwest::blocking::Client::new(),
            &apid,
            Duration::from_secs(5),
        )
        .unwrap()
    });
    // The browser of a logged-in operator, on a page from ipxed (same host, another port:
    // same-site, so SameSite=Strict sends the cookie) or from anywhere else.
    let statuses = lab.as_attacker(|| {
        let client = reqwest::blocking::Client::new();
        let machine = format!("{apid}/api/machines/{name}");
        let mut statuses = Vec::new();
        for origin in [
            Some("http://10.99.0.1:8080"),
            Some("http://evil.example"),
            None,
        ] {
            let forged = [
                ("logout", client.post(format!("{apid}/api/auth/logout"))),
                (
                    "token",
                    client
                        .post(format!("{apid}/api/tokens"))
                        .json(&json!({"name": "evil"})),
                ),
                (
                    "patch",
                    client.patch(&machine).json(&json!({"hostname": "pwned"})),
                ),
                (
                    "delete",
                    client.delete(format!("{machine}?resourceVersion=1")),
                ),
            ];
            for (what, req) in forged {
                let mut req = req.header("cookie", &cookie);
                if let Some(o) = origin {
                    req = req.header("origin", o);
                }
                statuses.push((what, origin, req.send().unwrap().status().as_u16()));
            }
        }
        statuses
    });
    for (what, origin, status) in &statuses {
        println!("forged {what} from {origin:?} with the operator's cookie: {status}");
        assert_eq!(*status, 403, "{what} from {origin:?}");
    }
    // Nothing changed: the session lives, no token exists, the machine is as it was.
    lab.as_client(|| {
        let client = reqwest::blocking::Client::new();
        let get = |path: &str| -> (u16, Value) {
            let r = client
                .get(format!("{apid}{path}"))
                .header("cookie", &cookie)
                .send()
                .unwrap();
            (r.status().as_u16(), r.json().unwrap_or(Value::Null))
        };
        assert_eq!(get("/api/auth/me").0, 200, "the session survived");
        assert_eq!(get("/api/tokens").1, json!([]), "no token was made");
        let (st, m) = get(&format!("/api/machines/{name}"));
        assert_eq!(st, 200, "the machine still exists");
        assert!(m.get("hostname").is_none(), "{m}");
        // The web UI's own requests (same origin) still work.
        let r = client
            .post(format!("{apid}/api/auth/logout"))
            .header("cookie", &cookie)
            .header("origin", &apid)
            .send()
            .unwrap();
        assert_eq!(r.status(), 204);
    });
}
