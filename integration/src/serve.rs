//! [`ImageServer`]: an HTTP file server on the lab's bridge whose downloads the test can hold
//! in the middle, so that a daemon can be killed while a VM is writing its disk, or a VM
//! powered off while its agent is mid-download, at a moment the test chooses rather than one
//! a timer guesses.
//!
//! It answers `GET /<name>` (whole file, or a `Range: bytes=N-` rest, as the agent asks
//! after a dropped connection) and `GET /gated/<name>`: the first [`GATE_BYTES`] of the file,
//! then nothing more until [`ImageServer::open_gate`]. One thread per connection; only
//! what the agent needs of HTTP/1.1 (`Connection: close` on every answer).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::Lab;

/// Bytes a gated download gets before it waits for the gate.
pub const GATE_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
struct Shared {
    files: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    gate_open: Mutex<bool>,
    gate: Condvar,
    /// Gated downloads that reached the gate.
    held: AtomicU64,
    /// Requests answered (any path).
    requests: AtomicU64,
}

/// See the module docs.
#[derive(Debug)]
pub struct ImageServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ImageServer {
    /// Listens on `addr` inside `lab`'s namespace (the socket is made there; the threads
    /// serving it may run anywhere). The gate starts closed.
    ///
    /// # Panics
    /// When the address cannot be bound.
    pub fn start(lab: &Lab, addr: SocketAddr) -> ImageServer {
        let listener = lab
            .in_namespace(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    // A peer that goes away (a VM powered off) ends its thread; nothing to say.
                    let _ = serve(&s, conn);
                });
            }
        });
        ImageServer { addr, shared }
    }

    /// Serves `bytes` as `/<name>` and `/gated/<name>`.
    ///
    pub fn add(&self, name: &str, bytes: Vec<u8>) {
        self.shared
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), Arc::new(bytes));
    }

    /// `http://addr/<name>`, or `http://addr/gated/<name>` when `gated`.
    #[must_use]
    pub fn url(&self, name: &str, gated: bool) -> String {
        let gate = if gated { "gated/" } else { "" };
        format!("http://{}/{gate}{name}", self.addr)
    }

    /// Lets every held download (and later ones) go on.
    ///
    pub fn open_gate(&self) {
        *self
            .shared
            .gate_open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.shared.gate.notify_all();
    }

    /// Holds gated downloads again from now on.
    ///
    pub fn close_gate(&self) {
        *self
            .shared
            .gate_open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
    }

    /// Gated downloads that have reached the gate so far.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Waits until `n` gated downloads have reached the gate.
    ///
    /// # Errors
    /// After `timeout`.
    pub fn wait_held(&self, n: u64, timeout: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        while self.held() < n {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{} of {n} gated downloads reached the gate within {timeout:?}",
                    self.held()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

fn serve(s: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut from = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    s.requests.fetch_add(1, Ordering::SeqCst);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (gated, name) = match path.strip_prefix("/gated/") {
        Some(name) => (true, name),
        None => (false, path.trim_start_matches('/')),
    };
    let file = s
        .files
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(name)
        .cloned();
    let Some(file) = file.filter(|f| from <= f.len()) else {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let body = &file[from..];
    let head = if from == 0 {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len(),
            file.len() - 1,
            file.len()
        )
    };
    conn.write_all(head.as_bytes())?;
    let first = if gated {
        body.len().min(GATE_BYTES)
    } else {
        body.len()
    };
    conn.write_all(&body[..first])?;
    conn.flush()?;
    if first < body.len() {
        s.held.fetch_add(1, Ordering::SeqCst);
        let mut open = s
            .gate_open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !*open {
            open = s
                .gate
                .wait(open)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(open);
        conn.write_all(&body[first..])?;
    }
    conn.flush()
}
