//! The agents' console lines are kept in the store: they outlive apid, and what a flood of
//! them costs in database writes.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use dragonfly_apid::{Apid, Listeners, config::RawApid};
use dragonfly_runtime::{Context, Credentials, Daemon, Secret};
use dragonfly_store::Db;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{KEY, Server, TestDb, browser, config, mac, report, token_for};

/// apid as the daemon runs it (`run`, both listeners), on `store`'s files.
struct Running {
    operator: String,
    agent: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), dragonfly_apid::ApidError>>,
}

async fn start(store: &TestDb) -> Running {
    let cfg = config(|c: &mut RawApid| c.auth_db = Some(store.auth_db_path()));
    let credentials = Credentials::from_secrets(
        &Apid::credentials(&cfg),
        vec![("boot-token-key", Secret::new(KEY.to_vec()))],
    )
    .unwrap();
    // A handle of its own, as a new process opens the file.
    let db = Db::open(&store.path).await.unwrap();
    let ctx = Context::<Apid>::new(cfg, db, None, credentials);
    let operator = TcpListener::bind("127.0.0.1:0").unwrap();
    let agent = TcpListener::bind("127.0.0.1:0").unwrap();
    operator.set_nonblocking(true).unwrap();
    agent.set_nonblocking(true).unwrap();
    let shutdown = CancellationToken::new();
    Running {
        operator: format!("http://{}", operator.local_addr().unwrap()),
        agent: format!("http://{}", agent.local_addr().unwrap()),
        shutdown: shutdown.clone(),
        task: tokio::spawn(dragonfly_apid::run(
            ctx,
            Listeners { operator, agent },
            shutdown,
        )),
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("drained")
            .unwrap()
            .unwrap();
    }
}

fn lines_of(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_lines_survive_an_apid_restart() {
    let store = TestDb::new();
    let http = reqwest::Client::new();
    let first = start(&store).await;
    let token = token_for(&store.db, mac(1)).await;
    let reg = http
        .post(format!("{}/api/machines/register", first.agent))
        .bearer_auth(&token)
        .json(&report(&[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status(), 201);
    let name = reg.json::<Value>().await.unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for batch in [
        vec!["mage: partitioning /dev/vda"],
        vec!["mage: no disk matches", "action disk failed"],
    ] {
        let r = http
            .post(format!("{}/api/agent/log", first.agent))
            .bearer_auth(&token)
            .json(&json!({ "lines": batch }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    first.stop().await;

    // A new apid on the same files: nothing of the first one's memory is left.
    let (user, password) = ("admin", "admin-correct-horse");
    store
        .auth_db()
        .auth()
        .create_user(
            user,
            &dragonfly_apid::auth::hash_password(password).unwrap(),
            true,
            jiff::Timestamp::now(),
        )
        .await
        .unwrap();
    let second = start(&store).await;
    let operator = browser(&second.operator);
    let login = operator
        .post(format!("{}/api/auth/login", second.operator))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let read: Value = operator
        .get(format!("{}/api/machines/{name}/agent-log", second.operator))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        lines_of(&read),
        [
            "mage: partitioning /dev/vda",
            "mage: no disk matches",
            "action disk failed"
        ]
    );
    assert!(
        read[0]["receivedAt"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok()
    );
    second.stop().await;
}

/// What a flood of log requests costs now that every accepted one is a write transaction:
/// many machines' agents sending full requests as fast as one apid takes them, rate limit
/// lifted. Long lines (100 of 1 000 characters, as the attack test sends: the store writes
/// only the 29 that fit a machine's 32 KiB) and short ones (100 of 20: all written). Prints
/// the figures; fails only if the budgets are not held or apid takes fewer than 200 lines a
/// second. (Figures of a debug build: apid's own code, which cleans every character of
/// every line, is not optimised in tests; SQLite is.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_console_lines_costs_bounded_writes() {
    const MACHINES: u8 = 40;
    const REQUESTS_EACH: usize = 10;
    let s = Server::start_with(config(|c| {
        c.agent_log_requests_per_minute = Some(100_000);
        // The default per machine, a total of 16 machines' worth: the flood evicts.
        c.agent_log_bytes_total = Some((16 * 32) << 10);
    }))
    .await;
    let mut tokens = Vec::new();
    for n in 1..=MACHINES {
        let token = token_for(&s.db, mac(n)).await;
        let r = s
            .http
            .post(s.url("/api/machines/register"))
            .bearer_auth(&token)
            .json(&report(&[n]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        tokens.push(token);
    }
    let url = s.url("/api/agent/log");
    for chars in [1_000, 20] {
        let flood = json!({
            "lines": (0..100).map(|i| format!("{i:03}{}", "A".repeat(chars - 3))).collect::<Vec<_>>()
        });
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for token in &tokens {
            let (http, url, flood, token) =
                (s.http.clone(), url.clone(), flood.clone(), token.clone());
            tasks.spawn(async move {
                for _ in 0..REQUESTS_EACH {
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&flood)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 204);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let requests = f64::from(MACHINES) * REQUESTS_EACH as f64;
        // What the store writes of each request: the lines that fit a machine's budget.
        let written = (32 << 10) / (chars + dragonfly_store::console::LINE_OVERHEAD);
        let written = written.min(100) as f64;
        let usage = s.db.console().usage().await.unwrap();
        let file = |suffix: &str| {
            std::fs::metadata(format!("{}{suffix}", s.store.path.display()))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        println!(
            "console flood: {requests} requests of 100 × {chars} characters from {MACHINES} \
             machines in {elapsed:.2} s: {:.0} requests/s, {:.0} lines/s received, {:.0} rows/s \
             written; kept {} bytes for {} machines; database {} KiB, WAL {} KiB",
            requests / elapsed,
            requests * 100.0 / elapsed,
            requests * written / elapsed,
            usage.bytes,
            usage.machines,
            file("") >> 10,
            file("-wal") >> 10,
        );
        assert!(usage.bytes <= (16 * 32) << 10, "{usage:?}");
        assert!(requests * 100.0 / elapsed >= 200.0);
    }
}
