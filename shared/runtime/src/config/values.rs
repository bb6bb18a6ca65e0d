//! Value types and validators shared by every section, so that the same kind of value is
//! written, checked and explained the same way in every daemon's section: a duration in
//! `[tftpd]` reads like one in `[apid]`, and an out-of-range count names its key, the value
//! and the allowed range whichever daemon refuses it.
//!
//! The set, each taking the key (relative to its section) for its error:
//!
//! | validator            | accepts                                                      |
//! |----------------------|--------------------------------------------------------------|
//! | [`required`]         | a key with no default that is present                         |
//! | [`ListenConfig`]     | `IP:PORT` (no host names)                                     |
//! | [`ipv4`]             | a dotted IPv4 address                                         |
//! | [`parse_duration`]   | `250ms`, `5s`, `2m`, `1h`                                     |
//! | [`duration_between`] | such a duration within a range, or a default when absent      |
//! | [`count_between`]    | a number within a range, or a default when absent             |
//! | [`length_between`]   | a string whose length in bytes is within a range              |
//! | [`http_url`]         | `http://` or `https://` with a host, no credentials, no spaces |
//! | [`file_name`]        | a plain file name: no directory, not hidden                   |
//! | [`absolute_path`]    | a non-empty absolute path (shape only, never looked up)       |
//!
//! Pure: a validator never resolves a name or touches a file, so `--check-config` answers the
//! same on a build host. A daemon keeps only the rules that are its own (a DHCP subnet, an
//! iPXE-safe command line) and builds them from these.

use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::{Invalid, Reason};

/// The address a daemon binds when systemd did not pass it a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenConfig {
    /// The address to bind.
    pub addr: SocketAddr,
}

impl ListenConfig {
    /// Parse an `IP:PORT` found at `key`. Host names are refused: resolving them would be I/O.
    pub fn parse(key: &str, value: &str) -> Result<Self, Invalid> {
        value.trim().parse().map(|addr| Self { addr }).map_err(|_| {
            Invalid::new(
                key,
                Reason::SocketAddr {
                    value: value.to_owned(),
                },
            )
        })
    }
}

/// Parse a duration written as a whole number and a unit: `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, Invalid> {
    let invalid = || {
        Invalid::new(
            key,
            Reason::Duration {
                value: value.to_owned(),
            },
        )
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let seconds_per_unit = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

/// The value of a key that has no default: absent is an error, not a guess.
pub fn required<T>(key: &str, value: Option<T>) -> Result<T, Invalid> {
    value.ok_or_else(|| Invalid::new(key, Reason::Required))
}

/// A duration (see [`parse_duration`]) within `allowed`, or `default` when the key is absent.
/// The error shows the value as written and the bounds in the same notation (`1m`, `720h`).
pub fn duration_between(
    key: &str,
    value: Option<&str>,
    default: Duration,
    allowed: RangeInclusive<Duration>,
) -> Result<Duration, Invalid> {
    let Some(text) = value else {
        return Ok(default);
    };
    let duration = parse_duration(key, text)?;
    if !allowed.contains(&duration) {
        return Err(Invalid::new(
            key,
            Reason::out_of_range(
                text.trim(),
                duration_text(*allowed.start()),
                duration_text(*allowed.end()),
            ),
        ));
    }
    Ok(duration)
}

/// `duration` in the largest unit [`parse_duration`] reads that writes it exactly.
fn duration_text(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    match seconds {
        0 => "0s".to_owned(),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A number within `allowed`, or `default` when the key is absent.
pub fn count_between<T>(
    key: &str,
    value: Option<T>,
    default: T,
    allowed: RangeInclusive<T>,
) -> Result<T, Invalid>
where
    T: PartialOrd + Display,
{
    let Some(value) = value else {
        return Ok(default);
    };
    if !allowed.contains(&value) {
        let (min, max) = allowed.into_inner();
        return Err(Invalid::new(key, Reason::out_of_range(value, min, max)));
    }
    Ok(value)
}

/// A string of `allowed` bytes, for fields with a fixed size on the wire or in a script.
pub fn length_between(
    key: &str,
    value: &str,
    allowed: RangeInclusive<usize>,
) -> Result<(), Invalid> {
    if allowed.contains(&value.len()) {
        return Ok(());
    }
    Err(Invalid::new(
        key,
        Reason::Length {
            len: value.len(),
            min: *allowed.start(),
            max: *allowed.end(),
        },
    ))
}

/// A dotted IPv4 address. Host names are refused: resolving them would be I/O.
pub fn ipv4(key: &str, value: &str) -> Result<Ipv4Addr, Invalid> {
    value.trim().parse().map_err(|_| {
        Invalid::new(
            key,
            Reason::Ipv4 {
                value: value.to_owned(),
            },
        )
    })
}

const HTTP_URL_EXPECTED: &str =
    "http://HOST[:PORT][/PATH] or https://…, without spaces, quotes or backslashes";

/// An `http://` or `https://` URL with a host, without credentials and without spaces, quotes
/// or backslashes (it ends up in DHCP options, scripts and command lines). Returned as written.
pub fn http_url(key: &str, value: &str) -> Result<String, Invalid> {
    url_authority(key, value, &["http", "https"], HTTP_URL_EXPECTED)?;
    Ok(value.to_owned())
}

/// The authority (`host[:port]`) of a URL whose scheme is one of `schemes`, with the checks
/// every URL in the file needs. A URL with `user:password@` is refused without being echoed,
/// whatever else is wrong with it.
pub(super) fn url_authority<'a>(
    key: &str,
    value: &'a str,
    schemes: &[&str],
    expected: &'static str,
) -> Result<&'a str, Invalid> {
    let (scheme, rest) = value.split_once("://").unwrap_or(("", value));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(Invalid::new(key, Reason::CredentialsInUrl));
    }
    let printable = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\');
    if !schemes.contains(&scheme)
        || authority.is_empty()
        || authority.starts_with(':')
        || !value.bytes().all(printable)
    {
        return Err(Invalid::new(
            key,
            Reason::Url {
                value: value.to_owned(),
                expected,
            },
        ));
    }
    Ok(authority)
}

const FILE_NAME_ALLOWED: &str =
    "a plain file name: letters, digits, '.', '_', '-', not starting with '.', at most 255 bytes";

/// A plain file name (no directory part, not hidden), safe to join to a directory and to put in
/// a URL path.
pub fn file_name(key: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        return Ok(());
    }
    Err(Invalid::new(
        key,
        Reason::Characters {
            value: value.to_owned(),
            allowed: FILE_NAME_ALLOWED,
        },
    ))
}

/// A non-empty absolute path. Its existence is not checked: that would be I/O, and the
/// daemon that opens it reports a missing file with the path anyway.
pub fn absolute_path(key: &str, path: PathBuf) -> Result<PathBuf, Invalid> {
    if path.as_os_str().is_empty() {
        return Err(Invalid::new(key, Reason::Empty));
    }
    if !path.is_absolute() {
        return Err(Invalid::new(key, Reason::RelativePath(path)));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    /// The error text for a refused value, which must start with its key.
    fn refused<T: std::fmt::Debug>(key: &str, result: Result<T, Invalid>) -> String {
        let err = result.expect_err("value should be refused");
        assert_eq!(err.key(), key);
        err.to_string()
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            ListenConfig::parse("listen", " 0.0.0.0:67 ").unwrap().addr,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 67)
        );
        assert_eq!(
            ListenConfig::parse("listen", "[::1]:9000").unwrap().addr,
            "[::1]:9000".parse().unwrap()
        );
        for bad in ["", "x", "localhost:80", "10.0.0.1", ":80"] {
            let err = ListenConfig::parse("listen", bad).unwrap_err();
            assert_eq!(err.key(), "listen");
            assert!(matches!(err.reason(), Reason::SocketAddr { .. }), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("k", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("k", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("k", " 2m ").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration("k", "1h").unwrap(),
            Duration::from_secs(3600)
        );
        for bad in [
            "",
            "s",
            "5",
            "5 sec",
            "-1s",
            "1.5s",
            "99999999999999999999h",
        ] {
            let err = parse_duration("k", bad).unwrap_err();
            assert_eq!(err.key(), "k");
            assert!(matches!(err.reason(), Reason::Duration { .. }), "{bad}");
        }
    }

    #[test]
    fn required_keys() {
        assert_eq!(required("k", Some(3)).unwrap(), 3);
        assert_eq!(
            refused("public_url", required::<String>("public_url", None)),
            "public_url: is required: there is no default"
        );
    }

    #[test]
    fn durations_between() {
        let range = Duration::from_secs(60)..=Duration::from_secs(720 * 3600);
        let default = Duration::from_secs(12 * 3600);
        let between = |value| duration_between("session_lifetime", value, default, range.clone());
        assert_eq!(between(None).unwrap(), default);
        assert_eq!(between(Some("1m")).unwrap(), Duration::from_secs(60));
        assert_eq!(between(Some("720h")).unwrap(), *range.end());
        assert_eq!(
            refused("session_lifetime", between(Some(" 5s "))),
            "session_lifetime: 5s is out of range: must be between 1m and 720h"
        );
        assert_eq!(
            refused("session_lifetime", between(Some("721h"))),
            "session_lifetime: 721h is out of range: must be between 1m and 720h"
        );
        // Not a duration at all: the parse error, under the same key.
        assert!(
            refused("session_lifetime", between(Some("12")))
                .starts_with("session_lifetime: invalid duration \"12\"")
        );
    }

    #[test]
    fn bounds_are_written_as_an_operator_would() {
        for (duration, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(255), "255s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(365 * 86400), "8760h"),
        ] {
            assert_eq!(duration_text(duration), text);
            assert_eq!(parse_duration("k", text).unwrap(), duration, "{text}");
        }
    }

    #[test]
    fn counts_between() {
        assert_eq!(
            count_between("n", None, 256_usize, 1..=65_536).unwrap(),
            256
        );
        assert_eq!(count_between("n", Some(1_u32), 10, 1..=10_000).unwrap(), 1);
        assert_eq!(
            count_between("n", Some(10_000_u32), 10, 1..=10_000).unwrap(),
            10_000
        );
        assert_eq!(
            refused(
                "max_transfers",
                count_between("max_transfers", Some(0_usize), 256, 1..=65_536)
            ),
            "max_transfers: 0 is out of range: must be between 1 and 65536"
        );
        assert_eq!(
            refused(
                "burst",
                count_between("burst", Some(1_000_001_u32), 2000, 1..=1_000_000)
            ),
            "burst: 1000001 is out of range: must be between 1 and 1000000"
        );
    }

    #[test]
    fn lengths_between() {
        assert!(length_between("bios_file", "undionly.kpxe", 1..=127).is_ok());
        assert_eq!(
            refused("bios_file", length_between("bios_file", "", 1..=127)),
            "bios_file: is 0 bytes long: must be 1 to 127 bytes"
        );
        let long = "x".repeat(128);
        assert_eq!(
            refused("bios_file", length_between("bios_file", &long, 1..=127)),
            "bios_file: is 128 bytes long: must be 1 to 127 bytes"
        );
    }

    #[test]
    fn ipv4_addresses() {
        assert_eq!(
            ipv4("router", " 10.99.0.1 ").unwrap(),
            Ipv4Addr::new(10, 99, 0, 1)
        );
        for bad in ["", "x", "10.0.0", "10.0.0.256", "::1", "gateway.lan"] {
            let text = refused("router", ipv4("router", bad));
            assert_eq!(
                text,
                format!(
                    "router: invalid IPv4 address {bad:?}: expected four decimal numbers, \
                     e.g. 10.0.0.1"
                )
            );
        }
    }

    #[test]
    fn http_urls() {
        for good in [
            "http://10.99.0.1:8080",
            "https://boot.example/ipxe/",
            "http://{ipxed}/boot/${mac}?platform=${platform}",
            "http://[fd00::1]:3000/x",
        ] {
            assert_eq!(http_url("u", good).unwrap(), good);
        }
        for bad in [
            "",
            "10.0.0.1:8080",
            "ftp://x",
            "tftp://x/ipxe.efi",
            "HTTP://x",
            "http://",
            "http:///path",
            "http://:80/",
            "http://a b",
            "http://a/\"x\"",
            "http://a/\\x",
            "http://a/x\ny",
        ] {
            let text = refused("u", http_url("u", bad));
            assert!(
                text.starts_with(&format!("u: invalid URL {bad:?}: expected http://")),
                "{text}"
            );
        }
    }

    #[test]
    fn credentials_in_urls_are_refused_without_echoing_them() {
        for bad in [
            "http://admin:hunter2@h/",
            "https://admin:hunter2@h",
            "ftp://admin:hunter2@h",
            "admin:hunter2@h:80",
            "http://admin:hunter2 x@h",
        ] {
            let text = refused("u", http_url("u", bad));
            assert_eq!(
                text,
                "u: must not contain credentials: the config file is not secret, load them \
                 with LoadCredential="
            );
        }
        // An @ in the path is not userinfo.
        assert!(http_url("u", "http://h/a@b").is_ok());
    }

    #[test]
    fn file_names() {
        for good in ["vmlinuz", "initrd.img", "ipxe-arm64.efi", "a_b"] {
            assert!(file_name("f", good).is_ok(), "{good}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".hidden",
            "..",
            "../etc/passwd",
            "a/b",
            "a b",
            "é",
            long.as_str(),
        ] {
            let text = refused("agent_files", file_name("agent_files", bad));
            assert!(
                text.starts_with(&format!(
                    "agent_files: invalid value {bad:?}: a plain file name"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn absolute_paths() {
        assert_eq!(
            absolute_path("p", "/srv/db".into()).unwrap(),
            PathBuf::from("/srv/db")
        );
        assert_eq!(
            refused("path", absolute_path("path", "db.sqlite".into())),
            "path: must be an absolute path, got \"db.sqlite\""
        );
        assert_eq!(
            refused("path", absolute_path("path", PathBuf::new())),
            "path: must not be empty"
        );
    }
}
