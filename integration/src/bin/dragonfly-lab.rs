//! `dragonfly-lab`: the lab network and the lab's `dragonfly.toml` for scripts — the demo
//! (`packaging/local/run.sh`) and the benchmarks (`integration/bench/`) — made by the code
//! the end-to-end tests use (`dragonfly_integration::Network` and `LabConfig`), so there is
//! one lab, not one per script.
//!
//! ```text
//! dragonfly-lab up NAME [--addr CIDR] [--no-ula] [--tap TAP[:USER]]… [--peer NS=CIDR]… [--unprivileged-ports]
//! dragonfly-lab down NAME
//! dragonfly-lab config --out FILE --nats URL [--apid …] [--ipxed …] [--tftp-root …] [--dhcpd …]
//! dragonfly-lab add-image --store DB --name NAME --file PATH [--public]
//! ```
//!
//! `up` and `down` need root. Exit codes: 0 done; 1 failed (the cause on stderr); 2 bad usage.
#![allow(clippy::print_stderr, reason = "errors go to the caller's terminal")]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use clap::{Args, Parser, Subcommand};
use dragonfly_integration::{
    ApidConfig, BmcdConfig, DhcpdConfig, HttpSettings, IpxedConfig, LabConfig, Network, Peer,
    SubnetConfig, Tap, TftpdConfig, destroy_network,
};

/// The lab network and configuration, for scripts.
#[derive(Debug, Parser)]
#[command(name = "dragonfly-lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates the network namespace NAME with a bridge br0 (no STP delay) holding ADDR, and
    /// the taps and peers asked for; nothing joins it to the host. A namespace NAME with
    /// nothing running inside (left by a killed run) is replaced; one in use is an error.
    Up(Box<Up>),
    /// Kills every process in namespace NAME and in the peers joined to it, and deletes them
    /// all. Nothing to do is no error.
    Down {
        /// The namespace.
        name: String,
    },
    /// Writes the dragonfly.toml of a lab: the shared sections, and one section per daemon
    /// asked for.
    Config(Box<Config>),
    /// Adds a local image to a lab's store as apid would once it has checksummed the file
    /// (Ready, with its size and modification time; no digests): for benchmarks that run
    /// ipxed without apid. PATH must stay as it is, in ipxed's images_dir.
    AddImage {
        /// The lab's (migrated) database.
        #[arg(long)]
        store: PathBuf,
        /// The image's name.
        #[arg(long)]
        name: String,
        /// The file (its name is what the Image records).
        #[arg(long)]
        file: PathBuf,
        /// Anyone may download it (no boot token).
        #[arg(long)]
        public: bool,
    },
    /// Builds Dragonfly's Debian 12 image when it is missing (packaging/images/debian-12.sh,
    /// cached), writes the template that installs it (a dragonfly.computer/v1 Template, JSON)
    /// to OUT, and prints the image file's path. The template downloads the image from URL,
    /// or names the library's image NAME (`--image`; `--image-out` writes the Image document
    /// that adds the printed file, copied into the images directory, to the library).
    DebianTemplate {
        /// Where machines fetch the image (the file the path printed names).
        #[arg(long, required_unless_present = "image", conflicts_with = "image")]
        url: Option<String>,
        /// The library image the template names.
        #[arg(long, requires = "image_out")]
        image: Option<String>,
        /// Where to write the Image document (replaced whole).
        #[arg(long, requires = "image")]
        image_out: Option<PathBuf>,
        /// Where to write the template (replaced whole).
        #[arg(long)]
        out: PathBuf,
        /// The template's name.
        #[arg(long, default_value = "debian-12")]
        name: String,
    },
}

#[derive(Debug, Args)]
struct Up {
    /// The namespace's name.
    name: String,
    /// br0's IPv4 address and prefix.
    #[arg(long, default_value = "10.99.0.1/24")]
    addr: String,
    /// No fd99::1/64 on br0 (it is there so that router advertisements can be sent).
    #[arg(long)]
    no_ula: bool,
    /// A tap on br0 for a VM, which USER may open (root always can).
    #[arg(long, value_name = "TAP[:USER]", value_parser = parse_tap)]
    tap: Vec<Tap>,
    /// A namespace NS of its own, its eth0 holding CIDR, joined to br0 by a veth.
    #[arg(long, value_name = "NS=CIDR", value_parser = parse_peer)]
    peer: Vec<Peer>,
    /// Lets unprivileged processes bind ports below 1024 inside the namespace.
    #[arg(long)]
    unprivileged_ports: bool,
}

#[derive(Debug, Args)]
struct Config {
    /// Where to write it (replaced whole, mode 0644).
    #[arg(long)]
    out: PathBuf,
    /// A comment line at the top (repeatable).
    #[arg(long, value_name = "LINE")]
    header: Vec<String>,
    /// The bus (nats.url).
    #[arg(long, value_name = "URL")]
    nats: String,
    /// The database (store.path; the daemons' default when absent).
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// The log level (log.level).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// The boot-token key file, for apid and ipxed.
    #[arg(long, value_name = "PATH")]
    boot_token_key: Option<PathBuf>,
    /// Adds bmcd's section, with its private key (the `bmc-key` credential) in PATH.
    #[arg(long, value_name = "PATH")]
    bmc_key: Option<PathBuf>,
    /// Adds apid's section: the operators' listener on ADDR when not socket-activated.
    #[arg(long, value_name = "ADDR", requires = "boot_token_key")]
    apid: Option<String>,
    /// apid's agents' listener when not socket-activated.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "apid",
        default_value = "0.0.0.0:3001"
    )]
    apid_agent: String,
    /// apid's own database of operators and credentials (apid's default when absent).
    #[arg(long, value_name = "PATH", requires = "apid")]
    auth_db: Option<PathBuf>,
    /// Adds ipxed's section: listening on ADDR when not socket-activated.
    #[arg(long, value_name = "ADDR",
          requires_all = ["public_url", "apid_url", "agent_dir", "boot_token_key"])]
    ipxed: Option<String>,
    /// How booting machines reach ipxed.
    #[arg(long, value_name = "URL", requires = "ipxed")]
    public_url: Option<String>,
    /// How the agent reaches apid.
    #[arg(long, value_name = "URL", requires = "ipxed")]
    apid_url: Option<String>,
    /// What ipxed serves as the agent.
    #[arg(long, value_name = "DIR", requires = "ipxed")]
    agent_dir: Option<PathBuf>,
    /// Added to the agent's kernel command line.
    #[arg(long, value_name = "ARGS", requires = "ipxed")]
    kernel_cmdline_extra: Option<String>,
    /// The iPXE binaries ipxed serves at /ipxe/{file} for UEFI HTTP boot.
    #[arg(long, value_name = "DIR", requires = "ipxed")]
    ipxe_dir: Option<PathBuf>,
    /// The image library's directory (ipxed serves it; apid checksums what is added).
    #[arg(long, value_name = "DIR", requires = "ipxed")]
    images_dir: Option<PathBuf>,
    /// Adds tftpd's section, serving DIR (repeatable).
    #[arg(long, value_name = "DIR")]
    tftp_root: Vec<PathBuf>,
    /// tftpd's address when not socket-activated.
    #[arg(long, value_name = "ADDR", requires = "tftp_root")]
    tftpd_listen: Option<String>,
    /// Adds dhcpd's section, in MODE (reservation, proxy, autoproxy).
    #[arg(long, value_name = "MODE")]
    dhcpd: Option<String>,
    /// dhcpd's own address in its answers.
    #[arg(long, value_name = "IP", requires = "dhcpd")]
    server_ip: Option<String>,
    /// ipxed's IP:PORT, where dhcpd sends iPXE.
    #[arg(long, value_name = "ADDR", requires = "dhcpd")]
    dhcpd_ipxed: Option<String>,
    /// The EFI binary's URL for x86-64 UEFI HTTP boot (e.g. ipxed's /ipxe/ipxe.efi).
    #[arg(long, value_name = "URL", requires = "dhcpd")]
    http_boot_x64_url: Option<String>,
    /// Lease time (e.g. 1h).
    #[arg(long, value_name = "TIME", requires = "dhcpd")]
    lease_time: Option<String>,
    /// The PXE port's address; "" turns it off.
    #[arg(long, value_name = "ADDR", requires = "dhcpd")]
    pxe_listen: Option<String>,
    /// A relay agent dhcpd accepts relayed requests from (repeatable).
    #[arg(long, value_name = "IP", requires = "dhcpd")]
    relay: Vec<String>,
    /// New clients per second (and burst) per relay/interface; dhcpd's default otherwise.
    #[arg(long, value_name = "N", requires = "dhcpd")]
    new_clients: Option<u32>,
    /// A subnet dhcpd serves (repeatable).
    #[arg(long, value_name = "NETWORK,POOL_START,POOL_END,ROUTER",
          value_parser = parse_subnet, requires = "dhcpd")]
    subnet: Vec<SubnetConfig>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dragonfly-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(up) => {
            let up = *up;
            let network = Network {
                name: up.name,
                bridge_addr: up.addr,
                ula: !up.no_ula,
                taps: up.tap,
                peers: up.peer,
                unprivileged_ports: up.unprivileged_ports,
            };
            network
                .create()
                .with_context(|| format!("creating lab network {}", network.name))
        }
        Command::Down { name } => {
            destroy_network(&name).with_context(|| format!("removing lab network {name}"))
        }
        Command::Config(c) => lab_config(&c)
            .write(&c.out)
            .with_context(|| format!("writing {}", c.out.display())),
        Command::AddImage {
            store,
            name,
            file,
            public,
        } => add_image(&store, name, &file, public),
        Command::DebianTemplate {
            url,
            image: library,
            image_out,
            out,
            name,
        } => {
            let image = dragonfly_integration::debian_image();
            let template = match (&url, &library, &image_out) {
                (Some(url), _, _) => image.template(&name, url),
                (None, Some(library), Some(image_out)) => {
                    let file = image
                        .compressed
                        .file_name()
                        .context("the image has no file name")?
                        .to_string_lossy()
                        .into_owned();
                    let doc = serde_json::to_string_pretty(&image.image_doc(library, &file))?;
                    std::fs::write(image_out, doc + "\n")
                        .with_context(|| format!("writing {}", image_out.display()))?;
                    image.library_template(&name, library)
                }
                _ => anyhow::bail!("give --url, or --image with --image-out"),
            };
            let template = serde_json::to_string_pretty(&template)?;
            std::fs::write(&out, template + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", image.compressed.display())?;
            Ok(())
        }
    }
}

fn add_image(
    store: &std::path::Path,
    name: String,
    file: &std::path::Path,
    public: bool,
) -> anyhow::Result<()> {
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    let file_name = file
        .file_name()
        .context("the file has no name")?
        .to_string_lossy()
        .into_owned();
    let spec = dragonfly_store::images::local_spec(&file_name, public);
    let status = dragonfly_store::images::ready_status(&meta);
    let store = store.to_owned();
    tokio::runtime::Builder::new_current_thread()
        .build()?
        .block_on(async move {
            let db = dragonfly_store::Db::open(store).await?;
            db.images()
                .create(name, spec, status, jiff::Timestamp::now())
                .await?;
            anyhow::Ok(())
        })
}

/// The sections the flags ask for (clap has checked that each one's flags are complete).
fn lab_config(c: &Config) -> LabConfig {
    let key = c.boot_token_key.clone().unwrap_or_default();
    LabConfig {
        header: c.header.clone(),
        store: c.store.clone(),
        log_level: c.log_level.clone(),
        apid: c.apid.clone().map(|listen| ApidConfig {
            listen,
            agent_listen: c.apid_agent.clone(),
            boot_token_key_file: key.clone(),
            http: HttpSettings::default(),
            auth_db: c.auth_db.clone(),
        }),
        ipxed: c.ipxed.clone().map(|listen| IpxedConfig {
            listen,
            public_url: c.public_url.clone().unwrap_or_default(),
            apid_url: c.apid_url.clone().unwrap_or_default(),
            agent_dir: c.agent_dir.clone().unwrap_or_default(),
            ipxe_dir: c.ipxe_dir.clone(),
            images_dir: c.images_dir.clone(),
            kernel_cmdline_extra: c.kernel_cmdline_extra.clone(),
            boot_token_key_file: key.clone(),
            http: HttpSettings::default(),
        }),
        tftpd: (!c.tftp_root.is_empty()).then(|| TftpdConfig {
            roots: c.tftp_root.clone(),
            listen: c.tftpd_listen.clone(),
        }),
        dhcpd: c.dhcpd.clone().map(|mode| DhcpdConfig {
            mode,
            server_ip: c.server_ip.clone(),
            ipxed: c.dhcpd_ipxed.clone(),
            http_boot_x64_url: c.http_boot_x64_url.clone(),
            lease_time: c.lease_time.clone(),
            pxe_listen: c.pxe_listen.clone(),
            relays: c.relay.clone(),
            new_clients: c.new_clients,
            subnets: c.subnet.clone(),
        }),
        bmcd: c.bmc_key.clone().map(|key_file| BmcdConfig {
            key_file,
            poll_interval: None,
            ipmitool: None,
        }),
        ..LabConfig::new(c.nats.clone())
    }
}

fn parse_tap(value: &str) -> Result<Tap, String> {
    let (name, owner) = match value.split_once(':') {
        Some((name, owner)) => (name, Some(owner.to_owned())),
        None => (value, None),
    };
    if name.is_empty() || name.len() > 15 || owner.as_deref() == Some("") {
        return Err(format!(
            "expected TAP[:USER] with TAP at most 15 characters, got {value:?}"
        ));
    }
    Ok(Tap {
        name: name.to_owned(),
        owner,
    })
}

fn parse_peer(value: &str) -> Result<Peer, String> {
    match value.split_once('=') {
        Some((ns, addr)) if !ns.is_empty() && addr.contains('/') => Ok(Peer {
            namespace: ns.to_owned(),
            addr: addr.to_owned(),
        }),
        _ => Err(format!("expected NS=ADDR/PREFIX, got {value:?}")),
    }
}

fn parse_subnet(value: &str) -> Result<SubnetConfig, String> {
    match value.split(',').collect::<Vec<_>>()[..] {
        [network, pool_start, pool_end, router] => Ok(SubnetConfig {
            network: network.to_owned(),
            pool_start: pool_start.to_owned(),
            pool_end: pool_end.to_owned(),
            router: router.to_owned(),
        }),
        _ => Err(format!(
            "expected NETWORK,POOL_START,POOL_END,ROUTER, got {value:?}"
        )),
    }
}
