//! ipxed's section of the configuration file, `[ipxed]`.
//!
//! Everything here ends up inside iPXE scripts or kernel command lines, so validation is
//! strict about characters: a value with a space, a quote or a newline could add words or
//! whole commands to the script a machine executes. Pure: no file is opened, no name resolved.

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_http::{HttpConfig, RawHttpConfig};
use dragonfly_runtime::config::{
    DaemonConfig, Invalid, ListenConfig, Reason, absolute_path, count_between, duration_between,
    file_name, http_url, length_between, required,
};
use serde::Deserialize;

/// `[ipxed]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpxed {
    /// Address to bind when systemd did not pass a socket named `http`.
    pub listen: Option<String>,
    /// How booting machines reach ipxed, e.g. `http://10.99.0.1:8080`. Required.
    pub public_url: Option<String>,
    /// How the agent reaches apid, e.g. `http://10.99.0.1:3000`. Required.
    pub apid_url: Option<String>,
    /// Directory holding the agent's kernel and initrd. Required.
    pub agent_dir: Option<PathBuf>,
    /// File names in `agent_dir` that may be downloaded; default `["vmlinuz", "initrd.img"]`.
    pub agent_files: Option<Vec<String>>,
    /// Name of the agent kernel among `agent_files`; default `vmlinuz`.
    pub agent_kernel: Option<String>,
    /// Name of the agent initrd among `agent_files`; default `initrd.img`.
    pub agent_initrd: Option<String>,
    /// Directory of iPXE binaries served at `/ipxe/{file}` (UEFI HTTP boot); default
    /// `/var/lib/dragonfly/tftp`.
    pub ipxe_dir: Option<PathBuf>,
    /// The library's local images, served at `/images/{name}`; default
    /// `/var/lib/dragonfly/images`.
    pub images_dir: Option<PathBuf>,
    /// Appended to the agent's kernel command line.
    pub kernel_cmdline_extra: Option<String>,
    /// How long a minted boot token stays valid, e.g. `15m` (the agent renews it with apid).
    pub token_ttl: Option<String>,
    /// How long after dhcpd's boot answer a MAC may be given a token, e.g. `120s`.
    pub sighting_window: Option<String>,
    /// How long a boot session lasts at most (its tokens are renewed within it), e.g. `24h`.
    pub boot_session_lifetime: Option<String>,
    /// Where to read the boot-token HMAC key when systemd's `LoadCredential=` is not used.
    pub boot_token_key_file: Option<PathBuf>,
    /// Whether the metadata service tells machines apart by their source address (their
    /// DHCP lease) besides the secret in their datasource URL (default `true`).
    pub metadata_by_address: Option<bool>,
    /// Downloads of files (`/agent/…`, `/ipxe/…`) in progress at once; more are answered 503
    /// with `Retry-After`. Default 1024.
    pub max_file_transfers: Option<usize>,
    /// `[ipxed.http]`: timeouts, connection caps, TLS.
    pub http: Option<RawHttpConfig>,
}

/// `[ipxed]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpxedConfig {
    pub listen: ListenConfig,
    /// Without a trailing slash.
    pub public_url: String,
    /// Without a trailing slash.
    pub apid_url: String,
    pub agent_dir: PathBuf,
    pub agent_files: Vec<String>,
    pub agent_kernel: String,
    pub agent_initrd: String,
    /// Served at `/ipxe/{file}`; may be missing (HTTP boot is optional).
    pub ipxe_dir: PathBuf,
    /// The files of the library's local images (`/images/{name}`).
    pub images_dir: PathBuf,
    pub kernel_cmdline_extra: String,
    pub token_ttl: Duration,
    pub sighting_window: Duration,
    pub boot_session_lifetime: Duration,
    pub boot_token_key_file: Option<PathBuf>,
    pub metadata_by_address: bool,
    pub max_file_transfers: usize,
    pub http: HttpConfig,
}

/// The default port. Not 80: a second web server on a provisioning host often holds 80, and
/// 8080 is what the lab and dhcpd's default script URL use. Under systemd the port is the
/// socket unit's anyway.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The default extra command line. The *last* `console=` becomes `/dev/console`, so the
/// serial port goes last: labs (QEMU `-serial`) and BMC serial-over-LAN then see the agent.
pub const DEFAULT_CMDLINE_EXTRA: &str = "console=tty0 console=ttyS0,115200";
/// How long a boot token lives unless configured: minutes, not a day — the running agent
/// renews it (`POST /api/agent/renew`), so a copied token is useful only briefly.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// How long after dhcpd's boot answer a token may be minted unless configured: iPXE asks for
/// its script within seconds of its DHCP exchange; two minutes leaves room for slow firmware.
pub const DEFAULT_SIGHTING_WINDOW: Duration = Duration::from_secs(120);
/// How long a boot session lasts unless configured (an agent boot, imaging included).
pub const DEFAULT_BOOT_SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Default agent kernel, in `agent_dir`.
pub const DEFAULT_AGENT_KERNEL: &str = "vmlinuz";
/// Default agent initrd, in `agent_dir`.
pub const DEFAULT_AGENT_INITRD: &str = "initrd.img";
/// Default `ipxe_dir`: tftpd's own default root, where the iPXE binaries are put as regular
/// files (`cp -L`), so both daemons serve the same ones. Not Debian's `/usr/lib/ipxe`: its
/// `ipxe.efi` is a symlink to `/boot/ipxe.efi`, which ipxed (and tftpd) refuse.
pub const DEFAULT_IPXE_DIR: &str = "/var/lib/dragonfly/tftp";
/// Default `images_dir` (apid's too).
pub const DEFAULT_IMAGES_DIR: &str = "/var/lib/dragonfly/images";
/// File downloads at once unless configured: a rack of machines booting together, each
/// fetching its kernel or initrd, without queueing; beyond it a client is told to come back
/// (503 with `Retry-After`; the agent's script retries) rather than every download slowing
/// down together. As many as the listener's connections (`[ipxed.http] max_connections`):
/// a transfer holds a descriptor, no buffer, and at 256 a storm of 1 000 machines waited out
/// `Retry-After` twice (wall 1.9–2.9× dnsmasq + nginx's; at 1 024: 1.03–1.05×,
/// integration/bench/boot-storm.sh).
pub const DEFAULT_MAX_FILE_TRANSFERS: usize = 1024;
/// Longest `kernel_cmdline_extra`, in bytes.
pub const MAX_CMDLINE_EXTRA: usize = 1024;

const SCRIPT_URL_EXPECTED: &str = "http://HOST[:PORT][/PATH] or https://…, without spaces, quotes, \
     backslashes, '$', '{' or '}' (iPXE would expand them)";
const CMDLINE_ALLOWED: &str = "printable ASCII without quotes, backslashes or newlines";

impl DaemonConfig for IpxedConfig {
    const SECTION: &'static str = "ipxed";
    type Raw = RawIpxed;

    fn validate(raw: RawIpxed) -> Result<Self, Invalid> {
        let listen =
            ListenConfig::parse("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let public_url = script_url("public_url", raw.public_url)?;
        let apid_url = script_url("apid_url", raw.apid_url)?;
        let agent_dir = absolute_path("agent_dir", required("agent_dir", raw.agent_dir)?)?;
        let agent_kernel = raw
            .agent_kernel
            .unwrap_or_else(|| DEFAULT_AGENT_KERNEL.to_owned());
        let agent_initrd = raw
            .agent_initrd
            .unwrap_or_else(|| DEFAULT_AGENT_INITRD.to_owned());
        let agent_files = raw
            .agent_files
            .unwrap_or_else(|| vec![agent_kernel.clone(), agent_initrd.clone()]);
        for (i, name) in agent_files.iter().enumerate() {
            file_name(&format!("agent_files[{i}]"), name)?;
        }
        for (key, name) in [
            ("agent_kernel", &agent_kernel),
            ("agent_initrd", &agent_initrd),
        ] {
            file_name(key, name)?;
            if !agent_files.contains(name) {
                return Err(Invalid::new(
                    key,
                    Reason::Characters {
                        value: name.clone(),
                        allowed: "one of agent_files",
                    },
                ));
            }
        }
        let ipxe_dir = absolute_path(
            "ipxe_dir",
            raw.ipxe_dir.unwrap_or_else(|| DEFAULT_IPXE_DIR.into()),
        )?;
        let images_dir = absolute_path(
            "images_dir",
            raw.images_dir.unwrap_or_else(|| DEFAULT_IMAGES_DIR.into()),
        )?;
        let kernel_cmdline_extra = raw
            .kernel_cmdline_extra
            .unwrap_or_else(|| DEFAULT_CMDLINE_EXTRA.to_owned());
        length_between(
            "kernel_cmdline_extra",
            &kernel_cmdline_extra,
            0..=MAX_CMDLINE_EXTRA,
        )?;
        let cmdline_safe = |b: u8| (b' '..=b'~').contains(&b) && !matches!(b, b'"' | b'\'' | b'\\');
        if !kernel_cmdline_extra.bytes().all(cmdline_safe) {
            return Err(Invalid::new(
                "kernel_cmdline_extra",
                Reason::Characters {
                    value: kernel_cmdline_extra,
                    allowed: CMDLINE_ALLOWED,
                },
            ));
        }
        let token_ttl = duration_between(
            "token_ttl",
            raw.token_ttl.as_deref(),
            DEFAULT_TOKEN_TTL,
            Duration::from_secs(60)..=Duration::from_secs(24 * 3600),
        )?;
        let sighting_window = duration_between(
            "sighting_window",
            raw.sighting_window.as_deref(),
            DEFAULT_SIGHTING_WINDOW,
            // Sightings are kept an hour (dragonfly_store::boot::SIGHTING_RETENTION).
            Duration::from_secs(5)..=Duration::from_secs(3600),
        )?;
        let boot_session_lifetime = duration_between(
            "boot_session_lifetime",
            raw.boot_session_lifetime.as_deref(),
            DEFAULT_BOOT_SESSION_LIFETIME,
            token_ttl..=Duration::from_secs(30 * 24 * 3600),
        )?;
        let boot_token_key_file = raw
            .boot_token_key_file
            .map(|path| absolute_path("boot_token_key_file", path))
            .transpose()?;
        let max_file_transfers = count_between(
            "max_file_transfers",
            raw.max_file_transfers,
            DEFAULT_MAX_FILE_TRANSFERS,
            1..=65_536,
        )?;
        let http =
            HttpConfig::validate(raw.http.unwrap_or_default()).map_err(|e| e.within("http"))?;
        Ok(Self {
            listen,
            public_url,
            apid_url,
            agent_dir,
            agent_files,
            agent_kernel,
            agent_initrd,
            ipxe_dir,
            images_dir,
            kernel_cmdline_extra: kernel_cmdline_extra.trim().to_owned(),
            token_ttl,
            sighting_window,
            boot_session_lifetime,
            boot_token_key_file,
            metadata_by_address: raw.metadata_by_address.unwrap_or(true),
            max_file_transfers,
            http,
        })
    }
}

/// A required `http://` or `https://` URL that is safe as a word of an iPXE script: beyond
/// the shared URL rules, no `$`, `{` or `}`, which iPXE would expand. Without a trailing slash,
/// so paths can be appended.
fn script_url(key: &str, value: Option<String>) -> Result<String, Invalid> {
    let value = http_url(key, &required(key, value)?)?;
    if value.contains(['$', '{', '}']) {
        return Err(Invalid::new(
            key,
            Reason::Url {
                value,
                expected: SCRIPT_URL_EXPECTED,
            },
        ));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawIpxed {
        RawIpxed {
            public_url: Some("http://10.99.0.1:8080/".into()),
            apid_url: Some("http://10.99.0.1:3000".into()),
            agent_dir: Some("/var/lib/dragonfly-agent".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let c = IpxedConfig::validate(raw()).unwrap();
        assert_eq!(c.listen.addr.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.public_url, "http://10.99.0.1:8080");
        assert_eq!(c.agent_files, ["vmlinuz", "initrd.img"]);
        assert_eq!(c.token_ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(c.kernel_cmdline_extra, DEFAULT_CMDLINE_EXTRA);
        assert_eq!(c.ipxe_dir, PathBuf::from(DEFAULT_IPXE_DIR));
        assert_eq!(c.max_file_transfers, 1024);
    }

    #[test]
    fn bad_values_name_their_key() {
        type Tweak = fn(&mut RawIpxed);
        let cases: Vec<(Tweak, &str)> = vec![
            (|r| r.public_url = None, "public_url"),
            (|r| r.public_url = Some("ftp://x".into()), "public_url"),
            (|r| r.public_url = Some("http://a b".into()), "public_url"),
            (
                |r| r.apid_url = Some("http://u:p@h:3000".into()),
                "apid_url",
            ),
            (|r| r.apid_url = Some("http://".into()), "apid_url"),
            (|r| r.apid_url = Some("http://h/${x}".into()), "apid_url"),
            (|r| r.agent_dir = None, "agent_dir"),
            (|r| r.agent_dir = Some("rel".into()), "agent_dir"),
            (|r| r.ipxe_dir = Some("ipxe".into()), "ipxe_dir"),
            (|r| r.ipxe_dir = Some("".into()), "ipxe_dir"),
            (
                |r| r.agent_files = Some(vec!["../etc/passwd".into()]),
                "agent_files[0]",
            ),
            (
                |r| r.agent_files = Some(vec!["vmlinuz".into(), ".hidden".into()]),
                "agent_files[1]",
            ),
            (
                |r| r.agent_files = Some(vec!["a/b".into()]),
                "agent_files[0]",
            ),
            (
                |r| {
                    r.agent_files = Some(vec!["vmlinuz".into(), "initrd.img".into()]);
                    r.agent_kernel = Some("bzImage".into());
                },
                "agent_kernel",
            ),
            (
                |r| r.kernel_cmdline_extra = Some("quiet\nchain http://evil".into()),
                "kernel_cmdline_extra",
            ),
            (
                |r| r.kernel_cmdline_extra = Some("a=\"b\"".into()),
                "kernel_cmdline_extra",
            ),
            (|r| r.token_ttl = Some("10s".into()), "token_ttl"),
            (|r| r.max_file_transfers = Some(0), "max_file_transfers"),
            (|r| r.token_ttl = Some("1000h".into()), "token_ttl"),
            (|r| r.listen = Some("nope".into()), "listen"),
            (
                |r| r.kernel_cmdline_extra = Some("x".repeat(1025)),
                "kernel_cmdline_extra",
            ),
            (
                |r| r.boot_token_key_file = Some("key".into()),
                "boot_token_key_file",
            ),
        ];
        for (tweak, key) in cases {
            let mut r = raw();
            tweak(&mut r);
            let got = IpxedConfig::validate(r)
                .map(|_| ())
                .map_err(|e| e.key().to_owned());
            assert_eq!(got, Err(key.to_owned()));
        }
    }

    #[test]
    fn errors_say_what_is_wanted() {
        let error = |tweak: fn(&mut RawIpxed)| {
            let mut r = raw();
            tweak(&mut r);
            IpxedConfig::validate(r).unwrap_err().to_string()
        };
        assert_eq!(
            error(|r| r.public_url = None),
            "public_url: is required: there is no default"
        );
        assert_eq!(
            error(|r| r.agent_dir = None),
            "agent_dir: is required: there is no default"
        );
        assert!(
            error(|r| r.apid_url = Some("http://h/${x}".into())).contains("'$', '{' or '}'"),
            "the iPXE rule is named"
        );
        assert_eq!(
            error(|r| r.token_ttl = Some("10s".into())),
            "token_ttl: 10s is out of range: must be between 1m and 24h"
        );
        assert_eq!(
            error(|r| r.kernel_cmdline_extra = Some("x".repeat(1025))),
            "kernel_cmdline_extra: is 1025 bytes long: must be 0 to 1024 bytes"
        );
    }

    #[test]
    fn credentials_in_urls_are_not_echoed() {
        let mut r = raw();
        r.apid_url = Some("https://admin:hunter2@h".into());
        let e = IpxedConfig::validate(r).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
