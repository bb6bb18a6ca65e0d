//! The engine on real loopback sockets: what the state machine decides reaches the wire with
//! the right bytes, and repeats of a request do not start second transfers.

use std::io::Write;
use std::net::Ipv4Addr;

use super::*;
use crate::admission::Quotas;
use crate::transfer::FIRST_SENDS;

struct Harness {
    engine: Engine,
    events: std::sync::mpsc::Receiver<TftpTransferred>,
    dir: tempfile::TempDir,
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn harness(first_ack_timeout: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (tx, events) = std::sync::mpsc::channel();
    let settings = Settings {
        roots: vec![dir.path().to_path_buf()],
        limits: Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            first_ack_timeout,
        },
        quotas: Quotas::new(16, 16, 4, Duration::from_secs(5)),
    };
    Harness {
        engine: Engine::start(settings, move |e| {
            let _ = tx.send(e);
        })
        .unwrap(),
        events,
        dir,
    }
}

impl Harness {
    /// A file of `len` bytes named `name`; returns its contents.
    fn file(&self, name: &str, len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = std::fs::File::create(self.dir.path().join(name)).unwrap();
        f.write_all(&data).unwrap();
        data
    }

    fn request(&self, client: &UdpSocket, name: &str, options: Options) {
        assert!(self.engine.submit(Request {
            client: client.local_addr().unwrap(),
            local_ip: LOCAL,
            filename: name.into(),
            options,
        }));
    }

    /// The next finished transfer's event, within 10 s.
    fn event(&mut self) -> TftpTransferred {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.events.try_recv() {
                Ok(event) => return event,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("no event: {e}"),
            }
        }
    }
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
}

fn ack(block: u16) -> Vec<u8> {
    Packet::Ack { block }.to_bytes()
}

/// Receives one datagram; connects `client` to the transfer's TID on the first.
fn recv<'b>(client: &UdpSocket, buf: &'b mut [u8]) -> Packet<'b> {
    let (n, from) = client.recv_from(buf).unwrap();
    if client.peer_addr().is_err() {
        client.connect(from).unwrap();
    }
    packet::parse(&buf[..n]).unwrap()
}

#[test]
fn a_duplicate_ack_is_not_answered_and_the_file_arrives_whole() {
    let mut h = harness(Duration::from_secs(3));
    let data = h.file("f", 2000);
    let c = client();
    h.request(
        &c,
        "f",
        Options {
            blksize: Some(512),
            tsize: Some(0),
            ..Options::default()
        },
    );
    let mut buf = [0u8; 600];
    assert_eq!(
        recv(&c, &mut buf),
        Packet::Oack(Options {
            blksize: Some(512),
            timeout: None,
            tsize: Some(2000),
            windowsize: None
        })
    );
    let mut got = vec![];
    c.send(&ack(0)).unwrap();
    for expected in 1..=4u16 {
        let Packet::Data { block, data } = recv(&c, &mut buf) else {
            panic!("not DATA");
        };
        assert_eq!(block, expected);
        got.extend_from_slice(data);
        // Acknowledge twice: the second must not make the server send anything.
        c.send(&ack(block)).unwrap();
        c.send(&ack(block)).unwrap();
    }
    let event = h.event();
    assert!(event.complete, "{event:?}");
    assert_eq!(event.bytes, 2000);
    assert_eq!(got, data);
    // Nothing else was sent: no duplicate DATA answered the duplicate ACKs.
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(c.recv(&mut buf).is_err());
}

/// Windows go out in batches, and a timeout resends a whole window: every block still carries
/// the right bytes, read afresh from the file.
#[test]
fn windowed_sends_and_rewinds_carry_the_right_bytes() {
    let mut h = harness(Duration::from_secs(3));
    // Not a multiple of the block size, and many windows long.
    let len = 200 * 1000 + 700;
    let data = h.file("w", len);
    let c = client();
    h.request(
        &c,
        "w",
        Options {
            blksize: Some(1000),
            windowsize: Some(16),
            ..Options::default()
        },
    );
    let mut buf = [0u8; 1100];
    assert!(matches!(recv(&c, &mut buf), Packet::Oack(_)));
    c.send(&ack(0)).unwrap();
    let mut got = vec![];
    let mut rewound = false;
    loop {
        // Take a whole window, keep what follows `got`, then acknowledge the last in order.
        let mut highest = None;
        for _ in 0..16 {
            let Packet::Data { block, data: d } = recv(&c, &mut buf) else {
                panic!("not DATA");
            };
            let at = (usize::from(block) - 1) * 1000;
            assert_eq!(d, &data[at..at + d.len()], "block {block}");
            if at == got.len() {
                got.extend_from_slice(d);
                highest = Some(block);
            }
            if d.len() < 1000 {
                break;
            }
        }
        let block = highest.unwrap();
        if got.len() == len {
            c.send(&ack(block)).unwrap();
            break;
        }
        if !rewound && got.len() > len / 2 {
            // A stale ACK from an earlier window: ignored, then the timer resends from the
            // first unacknowledged block.
            rewound = true;
            c.send(&ack(block - 40)).unwrap();
            // Drop what we kept of this window: it must come again after the timeout.
            got.truncate((usize::from(block) - 16) * 1000);
            continue;
        }
        c.send(&ack(block)).unwrap();
    }
    let event = h.event();
    assert!(event.complete, "{event:?}");
    assert_eq!(got, data);
}

/// A client that never answers gets the first block [`FIRST_SENDS`] times, no ERROR, and no
/// event; repeating its request from the same port gets the same transfer (same TID), not a
/// second one.
#[test]
fn an_unanswered_transfer_sends_little_and_ends_silently() {
    let h = harness(Duration::from_secs(1));
    h.file("s", 5000);
    let c = client();
    h.request(&c, "s", Options::default());
    let mut buf = [0u8; 600];
    let (_, tid) = c.recv_from(&mut buf).unwrap();
    // The repeat: at most once a second, so not now.
    h.request(&c, "s", Options::default());
    c.set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    let mut blocks = 1;
    while let Ok((n, from)) = c.recv_from(&mut buf) {
        assert_eq!(from, tid, "a second transfer started");
        assert!(
            matches!(packet::parse(&buf[..n]), Ok(Packet::Data { block: 1, .. })),
            "{:?}",
            packet::parse(&buf[..n])
        );
        blocks += 1;
    }
    assert_eq!(blocks, FIRST_SENDS);
    assert!(
        h.events.try_recv().is_err(),
        "an unanswered transfer was published"
    );
    // The address is now known as silent: one send per request.
    h.request(&c, "s", Options::default());
    c.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut again = 0;
    while c.recv_from(&mut buf).is_ok() {
        again += 1;
    }
    assert_eq!(again, 1);
}
