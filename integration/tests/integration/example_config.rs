//! The shipped `packaging/dragonfly.toml.example` held to the daemons' own configuration types.
//!
//! The example is the operator's reference (and, installed unchanged, the first
//! `/etc/dragonfly/dragonfly.toml`), so it must stay true as daemons change:
//!
//! - it loads through the real loader for every daemon, and with its commented `#key = value`
//!   lines uncommented too, so no example value is one the daemon would refuse;
//! - its plain `key = value` lines are the defaults, as its header says;
//! - it mentions every key each section's raw struct accepts, and none that no struct accepts.
//!   The accepted keys come from the structs themselves ([`accepted_keys`]), so a key added to a
//!   daemon without a line here fails this test.
//!
//! Pure: no root, no network, no files besides the example (compiled in).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use dragonfly_apid::config::{ApidConfig, RawApid};
use dragonfly_bmcd::config::{BmcdConfig, RawBmcd};
use dragonfly_dhcpd::config::{DhcpdConfig, RawDhcpd, RawReservation, RawSubnet};
use dragonfly_http::RawHttpConfig;
use dragonfly_ipxed::config::{IpxedConfig, RawIpxed};
use dragonfly_migrate::{MigrateConfig, RawMigrate};
use dragonfly_runtime::config::{
    DaemonConfig, Loaded, LogConfig, MetricsConfig, NatsConfig, RawLogConfig, RawMetricsConfig,
    RawNatsConfig, RawStoreConfig, StoreConfig, accepted_keys, parse_str,
};
use dragonfly_tftpd::config::{RawTftpd, TftpdConfig};
use dragonfly_workflowd::config::{RawWorkflowd, WorkflowdConfig};

const EXAMPLE: &str = include_str!("../../../packaging/dragonfly.toml.example");

type Tables = Vec<(&'static str, Option<&'static [&'static str]>)>;

/// Every table a configuration file can hold, with the keys its raw struct accepts. A daemon
/// (or a nested table) that is not listed here is not checked: add it with the daemon.
fn tables() -> Tables {
    vec![
        ("store", accepted_keys::<RawStoreConfig>()),
        ("nats", accepted_keys::<RawNatsConfig>()),
        ("log", accepted_keys::<RawLogConfig>()),
        ("metrics", accepted_keys::<RawMetricsConfig>()),
        ("apid", accepted_keys::<RawApid>()),
        ("apid.http", accepted_keys::<RawHttpConfig>()),
        ("ipxed", accepted_keys::<RawIpxed>()),
        ("ipxed.http", accepted_keys::<RawHttpConfig>()),
        ("tftpd", accepted_keys::<RawTftpd>()),
        ("workflowd", accepted_keys::<RawWorkflowd>()),
        ("bmcd", accepted_keys::<RawBmcd>()),
        ("dhcpd", accepted_keys::<RawDhcpd>()),
        ("dhcpd.subnets", accepted_keys::<RawSubnet>()),
        ("dhcpd.reservations", accepted_keys::<RawReservation>()),
        ("migrate", accepted_keys::<RawMigrate>()),
    ]
}

/// A line of the example, as its header defines them.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// `[table]` or `[[table]]`, commented (`#[table]`) or not.
    Header(&'a str),
    /// `key = value`, commented (`#key = value`) or not.
    Key(&'a str),
    /// `# prose`, a bare `#`, or a blank line.
    Prose,
}

fn classify(line: &str) -> Line<'_> {
    let line = line.trim();
    // `#` then a space (or nothing) is prose; `#` then anything else is a commented setting.
    let setting = match line.strip_prefix('#') {
        Some(rest) if rest.is_empty() || rest.starts_with([' ', '#']) => return Line::Prose,
        Some(rest) => rest,
        None if line.is_empty() => return Line::Prose,
        None => line,
    };
    if let Some(header) = setting.strip_prefix('[') {
        return Line::Header(header.trim_start_matches('[').trim_end_matches(']').trim());
    }
    match setting.split_once('=') {
        Some((key, _)) => Line::Key(key.trim()),
        None => panic!("neither prose (`# …`), a header nor a key: {line:?}"),
    }
}

/// The keys the example mentions, by table (`dhcpd.subnets` for `[[dhcpd.subnets]]`). A header
/// `[[a.b]]` also mentions key `b` of table `a`.
fn documented(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut table = String::new();
    for (number, line) in text.lines().enumerate() {
        match classify(line) {
            Line::Header(name) => {
                if let Some((parent, key)) = name.rsplit_once('.') {
                    tables
                        .entry(parent.to_owned())
                        .or_default()
                        .insert(key.to_owned());
                }
                tables.entry(name.to_owned()).or_default();
                table = name.to_owned();
            }
            Line::Key(key) => {
                assert!(
                    !table.is_empty(),
                    "line {}: key outside a table",
                    number + 1
                );
                let fresh = tables
                    .entry(table.clone())
                    .or_default()
                    .insert(key.to_owned());
                // Uncommenting must never produce a duplicate key (except in a second [[table]]).
                assert!(
                    fresh || table.contains('.'),
                    "line {}: [{table}] {key} appears twice",
                    number + 1
                );
            }
            Line::Prose => {}
        }
    }
    tables
}

/// The example with every `#key = value` and `#[table]` line uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match (classify(line), line.strip_prefix('#')) {
            (Line::Header(_) | Line::Key(_), Some(setting)) => setting,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn load<C: DaemonConfig>(text: &str) -> Loaded<C> {
    parse_str::<C>(Path::new("dragonfly.toml.example"), text)
        .unwrap_or_else(|e| panic!("the example must load for [{}]: {e}", C::SECTION))
}

#[test]
fn example_loads_for_every_daemon() {
    let apid = load::<ApidConfig>(EXAMPLE);
    load::<IpxedConfig>(EXAMPLE);
    load::<TftpdConfig>(EXAMPLE);
    load::<WorkflowdConfig>(EXAMPLE);
    load::<BmcdConfig>(EXAMPLE);
    load::<MigrateConfig>(EXAMPLE);
    // The shared sections are their defaults.
    assert_eq!(apid.store, StoreConfig::default());
    assert_eq!(apid.nats, NatsConfig::default());
    assert_eq!(apid.log, LogConfig::default());
    assert_eq!(apid.metrics, MetricsConfig::default());
    // Reservation mode without a subnet: an unedited file must stop dhcpd rather than have it
    // serve a network made up for an example.
    let err = parse_str::<DhcpdConfig>(Path::new("x"), EXAMPLE).unwrap_err();
    assert_eq!(
        err.to_string(),
        "x: dhcpd.subnets: reservation mode needs at least one [[dhcpd.subnets]]"
    );
}

#[test]
fn every_commented_example_value_is_valid() {
    let text = uncommented(EXAMPLE);
    assert_ne!(text, EXAMPLE);
    load::<ApidConfig>(&text);
    load::<IpxedConfig>(&text);
    load::<TftpdConfig>(&text);
    load::<WorkflowdConfig>(&text);
    load::<BmcdConfig>(&text);
    load::<MigrateConfig>(&text);
    let apid = load::<ApidConfig>(&text);
    assert_eq!(
        apid.metrics.listen("apid"),
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9644)))
    );
    let dhcpd = load::<DhcpdConfig>(&text).daemon;
    assert_eq!(dhcpd.subnets.len(), 1);
    assert_eq!(dhcpd.reservations.len(), 1);
    assert!(dhcpd.subnets[0].pool.is_some() && dhcpd.server_ip.is_some());
}

#[test]
fn plain_values_are_the_defaults() {
    let apid = load::<ApidConfig>(EXAMPLE).daemon;
    assert_eq!(apid, ApidConfig::validate(RawApid::default()).unwrap());
    let tftpd = load::<TftpdConfig>(EXAMPLE).daemon;
    assert_eq!(tftpd, TftpdConfig::validate(RawTftpd::default()).unwrap());
    let workflowd = load::<WorkflowdConfig>(EXAMPLE).daemon;
    assert_eq!(
        workflowd,
        WorkflowdConfig::validate(RawWorkflowd::default()).unwrap()
    );
    let bmcd = load::<BmcdConfig>(EXAMPLE).daemon;
    assert_eq!(bmcd, BmcdConfig::validate(RawBmcd::default()).unwrap());
    // ipxed: only the three required keys differ from an empty section.
    let ipxed = load::<IpxedConfig>(EXAMPLE).daemon;
    let required = RawIpxed {
        public_url: Some(ipxed.public_url.clone()),
        apid_url: Some(ipxed.apid_url.clone()),
        agent_dir: Some(ipxed.agent_dir.clone()),
        ..RawIpxed::default()
    };
    assert_eq!(ipxed, IpxedConfig::validate(required).unwrap());
    // dhcpd: with the one subnet reservation mode needs, and nothing else, added.
    let subnet = "[[dhcpd.subnets]]\nnetwork = \"192.0.2.0/24\"\n";
    let dhcpd = load::<DhcpdConfig>(&format!("{EXAMPLE}\n{subnet}")).daemon;
    let minimal = RawDhcpd {
        subnets: vec![RawSubnet {
            network: "192.0.2.0/24".into(),
            ..RawSubnet::default()
        }],
        ..RawDhcpd::default()
    };
    assert_eq!(dhcpd, DhcpdConfig::validate(minimal).unwrap());
}

/// What is wrong between the keys `tables` accept and the keys `documented` mentions.
fn mismatches(tables: &Tables, documented: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, accepted) in tables {
        let Some(accepted) = accepted else {
            problems.push(format!("[{table}]'s raw type is not a plain struct"));
            continue;
        };
        let accepted: BTreeSet<&str> = accepted.iter().copied().collect();
        let mentioned: BTreeSet<&str> = documented
            .get(*table)
            .map(|keys| keys.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for key in accepted.difference(&mentioned) {
            problems.push(format!(
                "[{table}] accepts `{key}` but the example does not mention it: add a comment \
                 and `{key} = <default>` (or `#{key} = <example>`)"
            ));
        }
        for key in mentioned.difference(&accepted) {
            problems.push(format!(
                "the example mentions `{key}` in [{table}], which accepts no such key"
            ));
        }
    }
    for table in documented.keys() {
        if !tables.iter().any(|(known, _)| known == table) {
            problems.push(format!("the example has a table [{table}] no daemon reads"));
        }
    }
    problems
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_accepted() {
    let problems = mismatches(&tables(), &documented(EXAMPLE));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The comparison above really fails when a daemon gains a key the example lacks, when the
/// example keeps a key no daemon has, and when it has a table nobody reads.
#[test]
fn mismatches_are_found() {
    let fake: Tables = vec![("tftpd", Some(&["listen", "roots", "new_key"]))];
    let example = documented("[tftpd]\nlisten = \"x\"\n#roots = []\n#old_key = 1\n[tftpf]\n");
    assert_eq!(
        mismatches(&fake, &example),
        [
            "[tftpd] accepts `new_key` but the example does not mention it: add a comment and \
             `new_key = <default>` (or `#new_key = <example>`)",
            "the example mentions `old_key` in [tftpd], which accepts no such key",
            "the example has a table [tftpf] no daemon reads",
        ]
    );
    // And the real tables are real: every daemon's struct lists its keys.
    for (table, keys) in tables() {
        assert!(
            keys.is_some_and(|keys| !keys.is_empty() || table == "migrate"),
            "{table}"
        );
    }
}

#[test]
fn every_key_has_its_comment() {
    let mut previous = Line::Prose;
    let mut previous_text = "";
    for (number, line) in EXAMPLE.lines().enumerate() {
        let this = classify(line);
        if let Line::Key(key) = this {
            assert!(
                previous == Line::Prose && previous_text.trim_start().starts_with("# "),
                "line {}: `{key}` needs a comment line right above it",
                number + 1
            );
        }
        previous = this;
        previous_text = line;
    }
}

/// The checks above depend on telling prose, headers and keys apart; a misread line would
/// make them pass for the wrong reason.
#[test]
fn lines_are_classified_as_the_header_says() {
    assert_eq!(classify("path = \"/x\""), Line::Key("path"));
    assert_eq!(
        classify("#name_prefix = \"rack-7\""),
        Line::Key("name_prefix")
    );
    assert_eq!(classify("[store]"), Line::Header("store"));
    assert_eq!(
        classify("#[[dhcpd.subnets]]"),
        Line::Header("dhcpd.subnets")
    );
    assert_eq!(classify("# relays = [] is a sentence here"), Line::Prose);
    assert_eq!(classify("#"), Line::Prose);
    assert_eq!(classify(""), Line::Prose);
    let doc = documented("[a]\nx = 1\n#y = 2\n# z = 3\n#[[a.b]]\n#w = 4\n");
    assert_eq!(
        doc.get("a")
            .map(|keys| keys.iter().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["b", "x", "y"])
    );
    assert_eq!(doc.get("a.b").map(BTreeSet::len), Some(1));
    assert_eq!(uncommented("[a]\n# prose\n#x = 1\n"), "[a]\n# prose\nx = 1");
}
