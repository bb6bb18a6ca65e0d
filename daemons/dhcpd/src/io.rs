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
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, getsockopt, recvmsg, sendmsg,
    setsockopt, sockopt,
};

use crate::policy::Reply;

/// Largest datagram read; anything longer is truncated by the kernel and dropped by us.
pub const RECV_BUFFER: usize = 2048;

/// Socket buffer size asked for (each way). The kernel caps it at `net.core.rmem_max` /
/// `wmem_max` for an unprivileged process (systemd's `ReceiveBuffer=`/`SendBuffer=` may force
/// more). The default (~208 KiB, some 150 datagrams of kernel accounting) overflows within
/// milliseconds at 10k requests/s, and the writer thread sends each commit's replies as one
/// burst.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// How long a reply waits for room in the send buffer before it is given up.
pub const SEND_WAIT: Duration = Duration::from_secs(1);

/// Enables `IP_PKTINFO` and `SO_BROADCAST` on `socket` and enlarges its buffers.
pub fn configure(socket: &impl AsFd) -> io::Result<()> {
    setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    setsockopt(socket, sockopt::Broadcast, &true)?;
    // Only ever raise: never shrink what systemd set (it may exceed our cap).
    if getsockopt(socket, sockopt::RcvBuf)? < SOCKET_BUFFER {
        setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER)?;
    }
    if getsockopt(socket, sockopt::SndBuf)? < SOCKET_BUFFER {
        setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER)?;
    }
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

/// [`send`] from a blocking thread: when the send buffer is full (`EAGAIN`), waits up to
/// [`SEND_WAIT`] for room instead of dropping the reply (the ACK of a committed lease).
pub fn send_blocking(socket: &impl AsFd, reply: &Reply, bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + SEND_WAIT;
    loop {
        match send(socket, reply, bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            other => return other,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_enables_packet_info_and_raises_the_buffers() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (rcv, snd) = (
            getsockopt(&s, sockopt::RcvBuf).unwrap(),
            getsockopt(&s, sockopt::SndBuf).unwrap(),
        );
        configure(&s).unwrap();
        assert!(getsockopt(&s, sockopt::Ipv4PacketInfo).unwrap());
        assert!(getsockopt(&s, sockopt::Broadcast).unwrap());
        // The kernel caps the request at rmem_max/wmem_max (and doubles it), but even the
        // smallest usual cap is above the default.
        assert!(getsockopt(&s, sockopt::RcvBuf).unwrap() > rcv);
        assert!(getsockopt(&s, sockopt::SndBuf).unwrap() > snd);
    }

    #[test]
    fn send_blocking_delivers_with_packet_info() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        configure(&server).unwrap();
        let dest = match client.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => unreachable!(),
        };
        let reply = Reply {
            msg: dhcproto::v4::Message::default(),
            dest,
            ifindex: Some(1), // lo
            source: Ipv4Addr::LOCALHOST,
        };
        send_blocking(&server, &reply, b"hello").unwrap();
        let mut buf = [0u8; 16];
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"hello"[..], server.local_addr().unwrap())
        );
    }
}
