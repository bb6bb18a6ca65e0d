//! The command line, declared once: parsing, `--help`, the man page and the shell
//! completions all come from these definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::EXIT_CODES;
use crate::output::Format;

/// `--help`'s last words: where credentials come from, and the exit codes.
const AFTER_HELP: &str = "\
Credentials: `dragonfly login URL` saves apid's URL and an API token in
$XDG_CONFIG_HOME/dragonfly/credentials.toml (mode 0600; a file others can read is refused).
DRAGONFLY_URL and DRAGONFLY_TOKEN override it (the saved token is only ever sent to the
saved URL).
";

/// Dragonfly's command-line client: machines, templates, workflows, power and tokens, from a
/// shell.
#[derive(Debug, Parser)]
#[command(name = "dragonfly", version, about, long_about = None,
    after_help = format!("{AFTER_HELP}\n{EXIT_CODES}"))]
pub struct Cli {
    /// apid's operators' URL, e.g. `https://dragonfly.example:3000`.
    #[arg(long, global = true, env = "DRAGONFLY_URL", value_name = "URL")]
    pub url: Option<String>,
    /// The credentials file.
    #[arg(
        long,
        global = true,
        env = "DRAGONFLY_CREDENTIALS",
        value_name = "FILE"
    )]
    pub credentials: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for apid's TLS certificate, besides the system's.
    #[arg(long, global = true, env = "DRAGONFLY_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Seconds to wait for each answer from apid.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to apid and save an API token for the next commands.
    Login(Login),
    /// Revoke the saved token and forget it.
    Logout,
    /// Show who the credentials belong to.
    Whoami,
    /// The machine inventory.
    #[command(subcommand)]
    Machines(Machines),
    /// OS templates.
    #[command(subcommand)]
    Templates(Templates),
    /// Assign an OS template to a machine: a workflow installs it on its next network boot.
    Provision(Provision),
    /// Provisioning workflows.
    #[command(subcommand)]
    Workflows(Workflows),
    /// Power a machine through its BMC (IPMI, Redfish or Wake-on-LAN).
    Power(Power),
    /// A machine's BMC (how bmcd powers it).
    #[command(subcommand)]
    Bmc(Bmc),
    /// A machine's reserved IPv4 address (served by dhcpd).
    #[command(subcommand)]
    Address(Address),
    /// The OS image library.
    #[command(subcommand)]
    Images(Images),
    /// Your API tokens.
    #[command(subcommand)]
    Tokens(Tokens),
    /// Operator accounts (administrators only, but `password`).
    #[command(subcommand)]
    Users(Users),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `dragonfly man | man -l -`.
    Man,
}

#[derive(Debug, Args)]
pub struct Login {
    /// apid's operators' URL (default: --url, DRAGONFLY_URL or the saved one).
    pub url: Option<String>,
    /// The operator's user name (asked for when absent and stdin is a terminal).
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password from standard input (one line) instead of asking.
    #[arg(long, conflicts_with = "with_token")]
    pub password_stdin: bool,
    /// Read an existing API token from standard input instead of logging in with a password.
    #[arg(long)]
    pub with_token: bool,
    /// The name of the API token created for this client.
    #[arg(long, value_name = "NAME")]
    pub token_name: Option<String>,
    /// Lifetime of the token created, in days (1 to 3650; default: until revoked).
    #[arg(long, value_name = "DAYS")]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum Machines {
    /// List machines.
    #[command(visible_alias = "ls")]
    List {
        /// Only machines in this state.
        #[arg(long, value_enum)]
        state: Option<MachineState>,
        /// Only machines with these labels: key=value[,key=value…].
        #[arg(short = 'l', long, value_name = "SELECTOR")]
        selector: Option<String>,
    },
    /// Show one machine: hardware, state, power, workflow.
    Show {
        /// Name (e.g. CensusAbleQualityParent) or id.
        machine: String,
    },
    /// Set labels (key=value) or remove them (key-).
    Label {
        machine: String,
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        labels: Vec<String>,
    },
    /// Approve a machine waiting in Discovered (when apid's auto_register is off).
    Approve { machine: String },
    /// Delete a machine from the inventory (it is discovered again if it boots).
    #[command(visible_alias = "rm")]
    Delete {
        machine: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
}

/// Machine states, as the API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum MachineState {
    Discovered,
    Registered,
    OsAssigned,
    Provisioning,
    Ready,
    Error,
}

impl MachineState {
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Discovered => "Discovered",
            Self::Registered => "Registered",
            Self::OsAssigned => "OsAssigned",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Error => "Error",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Templates {
    /// Create or update templates from a YAML or JSON file (`-` for stdin; several YAML
    /// documents separated by `---` are applied in order).
    Apply {
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// List templates.
    #[command(visible_alias = "ls")]
    List,
    /// Show one template (its whole document with -o yaml or json).
    Show { name: String },
    /// Delete a template (refused while an active workflow uses it).
    #[command(visible_alias = "rm")]
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct Provision {
    /// Name or id of the machine.
    pub machine: String,
    /// The template to install.
    #[arg(short, long)]
    pub template: String,
    /// A template value, KEY=VALUE (VALUE read as JSON when it is valid JSON, else as text);
    /// repeatable. `hostname`, `sshKeys` and `ip` also set `{{hostname}}` and friends.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub values: Vec<String>,
    /// Allow re-imaging a Ready machine (its disk is wiped).
    #[arg(long)]
    pub reimage: bool,
    /// Then follow the workflow until it ends (as `workflows watch`).
    #[arg(short, long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum Workflows {
    /// List workflows, newest first.
    #[command(visible_alias = "ls")]
    List,
    /// Show one workflow and its actions.
    Show { workflow: String },
    /// Follow a workflow live until it ends; exit 0 when it succeeded, 1 otherwise.
    Watch {
        workflow: String,
        /// Give up after this many seconds (exit 1); default: wait as long as it runs.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Stop a workflow.
    Cancel { workflow: String },
    /// Run a failed, timed-out or cancelled workflow again.
    Retry { workflow: String },
}

#[derive(Debug, Args)]
pub struct Power {
    /// Name or id of the machine.
    pub machine: String,
    /// What to do.
    #[arg(value_enum)]
    pub action: PowerAction,
    /// boot-pxe and boot-disk: for every boot from now on, not only the next.
    #[arg(long)]
    pub persistent: bool,
}

/// Power operations, as the API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PowerAction {
    On,
    Off,
    SoftOff,
    Cycle,
    Reset,
    Status,
    BootPxe,
    BootDisk,
}

impl PowerAction {
    pub fn api_name(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::SoftOff => "soft-off",
            Self::Cycle => "cycle",
            Self::Reset => "reset",
            Self::Status => "status",
            Self::BootPxe => "boot-pxe",
            Self::BootDisk => "boot-disk",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Bmc {
    /// Show a machine's BMC, its power state and its last power requests.
    Show { machine: String },
    /// Configure a machine's BMC (the password is read from stdin, sealed to bmcd's key at
    /// once and never shown again; leave --password-stdin out to keep the stored one).
    Set {
        machine: String,
        #[arg(long = "type", value_enum)]
        kind: BmcKind,
        /// ipmi: host or IP; redfish: `http(s)://host[:port]`; wol: an IPv4 broadcast address.
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        username: Option<String>,
        /// Read the BMC password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        /// Redfish: the system's id (when the BMC has several).
        #[arg(long)]
        system: Option<String>,
        /// How the machine boots from the network: uefi (default) or legacy.
        #[arg(long, value_enum)]
        boot_mode: Option<BootMode>,
        /// Redfish over https: the BMC certificate's SHA-256 fingerprint to pin.
        #[arg(long, value_name = "SHA256")]
        tls_fingerprint: Option<String>,
        /// Redfish over https: a CA certificate (PEM file) that issued the BMC's.
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
    },
    /// Remove a machine's BMC (power control ends).
    #[command(visible_alias = "rm")]
    Remove { machine: String },
}

/// BMC kinds, as the API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BmcKind {
    Ipmi,
    Redfish,
    Wol,
}

/// Network boot modes, as the API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootMode {
    Uefi,
    Legacy,
}

#[derive(Debug, Subcommand)]
pub enum Address {
    /// Show a machine's reserved address.
    Show { machine: String },
    /// Reserve an IPv4 address for a machine (from its next DHCP exchange).
    Set {
        machine: String,
        ip: String,
        /// Which of its MACs gets it (default: its first).
        #[arg(long)]
        mac: Option<String>,
    },
    /// Release a machine's reserved address.
    #[command(visible_alias = "rm")]
    Remove { machine: String },
}

#[derive(Debug, Subcommand)]
pub enum Images {
    /// List the image library.
    #[command(visible_alias = "ls")]
    List,
    /// Show one image (its whole document with -o yaml or json).
    Show { name: String },
    /// Add images from a YAML or JSON file (`-` for stdin); a local file is checksummed by
    /// apid before it is Ready.
    Add {
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete an image (refused while a template names it).
    #[command(visible_alias = "rm")]
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum Users {
    /// List operator accounts.
    #[command(visible_alias = "ls")]
    List,
    /// Create an account; its password is read from standard input (one line, 12 or more
    /// characters).
    Create {
        username: String,
        /// An administrator rather than an operator.
        #[arg(long)]
        admin: bool,
    },
    /// Stop an account from logging in; its sessions and tokens stop working.
    Disable { username: String },
    /// Let a disabled account log in again.
    Enable { username: String },
    /// End every session and revoke every API token of an account.
    Revoke { username: String },
    /// Change your own password (current, then new, one line each on standard input or asked
    /// on the terminal).
    Password,
}

#[derive(Debug, Subcommand)]
pub enum Tokens {
    /// Create an API token; its secret is printed once.
    Create {
        name: String,
        /// Lifetime in days (1 to 3650; default: until revoked).
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
    },
    /// List your tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn names_match_the_api() {
        // Exactly the states the domain model has (a state added there must be here too).
        let ours: Vec<&str> = MachineState::value_variants()
            .iter()
            .map(|s| {
                assert_eq!(s.to_possible_value().unwrap().get_name(), s.api_name());
                s.api_name()
            })
            .collect();
        let domain: Vec<&str> = dragonfly_core::MachineState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(ours, domain, "--state values");
        for a in PowerAction::value_variants() {
            assert_eq!(a.to_possible_value().unwrap().get_name(), a.api_name());
        }
    }

    #[test]
    fn parses_the_documented_commands() {
        let cli = Cli::try_parse_from([
            "dragonfly",
            "-o",
            "json",
            "provision",
            "CensusAbleQualityParent",
            "--template",
            "debian-12",
            "--set",
            "hostname=web1",
        ])
        .unwrap();
        assert_eq!(cli.output, Format::Json);
        let Command::Provision(p) = cli.command else {
            panic!("provision")
        };
        assert_eq!(p.values, ["hostname=web1"]);
        assert!(Cli::try_parse_from(["dragonfly", "power", "m", "sideways"]).is_err());
        assert!(Cli::try_parse_from(["dragonfly", "machines", "label", "m"]).is_err());
    }
}
