//! Policy: what to answer a decoded request, and which lease change that answer commits.
//!
//! [`decide`] is a pure function of the configuration, the request, where it arrived, what
//! the store knows about the client's MAC, the lease table and the time. It never touches a
//! socket, the store or the clock, so every DHCP rule is unit-tested here; the I/O layer only
//! carries its [`Outcome`] out (store write first, then the reply, then events).
//!
//! Rules worth knowing (RFC 2131 unless noted): no ping before an offer (it costs seconds per
//! boot, see the lab's pitfalls); an INIT-REBOOT for an address we do not know about gets
//! silence, a wrong one a NAK; in proxy modes no address is ever handed out (yiaddr 0).
//!
//! ProxyDHCP (PXE 2.1 §2.2, and what iPXE's `dhcp.c` accepts): every answer of the boot-only
//! path carries option 60 `PXEClient` (`HTTPClient` for UEFI HTTP boot) and option 54 with
//! yiaddr 0 — iPXE ignores a ProxyDHCP offer without option 60 even though it identifies
//! itself by user class, and then finds "Nothing to boot"; and it reads the boot file from a
//! ProxyDHCP answer only when siaddr is set too. On 67 only DISCOVERs are answered:
//! a REQUEST there is for the DHCP server that owns the addresses (often on this same host and
//! address), and the client asks the ProxyDHCP server again on 4011.
//!
//! The network is hostile (docs/security.md): a relayed request is served only when its giaddr
//! and its sender are listed in `relays`; an answer to a client dhcpd knows nothing about (no
//! reservation, no binding, not in the store) spends a token of its relay's or interface's
//! bucket ([`crate::limits`]); an offer holds its address for `offer_hold` only, one offer per
//! MAC.
//!
//! Every reply to a client (not through a relay) names the arrival interface, so a broadcast
//! never depends on the routing table. A datagram whose arrival interface is unknown (it was
//! queued before `IP_PKTINFO` was enabled, e.g. under `systemd-socket-activate`) is answered
//! from the configured `server_ip` (the kernel sends a broadcast out of the interface owning
//! that source address), or gets silence when none is configured.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dragonfly_bus::events::{LeaseEndReason, LeaseEnded, LeaseGranted, PxeAnswered};
use dragonfly_core::{MacAddr, MachineId};
use dragonfly_store::leases::LeaseWrite;
use uuid::Uuid;

use crate::config::{DhcpdConfig, Mode, Subnet};
use crate::leases::{Binding, Leases};
use crate::limits::{Link, NewClients};
use crate::wire::{BootClient, OPT_IPXE, Request};

/// Which of our sockets a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: DHCP (and ProxyDHCP).
    Dhcp,
    /// 4011: the PXE boot server.
    Pxe,
}

/// Where and how a request arrived (from `IP_PKTINFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub port: Port,
    /// The sender.
    pub source: SocketAddrV4,
    /// Our address on the arrival interface (`ipi_spec_dst`).
    pub local: Ipv4Addr,
    pub ifindex: u32,
}

/// What the store knows about the client's MAC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    pub machine_id: Option<Uuid>,
}

/// A reply and where it goes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub msg: Message,
    pub dest: SocketAddrV4,
    /// Send out of this interface (broadcasts to clients without an address).
    pub ifindex: Option<u32>,
    /// Source address (our address on the arrival interface).
    pub source: Ipv4Addr,
}

/// A lease change to publish after its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    Granted(LeaseGranted),
    Ended(LeaseEnded),
}

/// Everything [`decide`] concluded.
#[derive(Debug, Default)]
pub struct Outcome {
    pub reply: Option<Reply>,
    /// Commit this before sending `reply`.
    pub write: Option<LeaseWrite>,
    pub lease_event: Option<LeaseEvent>,
    pub pxe: Option<PxeAnswered>,
    /// Why nothing is sent, for a debug log line.
    pub silent: Option<&'static str>,
    /// Set when the answer was withheld because `link` had no token left for a new client.
    pub limited: Option<Link>,
}

fn silent(why: &'static str) -> Outcome {
    Outcome {
        silent: Some(why),
        ..Outcome::default()
    }
}

fn limited(link: Link) -> Outcome {
    Outcome {
        silent: Some("too many new clients from this relay or interface"),
        limited: Some(link),
        ..Outcome::default()
    }
}

/// Decides the answer to `req`. `now_ms` is Unix milliseconds.
pub fn decide(
    cfg: &DhcpdConfig,
    req: &Request,
    arrival: &Arrival,
    known: Known,
    leases: &mut Leases,
    new_clients: &mut NewClients,
    now_ms: i64,
) -> Outcome {
    let giaddr = req.msg.giaddr();
    if !giaddr.is_unspecified() && !cfg.relay_allowed(giaddr, *arrival.source.ip()) {
        return silent("relayed, but giaddr or sender is not in `relays`");
    }
    let fallback;
    let arrival = if arrival.ifindex == 0 {
        // No IP_PKTINFO: the datagram was queued before we enabled it. With a configured
        // server address the kernel can still send a broadcast out of the interface that owns
        // that address (no route needed); without one, silence and the client retransmits
        // (OVMF only after 4 s).
        let Some(local) = cfg.server_ip else {
            return silent("arrival interface unknown (no IP_PKTINFO): the client will retransmit");
        };
        fallback = Arrival { local, ..*arrival };
        &fallback
    } else {
        arrival
    };
    let mut gate = Gate {
        cfg,
        req,
        arrival,
        known,
        new_clients,
        now: now_ms,
    };
    if arrival.port == Port::Pxe || cfg.mode != Mode::Reservation {
        return boot_only(cfg, req, arrival, known, leases, &mut gate);
    }
    reservation(cfg, req, arrival, known, leases, &mut gate)
}

/// Where answers to new clients are counted (see [`crate::limits`]).
struct Gate<'a> {
    cfg: &'a DhcpdConfig,
    req: &'a Request,
    arrival: &'a Arrival,
    known: Known,
    new_clients: &'a mut NewClients,
    now: i64,
}

impl Gate<'_> {
    /// The link the request came from: its relay, else its arrival interface.
    fn link(&self) -> Link {
        let giaddr = self.req.msg.giaddr();
        if giaddr.is_unspecified() {
            Link::Interface(self.arrival.ifindex)
        } else {
            Link::Relay(giaddr)
        }
    }

    /// Whether the client may be answered: always when dhcpd knows it (a reservation, a
    /// binding or offer in the table, a machine in the store), else when its link has a token
    /// left. Called only where an answer (or an offer's hold) would follow.
    fn admit(&mut self, leases: &Leases) -> Result<(), Link> {
        let mac = self.req.mac;
        let known = self.cfg.reservation(mac).is_some()
            || leases.binding(mac).is_some()
            || self.known.machine_id.is_some();
        let link = self.link();
        if known || self.new_clients.admit(link, self.now) {
            Ok(())
        } else {
            Err(link)
        }
    }
}

fn server_id(cfg: &DhcpdConfig, arrival: &Arrival) -> Ipv4Addr {
    cfg.server_ip.unwrap_or(arrival.local)
}

/// Proxy modes on 67, and the PXE boot server on 4011 in every mode: boot information only.
fn boot_only(
    cfg: &DhcpdConfig,
    req: &Request,
    arrival: &Arrival,
    known: Known,
    leases: &Leases,
    gate: &mut Gate<'_>,
) -> Outcome {
    if req.boot_client.is_none() {
        return silent("not a network-boot client");
    }
    if cfg.mode == Mode::Proxy && known.machine_id.is_none() {
        return silent("unknown machine (proxy mode answers known machines only)");
    }
    let sid = server_id(cfg, arrival);
    let kind = match (arrival.port, req.kind) {
        (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
        (Port::Dhcp, MessageType::Request) => {
            return silent("REQUEST on 67 is for the address server (ProxyDHCP answers on 4011)");
        }
        (Port::Pxe, MessageType::Request | MessageType::Discover) => MessageType::Ack,
        _ => return silent("not a message a boot server answers"),
    };
    let mut msg = base_reply(req, kind, sid);
    if arrival.port == Port::Pxe {
        msg.set_ciaddr(req.msg.ciaddr());
    }
    let Some(pxe) = add_boot(cfg, req, &mut msg, sid, known, Proxy::Yes) else {
        return silent("no boot file for this client architecture");
    };
    if let Err(link) = gate.admit(leases) {
        return limited(link);
    }
    Outcome {
        reply: Some(address(req, arrival, msg, kind)),
        pxe: Some(pxe),
        ..Outcome::default()
    }
}

/// Reservation mode on 67: the full DHCP server, one handler per message type.
fn reservation(
    cfg: &DhcpdConfig,
    req: &Request,
    arrival: &Arrival,
    known: Known,
    leases: &mut Leases,
    gate: &mut Gate<'_>,
) -> Outcome {
    let Some(c) = Client::new(cfg, req, arrival, known, gate.now) else {
        return silent("no configured subnet for this interface or relay");
    };
    match req.kind {
        MessageType::Discover => discover(&c, leases, gate),
        MessageType::Request => request(&c, leases, gate),
        MessageType::Decline => decline(&c, leases),
        MessageType::Release => release(&c, leases),
        MessageType::Inform => inform(&c, leases, gate),
        _ => silent("message type not handled"),
    }
}

/// What every reservation-mode handler starts from, worked out once per request.
struct Client<'a> {
    cfg: &'a DhcpdConfig,
    req: &'a Request,
    arrival: &'a Arrival,
    known: Known,
    mac: MacAddr,
    /// Our server identifier as this client sees it.
    sid: Ipv4Addr,
    /// The client's subnet (by relay, else by arrival interface, else by its own address),
    /// and its index in the configuration.
    index: usize,
    subnet: &'a Subnet,
    /// The client's reserved address, when it is on this subnet.
    reserved_ip: Option<Ipv4Addr>,
    now: i64,
}

impl<'a> Client<'a> {
    fn new(
        cfg: &'a DhcpdConfig,
        req: &'a Request,
        arrival: &'a Arrival,
        known: Known,
        now: i64,
    ) -> Option<Self> {
        let (giaddr, ciaddr) = (req.msg.giaddr(), req.msg.ciaddr());
        let key = if giaddr.is_unspecified() {
            arrival.local
        } else {
            giaddr
        };
        let (index, subnet) = cfg
            .subnet_of(key)
            .or_else(|| cfg.subnet_of(ciaddr).filter(|_| giaddr.is_unspecified()))?;
        let mac = req.mac;
        Some(Self {
            cfg,
            req,
            arrival,
            known,
            mac,
            sid: server_id(cfg, arrival),
            index,
            subnet,
            reserved_ip: cfg.reservation(mac).filter(|ip| subnet.contains(*ip)),
            now,
        })
    }

    /// The address this client holds here now, if any: its reservation, else its unexpired
    /// (or expired but still free) bound lease.
    fn current(&self, leases: &Leases) -> Option<Ipv4Addr> {
        self.reserved_ip.or_else(|| {
            leases
                .binding(self.mac)
                .filter(|b| {
                    b.bound
                        && self.subnet.contains(b.ip)
                        && leases.free_for(b.ip, self.mac, self.now)
                })
                .map(|b| b.ip)
        })
    }

    /// May this client take `want` now?
    fn may_take(&self, leases: &Leases, want: Ipv4Addr) -> bool {
        if let Some(r) = self.reserved_ip {
            return r == want;
        }
        self.subnet.contains(want)
            && leases.free_for(want, self.mac, self.now)
            && (leases.binding(self.mac).is_some_and(|b| b.ip == want)
                || (self.subnet.in_pool(want) && !self.cfg.is_reserved(want)))
    }

    /// An OFFER or ACK of `ip` with the subnet's options and, for a network-boot client, its
    /// boot answer.
    fn offer_or_ack(&self, ip: Ipv4Addr, kind: MessageType) -> Outcome {
        let mut msg = base_reply(self.req, kind, self.sid);
        msg.set_yiaddr(ip);
        if kind == MessageType::Ack {
            msg.set_ciaddr(self.req.msg.ciaddr());
        }
        network_options(&mut msg, self.subnet, Some(self.subnet.lease_time));
        let pxe = if self.req.boot_client.is_some() {
            add_boot(
                self.cfg,
                self.req,
                &mut msg,
                self.sid,
                self.known,
                Proxy::No,
            )
        } else {
            None
        };
        Outcome {
            reply: Some(address(self.req, self.arrival, msg, kind)),
            pxe,
            ..Outcome::default()
        }
    }

    fn nak(&self, why: &'static str) -> Outcome {
        nak(self.req, self.arrival, self.sid, why)
    }
}

/// DISCOVER: offer the client's current address, else the one it last had or asked for when
/// free, else the next free pool address; hold it for `offer_hold`. Offers are not stored.
fn discover(c: &Client<'_>, leases: &mut Leases, gate: &mut Gate<'_>) -> Outcome {
    if let Err(link) = gate.admit(leases) {
        return limited(link);
    }
    let (mac, now) = (c.mac, c.now);
    let chosen = c
        .current(leases)
        .or_else(|| {
            leases
                .binding(mac)
                .filter(|b| c.subnet.contains(b.ip) && leases.free_for(b.ip, mac, now))
                .map(|b| b.ip)
        })
        .or_else(|| {
            c.req.requested_ip.filter(|ip| {
                c.subnet.in_pool(*ip) && !c.cfg.is_reserved(*ip) && leases.free_for(*ip, mac, now)
            })
        })
        .or_else(|| leases.allocate(c.index, c.subnet, mac, now, |ip| c.cfg.is_reserved(ip)));
    let Some(ip) = chosen else {
        return silent("pool exhausted");
    };
    let keep_bound = leases
        .binding(mac)
        .filter(|b| b.bound && b.ip == ip && b.expires_ms > now);
    if keep_bound.is_none() {
        leases.set(
            mac,
            Binding {
                ip,
                expires_ms: now + millis(c.cfg.offer_hold),
                bound: false,
                reserved: c.reserved_ip.is_some(),
            },
        );
    }
    c.offer_or_ack(ip, MessageType::Offer)
}

/// REQUEST: work out which address the client asks for (by its state, RFC 2131 §4.3.2),
/// then bind it or refuse.
fn request(c: &Client<'_>, leases: &mut Leases, gate: &mut Gate<'_>) -> Outcome {
    let want = if let Some(s) = c.req.server_id {
        // A REQUEST for our server from a client we never offered anything is a new client
        // too (a flood need not send DISCOVERs first).
        if s == c.sid
            && let Err(link) = gate.admit(leases)
        {
            return limited(link);
        }
        selecting(c, leases, s)
    } else if c.req.msg.ciaddr().is_unspecified() {
        init_reboot(c, leases)
    } else {
        renewing(c, leases)
    };
    match want {
        Ok(ip) => bind(c, leases, ip),
        Err(Refusal::Nak(why)) => c.nak(why),
        Err(Refusal::Silent(why)) => silent(why),
    }
}

/// Why a REQUEST gets no ACK.
enum Refusal {
    /// The client must start over (RFC 2131 §4.3.2).
    Nak(&'static str),
    /// Not ours to answer.
    Silent(&'static str),
}

/// SELECTING: the client answers one server's offer. Another server's: our offer is dropped.
fn selecting(c: &Client<'_>, leases: &mut Leases, server: Ipv4Addr) -> Result<Ipv4Addr, Refusal> {
    if server != c.sid {
        if leases.binding(c.mac).is_some_and(|b| !b.bound) {
            leases.remove(c.mac);
        }
        return Err(Refusal::Silent("the client chose another server"));
    }
    let ciaddr = c.req.msg.ciaddr();
    let want = c
        .req
        .requested_ip
        .or(Some(ciaddr).filter(|a| !a.is_unspecified()));
    match want {
        Some(w) if c.may_take(leases, w) => Ok(w),
        _ => Err(Refusal::Nak("requested address not offered to this client")),
    }
}

/// INIT-REBOOT: the client asks to keep the address it remembers.
fn init_reboot(c: &Client<'_>, leases: &Leases) -> Result<Ipv4Addr, Refusal> {
    let Some(want) = c.req.requested_ip else {
        return Err(Refusal::Silent(
            "REQUEST without server id, address or ciaddr",
        ));
    };
    if !c.subnet.contains(want) {
        return Err(Refusal::Nak("address on the wrong network"));
    }
    match c.current(leases) {
        Some(ip) if ip == want => Ok(ip),
        Some(_) => Err(Refusal::Nak("not this client's address")),
        None => Err(Refusal::Silent(
            "INIT-REBOOT from a client without a lease here",
        )),
    }
}

/// RENEWING (unicast) or REBINDING (broadcast): the client extends the lease it holds.
fn renewing(c: &Client<'_>, leases: &Leases) -> Result<Ipv4Addr, Refusal> {
    let ciaddr = c.req.msg.ciaddr();
    match c.current(leases) {
        Some(ip) if ip == ciaddr => Ok(ip),
        Some(_) => Err(Refusal::Nak("renewing an address it does not hold")),
        None => Err(Refusal::Silent(
            "renewal from a client without a lease here",
        )),
    }
}

/// Binds `ip` to the client for the subnet's lease time: the ACK, the store write that must
/// commit before it, and the event.
fn bind(c: &Client<'_>, leases: &mut Leases, ip: Ipv4Addr) -> Outcome {
    let expires_ms = c.now + millis(c.subnet.lease_time);
    let reserved = c.reserved_ip == Some(ip);
    leases.set(
        c.mac,
        Binding {
            ip,
            expires_ms,
            bound: true,
            reserved,
        },
    );
    let giaddr = c.req.msg.giaddr();
    let mut out = c.offer_or_ack(ip, MessageType::Ack);
    out.write = Some(LeaseWrite::Bind {
        ip,
        mac: c.mac,
        reserved,
        expires_at: timestamp(expires_ms),
    });
    out.lease_event = Some(LeaseEvent::Granted(LeaseGranted {
        mac: c.mac,
        ip,
        lease_seconds: u32::try_from(c.subnet.lease_time.as_secs()).unwrap_or(u32::MAX),
        reserved,
        machine_id: c.known.machine_id.map(MachineId),
        relay: (!giaddr.is_unspecified()).then_some(giaddr),
    }));
    out
}

/// DECLINE: the client found the address in use; nobody gets it for `decline_hold`.
fn decline(c: &Client<'_>, leases: &mut Leases) -> Outcome {
    if c.req.server_id.is_some_and(|s| s != c.sid) {
        return silent("DECLINE for another server");
    }
    let Some(ip) = c.req.requested_ip.filter(|ip| {
        leases.binding(c.mac).is_some_and(|b| b.ip == *ip) || c.reserved_ip == Some(*ip)
    }) else {
        return silent("DECLINE of an address the client does not hold");
    };
    let until = c.now + millis(c.cfg.decline_hold);
    leases.decline(ip, until);
    ended(
        c.mac,
        ip,
        LeaseEndReason::Declined,
        LeaseWrite::Decline {
            ip,
            until: timestamp(until),
        },
    )
}

/// RELEASE: the client gives its bound address back.
fn release(c: &Client<'_>, leases: &mut Leases) -> Outcome {
    let ciaddr = c.req.msg.ciaddr();
    match leases.binding(c.mac) {
        Some(b) if b.ip == ciaddr && b.bound => {
            leases.remove(c.mac);
            ended(
                c.mac,
                ciaddr,
                LeaseEndReason::Released,
                LeaseWrite::Free {
                    ip: ciaddr,
                    mac: c.mac,
                },
            )
        }
        _ => silent("RELEASE of an address the client does not hold"),
    }
}

/// INFORM: a client with an address of its own asks for the network options (and boot
/// answer); nothing is leased.
fn inform(c: &Client<'_>, leases: &Leases, gate: &mut Gate<'_>) -> Outcome {
    let ciaddr = c.req.msg.ciaddr();
    if ciaddr.is_unspecified() {
        return silent("INFORM without ciaddr");
    }
    if let Err(link) = gate.admit(leases) {
        return limited(link);
    }
    let mut msg = base_reply(c.req, MessageType::Ack, c.sid);
    msg.set_ciaddr(ciaddr);
    network_options(&mut msg, c.subnet, None);
    let pxe = add_boot(c.cfg, c.req, &mut msg, c.sid, c.known, Proxy::No);
    Outcome {
        reply: Some(address(c.req, c.arrival, msg, MessageType::Ack)),
        pxe,
        ..Outcome::default()
    }
}

fn ended(mac: MacAddr, ip: Ipv4Addr, reason: LeaseEndReason, write: LeaseWrite) -> Outcome {
    Outcome {
        write: Some(write),
        lease_event: Some(LeaseEvent::Ended(LeaseEnded { mac, ip, reason })),
        ..Outcome::default()
    }
}

fn nak(req: &Request, arrival: &Arrival, sid: Ipv4Addr, why: &'static str) -> Outcome {
    let mut msg = base_reply(req, MessageType::Nak, sid);
    msg.opts_mut().insert(DhcpOption::Message(why.to_owned()));
    Outcome {
        reply: Some(address(req, arrival, msg, MessageType::Nak)),
        ..Outcome::default()
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn timestamp(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX)
}

/// A BOOTREPLY to `req`: same xid, flags, chaddr and giaddr; message type and server id;
/// the relay agent's option 82 and the client's machine id (97) echoed.
fn base_reply(req: &Request, kind: MessageType, sid: Ipv4Addr) -> Message {
    let r = &req.msg;
    let mut m = Message::new_with_id(
        r.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        r.giaddr(),
        &req.mac.octets(),
    );
    m.set_opcode(Opcode::BootReply).set_flags(r.flags());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(sid));
    for code in [
        OptionCode::RelayAgentInformation,
        OptionCode::ClientMachineIdentifier,
    ] {
        if let Some(o) = r.opts().get(code) {
            opts.insert(o.clone());
        }
    }
    m
}

fn network_options(msg: &mut Message, subnet: &Subnet, lease: Option<std::time::Duration>) {
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::SubnetMask(subnet.mask()));
    if let Some(r) = subnet.router {
        opts.insert(DhcpOption::Router(vec![r]));
    }
    if !subnet.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
    }
    if let Some(d) = &subnet.domain_name {
        opts.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(l) = lease {
        let secs = u32::try_from(l.as_secs()).unwrap_or(u32::MAX);
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        opts.insert(DhcpOption::Renewal(secs / 2));
        opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
}

/// Where a reply goes (RFC 2131 §4.1): the PXE boot server answers the sender; relayed
/// requests go back to the relay on 67; a client with an address (not NAKed) gets unicast;
/// everything else is broadcast. (Unicast to yiaddr before the client has it would need an ARP
/// entry we cannot set without CAP_NET_ADMIN, so we broadcast, as the broadcast flag would ask
/// anyway.) Everything but a relay's reply leaves through the arrival interface: the client
/// is on that link, and a broadcast must not depend on a route (a namespace or a host without
/// a default route answers `ENETUNREACH` otherwise). The relay's reply is routed.
fn address(req: &Request, arrival: &Arrival, msg: Message, kind: MessageType) -> Reply {
    let (giaddr, ciaddr) = (req.msg.giaddr(), req.msg.ciaddr());
    // 0: unknown (see `decide`); the source address then picks the interface.
    let on_link = Some(arrival.ifindex).filter(|i| *i != 0);
    let (dest, ifindex) = if arrival.port == Port::Pxe {
        (arrival.source, on_link)
    } else if !giaddr.is_unspecified() {
        (SocketAddrV4::new(giaddr, 67), None)
    } else if kind != MessageType::Nak && !ciaddr.is_unspecified() {
        (SocketAddrV4::new(ciaddr, 68), on_link)
    } else {
        (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), on_link)
    };
    Reply {
        msg,
        dest,
        ifindex,
        source: arrival.local,
    }
}

/// The architecture name for events, from option 93 (RFC 4578 and the IANA registry).
pub fn arch_name(arch: Option<u16>) -> &'static str {
    match arch {
        Some(0) => "bios",
        Some(6) => "uefi-ia32",
        Some(7 | 9) => "uefi-x64",
        Some(10) => "uefi-arm32",
        Some(11) => "uefi-arm64",
        Some(15) => "uefi-ia32-http",
        Some(16) => "uefi-x64-http",
        Some(19) => "uefi-arm64-http",
        None => "unknown",
        Some(_) => "other",
    }
}

/// Whether a boot answer is a ProxyDHCP one (no address in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Yes,
    No,
}

/// Adds the boot answer for `req`'s kind of client; `None` (and nothing added) when there is
/// no file for its architecture.
fn add_boot(
    cfg: &DhcpdConfig,
    req: &Request,
    msg: &mut Message,
    sid: Ipv4Addr,
    known: Known,
    proxy: Proxy,
) -> Option<PxeAnswered> {
    let client = req.boot_client?;
    let boot = match client {
        BootClient::Ipxe => {
            let ipxed = cfg.ipxed.clone().unwrap_or_else(|| format!("{sid}:8080"));
            cfg.ipxe_script_url.replace("{ipxed}", &ipxed)
        }
        BootClient::Firmware => match req.arch {
            Some(0) => cfg.bios_file.clone(),
            Some(7 | 9) => cfg.uefi_x64_file.clone(),
            Some(11) => cfg.uefi_arm64_file.clone(),
            _ => return None,
        },
        BootClient::Http => match req.arch {
            Some(7 | 9 | 16) => cfg.http_boot_x64_url.clone()?,
            Some(11 | 19) => cfg.http_boot_arm64_url.clone()?,
            _ => return None,
        },
    };
    if boot.len() < 128 {
        msg.set_fname_str(&boot);
    }
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::BootfileName(boot.clone().into_bytes()));
    match client {
        BootClient::Firmware => {
            msg.set_siaddr(cfg.tftp_server.unwrap_or(sid));
            let opts = msg.opts_mut();
            opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            // PXE discovery control (sub-option 6) = 8: take the boot file from this reply,
            // skip boot-server discovery.
            opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        }
        BootClient::Http => {
            opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        }
        BootClient::Ipxe => match proxy {
            // iPXE takes an offer as ProxyDHCP only with option 60 "PXEClient", whatever its
            // own vendor class says, and takes the boot file from a ProxyDHCP answer only
            // when it also names a next-server (`dhcp_has_pxeopts`): without siaddr it
            // ignores even the ACK from 4011 and retries until it gives up.
            Proxy::Yes => {
                opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
                msg.set_siaddr(sid);
            }
            // 175.176 = 1, "no-pxedhcp": iPXE need not wait ~3 s for ProxyDHCP offers. (iPXE
            // reads it from the offer that carries the address only, so it is pointless in
            // a ProxyDHCP answer.)
            Proxy::No => {
                opts.insert(DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::Unknown(OPT_IPXE),
                    vec![176, 1, 1],
                )));
            }
        },
    }
    Some(PxeAnswered {
        mac: req.mac,
        arch: arch_name(req.arch).to_owned(),
        client: client.as_str().to_owned(),
        boot,
        mode: cfg.mode.as_str().to_owned(),
        machine_id: known.machine_id.map(MachineId),
    })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
