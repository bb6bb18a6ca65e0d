//! Listening sockets: taken from systemd socket activation, or bound from configuration.
//!
//! Under systemd a daemon's sockets are opened by a `.socket` unit and passed in as file
//! descriptors 3, 4, … (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`). That lets DHCP and TFTP
//! listen on privileged ports without the daemon ever holding `CAP_NET_BIND_SERVICE`, and lets
//! a restart keep the socket (and queued packets) alive. Without systemd — in development, or
//! when a unit has no `.socket` — the daemon binds the address from its config section instead.
//!
//! Sockets are looked up by name (`FileDescriptorName=` in the `.socket` unit), checked for the
//! right type, made non-blocking and close-on-exec, and handed to `main` as `std` types that
//! tokio adopts with `from_std`. `run` never binds: it receives what this module produced.
//!
//! This module must never bind inside `run`, never guess which fd is which by position, and
//! never adopt an fd twice: [`Sockets::from_env`] takes ownership once per process.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, sockopt};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Set once the passed fds have been adopted, so that two `OwnedFd`s never own one fd.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Why a socket could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// An activation variable is malformed.
    #[error("invalid {var}={value:?} from the service manager")]
    Env {
        /// `LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES`.
        var: &'static str,
        /// What it contained.
        value: String,
    },
    /// `LISTEN_FDNAMES` and `LISTEN_FDS` disagree.
    #[error("LISTEN_FDNAMES has {names} names but LISTEN_FDS says {fds} sockets were passed")]
    NameCount {
        /// Number of names.
        names: usize,
        /// Number of fds.
        fds: usize,
    },
    /// [`Sockets::from_env`] was called twice.
    #[error("the sockets passed by systemd were already taken by an earlier Sockets::from_env")]
    AlreadyTaken,
    /// A passed fd is not open.
    #[error("fd {fd} named {name:?} by the service manager is not open")]
    NotOpen {
        /// The fd.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What `fcntl` said.
        #[source]
        source: nix::Error,
    },
    /// A passed fd could not be inspected or configured.
    #[error("configuring socket {name:?} (fd {fd})")]
    Configure {
        /// Its name.
        name: String,
        /// The fd.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A passed fd is not the kind of socket asked for.
    #[error(
        "socket {name:?} (fd {fd}) is {found}, expected {expected}: check the .socket unit \
         (ListenStream= for TCP, ListenDatagram= for UDP)"
    )]
    WrongType {
        /// Its name.
        name: String,
        /// The fd.
        fd: RawFd,
        /// What it should have been.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// A passed stream socket is a connection, not a listener.
    #[error("socket {name:?} (fd {fd}) is not listening: the .socket unit must use Accept=no")]
    NotListening {
        /// Its name.
        name: String,
        /// The fd.
        fd: RawFd,
    },
    /// The fallback address could not be bound.
    #[error("binding {addr} for {name:?} (no socket of that name was passed by systemd)")]
    Bind {
        /// The socket name that was not passed.
        name: String,
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the activation variables say, before any fd is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Activation {
    /// `LISTEN_PID` is not set: we were not socket-activated.
    None,
    /// The variables were meant for another process (we inherited them from a parent).
    OtherProcess { listen_pid: u32 },
    /// `(fd, name)` pairs, fds counting up from 3.
    Fds(Vec<(RawFd, String)>),
}

/// Interpret the activation variables for process `our_pid`, like `sd_listen_fds_with_names`.
/// Pure: the caller reads the environment.
fn parse_activation(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    our_pid: u32,
) -> Result<Activation, SocketError> {
    let env = |var: &'static str, value: &str| SocketError::Env {
        var,
        value: value.to_owned(),
    };
    let Some(pid_text) = listen_pid else {
        return Ok(Activation::None);
    };
    let pid: u32 = pid_text
        .trim()
        .parse()
        .map_err(|_| env("LISTEN_PID", pid_text))?;
    if pid != our_pid {
        return Ok(Activation::OtherProcess { listen_pid: pid });
    }
    let Some(fds_text) = listen_fds else {
        return Ok(Activation::Fds(Vec::new()));
    };
    let count: RawFd = fds_text
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=RawFd::MAX - LISTEN_FDS_START).contains(n))
        .ok_or_else(|| env("LISTEN_FDS", fds_text))?;
    let fds = LISTEN_FDS_START..LISTEN_FDS_START + count;
    let names: Vec<String> = match listen_fdnames {
        // systemd's name for a socket without FileDescriptorName=.
        None => fds.clone().map(|_| "unknown".to_owned()).collect(),
        // "" splits into one empty name; it means no names (systemd never passes empty ones).
        Some("") => Vec::new(),
        Some(names) => names.split(':').map(str::to_owned).collect(),
    };
    if names.len() != fds.len() {
        return Err(SocketError::NameCount {
            names: names.len(),
            fds: fds.len(),
        });
    }
    Ok(Activation::Fds(fds.zip(names).collect()))
}

/// A socket systemd passed that nobody has taken yet.
struct Passed {
    name: String,
    fd: OwnedFd,
}

/// The sockets passed by systemd, taken by name. Sockets never taken are closed with a warning
/// when this is dropped — drop it before [`crate::privileges::lock_down`] so the warning is seen.
#[derive(Default)]
pub struct Sockets {
    passed: Vec<Passed>,
}

impl fmt::Debug for Sockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.passed.iter().map(|p| (&p.name, p.fd.as_raw_fd())))
            .finish()
    }
}

impl Sockets {
    /// No sockets: every `*_or_bind` call binds its fallback.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adopt the sockets systemd passed to this process, if any.
    ///
    /// Not being socket-activated is not an error: the result is simply empty. The variables are
    /// left in the environment (unsetting them is not thread-safe); children ignore them because
    /// `LISTEN_PID` names us, and the fds are marked close-on-exec here.
    pub fn from_env() -> Result<Self, SocketError> {
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let activation = parse_activation(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        )?;
        let fds = match activation {
            Activation::None => return Ok(Self::none()),
            Activation::OtherProcess { listen_pid } => {
                tracing::debug!(
                    listen_pid,
                    "ignoring socket activation meant for another process"
                );
                return Ok(Self::none());
            }
            Activation::Fds(fds) => fds,
        };
        if ADOPTED.swap(true, Ordering::SeqCst) {
            return Err(SocketError::AlreadyTaken);
        }
        let mut passed = Vec::with_capacity(fds.len());
        for (raw, name) in fds {
            let fd = adopt(raw, &name)?;
            fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|errno| {
                SocketError::Configure {
                    name: name.clone(),
                    fd: raw,
                    source: errno.into(),
                }
            })?;
            tracing::debug!(fd = raw, socket = %name, "received socket from systemd");
            passed.push(Passed { name, fd });
        }
        Ok(Self { passed })
    }

    /// Build from already-owned fds (tests).
    #[cfg(test)]
    fn from_owned(fds: Vec<(&str, OwnedFd)>) -> Self {
        let passed = fds
            .into_iter()
            .map(|(name, fd)| Passed {
                name: name.to_owned(),
                fd,
            })
            .collect();
        Self { passed }
    }

    /// Names of the sockets not yet taken, in fd order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.passed.iter().map(|p| p.name.as_str())
    }

    /// True when no sockets are left.
    pub fn is_empty(&self) -> bool {
        self.passed.is_empty()
    }

    /// Take the TCP listener named `name` (`FileDescriptorName=`), if systemd passed one. When
    /// several sockets share a name, each call takes the next one.
    pub fn take_tcp(&mut self, name: &str) -> Result<Option<TcpListener>, SocketError> {
        let Some(fd) = self.take_checked(name, Kind::TcpListener)? else {
            return Ok(None);
        };
        let listener = TcpListener::from(fd);
        set_nonblocking(name, &listener, |l| l.set_nonblocking(true))?;
        Ok(Some(listener))
    }

    /// Take the UDP socket named `name`, if systemd passed one.
    pub fn take_udp(&mut self, name: &str) -> Result<Option<UdpSocket>, SocketError> {
        let Some(fd) = self.take_checked(name, Kind::Udp)? else {
            return Ok(None);
        };
        let socket = UdpSocket::from(fd);
        set_nonblocking(name, &socket, |s| s.set_nonblocking(true))?;
        Ok(Some(socket))
    }

    /// The TCP listener named `name` from systemd, or else a new one bound to `fallback`.
    pub fn tcp_or_bind(
        &mut self,
        name: &str,
        fallback: SocketAddr,
    ) -> Result<TcpListener, SocketError> {
        if let Some(listener) = self.take_tcp(name)? {
            log_source(name, "systemd", listener.local_addr());
            return Ok(listener);
        }
        let bind_error = |source| SocketError::Bind {
            name: name.to_owned(),
            addr: fallback,
            source,
        };
        let listener = TcpListener::bind(fallback).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        log_source(name, "config", listener.local_addr());
        Ok(listener)
    }

    /// The UDP socket named `name` from systemd, or else a new one bound to `fallback`.
    pub fn udp_or_bind(
        &mut self,
        name: &str,
        fallback: SocketAddr,
    ) -> Result<UdpSocket, SocketError> {
        if let Some(socket) = self.take_udp(name)? {
            log_source(name, "systemd", socket.local_addr());
            return Ok(socket);
        }
        let bind_error = |source| SocketError::Bind {
            name: name.to_owned(),
            addr: fallback,
            source,
        };
        let socket = UdpSocket::bind(fallback).map_err(bind_error)?;
        socket.set_nonblocking(true).map_err(bind_error)?;
        log_source(name, "config", socket.local_addr());
        Ok(socket)
    }

    /// Remove and return the first socket called `name`, after checking it is a `kind`. A socket
    /// of the wrong kind stays in the set (and is reported when the set is dropped).
    fn take_checked(&mut self, name: &str, kind: Kind) -> Result<Option<OwnedFd>, SocketError> {
        let Some(index) = self.passed.iter().position(|p| p.name == name) else {
            return Ok(None);
        };
        check_kind(name, self.passed[index].fd.as_fd(), kind)?;
        Ok(Some(self.passed.remove(index).fd))
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for unused in &self.passed {
            tracing::warn!(
                socket = %unused.name,
                fd = unused.fd.as_raw_fd(),
                "systemd passed a socket this daemon does not use; closing it \
                 (check FileDescriptorName= in the .socket unit)"
            );
        }
    }
}

/// Own the fd systemd passed at `raw`.
///
/// This is the one place in the workspace that turns a number into an fd.
#[allow(unsafe_code)]
fn adopt(raw: RawFd, name: &str) -> Result<OwnedFd, SocketError> {
    // SAFETY: `raw` is in 3..3+LISTEN_FDS, which the service manager passed to this very process
    // (LISTEN_PID matched). Borrowing it only for the `fcntl` below cannot violate ownership:
    // `BorrowedFd` does not close, and `raw` is not -1.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl(borrowed, FcntlArg::F_GETFD).map_err(|source| SocketError::NotOpen {
        fd: raw,
        name: name.to_owned(),
        source,
    })?;
    // SAFETY: the fd is open (checked above), was passed to this process for it to own, and
    // nothing else in the process owns it: `ADOPTED` guarantees this runs once per process, and
    // nothing else in the workspace wraps raw fds.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TcpListener,
    Udp,
}

fn check_kind(name: &str, fd: BorrowedFd<'_>, kind: Kind) -> Result<(), SocketError> {
    let raw = fd.as_raw_fd();
    let configure = |errno: nix::Error| SocketError::Configure {
        name: name.to_owned(),
        fd: raw,
        source: errno.into(),
    };
    let (expected, want_type) = match kind {
        Kind::TcpListener => ("a TCP listening socket (ListenStream=)", SockType::Stream),
        Kind::Udp => ("a UDP socket (ListenDatagram=)", SockType::Datagram),
    };
    let wrong = |found: String| SocketError::WrongType {
        name: name.to_owned(),
        fd: raw,
        expected,
        found,
    };
    let sock_type = nix::sys::socket::getsockopt(&fd, sockopt::SockType).map_err(|errno| {
        if errno == nix::Error::ENOTSOCK {
            wrong("not a socket".to_owned())
        } else {
            configure(errno)
        }
    })?;
    let family = nix::sys::socket::getsockname::<SockaddrStorage>(raw)
        .map_err(configure)?
        .family();
    let is_inet = matches!(family, Some(AddressFamily::Inet | AddressFamily::Inet6));
    if sock_type != want_type || !is_inet {
        let family = family.map_or_else(|| "unknown".to_owned(), |f| format!("{f:?}"));
        return Err(wrong(format!("a {sock_type:?} socket of family {family}")));
    }
    if kind == Kind::TcpListener
        && !nix::sys::socket::getsockopt(&fd, sockopt::AcceptConn).map_err(configure)?
    {
        return Err(SocketError::NotListening {
            name: name.to_owned(),
            fd: raw,
        });
    }
    Ok(())
}

fn set_nonblocking<S: AsRawFd>(
    name: &str,
    socket: &S,
    set: impl FnOnce(&S) -> io::Result<()>,
) -> Result<(), SocketError> {
    set(socket).map_err(|source| SocketError::Configure {
        name: name.to_owned(),
        fd: socket.as_raw_fd(),
        source,
    })
}

fn log_source(name: &str, source: &'static str, addr: io::Result<SocketAddr>) {
    match addr {
        Ok(addr) => tracing::info!(socket = %name, %addr, from = source, "listening"),
        Err(_) => tracing::info!(socket = %name, from = source, "listening"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpStream};
    use std::os::unix::net::UnixListener;

    use super::*;

    const PID: u32 = 4242;

    fn fds(list: &[(RawFd, &str)]) -> Activation {
        Activation::Fds(list.iter().map(|&(fd, n)| (fd, n.to_owned())).collect())
    }

    #[test]
    fn not_activated_without_listen_pid() {
        let parsed = parse_activation(None, Some("2"), Some("a:b"), PID).unwrap();
        assert_eq!(parsed, Activation::None);
    }

    #[test]
    fn variables_for_another_pid_are_ignored() {
        let parsed = parse_activation(Some("1"), Some("1"), Some("http"), PID).unwrap();
        assert_eq!(parsed, Activation::OtherProcess { listen_pid: 1 });
    }

    #[test]
    fn names_map_to_fds_from_3() {
        let parsed = parse_activation(Some("4242"), Some("3"), Some("http:dhcp:http"), PID);
        assert_eq!(
            parsed.unwrap(),
            fds(&[(3, "http"), (4, "dhcp"), (5, "http")])
        );
    }

    #[test]
    fn missing_names_default_to_unknown() {
        let parsed = parse_activation(Some("4242"), Some("2"), None, PID).unwrap();
        assert_eq!(parsed, fds(&[(3, "unknown"), (4, "unknown")]));
    }

    #[test]
    fn missing_or_zero_fds_means_none_passed() {
        assert_eq!(
            parse_activation(Some("4242"), None, None, PID).unwrap(),
            fds(&[])
        );
        assert_eq!(
            parse_activation(Some("4242"), Some("0"), Some(""), PID).unwrap(),
            fds(&[])
        );
        let err = parse_activation(Some("4242"), Some("0"), Some("http"), PID).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LISTEN_FDNAMES has 1 names but LISTEN_FDS says 0 sockets were passed"
        );
        assert_eq!(
            parse_activation(Some("4242"), Some("0"), None, PID).unwrap(),
            fds(&[])
        );
    }

    #[test]
    fn malformed_variables_are_errors() {
        let err = parse_activation(Some("me"), Some("1"), None, PID).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid LISTEN_PID=\"me\" from the service manager"
        );
        for bad in ["-1", "x", "99999999999"] {
            let err = parse_activation(Some("4242"), Some(bad), None, PID).unwrap_err();
            assert!(
                matches!(
                    err,
                    SocketError::Env {
                        var: "LISTEN_FDS",
                        ..
                    }
                ),
                "{bad}"
            );
        }
        let err = parse_activation(Some("4242"), Some("2"), Some("only-one"), PID).unwrap_err();
        assert!(matches!(err, SocketError::NameCount { names: 1, fds: 2 }));
    }

    fn local_tcp() -> TcpListener {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap()
    }

    fn local_udp() -> UdpSocket {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap()
    }

    #[test]
    fn take_tcp_by_name_and_serve() {
        let listener = local_tcp();
        let addr = listener.local_addr().unwrap();
        let mut sockets = Sockets::from_owned(vec![("http", listener.into())]);
        assert!(sockets.take_tcp("other").unwrap().is_none());
        let taken = sockets.take_tcp("http").unwrap().unwrap();
        assert!(sockets.is_empty());
        assert!(sockets.take_tcp("http").unwrap().is_none());

        let mut client = TcpStream::connect(addr).unwrap();
        // Non-blocking: poll accept until the connection is there.
        let (mut conn, _) = loop {
            match taken.accept() {
                Ok(pair) => break pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.write_all(b"hi").unwrap();
        drop(conn);
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");
    }

    #[test]
    fn same_name_twice_is_taken_in_order() {
        let (a, b) = (local_tcp(), local_tcp());
        let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut sockets = Sockets::from_owned(vec![("http", a.into()), ("http", b.into())]);
        assert_eq!(
            sockets
                .take_tcp("http")
                .unwrap()
                .unwrap()
                .local_addr()
                .unwrap(),
            addr_a
        );
        assert_eq!(
            sockets
                .take_tcp("http")
                .unwrap()
                .unwrap()
                .local_addr()
                .unwrap(),
            addr_b
        );
    }

    #[test]
    fn take_udp_by_name() {
        let socket = local_udp();
        let addr = socket.local_addr().unwrap();
        let mut sockets = Sockets::from_owned(vec![("tftp", socket.into())]);
        let taken = sockets.take_udp("tftp").unwrap().unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);
        let mut buf = [0; 4];
        let err = taken.recv_from(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::WouldBlock,
            "must be non-blocking"
        );
    }

    #[test]
    fn wrong_socket_type_is_a_clear_error_and_the_fd_stays() {
        let mut sockets = Sockets::from_owned(vec![
            ("dhcp", local_tcp().into()),
            ("http", local_udp().into()),
        ]);
        let err = sockets.take_udp("dhcp").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("socket \"dhcp\" (fd "), "{text}");
        assert!(
            text.contains("is a Stream socket of family Inet, expected a UDP socket"),
            "{text}"
        );
        let err = sockets.take_tcp("http").unwrap_err();
        assert!(err.to_string().contains("is a Datagram socket"), "{err}");
        assert_eq!(sockets.names().collect::<Vec<_>>(), ["dhcp", "http"]);
    }

    #[test]
    fn unix_and_non_sockets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let unix = UnixListener::bind(dir.path().join("s")).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let mut sockets = Sockets::from_owned(vec![("http", unix.into()), ("api", file.into())]);
        let err = sockets.take_tcp("http").unwrap_err();
        assert!(err.to_string().contains("family Unix"), "{err}");
        let err = sockets.take_tcp("api").unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
    }

    #[test]
    fn connected_stream_is_not_a_listener() {
        let listener = local_tcp();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut sockets = Sockets::from_owned(vec![("http", client.into())]);
        let err = sockets.take_tcp("http").unwrap_err();
        assert!(matches!(err, SocketError::NotListening { .. }), "{err}");
        assert!(err.to_string().contains("Accept=no"));
    }

    #[test]
    fn fallback_binds_when_nothing_was_passed() {
        let mut sockets = Sockets::none();
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let tcp = sockets.tcp_or_bind("http", any).unwrap();
        assert_ne!(tcp.local_addr().unwrap().port(), 0);
        let udp = sockets.udp_or_bind("tftp", any).unwrap();
        assert_ne!(udp.local_addr().unwrap().port(), 0);
    }

    #[test]
    fn passed_socket_wins_over_fallback() {
        let listener = local_tcp();
        let addr = listener.local_addr().unwrap();
        let mut sockets = Sockets::from_owned(vec![("http", listener.into())]);
        // The fallback is occupied, so binding it would fail: proves it was not used.
        let taken = sockets.tcp_or_bind("http", addr).unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);
    }

    #[test]
    fn fallback_bind_error_names_address_and_socket() {
        let busy = local_tcp();
        let addr = busy.local_addr().unwrap();
        let err = Sockets::none().tcp_or_bind("http", addr).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("binding {addr} for \"http\" (no socket of that name was passed by systemd)")
        );
    }

    #[test]
    fn from_env_without_activation_is_empty() {
        // The test process is not socket-activated (and if LISTEN_PID leaked in, it is not ours).
        assert!(Sockets::from_env().unwrap().is_empty());
    }
}
