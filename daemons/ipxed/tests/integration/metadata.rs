//! The metadata service over HTTP with the real store: NoCloud and EC2 documents by secret
//! and by source address, 403 for a wrong or another machine's secret, and a phone home that
//! workflowd turns into Ready.

use dragonfly_core::template::ActionSpec;
use dragonfly_core::{MachineState, metadata};
use dragonfly_store::leases::LeaseWrite;
use dragonfly_store::testing::{self, NewMachine};
use dragonfly_workflowd::Engine;
use jiff::Timestamp;

use crate::common::{Fixture, KEY, Server, mac};

fn actions() -> Vec<ActionSpec> {
    serde_json::from_value(serde_json::json!([
        {"name": "disk", "type": "partition", "disk": "/dev/vda", "table": "gpt",
         "partitions": [{"label": "root", "size": "rest", "type": "linux", "format": "ext4"}]},
        {"name": "boot", "type": "kexec", "device": {"disk": "/dev/vda", "partition": 1},
         "filesystem": "ext4", "kernel": "/boot/vmlinuz"},
        {"name": "first-boot", "type": "cloudinit", "timeoutSeconds": 600,
         "userData": "#cloud-config\npackages: [htop]\n"}
    ]))
    .unwrap()
}

#[tokio::test]
async fn installed_machines_read_their_metadata_and_phone_home_to_ready() {
    let s = Server::start_with(Fixture::new(), |_| {}, None).await;
    let db = &s.db;
    let now = Timestamp::now();
    let m = testing::machine(db, NewMachine::with_mac(mac(1))).await;
    let other = testing::machine(db, NewMachine::with_mac(mac(2))).await;
    let mut values = serde_json::Map::new();
    values.insert("hostname".into(), "web-01".into());
    values.insert(
        "sshKeys".into(),
        serde_json::json!(["ssh-ed25519 AAAAC3Nza test@lab"]),
    );
    let wf =
        dragonfly_store::workflows::new_workflow(&m, "debian", actions(), values, 600, 3600, now);
    let (wf, _) = db.workflows().create(wf, None, now).await.unwrap();
    let secret = metadata::secret(&KEY, m.id, wf.id);
    let base = format!("/metadata/{}/{secret}", m.id);

    // The agent's part: partition and kexec reported, applied by workflowd.
    let mut engine = Engine::new(db.clone(), 100);
    for action in 0..2 {
        for (seq, event) in [
            dragonfly_core::agent_api::ReportEvent::Started,
            dragonfly_core::agent_api::ReportEvent::Succeeded { message: None },
        ]
        .into_iter()
        .enumerate()
        {
            db.workflows()
                .report(
                    dragonfly_core::agent_api::ActionReport {
                        workflow_id: wf.id,
                        attempt: 1,
                        action,
                        seq: seq as u64,
                        event,
                    },
                    Timestamp::now(),
                )
                .await
                .unwrap();
        }
    }
    engine.pass(Timestamp::now()).await;
    let machine = db.machines().get(m.id).await.unwrap().unwrap();
    assert_eq!(
        machine.state,
        MachineState::Provisioning,
        "installed, waiting"
    );
    // Rebooted before it phoned home, it boots its disk, not the agent again.
    let (st, script) = s.get("/boot/52-54-00-12-34-01?platform=efi").await;
    assert_eq!(st, 200, "{script}");
    assert!(
        script.contains("sanboot") || script.contains("exit"),
        "{script}"
    );
    assert!(!script.contains("kernel "), "{script}");

    // NoCloud by secret.
    let (st, md) = s.get(&format!("{base}/meta-data")).await;
    assert_eq!(st, 200, "{md}");
    let md: serde_yaml_ng::Value = serde_yaml_ng::from_str(&md).unwrap();
    assert_eq!(md["instance-id"], wf.id.to_string().as_str());
    assert_eq!(md["local-hostname"], "web-01");
    assert_eq!(md["public-keys"][0], "ssh-ed25519 AAAAC3Nza test@lab");
    let (st, ud) = s.get(&format!("{base}/user-data")).await;
    assert_eq!(
        (st, ud.as_str()),
        (200, "#cloud-config\npackages: [htop]\n")
    );
    let (st, vd) = s.get(&format!("{base}/vendor-data")).await;
    assert_eq!(st, 200);
    let vd: serde_yaml_ng::Value = serde_yaml_ng::from_str(&vd).unwrap();
    assert_eq!(
        vd["phone_home"]["url"],
        format!("http://10.99.0.1:8080{base}/phone-home").as_str()
    );
    let (st, nc) = s.get(&format!("{base}/network-config")).await;
    assert_eq!(st, 200);
    let nc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&nc).unwrap();
    assert_eq!(nc["version"], 2, "{nc:?}");
    assert_eq!(
        nc["ethernets"]["nic0"]["match"]["macaddress"], "52:54:00:12:34:01",
        "{nc:?}"
    );
    assert_eq!(nc["ethernets"]["nic0"]["dhcp4"], true, "{nc:?}");
    let (st, listing) = s.get(&format!("{base}/")).await;
    assert_eq!((st, listing.lines().count()), (200, 4), "{listing}");
    // EC2 paths under the secret.
    let (st, keys) = s
        .get(&format!(
            "{base}/latest/meta-data/public-keys/0/openssh-key"
        ))
        .await;
    assert_eq!(
        (st, keys.as_str()),
        (200, "ssh-ed25519 AAAAC3Nza test@lab\n")
    );
    let (st, list) = s.get(&format!("{base}/latest/meta-data/")).await;
    assert!(st == 200 && list.contains("public-keys/\n"), "{list}");

    // Wrong secret, another machine's id with this secret, a garbage id: 403 for all.
    for path in [
        format!("/metadata/{}/{}/meta-data", m.id, "0".repeat(32)),
        format!("/metadata/{}/{secret}/meta-data", other.id),
        format!("/metadata/not-a-uuid/{secret}/user-data"),
        format!("/metadata/{}/{secret}/latest/user-data", other.id),
    ] {
        let (st, body) = s.get(&path).await;
        assert_eq!(st, 403, "{path}: {body}");
        assert!(!body.contains("htop"), "{body}");
    }

    // By address: the test connects from 127.0.0.1; no lease there yet.
    let (st, _) = s.get("/latest/meta-data/instance-id").await;
    assert_eq!(st, 404);
    db.leases()
        .commit(
            vec![LeaseWrite::Bind {
                ip: std::net::Ipv4Addr::LOCALHOST,
                mac: mac(1),
                reserved: false,
                expires_at: now + jiff::SignedDuration::from_secs(3600),
            }],
            now,
        )
        .await
        .unwrap();
    let (st, id) = s.get("/latest/meta-data/instance-id").await;
    assert_eq!((st, id), (200, wf.id.to_string()));
    let (st, top) = s.get("/latest/").await;
    assert_eq!((st, top.as_str()), (200, "meta-data/\nuser-data\n"));
    let (st, ip) = s.get("/latest/meta-data/local-ipv4").await;
    assert_eq!((st, ip.as_str()), (200, "127.0.0.1"));
    let (st, ud) = s.get("/latest/user-data").await;
    assert_eq!((st, ud.contains("htop")), (200, true));
    let (st, md) = s.get("/metadata/meta-data").await;
    assert!(st == 200 && md.contains("web-01"), "{md}");
    // …but it cannot phone home without the secret.
    let r = s
        .http
        .post(s.url("/metadata/phone-home"))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status().as_u16(), 200);

    // A phone home with another machine's secret is refused and changes nothing.
    let foreign = s
        .http
        .post(s.url(&format!("/metadata/{}/{secret}/phone-home", other.id)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("hostname=web-01")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 403);
    // The real one: stored, applied by workflowd, Ready.
    let home = s
        .http
        .post(s.url(&format!("{base}/phone-home")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("instance_id={}&hostname=web-01", wf.id))
        .send()
        .await
        .unwrap();
    assert_eq!(home.status().as_u16(), 200);
    engine.pass(Timestamp::now()).await;
    let machine = db.machines().get(m.id).await.unwrap().unwrap();
    assert_eq!(machine.state, MachineState::Ready);
    let done = db.workflows().get(wf.id).await.unwrap().unwrap();
    assert!(
        done.status[2]
            .message
            .as_deref()
            .is_some_and(|msg| msg.contains("phoned home from 127.0.0.1")),
        "{:?}",
        done.status[2]
    );
}

#[tokio::test]
async fn metadata_by_address_can_be_turned_off() {
    let s = Server::start_with(
        Fixture::new(),
        |r| r.metadata_by_address = Some(false),
        None,
    )
    .await;
    let (st, body) = s.get("/latest/meta-data/instance-id").await;
    assert_eq!(st, 404);
    assert!(body.contains("off"), "{body}");
    let (st, _) = s.get("/metadata/meta-data").await;
    assert_eq!(st, 404);
}
