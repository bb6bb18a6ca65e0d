//! Socket I/O: receiving with the arrival interface, sending out of the right one.
//!
//! Plain UDP sockets only — no raw sockets, no capabilities. `IP_PKTINFO` tells us which
//! interface and local address a broadcast arrived on, and lets us send a broadcast reply out
//! of that same interface; `SO_BROADCAST` permits sending to 255.255.255.255. Both are set
//! here even when systemd already did (`PassPacketInfo=`, `Broadcast=`): setting them twice is
//! harmless, and `systemd-socket-activate` cannot set them.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};

use crate::policy::Reply;

/// Largest datagram read; anything longer is truncated by the kernel and dropped by us.
pub const RECV_BUFFER: usize = 2048;

/// Enables `IP_PKTINFO` and `SO_BROADCAST` on `socket`.
pub fn configure(socket: &impl AsFd) -> io::Result<()> {
    setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    setsockopt(socket, sockopt::Broadcast, &true)?;
    Ok(())
}

/// One received datagram's envelope.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub source: SocketAddrV4,
    pub local: Ipv4Addr,
    pub ifindex: u32,
    pub truncated: bool,
}

/// Non-blocking `recvmsg` with the packet-info control message.
pub fn recv(socket: &impl AsFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let msg = recvmsg::<SockaddrIn>(
        socket.as_fd().as_raw_fd_compat(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let mut local = Ipv4Addr::UNSPECIFIED;
    let mut ifindex = 0;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
            local = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
            ifindex = u32::try_from(info.ipi_ifindex).unwrap_or(0);
        }
    }
    let source = msg
        .address
        .map_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), |a| {
            SocketAddrV4::new(a.ip(), a.port())
        });
    Ok(Received {
        len: msg.bytes,
        source,
        local,
        ifindex,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
    })
}

/// Sends `bytes` as `reply` says: to its destination, from its source address, out of its
/// interface when it names one.
pub fn send(socket: &impl AsFd, reply: &Reply, bytes: &[u8]) -> io::Result<()> {
    let info = libc::in_pktinfo {
        ipi_ifindex: reply
            .ifindex
            .and_then(|i| i32::try_from(i).ok())
            .unwrap_or(0),
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(reply.source).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let dest = SockaddrIn::from(reply.dest);
    let iov = [io::IoSlice::new(bytes)];
    let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
    sendmsg(
        socket.as_fd().as_raw_fd_compat(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_DONTWAIT,
        Some(&dest),
    )?;
    Ok(())
}

/// nix 0.31 takes raw fds for recvmsg/sendmsg.
trait RawFdCompat {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd;
}

impl RawFdCompat for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

/// Logs a kind of trouble at most once per interval, with how many happened meanwhile, so a
/// flood of hostile packets cannot flood the journal.
#[derive(Debug)]
pub struct RateLimited {
    what: &'static str,
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(what: &'static str, every: Duration) -> Self {
        Self {
            what,
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Counts one occurrence; logs it (with the count since the last line) when allowed.
    pub fn hit(&mut self, detail: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            what = self.what,
            suppressed_since_last = self.suppressed,
            "{}: {detail}",
            self.what
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}
