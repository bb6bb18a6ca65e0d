//! `GET /boot/{mac}`: every fate through the HTTP layer and the real store.

use std::time::Duration;

use dragonfly_core::MachineState;
use dragonfly_core::boot_token::{self, TokenError};
use dragonfly_testkit::{NatsServer, require_nats_servers};
use futures::StreamExt;
use uuid::Uuid;

use crate::common::{
    KEY, Server, check_syntax, kernel_arg, mac, register, set_state, sight, sight_here,
};

#[tokio::test]
async fn unknown_mac_gets_discovery_with_a_token_apid_accepts() {
    let s = Server::start().await;
    sight_here(&s.db, mac(1)).await;
    let (status, script) = s
        .get("/boot/52-54-00-12-34-01?platform=efi&arch=x86_64")
        .await;
    assert_eq!(status, 200, "{script}");
    check_syntax(&script);
    assert_eq!(kernel_arg(&script, "dragonfly.mode"), Some("discovery"));
    assert_eq!(
        kernel_arg(&script, "dragonfly.mac"),
        Some("52:54:00:12:34:01")
    );
    assert_eq!(
        kernel_arg(&script, "dragonfly.url"),
        Some("http://10.99.0.1:3000")
    );
    assert_eq!(kernel_arg(&script, "initrd"), Some("initrd.img"));
    assert!(script.contains("unknownMachine"), "{script}");
    assert!(
        script.contains("kernel http://10.99.0.1:8080/agent/vmlinuz "),
        "{script}"
    );
    assert!(
        script.contains("initrd --name initrd.img http://10.99.0.1:8080/agent/initrd.img"),
        "{script}"
    );
    let token = kernel_arg(&script, "dragonfly.token").unwrap();
    let now = jiff::Timestamp::now();
    let claims = boot_token::verify(&KEY, token, now).unwrap();
    assert_eq!(claims.mac, mac(1));
    // Minutes, not a day: the agent renews it.
    let ttl = claims.expires.duration_since(now).as_secs();
    assert!((14 * 60..=15 * 60).contains(&ttl), "{ttl}");
    assert_eq!(
        boot_token::verify(&[0x11; 32], token, now),
        Err(TokenError::BadSignature)
    );
    // The mint opened the MAC's boot session, with the token's nonce.
    let session = s.db.boot().session(mac(1)).await.unwrap().unwrap();
    assert!(session.admits(&claims.nonce, now));
    // One sighting, one token: asking again for the same boot gets the script without one.
    let (status, again) = s.get("/boot/525400123401?platform=efi").await;
    assert_eq!(status, 200);
    check_syntax(&again);
    assert_eq!(kernel_arg(&again, "dragonfly.token"), None, "{again}");
    // A new boot (a new sighting) gets a fresh nonce, and the old boot's session is over.
    sight_here(&s.db, mac(1)).await;
    let (_, next) = s.get("/boot/525400123401?platform=efi").await;
    let next = kernel_arg(&next, "dragonfly.token").unwrap();
    assert_ne!(next, token);
    let next = boot_token::verify(&KEY, next, now).unwrap();
    let session = s.db.boot().session(mac(1)).await.unwrap().unwrap();
    assert!(session.admits(&next.nonce, now));
    assert!(!session.admits(&claims.nonce, now), "the old token is dead");
}

#[tokio::test]
async fn a_boot_dhcpd_did_not_see_gets_no_token() {
    let s = Server::start().await;
    // Never sighted: the script boots the agent, without a token.
    let (status, script) = s.get("/boot/525400123407?platform=efi").await;
    assert_eq!(status, 200);
    check_syntax(&script);
    assert_eq!(kernel_arg(&script, "dragonfly.mode"), Some("discovery"));
    assert_eq!(kernel_arg(&script, "dragonfly.token"), None, "{script}");
    // Sighted at another address (dhcpd offered 10.99.0.7; this request is from 127.0.0.1).
    sight(&s.db, mac(7), Some(std::net::Ipv4Addr::new(10, 99, 0, 7))).await;
    let (_, script) = s.get("/boot/525400123407?platform=efi").await;
    assert_eq!(kernel_arg(&script, "dragonfly.token"), None, "{script}");
    assert!(s.db.boot().session(mac(7)).await.unwrap().is_none());
    // Sighted long ago.
    s.db.boot()
        .sighted(dragonfly_store::boot::Sighting {
            mac: mac(7),
            seen_at: jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10),
            address: None,
            via: dragonfly_store::boot::SightedVia::Proxy,
        })
        .await
        .unwrap();
    let (_, script) = s.get("/boot/525400123407?platform=efi").await;
    assert_eq!(kernel_arg(&script, "dragonfly.token"), None, "{script}");
    // Sighted without an address (ProxyDHCP), just now: a token.
    sight(&s.db, mac(7), None).await;
    let (_, script) = s.get("/boot/525400123407?platform=efi").await;
    assert!(kernel_arg(&script, "dragonfly.token").is_some(), "{script}");
}

#[tokio::test]
async fn registered_machine_gets_discovery_awaiting_assignment() {
    let s = Server::start().await;
    let id = register(&s.db, mac(2)).await;
    sight_here(&s.db, mac(2)).await;
    let (status, script) = s
        .get("/boot/52:54:00:12:34:02?platform=pcbios&arch=x86_64")
        .await;
    assert_eq!(status, 200);
    check_syntax(&script);
    assert_eq!(kernel_arg(&script, "dragonfly.mode"), Some("discovery"));
    assert!(script.contains("awaitingAssignment"), "{script}");
    assert!(script.contains(&id.to_string()), "{script}");
    let token = kernel_arg(&script, "dragonfly.token").unwrap();
    let claims = boot_token::verify(&KEY, token, jiff::Timestamp::now()).unwrap();
    assert_eq!(claims.mac, mac(2));
}

#[tokio::test]
async fn os_assigned_machine_with_a_workflow_gets_imaging() {
    let s = Server::start().await;
    let id = register(&s.db, mac(3)).await;
    let wf = Uuid::from_u128(0x0193_a5c0_0000_7000_8000_0000_0000_0042);
    set_state(&s.db, id, MachineState::OsAssigned, Some(wf)).await;
    for platform in ["pcbios", "efi"] {
        // Two boots, each seen by dhcpd.
        sight_here(&s.db, mac(3)).await;
        let (status, script) = s
            .get(&format!("/boot/525400123403?platform={platform}"))
            .await;
        assert_eq!(status, 200);
        check_syntax(&script);
        assert_eq!(kernel_arg(&script, "dragonfly.mode"), Some("imaging"));
        let wf_text = wf.to_string();
        assert_eq!(
            kernel_arg(&script, "dragonfly.workflow"),
            Some(wf_text.as_str())
        );
        assert!(kernel_arg(&script, "dragonfly.token").is_some());
    }
    // Assigned but no workflow yet: still the harmless discovery agent.
    set_state(&s.db, id, MachineState::OsAssigned, None).await;
    let (_, script) = s.get("/boot/525400123403?platform=efi").await;
    assert_eq!(kernel_arg(&script, "dragonfly.mode"), Some("discovery"));
    assert!(script.contains("awaitingWorkflow"), "{script}");
}

#[tokio::test]
async fn ready_machine_boots_its_local_disk_on_both_platforms() {
    let s = Server::start().await;
    let id = register(&s.db, mac(4)).await;
    set_state(&s.db, id, MachineState::Ready, None).await;
    let (status, bios) = s.get("/boot/525400123404?platform=pcbios&arch=i386").await;
    assert_eq!(status, 200);
    check_syntax(&bios);
    assert!(
        bios.contains("\nsanboot --no-describe --drive 0x80 "),
        "{bios}"
    );
    assert!(!bios.contains("dragonfly.token"), "{bios}");
    let (status, efi) = s.get("/boot/525400123404?platform=efi&arch=x86_64").await;
    assert_eq!(status, 200);
    check_syntax(&efi);
    // `exit 1`, not `exit`: EDK2's boot manager stops at an option that returns success.
    assert!(
        efi.contains("\nexit 1\n") && !efi.contains("sanboot"),
        "{efi}"
    );
    assert!(efi.lines().any(|l| l.starts_with("echo ")), "{efi}");
}

#[tokio::test]
async fn missing_platform_assumes_pcbios_and_says_so() {
    let s = Server::start().await;
    let id = register(&s.db, mac(5)).await;
    set_state(&s.db, id, MachineState::Ready, None).await;
    for path in ["/boot/525400123405", "/boot/525400123405?platform=&arch="] {
        let (status, script) = s.get(path).await;
        assert_eq!(status, 200);
        check_syntax(&script);
        assert!(script.contains("assuming pcbios"), "{script}");
        assert!(script.contains("sanboot"), "{script}");
    }
}

#[tokio::test]
async fn malformed_requests_get_a_400_script_that_exits() {
    let s = Server::start().await;
    for path in [
        "/boot/not-a-mac",
        "/boot/52:54:00:12:34",
        "/boot/52:54:00:12:34:0g",
        "/boot/525400123406?platform=linux",
        "/boot/525400123406?platform=efi&arch=x86%2064%0Aboot",
    ] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let script = r.text().await.unwrap();
        check_syntax(&script);
        assert!(script.lines().any(|l| l.starts_with("echo ")), "{script}");
        assert!(
            script.contains("\nsleep ") && script.ends_with("exit 1\n"),
            "{script}"
        );
        assert!(
            !script.contains("kernel") && !script.contains("reboot"),
            "{script}"
        );
        // Client input is never echoed into a script.
        assert!(
            !script.contains("not-a-mac") && !script.contains("linux"),
            "{script}"
        );
    }
    let (status, body) = s.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn every_answer_publishes_boot_decided_without_the_token() {
    if require_nats_servers().is_empty() {
        return;
    }
    let nats = NatsServer::start().await.unwrap();
    let bus = dragonfly_bus::Bus::connect(dragonfly_bus::ConnectOptions::new(
        nats.url(),
        "ipxed",
        None,
    ))
    .await
    .unwrap();
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = watcher.subscribe("dragonfly.boot.>").await.unwrap();
    watcher.flush().await.unwrap();
    let s = Server::start_with(crate::common::Fixture::new(), |_| {}, Some(bus)).await;
    let id = register(&s.db, mac(7)).await;
    let wf = Uuid::from_u128(9);
    set_state(&s.db, id, MachineState::Provisioning, Some(wf)).await;

    sight_here(&s.db, mac(8)).await;
    sight_here(&s.db, mac(7)).await;
    let (_, unknown) = s.get("/boot/525400123408?platform=efi").await;
    let (_, imaging) = s.get("/boot/525400123407?platform=efi").await;
    let mut next = async || {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an event within 10 s")
            .unwrap();
        let text = String::from_utf8(msg.payload.to_vec()).unwrap();
        (msg.subject.to_string(), text)
    };
    let (subject, first) = next().await;
    assert_eq!(subject, "dragonfly.boot.decided");
    let ev: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ev["type"], "computer.dragonfly.boot.decided");
    assert_eq!(ev["subject"], "52:54:00:12:34:08");
    assert_eq!(ev["data"]["fate"], "discovery");
    assert_eq!(ev["data"]["reason"], "unknownMachine");
    assert!(ev["data"].get("machineId").is_none(), "{first}");
    let (_, second) = next().await;
    let ev: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(ev["data"]["fate"], "imaging");
    assert_eq!(ev["data"]["machineId"], id.to_string());
    assert_eq!(ev["data"]["workflowId"], wf.to_string());
    for (script, event) in [(&unknown, &first), (&imaging, &second)] {
        let token = kernel_arg(script, "dragonfly.token").unwrap();
        assert!(!event.contains(token), "{event}");
        assert!(!event.contains("dfb1."), "{event}");
    }
}

#[tokio::test]
async fn a_request_from_the_leased_address_gets_a_token_without_a_fresh_sighting() {
    let s = Server::start().await;
    // dhcpd leased 127.0.0.1 to mac(9) (the test asks from there), and saw it boot long ago.
    let now = jiff::Timestamp::now();
    s.db.leases()
        .commit(
            vec![dragonfly_store::leases::LeaseWrite::Bind {
                ip: std::net::Ipv4Addr::LOCALHOST,
                mac: mac(9),
                reserved: false,
                expires_at: now + jiff::SignedDuration::from_hours(1),
            }],
            now,
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let (_, script) = s.get("/boot/525400123409?platform=efi").await;
        assert!(
            kernel_arg(&script, "dragonfly.token").is_some(),
            "the leased address is proof enough, each time: {script}"
        );
    }
    // Another MAC's lease is no proof for this one.
    let (_, script) = s.get("/boot/525400123408?platform=efi").await;
    assert_eq!(kernel_arg(&script, "dragonfly.token"), None);
}
