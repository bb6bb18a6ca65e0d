//! Agent identity: an attacker on the provisioning network tries to get, borrow or reuse a
//! machine's identity, and to grow the inventory without bound.
//!
//! On main before this change, `GET /boot/{mac}` gave anyone a 24 h token for any MAC; a token
//! for the attacker's MAC A rewrote machine B with `{"macs":[A,B]}` and moved B's identity to
//! A with B's SMBIOS UUID; a token kept working across boots and after provisioning; and one
//! host created 200 anonymous machines in 0.2 s. Now ipxed mints only for boots dhcpd saw
//! (from the address it gave, when it gave one; one sighting, one session), apid accepts a
//! token only within its MAC's current boot session, a report describes its reporter's machine
//! only (a claim on another's MAC or UUID is refused with 409 and recorded for operators),
//! and new machines are rate-limited and capped.
//!
//! Boots are witnessed by recording dhcpd's sighting in the store ([`AttackLab::sight`]) rather
//! than by a DHCP exchange: dhcpd's own tests prove it records one for every boot answer.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dragonfly_core::MacAddr;
use dragonfly_core::lifecycle::LifecycleEvent;
use serde_json::{Value, json};

use crate::stack::{ATTACKER_ADDR, AttackLab};

/// The attacker's own machine's MAC.
const ATTACKER_MAC: &str = "02:66:00:00:00:01";
/// A legitimate machine's MAC: the victim.
const VICTIM_MAC: &str = "52:54:00:00:00:b1";
/// The victim's SMBIOS UUID.
const VICTIM_UUID: &str = "4c4c4544-0042-3510-8052-b1c04f4b4d32";

fn report(macs: &[&str], uuid: Option<&str>) -> Value {
    let mut r = json!({
        "macs": macs,
        "cpu": {"model": "Simulated CPU", "cores": 4, "threads": 8},
        "memoryBytes": 8_589_934_592_u64,
        "disks": [{"name": "sda", "sizeBytes": 500_107_862_016_u64}],
    });
    if let Some(u) = uuid {
        r["smbiosUuid"] = json!(u);
    }
    r
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `POST /api/machines/register` with `token`: (status, body).
fn register(apid: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{apid}/api/machines/register"))
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// An agent route's status for `token`: instructions (GET) or console lines (POST).
fn agent_status(apid: &str, token: &str) -> (u16, u16) {
    let c = client();
    let instructions = c
        .get(format!("{apid}/api/agent/instructions"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .status()
        .as_u16();
    let log = c
        .post(format!("{apid}/api/agent/log"))
        .bearer_auth(token)
        .json(&json!({"lines": ["replayed"]}))
        .send()
        .unwrap()
        .status()
        .as_u16();
    (instructions, log)
}

/// An operator's GET of `path` (logged in from the lab).
fn operator_get(lab: &AttackLab, path: &str) -> Value {
    let apid = lab.apid.clone();
    let path = path.to_owned();
    lab.as_client(move || {
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let login = c
            .post(format!("{apid}/api/auth/login"))
            .json(&json!({"username": crate::common::ADMIN, "password": crate::common::PASSWORD}))
            .send()
            .unwrap();
        assert!(login.status().is_success());
        let cookie = login
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        c.get(format!("{apid}{path}"))
            .header("cookie", cookie)
            .send()
            .unwrap()
            .json()
            .unwrap()
    })
}

/// Every machine as the operator sees it.
fn machines(lab: &AttackLab) -> Vec<Value> {
    operator_get(lab, "/api/machines?limit=500")["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// Moves the machine owning `mac` to `Ready` through the lifecycle, as workflowd will.
fn provision(lab: &AttackLab, mac: &str) {
    let store = dragonfly_store::BlockingDb::open(&lab.store).unwrap();
    let machines = store.db().machines();
    let id = store
        .block_on(machines.get_by_mac(mac.parse::<MacAddr>().unwrap()))
        .unwrap()
        .unwrap()
        .id;
    // Any workflow id will do: no workflowd runs in this lab.
    let wf = Some(id.0);
    for (event, workflow) in [
        (LifecycleEvent::AssignOs, wf),
        (LifecycleEvent::StartProvisioning, wf),
        (LifecycleEvent::ProvisioningSucceeded, None),
    ] {
        store
            .block_on(machines.transition(id, None, event, workflow, jiff::Timestamp::now()))
            .unwrap();
    }
    drop(store);
    dragonfly_testkit::chown_for_unprivileged(lab.store.parent().unwrap()).unwrap();
}

#[test]
fn an_attacker_cannot_get_borrow_or_reuse_a_machines_identity() {
    let Some(lab) = AttackLab::start() else {
        return;
    };
    let apid = lab.apid_agent.clone();
    let victim = [VICTIM_MAC.to_owned()];

    // 1. A token for a foreign MAC. Never seen booting: the script comes without a token.
    let asked = lab.boot_tokens(&victim, true);
    assert_eq!(asked, [None], "a MAC nobody saw boot gets no token");
    // Seen booting at the address dhcpd gave it (reservation mode): still none for the
    // attacker, who asks from another address.
    lab.sight(&victim, Some(Ipv4Addr::new(10, 99, 0, 177)));
    assert_eq!(
        lab.boot_tokens(&victim, true),
        [None],
        "not from its address"
    );
    // Seen booting without an address (ProxyDHCP): the machine's own request gets the token,
    // and an attacker asking after it gets none (one sighting, one session).
    let victim_token = lab.agent_token(VICTIM_MAC);
    assert_eq!(
        lab.boot_tokens(&victim, true),
        [None],
        "already minted for this boot"
    );
    println!("token for a foreign MAC: never sighted, other address, already minted: refused");

    // The victim registers, with its SMBIOS UUID.
    let (status, victim_machine) = lab.as_client(|| {
        register(
            &apid,
            &victim_token,
            &report(&[VICTIM_MAC], Some(VICTIM_UUID)),
        )
    });
    assert_eq!(status, 201, "{victim_machine}");
    let before = machines(&lab);

    // 2. Identity theft. The attacker gets a token for its own MAC honestly: dhcpd leased it
    // its address and ipxed answers from it.
    let own = [ATTACKER_MAC.to_owned()];
    lab.sight(&own, Some(ATTACKER_ADDR.parse().unwrap()));
    let attacker_token = lab
        .boot_tokens(&own, true)
        .remove(0)
        .expect("its own token");
    let by_mac_set = report(&[ATTACKER_MAC, VICTIM_MAC], None);
    let by_uuid = report(&[ATTACKER_MAC], Some(VICTIM_UUID));
    let (a, b) = lab.as_attacker(|| {
        (
            register(&apid, &attacker_token, &by_mac_set),
            register(&apid, &attacker_token, &by_uuid),
        )
    });
    assert_eq!(a.0, 409, "by MAC set: {}", a.1);
    assert_eq!(b.0, 409, "by SMBIOS UUID: {}", b.1);
    for body in [&a.1, &b.1] {
        assert!(
            !body
                .to_string()
                .contains(victim_machine["id"].as_str().unwrap()),
            "a refusal tells the attacker nothing about the owner: {body}"
        );
    }
    assert_eq!(machines(&lab), before, "nothing written");
    let conflicts = operator_get(&lab, "/api/conflicts");
    let conflicts = conflicts.as_array().unwrap();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    for c in conflicts {
        assert_eq!(c["ownerId"], victim_machine["id"]);
        assert_eq!(c["claimantMac"], ATTACKER_MAC);
    }
    println!(
        "identity theft: by MAC set {}, by SMBIOS UUID {}, nothing written, {} \
         conflicts shown to the operator",
        a.0,
        b.0,
        conflicts.len()
    );

    // The attacker may still register its own machine, alone.
    let (status, _) =
        lab.as_attacker(|| register(&apid, &attacker_token, &report(&[ATTACKER_MAC], None)));
    assert_eq!(status, 201);

    // 3. Replay of an old token after the machine booted again.
    let renewed = lab.agent_token(VICTIM_MAC);
    assert_ne!(renewed, victim_token);
    let replay = lab.as_attacker(|| {
        (
            agent_status(&apid, &victim_token),
            register(&apid, &victim_token, &report(&[VICTIM_MAC], None)).0,
        )
    });
    assert_eq!(replay, ((401, 401), 401), "the old boot's token");
    assert_eq!(
        lab.as_client(|| agent_status(&apid, &renewed)).0,
        200,
        "the new boot's token works"
    );
    println!("replay of the previous boot's token: {replay:?} (instructions, log), register");

    // 4. After Ready: the provisioned machine's token is revoked.
    provision(&lab, VICTIM_MAC);
    let after_ready = lab.as_attacker(|| agent_status(&apid, &renewed));
    assert_eq!(after_ready, (401, 401));
    let renew = lab.as_attacker(|| {
        client()
            .post(format!("{apid}/api/agent/renew"))
            .bearer_auth(&renewed)
            .send()
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(renew, 401);
    println!("token after Ready: {after_ready:?} (instructions, log), renew {renew}");
}

#[test]
fn a_registration_flood_is_bounded_while_a_known_machine_is_served() {
    const FLOOD: usize = 800;
    let Some(lab) = AttackLab::start() else {
        return;
    };
    let apid = lab.apid_agent.clone();
    // A legitimate machine, registered before the flood.
    let legit_token = lab.agent_token(VICTIM_MAC);
    let (status, _) = lab.as_client(|| register(&apid, &legit_token, &report(&[VICTIM_MAC], None)));
    assert_eq!(status, 201);
    // The attacker's flood: FLOOD random MACs, each seen booting (say the DHCP limit let them
    // through) and each given its token by ipxed in the attacker's namespace.
    let macs: Vec<String> = (0..FLOOD)
        .map(|i| {
            let [_, a, b, c] = u32::try_from(i).unwrap().to_be_bytes();
            MacAddr::new([0x02, 0x66, 0x01, a, b, c]).to_string()
        })
        .collect();
    lab.sight(&macs, None);
    let tokens: Vec<String> = lab
        .boot_tokens(&macs, true)
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let bodies: Vec<Value> = macs.iter().map(|m| report(&[m.as_str()], None)).collect();
    let started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (created, limited, other, legit) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            let statuses = flood_from_attacker(&lab, &apid, &tokens, &bodies);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            statuses
        });
        // Meanwhile the known machine keeps being served.
        let legit = lab.as_client(|| {
            let mut legit = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                legit.push(agent_status(&apid, &legit_token).0);
                legit.push(register(&apid, &legit_token, &report(&[VICTIM_MAC], None)).0);
                std::thread::sleep(Duration::from_millis(50));
            }
            legit
        });
        let statuses = flood.join().unwrap();
        let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
        (
            count(201),
            count(429),
            statuses.len() - count(201) - count(429),
            legit,
        )
    });
    let elapsed = started.elapsed().as_secs_f64();
    let stored = {
        let store = dragonfly_store::BlockingDb::open(&lab.store).unwrap();
        let n = store.block_on(store.db().machines().count()).unwrap();
        drop(store);
        dragonfly_testkit::chown_for_unprivileged(lab.store.parent().unwrap()).unwrap();
        usize::try_from(n).unwrap()
    };
    println!(
        "registration flood: {FLOOD} new machines asked in {elapsed:.2} s: {created} created, \
         {limited} refused 429, {other} other; {stored} machines stored (1 legitimate); the \
         known machine was answered {:?}",
        {
            let mut l = legit.clone();
            l.sort_unstable();
            l.dedup();
            l
        }
    );
    assert_eq!(other, 0);
    assert_eq!(created + limited, FLOOD);
    // Default limits: a burst of 500 and 20 a second after it.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a few seconds times 20"
    )]
    let bound = 500 + (20.0 * elapsed).ceil() as usize;
    assert!(created <= bound, "{created} created, bound {bound}");
    assert!(limited > 0, "the flood went beyond the burst");
    assert_eq!(
        stored,
        created + 1,
        "nothing written for a refused registration"
    );
    assert!(
        !legit.is_empty() && legit.iter().all(|s| *s == 200),
        "the known machine: {legit:?}"
    );
}

/// The attacker's eight threads registering one new machine per token; the statuses.
fn flood_from_attacker(
    lab: &AttackLab,
    apid: &str,
    tokens: &[String],
    bodies: &[Value],
) -> Vec<u16> {
    lab.as_attacker(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    s.spawn(move || {
                        tokens
                            .iter()
                            .zip(bodies)
                            .skip(t)
                            .step_by(8)
                            .map(|(token, body)| register(apid, token, body).0)
                            .collect::<Vec<u16>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    })
}
