//! [`LabConfig`]: the `dragonfly.toml` every lab writes for its daemons — the end-to-end
//! tests directly, the demo (`packaging/local/run.sh`) and the benchmarks through
//! `dragonfly-lab config`.
//!
//! Why it exists: the daemons' configuration keys appear in this file and nowhere else in the
//! lab, so a renamed or added key is one change here, not one per script and test.
//!
//! What it must never do: judge a value (the daemons' `--check-config` does, and every user
//! of this runs it) or hold a secret (only the paths of the key files).

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::lab::BRIDGE_ADDR;

/// One `dragonfly.toml` for every daemon of a lab: the shared sections, plus a section for
/// each daemon that is `Some`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Comment lines at the top, without the `# `.
    pub header: Vec<String>,
    /// The SQLite database (`[store] path`); the daemons' default when `None`.
    pub store: Option<PathBuf>,
    /// `[nats] url`.
    pub nats: String,
    /// `[log] level`.
    pub log_level: String,
    pub apid: Option<ApidConfig>,
    pub ipxed: Option<IpxedConfig>,
    pub tftpd: Option<TftpdConfig>,
    pub dhcpd: Option<DhcpdConfig>,
    pub bmcd: Option<BmcdConfig>,
    /// `[metrics]`: `(daemon, "IP:PORT")`, where each daemon binds its metrics listener.
    pub metrics: Vec<(String, String)>,
}

/// `[bmcd]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcdConfig {
    /// The `bmc-key` credential's file (outside systemd).
    pub key_file: PathBuf,
    /// `poll_interval`, e.g. `2s`; bmcd's default when `None`.
    pub poll_interval: Option<String>,
    /// The `ipmitool` program; bmcd's default when `None`.
    pub ipmitool: Option<PathBuf>,
}

/// `[apid]`. Always plain HTTP in a lab, so the session cookie is not marked Secure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApidConfig {
    /// The operators' listener, used when apid binds its own socket (not socket-activated).
    pub listen: String,
    /// The agents' listener, likewise.
    pub agent_listen: String,
    pub boot_token_key_file: PathBuf,
    /// `[apid.http]`.
    pub http: HttpSettings,
    /// apid's own database of operators and credentials; apid's default
    /// (`/var/lib/dragonfly-apid/auth.db`) when `None`. Labs keep it in their own directory.
    pub auth_db: Option<PathBuf>,
}

/// `[ipxed]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpxedConfig {
    /// Used when ipxed binds its own socket (not socket-activated).
    pub listen: String,
    /// How booting machines reach ipxed.
    pub public_url: String,
    /// How the agent reaches apid.
    pub apid_url: String,
    /// The agent's kernel and initrd.
    pub agent_dir: PathBuf,
    /// The iPXE binaries served at `/ipxe/{file}` (UEFI HTTP boot); ipxed's default
    /// (`/usr/lib/ipxe`) when `None`.
    pub ipxe_dir: Option<PathBuf>,
    /// The library's local images (`[ipxed] images_dir`, and apid's with `images_url` =
    /// `public_url/images`); the daemons' default when `None`.
    pub images_dir: Option<PathBuf>,
    pub kernel_cmdline_extra: Option<String>,
    pub boot_token_key_file: PathBuf,
    /// `[ipxed.http]`.
    pub http: HttpSettings,
}

/// The few `[<daemon>.http]` keys a lab changes; the daemon's default for each `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// `header_timeout`, e.g. `5s`: the attack suite shortens it.
    pub header_timeout: Option<String>,
    /// `max_connections_per_client`: a load generator plays many machines from one address.
    pub max_connections_per_client: Option<usize>,
}

impl HttpSettings {
    /// `[<section>.http]` with the keys that are set, or nothing when none is.
    fn render(&self, section: &str, out: &mut String) {
        if *self == Self::default() {
            return;
        }
        let _ = writeln!(out, "\n[{section}.http]");
        if let Some(timeout) = &self.header_timeout {
            let _ = writeln!(out, "header_timeout = {}", quote(timeout));
        }
        if let Some(n) = self.max_connections_per_client {
            let _ = writeln!(out, "max_connections_per_client = {n}");
        }
    }
}

/// `[tftpd]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpdConfig {
    pub roots: Vec<PathBuf>,
    /// Used when tftpd binds its own socket (not socket-activated).
    pub listen: Option<String>,
}

/// `[dhcpd]` and its `[[dhcpd.subnets]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpdConfig {
    /// `reservation`, `proxy` or `autoproxy`.
    pub mode: String,
    pub server_ip: Option<String>,
    /// ipxed's address (`IP:PORT`), for iPXE's script URL.
    pub ipxed: Option<String>,
    /// The URL of the EFI binary UEFI HTTP-boot firmware is sent to (x86-64); none sent
    /// when `None`.
    pub http_boot_x64_url: Option<String>,
    pub lease_time: Option<String>,
    /// The PXE port's address; `Some("")` turns it off.
    pub pxe_listen: Option<String>,
    /// Relay agents (giaddr) dhcpd accepts relayed requests from.
    pub relays: Vec<String>,
    /// New clients per second and burst per relay/interface; `None` keeps dhcpd's defaults.
    pub new_clients: Option<u32>,
    pub subnets: Vec<SubnetConfig>,
}

/// One `[[dhcpd.subnets]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetConfig {
    /// e.g. `10.99.0.0/24`.
    pub network: String,
    pub pool_start: String,
    pub pool_end: String,
    pub router: String,
}

impl DhcpdConfig {
    /// dhcpd in `mode` on the lab network ([`Network::new`](crate::Network::new)'s shape):
    /// serving from 10.99.0.1, sending iPXE to ipxed on 10.99.0.1:8080, UEFI HTTP-boot
    /// firmware to ipxed's `/ipxe/ipxe.efi` (as a configured site does: without it OVMF waits
    /// out its HTTP boot option, about a minute, whenever its PXE option returns) and, in
    /// reservation mode, handing out 10.99.0.100–200 itself.
    pub fn lab(mode: &str) -> DhcpdConfig {
        let subnets = if mode == "reservation" {
            vec![SubnetConfig {
                network: "10.99.0.0/24".into(),
                pool_start: "10.99.0.100".into(),
                pool_end: "10.99.0.200".into(),
                router: BRIDGE_ADDR.into(),
            }]
        } else {
            Vec::new()
        };
        DhcpdConfig {
            mode: mode.into(),
            server_ip: Some(BRIDGE_ADDR.into()),
            ipxed: Some(format!("{BRIDGE_ADDR}:8080")),
            http_boot_x64_url: Some(format!("http://{BRIDGE_ADDR}:8080/ipxe/ipxe.efi")),
            lease_time: None,
            pxe_listen: None,
            relays: Vec::new(),
            new_clients: None,
            subnets,
        }
    }
}

impl LabConfig {
    /// The shared sections only: `nats`, log level `info`, the daemons' default store.
    pub fn new(nats: impl Into<String>) -> LabConfig {
        LabConfig {
            header: Vec::new(),
            store: None,
            nats: nats.into(),
            log_level: "info".into(),
            apid: None,
            ipxed: None,
            tftpd: None,
            dhcpd: None,
            bmcd: None,
            metrics: Vec::new(),
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            let _ = writeln!(out, "{}", format!("# {line}").trim_end());
        }
        if !self.header.is_empty() {
            out.push('\n');
        }
        if let Some(store) = &self.store {
            let _ = writeln!(out, "[store]\npath = {}\n", path(store));
        }
        let _ = writeln!(out, "[nats]\nurl = {}\n", quote(&self.nats));
        let _ = writeln!(out, "[log]\nlevel = {}", quote(&self.log_level));
        if !self.metrics.is_empty() {
            out.push_str("\n[metrics]\n");
            for (daemon, addr) in &self.metrics {
                let _ = writeln!(out, "{daemon} = {}", quote(addr));
            }
        }
        if let Some(apid) = &self.apid {
            let _ = write!(
                out,
                "\n[apid]\nlisten = {}\nagent_listen = {}\nboot_token_key_file = {}\n\
                 # Plain HTTP in a lab: a client may drop a cookie marked Secure (it is meant\n\
                 # for HTTPS only). Behind a proxy that terminates TLS, set it to true.\n\
                 secure_cookies = false\n",
                quote(&apid.listen),
                quote(&apid.agent_listen),
                path(&apid.boot_token_key_file),
            );
            if let Some(auth_db) = &apid.auth_db {
                let _ = writeln!(
                    out,
                    "# Operators, sessions and API tokens: apid's own file (0600).\nauth_db = {}",
                    path(auth_db)
                );
            }
            if let Some(ipxed) = &self.ipxed {
                let _ = writeln!(
                    out,
                    "# The metadata service as installed machines reach it (ipxed).\n\
                     metadata_url = {}",
                    quote(&format!(
                        "{}/metadata",
                        ipxed.public_url.trim_end_matches('/')
                    ))
                );
                if let Some(dir) = &ipxed.images_dir {
                    let _ = writeln!(
                        out,
                        "# The image library: its files, and where agents download them (ipxed).
                         images_dir = {}
images_url = {}",
                        path(dir),
                        quote(&format!(
                            "{}/images",
                            ipxed.public_url.trim_end_matches('/')
                        ))
                    );
                }
            }
            apid.http.render("apid", &mut out);
        }
        if let Some(ipxed) = &self.ipxed {
            let _ = write!(
                out,
                "\n[ipxed]\nlisten = {}\n\
                 # How booting machines reach ipxed, and how the agent reaches apid.\n\
                 public_url = {}\napid_url = {}\nagent_dir = {}\n",
                quote(&ipxed.listen),
                quote(&ipxed.public_url),
                quote(&ipxed.apid_url),
                path(&ipxed.agent_dir),
            );
            if let Some(dir) = &ipxed.ipxe_dir {
                let _ = writeln!(out, "ipxe_dir = {}", path(dir));
            }
            if let Some(dir) = &ipxed.images_dir {
                let _ = writeln!(out, "images_dir = {}", path(dir));
            }
            if let Some(extra) = &ipxed.kernel_cmdline_extra {
                let _ = writeln!(out, "kernel_cmdline_extra = {}", quote(extra));
            }
            let _ = writeln!(
                out,
                "boot_token_key_file = {}",
                path(&ipxed.boot_token_key_file)
            );
            ipxed.http.render("ipxed", &mut out);
        }
        if let Some(tftpd) = &self.tftpd {
            let roots: Vec<String> = tftpd.roots.iter().map(|r| path(r)).collect();
            let _ = writeln!(out, "\n[tftpd]\nroots = [{}]", roots.join(", "));
            if let Some(listen) = &tftpd.listen {
                let _ = writeln!(out, "listen = {}", quote(listen));
            }
        }
        if let Some(dhcpd) = &self.dhcpd {
            out.push_str("\n[dhcpd]\n");
            if dhcpd.mode == "reservation" {
                out.push_str(
                    "# Dragonfly hands out the addresses itself: right for a network of its own.\n\
                     # Beside another DHCP server, use mode = \"autoproxy\" (boot answers only).\n",
                );
            }
            let _ = writeln!(out, "mode = {}", quote(&dhcpd.mode));
            for (key, value) in [
                ("server_ip", &dhcpd.server_ip),
                ("ipxed", &dhcpd.ipxed),
                ("http_boot_x64_url", &dhcpd.http_boot_x64_url),
                ("lease_time", &dhcpd.lease_time),
                ("pxe_listen", &dhcpd.pxe_listen),
            ] {
                if let Some(value) = value {
                    let _ = writeln!(out, "{key} = {}", quote(value));
                }
            }
            if !dhcpd.relays.is_empty() {
                let relays: Vec<String> = dhcpd.relays.iter().map(|r| quote(r)).collect();
                let _ = writeln!(out, "relays = [{}]", relays.join(", "));
            }
            if let Some(n) = dhcpd.new_clients {
                let _ = writeln!(out, "new_clients_per_second = {n}\nnew_clients_burst = {n}");
            }
            for subnet in &dhcpd.subnets {
                let _ = writeln!(
                    out,
                    "\n[[dhcpd.subnets]]\nnetwork = {}\npool_start = {}\npool_end = {}\nrouter = {}",
                    quote(&subnet.network),
                    quote(&subnet.pool_start),
                    quote(&subnet.pool_end),
                    quote(&subnet.router),
                );
            }
        }
        if let Some(bmcd) = &self.bmcd {
            let _ = writeln!(out, "\n[bmcd]\nkey_file = {}", path(&bmcd.key_file));
            if let Some(interval) = &bmcd.poll_interval {
                let _ = writeln!(out, "poll_interval = {}", quote(interval));
            }
            if let Some(ipmitool) = &bmcd.ipmitool {
                let _ = writeln!(out, "ipmitool = {}", path(ipmitool));
            }
        }
        out
    }

    /// Writes [`render`](Self::render) to `path` (mode 0644: the daemons run as another user
    /// than the one writing it), replacing it whole: a daemon starting meanwhile reads the
    /// old file or the new one, never half of one.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.render())?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    }
}

/// A TOML basic string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path(p: &std::path::Path) -> String {
    quote(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> LabConfig {
        let key = PathBuf::from("/lab/boot-token-key");
        LabConfig {
            header: vec!["Written by a test.".into()],
            store: Some("/lab/state/dragonfly.db".into()),
            log_level: "debug".into(),
            apid: Some(ApidConfig {
                listen: "10.99.0.1:3000".into(),
                agent_listen: "10.99.0.1:3001".into(),
                boot_token_key_file: key.clone(),
                http: HttpSettings {
                    header_timeout: Some("2s".into()),
                    max_connections_per_client: Some(1000),
                },
                auth_db: Some("/lab/state/apid/auth.db".into()),
            }),
            ipxed: Some(IpxedConfig {
                listen: "10.99.0.1:8080".into(),
                public_url: "http://10.99.0.1:8080".into(),
                apid_url: "http://10.99.0.1:3001".into(),
                agent_dir: "/lab/agent \"quoted\" \\ dir".into(),
                ipxe_dir: Some("/lab/tftp".into()),
                images_dir: Some("/lab/images".into()),
                kernel_cmdline_extra: Some("console=ttyS0\tquiet".into()),
                boot_token_key_file: key,
                http: HttpSettings::default(),
            }),
            tftpd: Some(TftpdConfig {
                roots: vec!["/lab/tftp".into(), "/lab/more".into()],
                listen: Some("10.99.0.1:69".into()),
            }),
            dhcpd: Some(DhcpdConfig {
                pxe_listen: Some(String::new()),
                relays: vec!["10.200.0.2".into()],
                new_clients: Some(1000),
                ..DhcpdConfig::lab("reservation")
            }),
            bmcd: Some(BmcdConfig {
                key_file: "/lab/bmc-key".into(),
                poll_interval: Some("2s".into()),
                ipmitool: Some("/usr/bin/ipmitool".into()),
            }),
            ..LabConfig::new("nats://127.0.0.1:4222")
        }
    }

    #[test]
    fn renders_toml_that_reads_back_to_the_same_values() {
        let text = everything().render();
        let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            doc["store"]["path"].as_str(),
            Some("/lab/state/dragonfly.db")
        );
        assert_eq!(doc["nats"]["url"].as_str(), Some("nats://127.0.0.1:4222"));
        assert_eq!(doc["log"]["level"].as_str(), Some("debug"));
        assert_eq!(doc["apid"]["secure_cookies"].as_bool(), Some(false));
        assert_eq!(doc["apid"]["agent_listen"].as_str(), Some("10.99.0.1:3001"));
        assert_eq!(doc["apid"]["http"]["header_timeout"].as_str(), Some("2s"));
        assert_eq!(
            doc["apid"]["http"]["max_connections_per_client"].as_integer(),
            Some(1000)
        );
        assert!(doc["ipxed"].get("http").is_none());
        assert_eq!(
            doc["apid"]["auth_db"].as_str(),
            Some("/lab/state/apid/auth.db")
        );
        assert_eq!(
            doc["ipxed"]["agent_dir"].as_str(),
            Some("/lab/agent \"quoted\" \\ dir")
        );
        assert_eq!(
            doc["ipxed"]["kernel_cmdline_extra"].as_str(),
            Some("console=ttyS0\tquiet")
        );
        assert_eq!(doc["ipxed"]["ipxe_dir"].as_str(), Some("/lab/tftp"));
        assert_eq!(doc["ipxed"]["images_dir"].as_str(), Some("/lab/images"));
        assert_eq!(doc["apid"]["images_dir"].as_str(), Some("/lab/images"));
        assert!(
            doc["apid"]["images_url"]
                .as_str()
                .unwrap()
                .ends_with("/images")
        );
        assert_eq!(
            doc["dhcpd"]["http_boot_x64_url"].as_str(),
            Some("http://10.99.0.1:8080/ipxe/ipxe.efi")
        );
        assert_eq!(doc["tftpd"]["roots"].as_array().map(Vec::len), Some(2));
        assert_eq!(doc["dhcpd"]["mode"].as_str(), Some("reservation"));
        assert_eq!(doc["dhcpd"]["pxe_listen"].as_str(), Some(""));
        assert_eq!(doc["dhcpd"]["relays"][0].as_str(), Some("10.200.0.2"));
        assert_eq!(doc["dhcpd"]["new_clients_burst"].as_integer(), Some(1000));
        let subnets = doc["dhcpd"]["subnets"].as_array().expect("subnets");
        assert_eq!(subnets.len(), 1);
        assert_eq!(subnets[0]["pool_end"].as_str(), Some("10.99.0.200"));
        assert_eq!(doc["bmcd"]["key_file"].as_str(), Some("/lab/bmc-key"));
        assert_eq!(doc["bmcd"]["poll_interval"].as_str(), Some("2s"));
        assert!(text.starts_with("# Written by a test.\n"));
    }

    #[test]
    fn leaves_out_what_is_not_asked_for() {
        let text = LabConfig::new("nats://127.0.0.1:1").render();
        let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        let sections: Vec<&str> = doc.keys().map(String::as_str).collect();
        assert_eq!(sections, ["log", "nats"]);
    }

    #[test]
    fn proxy_modes_have_no_subnets() {
        for mode in ["proxy", "autoproxy"] {
            let dhcpd = DhcpdConfig::lab(mode);
            assert!(dhcpd.subnets.is_empty(), "{mode}");
            assert_eq!(dhcpd.server_ip.as_deref(), Some(BRIDGE_ADDR));
        }
    }
}
