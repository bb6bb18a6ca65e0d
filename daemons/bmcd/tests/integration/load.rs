//! 200 BMCs polled at once: a load tool in the test answers as 200 Redfish systems (each
//! answer 50 ms late, like a slow BMC), and bmcd must read every one of them on every
//! interval without falling behind. Prints the figures (docs/performance.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::fixture::{Fixture, redfish};

const SYSTEMS: usize = 200;
const ANSWER_DELAY: Duration = Duration::from_millis(50);

type Seen = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// Answers `GET /redfish/v1/Systems/<n>` with `{"PowerState": "On"}` after [`ANSWER_DELAY`],
/// keeping connections alive; records when each path was asked.
async fn serve(listener: TcpListener, seen: Seen) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                seen.lock()
                    .unwrap()
                    .entry(path.clone())
                    .or_default()
                    .push(Instant::now());
                tokio::time::sleep(ANSWER_DELAY).await;
                let body =
                    format!(r#"{{"@odata.id":"{path}","Id":"x","PowerState":"On","Boot":{{}}}}"#);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test]
async fn two_hundred_bmcs_are_polled_on_every_interval() {
    let interval = Duration::from_secs(2);
    let Some(fx) = Fixture::new("poll_interval = \"2s\"\npoll_jitter_percent = 10").await else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    tokio::spawn(serve(listener, Arc::clone(&seen)));
    let _bmcd = fx.start().await;
    for i in 0..SYSTEMS {
        let m = fx.machine(u8::try_from(i).unwrap()).await;
        fx.set_bmc(
            m.id,
            redfish(
                &format!("http://127.0.0.1:{port}"),
                "load",
                Some(&format!("/redfish/v1/Systems/{i}")),
            ),
            "load-password",
        )
        .await;
    }
    let start = Instant::now();
    // bmcd re-reads the BMC list within 2 s (min(10 s, interval)); then 5 intervals.
    let window = interval * 6;
    tokio::time::sleep(window + Duration::from_secs(2)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), SYSTEMS, "systems polled: {}", seen.len());
    // Each was polled on (nearly) every interval after its first poll.
    let mut fewest = usize::MAX;
    let mut longest_gap = Duration::ZERO;
    for times in seen.values() {
        let in_window: Vec<_> = times
            .iter()
            .filter(|t| t.duration_since(start) <= window + Duration::from_secs(2))
            .collect();
        fewest = fewest.min(in_window.len());
        for pair in in_window.windows(2) {
            longest_gap = longest_gap.max(pair[1].duration_since(*pair[0]));
        }
    }
    // The first round: every system's first poll, from the first to the last.
    let firsts: Vec<Instant> = seen.values().map(|t| t[0]).collect();
    let first = *firsts.iter().min().unwrap();
    let last = *firsts.iter().max().unwrap();
    let round = last.duration_since(first);
    println!(
        "bmcd poll load: {SYSTEMS} BMCs (answers {} ms late), interval {:?} ±10 %: first round \
         spread over {:.2} s, fewest polls per BMC in {:?}: {fewest}, longest gap between two \
         polls of one BMC: {:.2} s",
        ANSWER_DELAY.as_millis(),
        interval,
        round.as_secs_f64(),
        window,
        longest_gap.as_secs_f64(),
    );
    assert!(
        longest_gap < interval * 2,
        "a BMC waited {longest_gap:?} between polls (interval {interval:?}): bmcd fell behind"
    );
    assert!(
        fewest >= 4,
        "a BMC was polled only {fewest} times in {window:?}"
    );
}
