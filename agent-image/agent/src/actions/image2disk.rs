//! Streams an OS image from HTTP to a block device: download → decompress → hash → write,
//! four threads joined by bounded channels, so the network, the decompressor, the digest and
//! the disk all work at once and memory stays bounded (8 MiB of download chunks in flight,
//! [`POOL`] buffers of [`BUF`] bytes, and the decoder's window) whatever the image's size. The
//! image is never held whole in memory nor written to a temporary file.
//!
//! Writes are `O_DIRECT`, [`BUF`]-sized and 4 KiB-aligned (from a recycled pool), the way
//! `dd bs=4M oflag=direct` writes, so the page cache neither fills with the image nor needs
//! a long flush at the end. Blocks of [`ZERO_BLOCK`] zeros are not written: their range is
//! zeroed with `fallocate(PUNCH_HOLE)`, which on a block device is the kernel's
//! "write zeroes, unmapping where the device can, and fail rather than write them by hand"
//! (`BLKDEV_ZERO_NOFALLBACK`): discard-speed on SSDs, NVMe, virtio and loop devices, *and* a
//! guarantee that the range then reads as zeros, which `BLKDISCARD` does not give (Linux
//! dropped `discard_zeroes_data` in 4.12; a discarded range may read back its old data). When
//! the device refuses, every later zero block is written like data.
//!
//! Decompression is chosen by the stream's magic bytes ([`detect`]); the template's
//! `compression` overrides it. A dropped connection is resumed with `Range: bytes=N-`, or by
//! re-reading and discarding the first N bytes when the server ignores ranges.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use dragonfly_core::template::Compression;
use sha2::Digest;

use super::{ActionError, Cancel, Context, Outcome, Report};
use crate::http;

/// Write size and buffer size.
pub const BUF: usize = 4 << 20;
/// Buffers in flight between the decompressor and the disk.
pub const POOL: usize = 6;
/// Zero detection granularity.
pub const ZERO_BLOCK: usize = 64 << 10;
/// Download chunk size; 32 of them may wait in the channel.
const CHUNK: usize = 256 << 10;
const ALIGN: usize = 4096;
/// Progress at least this often (the issue asks for every 2 s).
const TICK: Duration = Duration::from_secs(1);
/// Consecutive failed reconnections before the download is given up.
const RETRIES: u32 = 5;

/// An expected digest, hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Sha256(String),
    Sha512(String),
}

/// What to write where.
#[derive(Debug, Clone)]
pub struct Job {
    pub url: String,
    /// Send the agent's boot token with the download (a library image Dragonfly serves only
    /// to machines it is booting).
    pub authenticate: bool,
    pub disk: PathBuf,
    pub expected: Option<Expected>,
    pub compression: Compression,
}

/// The compression a stream starts with.
pub fn detect(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Xz,
        [b'B', b'Z', b'h', b'1'..=b'9', ..] => Compression::Bzip2,
        _ => Compression::None,
    }
}

/// Whether a block is all zeros (the compiler vectorises the fold; no early exit is faster
/// than a branch per byte for 64 KiB blocks).
pub fn is_zero(b: &[u8]) -> bool {
    let (pre, mid, post) = unsafe_free_align(b);
    pre.iter().chain(post).all(|&x| x == 0)
        && mid
            .chunks(64)
            .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

fn unsafe_free_align(b: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let off = b.as_ptr().align_offset(64).min(b.len());
    let (pre, rest) = b.split_at(off);
    let tail = rest.len() % 64;
    let (mid, post) = rest.split_at(rest.len() - tail);
    (pre, mid, post)
}

/// A [`BUF`]-sized, [`ALIGN`]-aligned buffer without `unsafe`: a slightly larger `Vec`, used
/// from its first aligned byte.
struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new() -> Self {
        let v = vec![0u8; BUF + ALIGN];
        let off = v.as_ptr().align_offset(ALIGN);
        Self { v, off, len: 0 }
    }
    fn full(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + BUF]
    }
    fn data(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
}

enum Hasher {
    None,
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn update(&mut self, b: &[u8]) {
        match self {
            Self::None => {}
            Self::Sha256(h) => h.update(b),
            Self::Sha512(h) => h.update(b),
        }
    }
    fn finish(self) -> Option<String> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        match self {
            Self::None => None,
            Self::Sha256(h) => Some(hex(&h.finalize())),
            Self::Sha512(h) => Some(hex(&h.finalize())),
        }
    }
}

/// Feeds download chunks to the decoder as a `Read`.
struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The download thread: chunks to `tx` until the body ends; reconnects on a drop. Every read
/// has `timeout` (a server that stalls is a dropped connection), and `cancel` is seen between
/// reads and reconnections, so the thread ends within one `timeout` of the action's end.
#[allow(
    clippy::too_many_arguments,
    reason = "one thread's whole world: its channels, counters and the download's settings"
)]
fn download(
    url: &http::Url,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    bearer: Option<&crate::token::Token>,
    shown: &str,
    timeout: Duration,
    tx: &SyncSender<io::Result<Vec<u8>>>,
    total: &SyncSender<u64>,
    counter: &AtomicU64,
    cancel: &Cancel,
) {
    let mut got: u64 = 0;
    let mut failures = 0u32;
    let mut told_total = false;
    loop {
        let attempt = (|| -> Result<bool, String> {
            let (head, mut body) =
                http::get_stream(url, got, timeout, tls, bearer.map(|t| t.get()).as_deref())
                    .map_err(|e| format!("{}", dragonfly_core::Chain(&e)))?;
            let mut skip = 0u64;
            match (head.status, got) {
                (200, 0) => {}
                (206, g) if head.range_start == Some(g) => {}
                // The server ignored the Range: read again and drop what we already have.
                (200, g) => skip = g,
                (s, _) => return Err(format!("the server answered {s}")),
            }
            if !told_total {
                let t = if head.status == 206 {
                    head.range_total
                } else {
                    head.length
                };
                if let Some(t) = t {
                    let _ = total.try_send(t);
                }
                told_total = true;
            }
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    if cancel.is_cancelled() {
                        return Err("stopped".into());
                    }
                    match body.read(&mut chunk[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            chunk.truncate(n);
                            if skip == 0 && n > 0 {
                                got += n as u64;
                                if tx.send(Ok(chunk)).is_err() {
                                    return Ok(true);
                                }
                            }
                            return Err(format!("the connection dropped after {got} bytes: {e}"));
                        }
                    }
                }
                if n == 0 {
                    return Ok(true);
                }
                chunk.truncate(n);
                if skip > 0 {
                    let drop_n = skip.min(n as u64) as usize;
                    skip -= drop_n as u64;
                    chunk.drain(..drop_n);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                got += chunk.len() as u64;
                counter.store(got, Ordering::Relaxed);
                failures = 0;
                if tx.send(Ok(chunk)).is_err() {
                    // The pipeline stopped (an error downstream): nothing more to do.
                    return Ok(true);
                }
            }
        })();
        match attempt {
            Ok(_) => return,
            // Not a clean end of the body: the image must not look complete.
            Err(_) if cancel.is_cancelled() => {
                let _ = tx.try_send(Err(io::Error::other("downloading: stopped")));
                return;
            }
            Err(why) => {
                failures += 1;
                if failures > RETRIES {
                    let _ = tx.send(Err(io::Error::other(format!(
                        "downloading {shown}: {why} (gave up after {RETRIES} retries)"
                    ))));
                    return;
                }
                let pause = Instant::now();
                while pause.elapsed() < Duration::from_millis(500 << failures.min(4))
                    && !cancel.is_cancelled()
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// A decoder over the download, chosen by magic bytes unless the template says otherwise.
fn decoder<'a>(
    r: ChannelReader,
    choice: Compression,
) -> io::Result<(Box<dyn Read + Send + 'a>, Compression)> {
    let mut r = BufReader::with_capacity(CHUNK, r);
    let kind = match choice {
        Compression::Auto => {
            // fill_buf may return fewer than 6 bytes only at the very end of a tiny stream.
            detect(r.fill_buf()?)
        }
        c => c,
    };
    let d: Box<dyn Read + Send> = match kind {
        Compression::Auto | Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
            // Accept long-distance windows up to 2 GiB (zstd --long=31) rather than fail.
            d.window_log_max(31)?;
            Box::new(d)
        }
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
    };
    Ok((d, kind))
}

/// Fills `buf` as far as the stream allows; the count read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The writer's state: pending zero range, stats, and whether punching works.
struct Writer<'a> {
    direct: &'a File,
    plain: &'a File,
    size: u64,
    path: &'a Path,
    punch: bool,
    /// A run of zero blocks not yet punched: (start, len).
    zeros: Option<(u64, u64)>,
    written: u64,
    skipped: u64,
}

impl Writer<'_> {
    fn flush_zeros(&mut self) -> Result<(), ActionError> {
        let Some((start, len)) = self.zeros.take() else {
            return Ok(());
        };
        if self.punch {
            use nix::fcntl::{FallocateFlags, fallocate};
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match fallocate(self.direct.as_fd(), flags, start as i64, len as i64) {
                Ok(()) => {
                    self.skipped += len;
                    return Ok(());
                }
                // The device cannot zero without writing: write zeros from now on.
                Err(_) => self.punch = false,
            }
        }
        let zeros = Aligned::new();
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(BUF as u64) as usize;
            self.write_at(&zeros.v[zeros.off..zeros.off + n], start + off)?;
            off += n as u64;
        }
        Ok(())
    }

    fn write_at(&mut self, data: &[u8], at: u64) -> Result<(), ActionError> {
        let end = at + data.len() as u64;
        if end > self.size {
            return Err(ActionError::TooLarge {
                image: end,
                disk: self.path.to_owned(),
                size: self.size,
            });
        }
        // O_DIRECT needs 512-byte multiples; a ragged tail goes through the page cache.
        let aligned = data.len() / 512 * 512;
        if aligned > 0 {
            self.direct
                .write_all_at(&data[..aligned], at)
                .map_err(ActionError::io("writing", self.path))?;
        }
        if aligned < data.len() {
            self.plain
                .write_all_at(&data[aligned..], at + aligned as u64)
                .map_err(ActionError::io("writing", self.path))?;
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Writes one decompressed buffer at `at`: data spans written whole, zero blocks punched.
    fn put(&mut self, data: &[u8], at: u64) -> Result<(), ActionError> {
        let mut i = 0;
        while i < data.len() {
            let end = (i + ZERO_BLOCK).min(data.len());
            if is_zero(&data[i..end]) {
                let off = at + i as u64;
                let len = (end - i) as u64;
                self.zeros = match self.zeros {
                    Some((s, l)) if s + l == off => Some((s, l + len)),
                    _ => Some((off, len)),
                };
                i = end;
                continue;
            }
            self.flush_zeros()?;
            // Extend over the following non-zero blocks: one large write.
            let mut j = end;
            while j < data.len() {
                let e = (j + ZERO_BLOCK).min(data.len());
                if is_zero(&data[j..e]) {
                    break;
                }
                j = e;
            }
            self.write_at(&data[i..j], at + i as u64)?;
            i = j;
        }
        Ok(())
    }
}

/// Runs the pipeline; `tick` gets a report at least every second.
pub fn run(
    ctx: &Context,
    job: &Job,
    tick: &mut dyn FnMut(&Report),
) -> Result<Outcome, ActionError> {
    let url = http::Url::parse_download(&job.url)
        .map_err(|e| ActionError::Download(dragonfly_core::Chain(&e).to_string()))?;
    let bearer = match (job.authenticate, &ctx.token) {
        (false, _) => None,
        (true, Some(token)) => Some(token),
        (true, None) => {
            return Err(ActionError::Download(format!(
                "{} needs the agent's boot token, and this run has none",
                job.url
            )));
        }
    };
    let tls = if url.tls {
        Some(
            http::tls_config(&ctx.ca_files)
                .map_err(|e| ActionError::Download(format!("downloading {}: {e}", job.url)))?,
        )
    } else {
        None
    };
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&job.disk)
        .map_err(ActionError::io("opening", &job.disk))?;
    let mut plain = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&job.disk)
        .map_err(ActionError::io("opening", &job.disk))?;
    let size = plain
        .seek(SeekFrom::End(0))
        .map_err(ActionError::io("sizing", &job.disk))?;
    let hasher = match &job.expected {
        None => Hasher::None,
        Some(Expected::Sha256(_)) => Hasher::Sha256(sha2::Sha256::new()),
        Some(Expected::Sha512(_)) => Hasher::Sha512(sha2::Sha512::new()),
    };
    let started = Instant::now();
    let timeout = ctx.http_timeout;
    let mut w = Writer {
        direct: &direct,
        plain: &plain,
        size,
        path: &job.disk,
        punch: true,
        zeros: None,
        written: 0,
        skipped: 0,
    };
    let downloaded = AtomicU64::new(0);
    let (kind, digest, image_bytes, compressed_total) =
        std::thread::scope(|s| -> Result<_, ActionError> {
            let (chunk_tx, chunk_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(32);
            let (total_tx, total_rx) = mpsc::sync_channel::<u64>(1);
            let (free_tx, free_rx) = mpsc::sync_channel::<Aligned>(POOL);
            let (dec_tx, dec_rx) = mpsc::sync_channel::<Aligned>(POOL);
            let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Aligned>(POOL);
            for _ in 0..POOL {
                let _ = free_tx.send(Aligned::new());
            }
            let counter = &downloaded;
            let cancel = &ctx.cancel;
            let shown = job.url.as_str();
            s.spawn(move || {
                download(
                    &url,
                    tls.as_ref(),
                    bearer,
                    shown,
                    timeout,
                    &chunk_tx,
                    &total_tx,
                    counter,
                    cancel,
                );
            });
            let compression = job.compression;
            let decomp = s.spawn(move || -> Result<Compression, ActionError> {
                let reader = ChannelReader {
                    rx: chunk_rx,
                    cur: Vec::new(),
                    pos: 0,
                };
                let (mut d, kind) =
                    decoder(reader, compression).map_err(|e| stream_error(e, compression, 0))?;
                // Image bytes produced so far: where a corrupt stream went wrong.
                let mut out = 0u64;
                while let Ok(mut buf) = free_rx.recv() {
                    let n = fill(&mut d, buf.full()).map_err(|e| stream_error(e, kind, out))?;
                    out += n as u64;
                    buf.len = n;
                    if n == 0 {
                        break;
                    }
                    if dec_tx.send(buf).is_err() {
                        break;
                    }
                }
                Ok(kind)
            });
            let hash = s.spawn(move || {
                let mut h = hasher;
                while let Ok(buf) = dec_rx.recv() {
                    h.update(buf.data());
                    if hashed_tx.send(buf).is_err() {
                        break;
                    }
                }
                h.finish()
            });
            // The writer runs here, on the caller's thread, so `tick` needs no Send.
            let mut at = 0u64;
            let mut last = Instant::now();
            let mut total = None;
            let mut failed = None;
            loop {
                if ctx.cancel.is_cancelled() {
                    failed = Some(ActionError::Cancelled);
                    break;
                }
                match hashed_rx.recv_timeout(TICK) {
                    Ok(buf) => {
                        if let Err(e) = w.put(buf.data(), at) {
                            failed = Some(e);
                            break;
                        }
                        at += buf.len as u64;
                        let _ = free_tx.send(buf);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if total.is_none() {
                    total = total_rx.try_recv().ok();
                }
                if last.elapsed() >= TICK {
                    last = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    let got = downloaded.load(Ordering::Relaxed);
                    tick(&Report {
                        done: at,
                        total: None,
                        percent: total.and_then(|t| super::percent(got, t)),
                        bytes_per_sec: (at as f64 / secs) as u64,
                        message: match total {
                            Some(t) => format!("downloaded {} of {} MiB", got >> 20, t >> 20),
                            None => format!("downloaded {} MiB", got >> 20),
                        },
                    });
                }
            }
            // Stop the other stages (dropping our ends unblocks them), then collect their word.
            drop(hashed_rx);
            drop(free_tx);
            let kind = decomp
                .join()
                .map_err(|_| ActionError::Unsupported("the decompressor panicked".into()))?;
            let digest = hash
                .join()
                .map_err(|_| ActionError::Unsupported("the hasher panicked".into()))?;
            if let Some(e) = failed {
                return Err(e);
            }
            let kind = kind?;
            w.flush_zeros()?;
            Ok((kind, digest, at, total))
        })?;
    if ctx.cancel.is_cancelled() {
        // However the stages ended, the image is not known to be whole.
        return Err(ActionError::Cancelled);
    }
    let (written, skipped) = (w.written, w.skipped);
    direct
        .sync_all()
        .map_err(ActionError::io("flushing", &job.disk))?;
    plain
        .sync_all()
        .map_err(ActionError::io("flushing", &job.disk))?;
    if let (Some(exp), Some(actual)) = (&job.expected, digest) {
        let (algorithm, expected) = match exp {
            Expected::Sha256(e) => ("sha256", e),
            Expected::Sha512(e) => ("sha512", e),
        };
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(ActionError::Checksum {
                algorithm,
                expected: expected.to_ascii_lowercase(),
                actual,
            });
        }
    }
    if image_bytes == 0 {
        return Err(ActionError::Download("the image is empty".into()));
    }
    let moved = relocate_gpt_backup(&mut plain, size, &job.disk)?;
    plain
        .sync_all()
        .map_err(ActionError::io("flushing", &job.disk))?;
    let sector = gptman::linux::get_sector_size(&mut plain).unwrap_or(512);
    let table = super::partition::read_table(&mut plain, sector);
    let reread = super::partition::reread(&mut plain, &job.disk)
        .and_then(|()| super::partition::publish(&plain, &job.disk, &table));
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let mut message = format!(
        "{} MiB ({kind:?}{}) onto {}: {} MiB written, {} MiB of zeros skipped, {:.0} MiB/s",
        image_bytes >> 20,
        compressed_total
            .map(|c| format!(", {} MiB compressed", c >> 20))
            .unwrap_or_default(),
        job.disk.display(),
        written >> 20,
        skipped >> 20,
        image_bytes as f64 / secs / f64::from(1 << 20),
    );
    if let Some(exp) = &job.expected {
        message.push_str(match exp {
            Expected::Sha256(_) => "; sha256 verified",
            Expected::Sha512(_) => "; sha512 verified",
        });
    }
    if moved {
        message.push_str("; GPT backup moved to the disk's end");
    }
    if let Err(e) = reread {
        message.push_str(&format!("; {e}"));
    }
    tick(&Report {
        done: image_bytes,
        total: Some(image_bytes),
        percent: Some(100),
        bytes_per_sec: (image_bytes as f64 / secs) as u64,
        message: String::new(),
    });
    Ok(Outcome {
        message,
        bytes: Some(image_bytes),
        reboot: None,
    })
}

/// A stream error of the decompressor thread; `at`: image bytes it produced before it.
fn stream_error(e: io::Error, kind: Compression, at: u64) -> ActionError {
    // The download's own errors arrive as `Other` with their text.
    if e.kind() == io::ErrorKind::Other && e.to_string().starts_with("downloading") {
        return ActionError::Download(e.to_string());
    }
    let what = match kind {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::Xz => "xz",
        Compression::Bzip2 => "bzip2",
        Compression::None | Compression::Auto => "raw",
    };
    ActionError::Decompress {
        kind: what,
        at,
        source: e,
    }
}

/// Where a GPT's backup belongs on a disk of `sectors`: (backup header LBA, last usable LBA,
/// backup entry array LBA).
pub fn backup_layout(sectors: u64, sector: u64, entries: u32, entry_size: u32) -> (u64, u64, u64) {
    let array = (u64::from(entries) * u64::from(entry_size)).div_ceil(sector);
    let backup = sectors - 1;
    let last_usable = backup - array - 1;
    (backup, last_usable, last_usable + 1)
}

/// When the image carried a GPT made for a smaller disk, writes the backup header and entries
/// at this disk's end (and widens the protective MBR entry, keeping the MBR's boot code), as
/// `sgdisk -e` would. Returns whether it moved anything.
pub fn relocate_gpt_backup(f: &mut File, size: u64, path: &Path) -> Result<bool, ActionError> {
    let Ok(sector) = gptman::linux::get_sector_size(f).or(Ok::<u64, ()>(512)) else {
        return Ok(false);
    };
    let Ok(mut gpt) = gptman::GPT::read_from(f, sector) else {
        return Ok(false); // No GPT (or an MBR image): nothing to move.
    };
    let sectors = size / sector;
    let (backup, last_usable, _) = backup_layout(
        sectors,
        sector,
        gpt.header.number_of_partition_entries,
        gpt.header.size_of_partition_entry,
    );
    if !gpt.header.is_primary() || gpt.header.backup_lba >= backup {
        return Ok(false);
    }
    gpt.header.update_from(f, sector)?;
    debug_assert_eq!(
        (gpt.header.backup_lba, gpt.header.last_usable_lba),
        (backup, last_usable)
    );
    gpt.write_into(f)?;
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0)
        .map_err(ActionError::io("reading the MBR of", path))?;
    if mbr[446 + 4] == 0xEE && mbr[510..] == [0x55, 0xAA] {
        let count = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
        mbr[446 + 12..446 + 16].copy_from_slice(&count.to_le_bytes());
        f.write_all_at(&mbr, 0)
            .map_err(ActionError::io("writing the MBR of", path))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]), Compression::Zstd);
        assert_eq!(detect(b"\xfd7zXZ\0\0\x04"), Compression::Xz);
        assert_eq!(detect(b"BZh91AY&SY"), Compression::Bzip2);
        assert_eq!(detect(b"BZh0"), Compression::None);
        assert_eq!(
            detect(&[0xeb, 0x63, 0x90]),
            Compression::None,
            "an MBR boot sector"
        );
        assert_eq!(detect(b""), Compression::None);
        assert_eq!(detect(&[0x1f]), Compression::None);
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; ZERO_BLOCK + 3];
        for start in 0..3 {
            assert!(is_zero(&v[start..]));
        }
        for i in [0, 1, 63, 64, 4095, ZERO_BLOCK - 1, ZERO_BLOCK + 2] {
            v[i] = 1;
            assert!(!is_zero(&v), "{i}");
            assert!(!is_zero(&v[i..]), "{i}");
            v[i] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn backup_layout_matches_gptman() {
        // A GPT made for 100 MiB, on a 1 GiB "disk".
        let mut small = io::Cursor::new(vec![0u8; 100 << 20]);
        let mut gpt = gptman::GPT::new_from(&mut small, 512, [1; 16]).unwrap();
        let mut big = io::Cursor::new(vec![0u8; 1 << 30]);
        gpt.header.update_from(&mut big, 512).unwrap();
        assert_eq!(
            backup_layout((1 << 30) / 512, 512, 128, 128),
            (
                gpt.header.backup_lba,
                gpt.header.last_usable_lba,
                gpt.header.last_usable_lba + 1
            )
        );
        assert_eq!(
            backup_layout(2_097_152, 512, 128, 128),
            (2_097_151, 2_097_118, 2_097_119)
        );
        assert_eq!(
            backup_layout(262_144, 4096, 128, 128),
            (262_143, 262_138, 262_139)
        );
    }

    /// A server that sends a head and the first bytes of a body, then stalls (holding the
    /// connection) for `stall`.
    fn stalling_server(stall: Duration) -> String {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let mut w = s;
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n");
                    let _ = w.write_all(&[0x42; 64 << 10]);
                    std::thread::sleep(stall);
                });
            }
        });
        format!("http://{addr}/os.img")
    }

    /// A server that answers every request with 64 KiB of image and sends each request's
    /// head to the returned channel.
    fn recording_server() -> (String, mpsc::Receiver<String>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut head = String::new();
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    head.push_str(&line);
                    line.clear();
                }
                let _ = tx.send(head);
                let mut w = s;
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n");
                let _ = w.write_all(&[0x42; 64 << 10]);
            }
        });
        (format!("http://{addr}/images/os"), rx)
    }

    #[test]
    fn the_boot_token_goes_only_with_downloads_that_ask_for_it() {
        let (url, heads) = recording_server();
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(1 << 20).unwrap();
        let token = crate::token::Token::new("dfb1.live".into());
        for (authenticate, token, sent) in [
            (
                true,
                Some(token.clone()),
                Some("authorization: bearer dfb1.live"),
            ),
            (false, Some(token), None),
        ] {
            let ctx = Context {
                token,
                ..Context::default()
            };
            let job = Job {
                url: url.clone(),
                authenticate,
                disk: disk.path().into(),
                expected: None,
                compression: Compression::None,
            };
            run(&ctx, &job, &mut |_| {}).unwrap();
            let head = heads.recv().unwrap().to_lowercase();
            match sent {
                Some(line) => assert!(head.contains(line), "{head}"),
                None => assert!(!head.contains("authorization"), "{head}"),
            }
        }
        // Asked for, but this agent has no token: said, and nothing is fetched.
        let job = Job {
            url,
            authenticate: true,
            disk: disk.path().into(),
            expected: None,
            compression: Compression::None,
        };
        let e = run(&Context::default(), &job, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("boot token"), "{e}");
        assert!(heads.try_recv().is_err());
    }

    #[test]
    fn a_cancelled_image2disk_ends_within_a_read_timeout_even_when_the_server_stalls() {
        let url = stalling_server(Duration::from_secs(60));
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(16 << 20).unwrap();
        let ctx = Context {
            http_timeout: Duration::from_secs(1),
            ..Context::default()
        };
        let job = Job {
            url,
            authenticate: false,
            disk: disk.path().into(),
            expected: None,
            compression: Compression::None,
        };
        let cancel = ctx.cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.cancel();
        });
        let started = Instant::now();
        let r = run(&ctx, &job, &mut |_| {});
        // Without the cancel it would reconnect and wait for 5 retries (half a minute).
        assert!(matches!(r, Err(ActionError::Cancelled)), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn an_image_past_the_disks_end_says_how_far_it_got_and_the_disks_size() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        let mut w = Writer {
            direct: &f,
            plain: &f,
            size: 1 << 20,
            path: Path::new("/dev/vdz"),
            punch: false,
            zeros: None,
            written: 0,
            skipped: 0,
        };
        let e = w.put(&[1u8; 8192], (1 << 20) - 4096).unwrap_err();
        assert_eq!(
            dragonfly_core::Chain(&e).to_string(),
            "the image does not fit: it reached byte 1052672 of the disk /dev/vdz, which has \
             1048576 bytes"
        );
    }

    #[test]
    fn a_corrupt_stream_names_its_decompressor_and_where_it_broke() {
        let image: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut z = zstd::encode_all(&image[..], 3).unwrap();
        let mid = z.len() / 2;
        for b in &mut z[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        tx.send(Ok(z)).unwrap();
        drop(tx);
        let reader = ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let (mut d, kind) = decoder(reader, Compression::Auto).unwrap();
        assert_eq!(kind, Compression::Zstd);
        let mut out = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        let e = loop {
            match fill(&mut d, &mut buf) {
                Ok(0) => panic!("the corruption went unseen"),
                Ok(n) => out += n as u64,
                Err(e) => break stream_error(e, kind, out),
            }
        };
        let text = dragonfly_core::Chain(&e).to_string();
        assert!(
            text.starts_with(&format!(
                "decompressing the image (zstd) failed after {out} bytes of image"
            )),
            "{text}"
        );
    }

    proptest! {
        #[test]
        fn zero_detection_agrees_with_the_obvious(v in proptest::collection::vec(prop_oneof![9 => Just(0u8), 1 => any::<u8>()], 0..300), off in 0usize..8) {
            let off = off.min(v.len());
            prop_assert_eq!(is_zero(&v[off..]), v[off..].iter().all(|&b| b == 0));
        }

        #[test]
        fn backup_stays_inside(sectors in 100u64..1 << 40, entries in 1u32..1024) {
            let (b, last, array) = backup_layout(sectors, 512, entries, 128);
            prop_assert_eq!(b, sectors - 1);
            prop_assert!(last < array && array < b);
            prop_assert_eq!((b - array) * 512, u64::from(entries * 128).div_ceil(512) * 512);
        }
    }
}
