//! `dragonfly-migrate` as the real binary.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on set-up failure by design"
)]

use std::process::Command;

use dragonfly_testkit::{chown_for_unprivileged, unprivileged};

fn config(dir: &std::path::Path, db: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("dragonfly.toml");
    std::fs::write(
        &path,
        format!("[store]\npath = {:?}\n", db.display().to_string()),
    )
    .unwrap();
    path
}

fn migrate(config: &std::path::Path) -> std::process::Output {
    unprivileged(env!("CARGO_BIN_EXE_dragonfly-migrate"))
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn creates_then_is_idempotent_then_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dragonfly.db");
    let cfg = config(dir.path(), &db);
    chown_for_unprivileged(dir.path()).unwrap();

    let out = migrate(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dragonfly_store::testing::schema_version(&db),
        dragonfly_store::SCHEMA_VERSION
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o660,
        "the database is group-writable for every daemon's user"
    );

    let again = migrate(&cfg);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("applied=[]"));

    dragonfly_store::testing::set_schema_version(&db, dragonfly_store::SCHEMA_VERSION + 1);
    let newer = migrate(&cfg);
    assert_eq!(newer.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&newer.stderr).contains("newer than this build"));
}

#[test]
fn bad_config_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dragonfly.toml");
    std::fs::write(&cfg, "[migrate]\nsurprise = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dragonfly-migrate"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("surprise") && err.contains("dragonfly.toml"),
        "{err}"
    );
}
