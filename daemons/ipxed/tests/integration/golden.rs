//! Golden files: every rendered script, byte for byte, in `tests/fixtures/*.ipxe`.
//!
//! A change to a template shows up as a diff here. After reviewing it, update with
//! `DRAGONFLY_UPDATE_GOLDEN=1 cargo test -p dragonfly-ipxed golden`.

use std::path::PathBuf;

use dragonfly_core::{BootFate, DiscoveryReason};
use dragonfly_ipxed::script::{Client, MachineView, Platform, Renderer, Settings};
use uuid::Uuid;

use crate::common::check_syntax;

fn settings() -> Settings {
    Settings {
        public_url: "http://10.99.0.1:8080".into(),
        apid_url: "http://10.99.0.1:3000".into(),
        agent_kernel: "vmlinuz".into(),
        agent_initrd: "initrd.img".into(),
        kernel_cmdline_extra: dragonfly_ipxed::config::DEFAULT_CMDLINE_EXTRA.into(),
    }
}

fn client(platform: Platform, assumed: bool) -> Client {
    Client {
        mac: "52:54:00:12:34:56".parse().unwrap(),
        platform,
        platform_assumed: assumed,
        arch: (!assumed).then(|| "x86_64".to_owned()),
    }
}

/// Compares `got` with the fixture `name`, or writes it in update mode.
fn golden(name: &str, got: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("DRAGONFLY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    (want != got).then(|| {
        format!(
            "{} differs:\n--- want\n{want}\n--- got\n{got}",
            path.display()
        )
    })
}

#[test]
fn rendered_scripts_match_their_golden_files() {
    let r = Renderer::new().unwrap();
    let known = MachineView {
        id: Some(Uuid::from_u128(0x0193_a5c0_0000_7000_8000_0000_0000_0001)),
        name: Some("HungryDynamicHybridSwear".into()),
    };
    let unknown = MachineView::default();
    let token = "dfb1.PAYLOAD.TAG";
    let discovery = BootFate::Discovery {
        reason: DiscoveryReason::UnknownMachine,
    };
    let imaging = BootFate::Imaging {
        workflow_id: Uuid::from_u128(0x0193_a5c0_0000_7000_8000_0000_0000_0042),
    };
    let mut cases = Vec::new();
    for (p, pname) in [(Platform::Pcbios, "pcbios"), (Platform::Efi, "efi")] {
        for (fate, fname, machine) in [
            (discovery, "discovery", &unknown),
            (imaging, "imaging", &known),
            (BootFate::LocalDisk, "local", &known),
        ] {
            cases.push((
                format!("{fname}-{pname}.ipxe"),
                fate,
                client(p, false),
                machine,
            ));
        }
    }
    cases.push((
        "discovery-assumed-pcbios.ipxe".into(),
        BootFate::Discovery {
            reason: DiscoveryReason::AwaitingAssignment,
        },
        client(Platform::Pcbios, true),
        &known,
    ));
    let mut failures = Vec::new();
    for (name, fate, client, machine) in &cases {
        let got = r.render(fate, client, machine, &settings(), token).unwrap();
        check_syntax(&got);
        failures.extend(golden(name, &got));
    }
    let err = r
        .render_error("malformed MAC address in the request")
        .unwrap();
    check_syntax(&err);
    failures.extend(golden("error.ipxe", &err));
    assert!(
        failures.is_empty(),
        "{}\nreview, then run with DRAGONFLY_UPDATE_GOLDEN=1 to update",
        failures.join("\n")
    );
}
