//! Value types and validators shared by every section, so that the same kind of value is
//! written, checked and explained the same way in every daemon's section.
//!
//! Pure: a validator never resolves a name or touches a file.

use std::net::SocketAddr;
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

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
}
