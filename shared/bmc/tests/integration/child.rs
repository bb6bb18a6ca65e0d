//! How the driver runs its child: argv, environment, and the kill at the timeout. A fake
//! `ipmitool` (a shell script given as the configured binary) records what it was given.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dragonfly_bmc::ipmi::{IpmiConfig, IpmiDriver};
use dragonfly_bmc::{BmcError, Password, PowerAction, PowerDriver, PowerState};
use dragonfly_testkit::{TempDir, wait_for};

const SECRET: &str = "Sekr3t-in-env-only";

fn fake_ipmitool(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("ipmitool");
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(binary: PathBuf) -> IpmiConfig {
    let mut config = IpmiConfig::new("192.0.2.7", "operator", Password::new(SECRET));
    config.binary = binary;
    config
}

#[tokio::test]
async fn the_password_reaches_the_child_by_environment_never_argv() {
    let dir = TempDir::new().unwrap();
    let out = dir.path();
    // Records its own /proc/self/cmdline (what `ps` shows) and the password it received.
    let binary = fake_ipmitool(
        out,
        &format!(
            "cat /proc/$$/cmdline > {o}/cmdline\nprintf '%s' \"$IPMI_PASSWORD\" > {o}/password\n\
             env > {o}/env\necho 'Chassis Power is on'",
            o = out.display()
        ),
    );
    let driver = IpmiDriver::new(config(binary));
    assert_eq!(driver.status().await.unwrap(), PowerState::On);

    let cmdline = fs::read(out.join("cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(SECRET),
        "password in argv: {argv:?}"
    );
    assert!(argv.iter().any(|a| a == "-E"), "{argv:?}");
    assert!(
        argv.windows(2).any(|w| w == ["-H", "192.0.2.7"]),
        "{argv:?}"
    );
    assert!(
        argv.ends_with(&["chassis".into(), "power".into(), "status".into()]),
        "{argv:?}"
    );
    assert_eq!(fs::read_to_string(out.join("password")).unwrap(), SECRET);
    // Nothing of ours leaks into the child: only what it needs.
    let env = fs::read_to_string(out.join("env")).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
        .collect();
    assert!(
        names
            .iter()
            .all(|k| ["IPMI_PASSWORD", "PATH", "LC_ALL"].contains(k)),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_child_that_outlives_the_timeout_is_killed() {
    let dir = TempDir::new().unwrap();
    let pid_file = dir.path().join("pid");
    let binary = fake_ipmitool(
        dir.path(),
        &format!("echo $$ > {}\nexec sleep 60", pid_file.display()),
    );
    let mut config = config(binary);
    config.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let r = IpmiDriver::new(config).power(PowerAction::On).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(BmcError::TimedOut { .. })), "{r:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let pid = fs::read_to_string(&pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    // Gone, or a zombie waiting for tokio to reap it: either way no longer running.
    assert!(
        wait_for(Duration::from_secs(5), || {
            fs::read_to_string(&stat)
                .map(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        })
        .await,
        "the child outlived its timeout"
    );
}

#[tokio::test]
async fn the_bmcs_error_text_is_passed_on() {
    let dir = TempDir::new().unwrap();
    let binary = fake_ipmitool(
        dir.path(),
        "echo 'Loading IANA PEN Registry...' >&2\n\
         echo 'Set Chassis Power Control to Up/On failed: Node busy' >&2\nexit 1",
    );
    match IpmiDriver::new(config(binary)).power(PowerAction::On).await {
        Err(BmcError::Rejected { message }) => {
            assert_eq!(
                message,
                "Set Chassis Power Control to Up/On failed: Node busy"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_missing_ipmitool_is_a_local_error() {
    let dir = TempDir::new().unwrap();
    let r = IpmiDriver::new(config(dir.path().join("no-such-ipmitool")))
        .status()
        .await;
    assert!(matches!(r, Err(BmcError::Local { .. })), "{r:?}");
}
