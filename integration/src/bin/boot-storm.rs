//! boot-storm: `--clients` simulated PXE machines boot at once through the whole network boot
//! path, for integration/bench/boot-storm.sh (Dragonfly's dhcpd + tftpd + ipxed against
//! dnsmasq + nginx).
//!
//! Each client, as a BIOS PXE ROM and then iPXE would:
//!
//! 1. DHCP DISCOVER → OFFER → REQUEST → ACK with its own MAC, option 93 = 0 (BIOS), option 60
//!    `PXEClient:Arch:00000:UNDI:002001`, option 97 (its GUID) and a PXE ROM's parameter list.
//!    The clients reach the server as a **relay agent** does (perfdhcp's way in
//!    integration/bench/dhcp.sh): every request is unicast from `--relay`:67 with giaddr =
//!    `--relay`, and the server answers that address, where this program listens and hands
//!    each answer to its client by xid. So the server must accept relayed requests from
//!    `--relay`. Unanswered requests are sent again after each of `--dhcp-timeouts`; a NAK
//!    starts the exchange again from DISCOVER (RFC 2131), at most three times.
//! 2. TFTP RRQ of the ACK's boot file (option 67, else the `file` field) from its next-server
//!    (siaddr, else option 54), with `tsize` and `blksize` (`--blksize`, lock-step: a PXE ROM
//!    asks no `windowsize`), from the leased address; the bytes are compared with
//!    `--tftp-expect`.
//! 3. HTTP GET of `--script-url` (`{mac}` replaced by the MAC, as iPXE expands `${mac}`), then
//!    the `kernel` and `initrd` URLs the script names, on one keep-alive connection per server
//!    (iPXE pools its connections), from the leased address. A 503 is retried after its
//!    `Retry-After` (what the agent script's `goto retry` does), up to `--http-tries` times.
//!    Bodies of the kernel and initrd are counted and dropped in the kernel (`recv` with
//!    `MSG_TRUNC`): this program shares the cores with the servers it measures.
//!
//! The leased addresses must be local to this host (e.g. `ip route add local POOL dev lo` in
//! the client namespace) and routed back to it by the server. iPXE's own second DHCP exchange
//! (user class `iPXE`) is not played: the script URL comes from `--script-url`.
//!
//! A client "booted" when every step succeeded. Prints one line of `key=value` figures
//! (clients, booted, failed, wall_s from the first DISCOVER to a booted client's last byte,
//! p50_s and p99_s of the booted clients' own times, bytes, tftp_bytes, http_bytes, the
//! phases' shares of the booted clients' time and each phase's mean, retries), then
//! `failed: COUNT REASON (e.g. …)` per reason on stderr. Exit code 0 even with failures (the
//! script reports them), 2 on bad usage, 1 when it cannot start (e.g. the relay's port).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the figures are this program's output; failures are named on stderr"
)]

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use nix::sys::socket::{MsgFlags, recv, setsockopt, sockopt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{Barrier, mpsc};

#[derive(Debug, Parser)]
#[command(
    about = "Simulated PXE clients boot at once: DHCP, TFTP, the iPXE script, kernel, initrd"
)]
struct Args {
    /// How many clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// The DHCP server's address and port.
    #[arg(long, default_value = "10.200.0.1:67")]
    dhcp_server: SocketAddrV4,
    /// This host's address: the relay agent (giaddr); answers come back to it on port 67.
    #[arg(long, default_value = "10.200.0.2")]
    relay: Ipv4Addr,
    /// The first three bytes of every client's MAC (the last three come from its number).
    #[arg(long, default_value = "0e:df:01")]
    mac_prefix: String,
    /// The iPXE script's URL; `{mac}` becomes the client's MAC (`aa:bb:…`).
    #[arg(long, required_unless_present = "print_macs")]
    script_url: Option<String>,
    /// The file TFTP must deliver (compared byte for byte).
    #[arg(long)]
    tftp_expect: Option<std::path::PathBuf>,
    /// TFTP blksize asked for.
    #[arg(long, default_value_t = 1456)]
    blksize: u16,
    /// Seconds to wait for each DHCP answer before sending again (a list: its length is the
    /// number of tries).
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    dhcp_timeouts: Vec<u64>,
    /// Tries of one HTTP request answered 503 (each after `Retry-After`).
    #[arg(long, default_value_t = 6)]
    http_tries: u32,
    /// The script must carry a boot token (`dragonfly.token=`): Dragonfly's side.
    #[arg(long)]
    expect_token: bool,
    /// Prints the clients' MACs, one a line, and exits.
    #[arg(long)]
    print_macs: bool,
}

/// What one client spent, in each phase.
#[derive(Debug, Default, Clone)]
struct Booted {
    dhcp: Duration,
    tftp: Duration,
    http: Duration,
    tftp_bytes: u64,
    http_bytes: u64,
}

/// Counters every client adds to, booted or not.
#[derive(Debug, Default)]
struct Counters {
    dhcp_resent: u64,
    dhcp_naks: u64,
    tftp_resent: u64,
    http_503: u64,
    no_token: u64,
}

/// Why a client did not boot: a stable category (counted) and the detail (a few shown).
#[derive(Debug)]
struct Failure {
    reason: String,
    detail: String,
}

fn fail(reason: &str, detail: impl std::fmt::Display) -> Failure {
    Failure {
        reason: reason.to_owned(),
        detail: detail.to_string(),
    }
}

/// What the clients share.
#[derive(Debug)]
struct Shared {
    args: Args,
    relay_socket: UdpSocket,
    /// Each waiting client's channel, by xid.
    waiting: Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>,
    tftp_expect: Option<Vec<u8>>,
    counters: Mutex<Counters>,
    first_send: Mutex<Option<Instant>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let prefix = parse_prefix(&args.mac_prefix)?;
    if args.print_macs {
        for i in 1..=args.clients {
            println!("{}", mac_str(&mac_of(prefix, i)));
        }
        return Ok(());
    }
    let Some(script_url) = args.script_url.clone() else {
        bail!("--script-url is required");
    };
    if args.dhcp_timeouts.is_empty() {
        bail!("--dhcp-timeouts needs at least one value");
    }
    let tftp_expect = match &args.tftp_expect {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let relay_socket = relay_socket(args.relay)?;
    // A random base: xids of an earlier run's late answers match nobody.
    // Client number in the low 16 bits, NAK restarts in bits 16–19.
    let xid_base = rand_u32() & 0xfff0_0000;
    if args.clients > 0xffff {
        bail!("at most 65535 clients");
    }
    let clients = args.clients;
    let shared = Arc::new(Shared {
        args,
        relay_socket,
        waiting: Mutex::new(HashMap::new()),
        tftp_expect,
        counters: Mutex::new(Counters::default()),
        first_send: Mutex::new(None),
    });
    let receiver = tokio::spawn(receive_dhcp(Arc::clone(&shared)));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let tasks: Vec<_> = (1..=clients)
        .map(|i| {
            let (shared, barrier) = (Arc::clone(&shared), Arc::clone(&barrier));
            let script_url = script_url.clone();
            let xid = xid_base | u32::try_from(i).unwrap_or(0);
            let mac = mac_of(prefix, i);
            tokio::spawn(async move {
                barrier.wait().await;
                let start = Instant::now();
                let out = boot(&shared, mac, xid, &script_url).await;
                (out, start, Instant::now())
            })
        })
        .collect();
    barrier.wait().await;
    let mut booted = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut last = None::<Instant>;
    let mut totals = Vec::new();
    for t in tasks {
        match t.await {
            Ok((Ok(b), start, end)) => {
                last = Some(last.map_or(end, |l| l.max(end)));
                totals.push(end - start);
                booted.push(b);
            }
            Ok((Err(f), _, _)) => failures.push(f),
            Err(e) => failures.push(fail("panicked", e)),
        }
    }
    receiver.abort();
    let first = shared
        .first_send
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_else(Instant::now);
    let wall = last.map_or(Duration::ZERO, |l| l.saturating_duration_since(first));
    totals.sort();
    let pct = |p: usize| {
        totals
            .get((totals.len() * p / 100).min(totals.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let sum = |f: fn(&Booted) -> Duration| booted.iter().map(f).sum::<Duration>().as_secs_f64();
    let (dhcp, tftp, http) = (sum(|b| b.dhcp), sum(|b| b.tftp), sum(|b| b.http));
    let all = (dhcp + tftp + http).max(f64::MIN_POSITIVE);
    let n = (booted.len() as f64).max(1.0);
    let tftp_bytes: u64 = booted.iter().map(|b| b.tftp_bytes).sum();
    let http_bytes: u64 = booted.iter().map(|b| b.http_bytes).sum();
    let c = shared.counters.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "clients={clients} booted={} failed={} wall_s={:.3} p50_s={:.3} p99_s={:.3} \
         bytes={} tftp_bytes={tftp_bytes} http_bytes={http_bytes} dhcp_share={:.1} \
         tftp_share={:.1} http_share={:.1} dhcp_mean_s={:.3} tftp_mean_s={:.3} http_mean_s={:.3} \
         dhcp_resent={} dhcp_naks={} tftp_resent={} http_503={} no_token={}",
        booted.len(),
        failures.len(),
        wall.as_secs_f64(),
        pct(50).as_secs_f64(),
        pct(99).as_secs_f64(),
        tftp_bytes + http_bytes,
        100.0 * dhcp / all,
        100.0 * tftp / all,
        100.0 * http / all,
        dhcp / n,
        tftp / n,
        http / n,
        c.dhcp_resent,
        c.dhcp_naks,
        c.tftp_resent,
        c.http_503,
        c.no_token,
    );
    let mut reasons: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for f in &failures {
        reasons.entry(&f.reason).or_insert((0, &f.detail)).0 += 1;
    }
    for (reason, (count, example)) in reasons {
        eprintln!("failed: {count} {reason} (e.g. {example})");
    }
    Ok(())
}

/// One client's whole boot.
async fn boot(
    shared: &Shared,
    mac: [u8; 6],
    xid: u32,
    script_url: &str,
) -> Result<Booted, Failure> {
    let t0 = Instant::now();
    let ack = dhcp(shared, mac, xid).await?;
    let t1 = Instant::now();
    let ip = ack.yiaddr();
    let file = ack
        .opts()
        .get(OptionCode::BootfileName)
        .and_then(|o| match o {
            DhcpOption::BootfileName(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .or_else(|| ack.fname_str().and_then(Result::ok).map(str::to_owned))
        // dnsmasq ends option 67 with a NUL, as some firmware wants.
        .map(|f| f.trim_end_matches('\0').to_owned())
        .filter(|f| !f.is_empty())
        .ok_or_else(|| fail("dhcp: no boot file in the ACK", mac_str(&mac)))?;
    let next_server = match ack.siaddr() {
        a if !a.is_unspecified() => a,
        _ => match ack.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(a)) => *a,
            _ => return Err(fail("dhcp: no next-server", mac_str(&mac))),
        },
    };
    let tftp_bytes = tftp(shared, ip, SocketAddrV4::new(next_server, 69), &file).await?;
    let t2 = Instant::now();
    let url = script_url.replace("{mac}", &mac_str(&mac));
    let http_bytes = http_boot(shared, ip, &url).await?;
    let t3 = Instant::now();
    Ok(Booted {
        dhcp: t1 - t0,
        tftp: t2 - t1,
        http: t3 - t2,
        tftp_bytes,
        http_bytes,
    })
}

// ------------------------------------------------------------------------------------- DHCP

/// The relay's socket: `relay`:67, with a large receive buffer (a storm's answers arrive
/// together, and a drop here would be charged to the server).
fn relay_socket(relay: Ipv4Addr) -> anyhow::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind((relay, 67)).with_context(|| {
        format!("binding the relay's socket {relay}:67 (root, in the client namespace)")
    })?;
    std.set_nonblocking(true)?;
    // Beyond rmem_max needs CAP_NET_ADMIN; the plain option is the fallback.
    if setsockopt(&std, sockopt::RcvBufForce, &(8 << 20)).is_err() {
        let _ = setsockopt(&std, sockopt::RcvBuf, &(8 << 20));
    }
    Ok(UdpSocket::from_std(std)?)
}

/// Hands each answer to the client waiting on its xid.
async fn receive_dhcp(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, _)) = shared.relay_socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(msg) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        let waiting = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = waiting.get(&msg.xid()) {
            let _ = tx.send(msg);
        }
    }
}

/// DISCOVER → OFFER → REQUEST → ACK; the ACK.
async fn dhcp(shared: &Shared, mac: [u8; 6], xid: u32) -> Result<Message, Failure> {
    // A NAK sends the client back to INIT (RFC 2131 §3.1) with a new xid, so that late
    // answers to the abandoned exchange are not taken for answers to the new one; a few times
    // at most.
    let mut naks = 0;
    loop {
        let xid = xid | (naks << 16);
        let (tx, mut rx) = mpsc::unbounded_channel();
        shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(xid, tx);
        let result = dora(shared, mac, xid, &mut rx).await;
        shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&xid);
        match result {
            Err(f) if f.reason == NAK && naks < MAX_NAKS => {
                naks += 1;
                shared
                    .counters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .dhcp_naks += 1;
            }
            other => return other,
        }
    }
}

/// One DISCOVER → OFFER → REQUEST → ACK under `xid`.
async fn dora(
    shared: &Shared,
    mac: [u8; 6],
    xid: u32,
    rx: &mut mpsc::UnboundedReceiver<Message>,
) -> Result<Message, Failure> {
    let discover = pxe_message(shared, MessageType::Discover, mac, xid);
    let offer = exchange(shared, &discover, rx, mac, MessageType::Offer).await?;
    let mut request = pxe_message(shared, MessageType::Request, mac, xid);
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    if let Some(DhcpOption::ServerIdentifier(sid)) = offer.opts().get(OptionCode::ServerIdentifier)
    {
        request
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(*sid));
    }
    exchange(shared, &request, rx, mac, MessageType::Ack).await
}

/// The failure a NAK is, and how many times a client starts again after one.
const NAK: &str = "dhcp: NAK";
const MAX_NAKS: u32 = 3;

/// Sends `msg` until an answer of type `want` for `mac` arrives; a NAK ends it.
async fn exchange(
    shared: &Shared,
    msg: &Message,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    mac: [u8; 6],
    want: MessageType,
) -> Result<Message, Failure> {
    let mut bytes = Vec::new();
    msg.encode(&mut Encoder::new(&mut bytes))
        .map_err(|e| fail("dhcp: encoding", e))?;
    let server = SocketAddr::V4(shared.args.dhcp_server);
    for (try_no, &secs) in shared.args.dhcp_timeouts.iter().enumerate() {
        if try_no > 0 {
            shared
                .counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .dhcp_resent += 1;
        }
        {
            let mut first = shared.first_send.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(Instant::now);
        }
        shared
            .relay_socket
            .send_to(&bytes, server)
            .await
            .map_err(|e| fail("dhcp: send", e))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if reply.chaddr().get(..6) != Some(&mac[..]) {
                continue;
            }
            match reply.opts().msg_type() {
                Some(t) if t == want => return Ok(reply),
                Some(MessageType::Nak) => return Err(fail(NAK, mac_str(&mac))),
                _ => {}
            }
        }
    }
    let what = if want == MessageType::Offer {
        "dhcp: no OFFER"
    } else {
        "dhcp: no ACK"
    };
    Err(fail(
        what,
        format!(
            "{} after {} tries",
            mac_str(&mac),
            shared.args.dhcp_timeouts.len()
        ),
    ))
}

/// A BIOS PXE ROM's DISCOVER or REQUEST, relayed.
fn pxe_message(shared: &Shared, kind: MessageType, mac: [u8; 6], xid: u32) -> Message {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, z, z, z, shared.args.relay, &mac);
    m.set_hops(1);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::MaxMessageSize(1260));
    opts.insert(DhcpOption::ParameterRequestList(
        [
            1u8, 2, 3, 5, 6, 12, 13, 15, 17, 43, 54, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134,
            135,
        ]
        .into_iter()
        .map(OptionCode::from)
        .collect(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture(0)));
    opts.insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
        OptionCode::from(94),
        vec![1, 2, 1],
    )));
    let mut guid = vec![0u8];
    guid.extend_from_slice(&[0xdf; 10]);
    guid.extend_from_slice(&mac);
    opts.insert(DhcpOption::ClientMachineIdentifier(guid));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    m
}

// ------------------------------------------------------------------------------------- TFTP

/// Reads `file` from `server` over TFTP from `local`; its length.
async fn tftp(
    shared: &Shared,
    local: Ipv4Addr,
    server: SocketAddrV4,
    file: &str,
) -> Result<u64, Failure> {
    let socket = UdpSocket::bind((local, 0))
        .await
        .map_err(|e| fail("tftp: bind the leased address", format!("{local}: {e}")))?;
    let blksize = shared.args.blksize;
    let mut rrq = vec![0, 1];
    for part in [file, "octet", "tsize", "0", "blksize", &blksize.to_string()] {
        rrq.extend_from_slice(part.as_bytes());
        rrq.push(0);
    }
    let mut data = Vec::with_capacity(128 * 1024);
    let mut tid: Option<SocketAddr> = None;
    let mut size = usize::from(blksize);
    let mut expected: u16 = 1;
    let mut last: Vec<u8> = rrq.clone();
    let mut to = SocketAddr::V4(server);
    let mut quiet = 0u32;
    let mut buf = vec![0u8; 65536];
    socket
        .send_to(&rrq, to)
        .await
        .map_err(|e| fail("tftp: send", e))?;
    loop {
        let got = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await;
        let (n, from) = match got {
            Ok(r) => r.map_err(|e| fail("tftp: receive", e))?,
            Err(_) => {
                quiet += 1;
                if quiet >= 6 {
                    return Err(fail(
                        if tid.is_none() {
                            "tftp: no answer to the RRQ"
                        } else {
                            "tftp: stalled"
                        },
                        format!("{local} after {} bytes", data.len()),
                    ));
                }
                shared
                    .counters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .tftp_resent += 1;
                let _ = socket.send_to(&last, to).await;
                continue;
            }
        };
        if tid.is_some_and(|t| t != from) || n < 4 {
            continue;
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        match op {
            // OACK: blksize as granted.
            6 if tid.is_none() => {
                tid = Some(from);
                to = from;
                size = parse_oack(&buf[2..n])
                    .get("blksize")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(512);
                last = vec![0, 4, 0, 0];
                quiet = 0;
                let _ = socket.send_to(&last, to).await;
            }
            3 => {
                if tid.is_none() {
                    // The server ignored the options.
                    tid = Some(from);
                    to = from;
                    size = 512;
                }
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if block == expected {
                    quiet = 0;
                    data.extend_from_slice(&buf[4..n]);
                    last = vec![0, 4, buf[2], buf[3]];
                    let _ = socket.send_to(&last, to).await;
                    expected = expected.wrapping_add(1);
                    if n - 4 < size {
                        break;
                    }
                } else if block == expected.wrapping_sub(1) {
                    // A duplicate: acknowledge again.
                    let _ = socket.send_to(&last, to).await;
                }
            }
            5 => {
                return Err(fail(
                    "tftp: error from the server",
                    String::from_utf8_lossy(buf[4..n].split(|&b| b == 0).next().unwrap_or(&[]))
                        .into_owned(),
                ));
            }
            _ => {}
        }
    }
    if let Some(want) = &shared.tftp_expect
        && data != *want
    {
        return Err(fail(
            "tftp: wrong bytes",
            format!("{local}: {} bytes, wanted {}", data.len(), want.len()),
        ));
    }
    Ok(data.len() as u64)
}

fn parse_oack(body: &[u8]) -> HashMap<String, String> {
    let parts: Vec<String> = body
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).to_ascii_lowercase())
        .collect();
    parts
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
        .collect()
}

// ------------------------------------------------------------------------------------- HTTP

/// The script, then its kernel and initrd; bytes of every body received.
async fn http_boot(shared: &Shared, local: Ipv4Addr, url: &str) -> Result<u64, Failure> {
    let mut conn = Conn::new(local);
    let (script, mut bytes) = conn
        .get(shared, url, true)
        .await
        .map_err(|e| e.at("script"))?;
    let script = String::from_utf8_lossy(&script).into_owned();
    let mut kernel = None;
    let mut initrd = None;
    for line in script.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("kernel") if kernel.is_none() => kernel = words.next().map(str::to_owned),
            Some("initrd") if initrd.is_none() => {
                initrd = words.find(|w| w.contains("://")).map(str::to_owned);
            }
            _ => {}
        }
    }
    let (Some(kernel), Some(initrd)) = (kernel, initrd) else {
        return Err(fail(
            "http: the script names no kernel or initrd",
            script.lines().take(3).collect::<Vec<_>>().join(" / "),
        ));
    };
    if shared.args.expect_token && !script.contains("dragonfly.token=") {
        shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .no_token += 1;
        return Err(fail("http: the script has no boot token", local));
    }
    bytes += conn
        .get(shared, &kernel, false)
        .await
        .map_err(|e| e.at("kernel"))?
        .1;
    bytes += conn
        .get(shared, &initrd, false)
        .await
        .map_err(|e| e.at("initrd"))?
        .1;
    Ok(bytes)
}

/// An HTTP failure, before it is told which request it was.
#[derive(Debug)]
struct HttpError {
    kind: &'static str,
    detail: String,
}

impl HttpError {
    fn at(self, what: &str) -> Failure {
        fail(&format!("http {what}: {}", self.kind), self.detail)
    }
}

fn herr(kind: &'static str, detail: impl std::fmt::Display) -> HttpError {
    HttpError {
        kind,
        detail: detail.to_string(),
    }
}

/// One client's keep-alive connection (reopened when the server closes it or another
/// server is named).
#[derive(Debug)]
struct Conn {
    local: Ipv4Addr,
    stream: Option<(SocketAddr, TcpStream)>,
}

impl Conn {
    fn new(local: Ipv4Addr) -> Conn {
        Conn {
            local,
            stream: None,
        }
    }

    /// GET `url`; the body when `keep`, and its length. 503 is retried after `Retry-After`.
    async fn get(
        &mut self,
        shared: &Shared,
        url: &str,
        keep: bool,
    ) -> Result<(Vec<u8>, u64), HttpError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| herr("not an http:// URL", url))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let server: SocketAddr = host
            .parse()
            .or_else(|_| format!("{host}:80").parse())
            .map_err(|_| herr("the URL's host is not IP:PORT", url))?;
        let request = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: iPXE/1.0.0+ (boot-storm)\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        let mut tries = 0;
        loop {
            tries += 1;
            let (status, retry_after, body, len) = self.exchange(server, &request, keep).await?;
            match status {
                200 => return Ok((body, len)),
                503 if tries < shared.args.http_tries => {
                    shared
                        .counters
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .http_503 += 1;
                    tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(10))).await;
                }
                s => return Err(herr("status", format!("{s} for {url} (try {tries})"))),
            }
        }
    }

    /// One request and its answer, on the pooled connection or a new one (once more on a new
    /// one when a pooled connection turns out closed before the answer began).
    async fn exchange(
        &mut self,
        server: SocketAddr,
        request: &str,
        keep: bool,
    ) -> Result<(u16, Option<u64>, Vec<u8>, u64), HttpError> {
        let reused = self.stream.as_ref().is_some_and(|(s, _)| *s == server);
        match self.exchange_once(server, request, keep).await {
            Err(e) if reused && e.kind == "closed before the answer" => {
                self.stream = None;
                self.exchange_once(server, request, keep).await
            }
            other => other,
        }
    }

    async fn exchange_once(
        &mut self,
        server: SocketAddr,
        request: &str,
        keep: bool,
    ) -> Result<(u16, Option<u64>, Vec<u8>, u64), HttpError> {
        if self.stream.as_ref().is_none_or(|(s, _)| *s != server) {
            let socket = TcpSocket::new_v4().map_err(|e| herr("socket", e))?;
            socket
                .bind(SocketAddr::from((self.local, 0)))
                .map_err(|e| herr("bind the leased address", e))?;
            let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
                .await
                .map_err(|_| herr("connect timed out", server))?
                .map_err(|e| herr("connect", format!("{server}: {e}")))?;
            self.stream = Some((server, stream));
        }
        let Some((_, stream)) = self.stream.as_mut() else {
            return Err(herr("no connection", server));
        };
        let result = answer(stream, request, keep).await;
        match &result {
            Ok((_, close, ..)) if !*close => {}
            _ => self.stream = None,
        }
        result.map(|(status, _, retry_after, body, len)| (status, retry_after, body, len))
    }
}

/// Sends `request` and reads the answer: status, whether the server closes, Retry-After, the
/// body (when `keep`) and its length.
async fn answer(
    stream: &mut TcpStream,
    request: &str,
    keep: bool,
) -> Result<(u16, bool, Option<u64>, Vec<u8>, u64), HttpError> {
    const READ: Duration = Duration::from_secs(30);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| herr("closed before the answer", e))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = tokio::time::timeout(READ, stream.read(&mut chunk))
            .await
            .map_err(|_| herr("no answer in 30 s", ""))?
            .map_err(|e| herr("closed before the answer", e))?;
        if n == 0 {
            return Err(herr("closed before the answer", "EOF"));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 64 * 1024 {
            return Err(herr("answer head too long", ""));
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| herr("no status", text.lines().next().unwrap_or("")))?;
    let header = |name: &str| {
        text.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let length: u64 = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| herr("no Content-Length", status))?;
    let mut body = head[end..].to_vec();
    let mut got = body.len() as u64;
    if keep || status != 200 {
        while got < length {
            let n = tokio::time::timeout(READ, stream.read(&mut chunk))
                .await
                .map_err(|_| herr("stalled", got))?
                .map_err(|e| herr("body", e))?;
            if n == 0 {
                return Err(herr("closed in the body", format!("{got} of {length}")));
            }
            body.extend_from_slice(&chunk[..n]);
            got += n as u64;
        }
    } else {
        body.clear();
        // Never written to: with MSG_TRUNC the kernel discards into no buffer.
        let mut sink = vec![0u8; 1 << 20];
        let fd = stream.as_raw_fd();
        while got < length {
            let want = usize::try_from(length - got)
                .unwrap_or(usize::MAX)
                .min(sink.len());
            tokio::time::timeout(READ, stream.readable())
                .await
                .map_err(|_| herr("stalled", got))?
                .map_err(|e| herr("body", e))?;
            match stream.try_io(Interest::READABLE, || {
                recv(fd, &mut sink[..want], MsgFlags::MSG_TRUNC).map_err(std::io::Error::from)
            }) {
                Ok(0) => return Err(herr("closed in the body", format!("{got} of {length}"))),
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(herr("body", e)),
            }
        }
    }
    if got > length {
        return Err(herr("more than Content-Length", got));
    }
    Ok((status, close, retry_after, body, got))
}

// ------------------------------------------------------------------------------------ misc

fn parse_prefix(s: &str) -> anyhow::Result<[u8; 3]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("--mac-prefix {s:?}: expected three hex bytes like 0e:df:01"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("--mac-prefix {s:?}: expected three bytes"))
}

/// Client `i`'s MAC: the prefix, then `i` scattered over the last 24 bits (an odd multiplier
/// is a bijection modulo 2^24). Sequential MACs would make dnsmasq, which picks the first
/// address to try by a hash of the MAC in which neighbours land on the same few addresses,
/// offer one address to many clients and NAK all but one of them: a real effect for a rack
/// of sequential MACs, but this measures serving, not that.
fn mac_of(prefix: [u8; 3], i: usize) -> [u8; 6] {
    let scattered = u32::try_from(i).unwrap_or(0).wrapping_mul(0x009e_3779) & 0x00ff_ffff;
    let [_, a, b, c] = scattered.to_be_bytes();
    [prefix[0], prefix[1], prefix[2], a, b, c]
}

fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}
