//! The native actions as root against loop devices, with images served by a tiny HTTP server
//! on 127.0.0.1 (`require_root`: skipped with a message outside CI, failing in CI).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dragonfly_agent::actions::{self, ActionError, Context, Outcome, Progress, Report};
use dragonfly_core::template::{ActionSpec, TemplateSpec};
use sha2::Digest;

/// A file-backed loop device with partition scanning, detached on drop.
struct Loop {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    /// `mib` MiB, every byte 0xA5 (so a zero region that was skipped rather than zeroed shows).
    fn new(mib: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let mut f = File::create(&file).unwrap();
        let junk = vec![0xA5u8; 1 << 20];
        for _ in 0..mib {
            f.write_all(&junk).unwrap();
        }
        f.sync_all().unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", "-P"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Self { dev, _dir: dir }
    }

    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let f = File::open(&self.dev).unwrap();
        let mut v = vec![0u8; len];
        f.read_exact_at(&mut v, off).unwrap();
        v
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(&self.dev).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// How the test server misbehaves.
#[derive(Clone, Copy, Default)]
struct Serve {
    /// Drop the first connection after this many body bytes.
    drop_after: Option<usize>,
    /// Answer 200 with the whole body even to a Range request.
    ignore_range: bool,
    chunked: bool,
}

/// Serves `body` at any path on 127.0.0.1; returns the URL and a request counter.
fn serve(body: Vec<u8>, how: Serve) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/image", l.local_addr().unwrap());
    let body = Arc::new(body);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            std::thread::spawn(move || {
                let _ = answer(s, &body, how, n == 0);
            });
        }
    });
    (url, count)
}

/// Serves `body` at any path on 127.0.0.1 over TLS with `cert` (for `127.0.0.1`); returns
/// the `https://` URL.
fn serve_tls(body: Vec<u8>, cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> String {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/image", l.local_addr().unwrap());
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let (body, config) = (body.clone(), config.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let _ = answer(
                    rustls::StreamOwned::new(conn, s),
                    &body,
                    Serve::default(),
                    false,
                );
            });
        }
    });
    url
}

fn answer(s: impl Read + Write, body: &[u8], how: Serve, first: bool) -> std::io::Result<()> {
    // The client sends its head and waits: nothing is read past it.
    let mut r = BufReader::new(s);
    let mut from = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            from = v.trim().trim_end_matches('-').parse().unwrap();
        }
    }
    if how.ignore_range {
        from = 0;
    }
    let part = &body[from..];
    let mut head = if from > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\n",
            body.len() - 1,
            body.len()
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    if !how.ignore_range {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    if how.chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", part.len()));
    }
    let s = r.get_mut();
    s.write_all(head.as_bytes())?;
    let cut = match how.drop_after {
        Some(n) if first => n.min(part.len()),
        _ => part.len(),
    };
    for c in part[..cut].chunks(100_000) {
        if how.chunked {
            s.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
            s.write_all(c)?;
            s.write_all(b"\r\n")?;
        } else {
            s.write_all(c)?;
        }
    }
    if cut == part.len() && how.chunked {
        s.write_all(b"0\r\n\r\n")?;
    }
    s.flush()?;
    // Dropping the socket mid-body is the "dropped connection".
    Ok(())
}

#[derive(Default)]
struct Log {
    events: Vec<String>,
    reports: Vec<Report>,
}

impl Progress for Log {
    fn start(&mut self, a: &str) {
        self.events.push(format!("start {a}"));
    }
    fn progress(&mut self, _: &str, r: &Report) {
        self.reports.push(r.clone());
    }
    fn end(&mut self, a: &str, r: Result<&Outcome, &ActionError>) {
        self.events.push(format!("end {a} {}", r.is_ok()));
    }
}

fn ctx() -> Context {
    Context {
        settle: Duration::from_secs(10),
        http_timeout: Duration::from_secs(5),
        ..Context::default()
    }
}

fn action(yaml: &str) -> ActionSpec {
    let t: TemplateSpec = serde_yaml_ng::from_str(&format!("actions:\n{yaml}")).unwrap();
    t.validate().unwrap();
    t.actions.into_iter().next().unwrap()
}

fn run(yaml: &str) -> Result<Outcome, ActionError> {
    let mut log = Log::default();
    let r = actions::run(&action(yaml), &ctx(), &mut log);
    assert_eq!(log.events.len(), 2, "{:?}", log.events);
    r
}

fn blkid(dev: &Path, tag: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", tag])
        .arg(dev)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Reads a file back from a filesystem (mounted read-only by the test itself).
fn read_back(dev: &Path, path: &str) -> (Vec<u8>, u32, u32) {
    let m = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-o", "ro"])
        .arg(dev)
        .arg(m.path())
        .status()
        .unwrap();
    assert!(st.success());
    let p = m.path().join(path.trim_start_matches('/'));
    let data = fs::read(&p);
    let meta = fs::metadata(&p);
    Command::new("umount").arg(m.path()).status().unwrap();
    let meta = meta.unwrap();
    use std::os::unix::fs::MetadataExt;
    (
        data.unwrap(),
        meta.permissions().mode() & 0o7777,
        meta.uid(),
    )
}

#[test]
fn partition_gpt_format_and_writefile_on_ext4_and_vfat() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    let disk = Loop::new(256);
    let d = disk.dev.display();
    let out = run(&format!(
        "- name: disk\n  type: partition\n  disk: {d}\n  table: gpt\n  partitions:\n  \
         - {{label: bios, size: 1MiB, type: bios-boot}}\n  \
         - {{label: efi, size: 64MiB, type: efi, format: vfat}}\n  \
         - {{label: swap, size: 10%, type: swap, format: swap}}\n  \
         - {{label: root, format: ext4}}\n"
    ))
    .unwrap();
    assert!(
        out.message.contains("GPT with 4 partitions"),
        "{}",
        out.message
    );
    let p = |n| PathBuf::from(format!("{d}p{n}"));
    assert_eq!(blkid(&p(2), "TYPE"), "vfat");
    assert_eq!(blkid(&p(2), "LABEL"), "EFI");
    assert_eq!(blkid(&p(3), "TYPE"), "swap");
    assert_eq!(blkid(&p(4), "TYPE"), "ext4");
    assert_eq!(blkid(&p(4), "PART_ENTRY_NAME"), "root");
    assert_eq!(
        blkid(&p(2), "PART_ENTRY_TYPE"),
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
    // The disk's end held 0xA5: the backup GPT is there now, and the kernel agrees.
    let sectors = fs::read_to_string(format!(
        "/sys/class/block/{}/size",
        disk.dev.file_name().unwrap().to_string_lossy()
    ))
    .unwrap();
    assert_eq!(sectors.trim(), (256u64 << 11).to_string());

    // writefile on ext4 (by disk + partition number) and on vfat (by path).
    let out = run(&format!(
        "- name: hostname\n  type: writefile\n  device: {{disk: {d}, partition: 4}}\n  \
         filesystem: ext4\n  path: /etc/deep/hostname\n  contents: \"node-1\\n\"\n  mode: 0o600\n  uid: 1000\n"
    ))
    .unwrap();
    assert!(
        out.message.contains("/etc/deep/hostname (7 bytes"),
        "{}",
        out.message
    );
    assert_eq!(
        read_back(&p(4), "/etc/deep/hostname"),
        (b"node-1\n".to_vec(), 0o600, 1000)
    );
    // Again: replaced atomically, not appended.
    run(&format!(
        "- name: hostname\n  type: writefile\n  device: {d}p4\n  filesystem: ext4\n  \
         path: /etc/deep/hostname\n  contents: node-2\n"
    ))
    .unwrap();
    assert_eq!(
        read_back(&p(4), "/etc/deep/hostname"),
        (b"node-2".to_vec(), 0o644, 0)
    );
    let (motd, _) = serve(
        b"from a URL\n".to_vec(),
        Serve {
            chunked: true,
            ..Serve::default()
        },
    );
    run(&format!(
        "- name: motd\n  type: writefile\n  device: {d}p4\n  filesystem: ext4\n  \
         path: /etc/motd\n  url: {motd}\n"
    ))
    .unwrap();
    assert_eq!(read_back(&p(4), "/etc/motd").0, b"from a URL\n");

    // vfat (by path, contents from a URL), where this kernel can mount it: the machines this
    // runs on in CI have a kernel without vfat (the agent's Debian kernel has it).
    if fs::read_to_string("/proc/filesystems")
        .unwrap()
        .contains("\tvfat")
    {
        let (url, _) = serve(b"menuentry\n".to_vec(), Serve::default());
        run(&format!(
            "- name: grub\n  type: writefile\n  device: {d}p2\n  filesystem: vfat\n  \
             path: /EFI/debian/grub.cfg\n  url: {url}\n"
        ))
        .unwrap();
        assert_eq!(read_back(&p(2), "/EFI/debian/grub.cfg").0, b"menuentry\n");
    } else {
        println!("SKIP: writefile on vfat: this kernel cannot mount vfat (mkfs.vfat was tested)");
    }
    // No mount is left behind.
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&*d.to_string()), "{mounts}");

    // A missing filesystem is a clear error.
    let e = run(&format!(
        "- name: x\n  type: writefile\n  device: {d}p1\n  filesystem: ext4\n  path: /a\n  contents: b\n"
    ))
    .unwrap_err();
    assert!(
        dragonfly_core::Chain(&e)
            .to_string()
            .contains(&format!("{d}p1 has no ext4 filesystem")),
        "{e}"
    );
}

#[test]
fn partition_mbr_with_xfs_and_a_disk_too_small() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    let disk = Loop::new(512);
    let d = disk.dev.display();
    run(&format!(
        "- name: disk\n  type: partition\n  disk: {d}\n  table: mbr\n  partitions:\n  \
         - {{label: boot, size: 100MiB, type: efi, format: vfat}}\n  \
         - {{label: data, format: xfs}}\n"
    ))
    .unwrap();
    assert_eq!(
        blkid(Path::new(&format!("{d}p1")), "PART_ENTRY_SCHEME"),
        "dos"
    );
    assert_eq!(
        blkid(Path::new(&format!("{d}p1")), "PART_ENTRY_TYPE"),
        "0xef"
    );
    assert_eq!(blkid(Path::new(&format!("{d}p2")), "TYPE"), "xfs");
    assert_eq!(blkid(Path::new(&format!("{d}p2")), "LABEL"), "data");
    run(&format!(
        "- name: f\n  type: writefile\n  device: {d}p2\n  filesystem: xfs\n  path: /x\n  contents: y\n"
    ))
    .unwrap();
    assert_eq!(read_back(Path::new(&format!("{d}p2")), "/x").0, b"y");

    let e = run(&format!(
        "- name: disk\n  type: partition\n  disk: {d}\n  table: gpt\n  partitions:\n  \
         - {{label: a, size: 1GiB}}\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
}

/// A 48 MiB image: a few MiB of pseudo-random data at odd places, zeros elsewhere, and an
/// unaligned tail.
fn image() -> Vec<u8> {
    let mut v = vec![0u8; (48 << 20) + 1536];
    let mut x = 0x1234_5678_9abc_def0u64;
    for (start, len) in [
        (0usize, 70_000usize),
        (5 << 20, 3 << 20),
        ((20 << 20) + 4097, 1_000_000),
        ((48 << 20) - 100, 1636),
    ] {
        for b in &mut v[start..start + len] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8 | 1;
        }
    }
    v
}

fn compress(data: &[u8], tool: &[&str]) -> Vec<u8> {
    let mut c = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let d = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&d).unwrap());
    let mut out = Vec::new();
    c.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    w.join().unwrap();
    assert!(c.wait().unwrap().success());
    out
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// `https://` images: the certificate is checked against the CA files the agent is given; an
/// untrusted server is refused before anything is written, and says why.
#[test]
fn image2disk_over_https_trusts_only_its_cas() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    let img = image();
    let sum = sha256(&img);
    let disk = Loop::new(64);
    let z = compress(&img, &["zstd", "-c"]);
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let url = serve_tls(z, &cert);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, cert.cert.pem()).unwrap();
    let action = action(&format!(
        "- name: image\n  type: image2disk\n  url: {url}\n  disk: {}\n  sha256: {sum}\n",
        disk.dev.display()
    ));

    // Trusted: written and verified.
    let trusting = Context {
        ca_files: vec![dir.path().join("missing.pem"), ca.clone()],
        ..ctx()
    };
    let out = actions::run(&action, &trusting, &mut Log::default()).unwrap();
    assert!(out.message.contains("sha256 verified"), "{}", out.message);
    let mut back = vec![0u8; img.len()];
    File::open(&disk.dev)
        .unwrap()
        .read_exact(&mut back)
        .unwrap();
    assert!(back == img, "the disk does not hold the image");

    // A CA directory counts too.
    let dir_ctx = Context {
        ca_files: vec![dir.path().to_owned()],
        ..ctx()
    };
    actions::run(&action, &dir_ctx, &mut Log::default()).unwrap();

    // Not trusted: the system bundle does not know this self-signed certificate.
    let system = Context {
        ca_files: vec!["/etc/ssl/certs/ca-certificates.crt".into()],
        ..ctx()
    };
    if system.ca_files[0].exists() {
        let e = actions::run(&action, &system, &mut Log::default()).unwrap_err();
        let msg = dragonfly_core::Chain(&e).to_string();
        assert!(
            msg.contains("handshake") && msg.contains("certificate"),
            "{msg}"
        );
    }
    // No CA at all: said before connecting.
    let none = Context {
        ca_files: vec![dir.path().join("missing.pem")],
        ..ctx()
    };
    let e = actions::run(&action, &none, &mut Log::default()).unwrap_err();
    let msg = dragonfly_core::Chain(&e).to_string();
    assert!(msg.contains("no CA certificate found"), "{msg}");
}

fn image2disk(url: &str, disk: &Path, extra: &str) -> Result<Outcome, ActionError> {
    run(&format!(
        "- name: image\n  type: image2disk\n  url: {url}\n  disk: {}\n{extra}",
        disk.display()
    ))
}

#[test]
fn image2disk_every_compression_resumes_and_skips_zeros() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    let img = image();
    let sum = sha256(&img);
    let disk = Loop::new(64);
    let cases: [(&str, Vec<u8>, Serve); 6] = [
        (
            "raw, chunked",
            img.clone(),
            Serve {
                chunked: true,
                ..Serve::default()
            },
        ),
        ("gzip", compress(&img, &["gzip", "-1"]), Serve::default()),
        (
            "xz, dropped and resumed",
            compress(&img, &["xz", "-0", "-T1"]),
            Serve {
                drop_after: Some(30_000),
                ..Serve::default()
            },
        ),
        ("bzip2", compress(&img, &["bzip2", "-1"]), Serve::default()),
        (
            "zstd, dropped and resumed",
            compress(&img, &["zstd", "-3", "-c"]),
            Serve {
                drop_after: Some(100_000),
                ..Serve::default()
            },
        ),
        (
            "zstd, dropped, no ranges",
            compress(&img, &["zstd", "-3", "-c"]),
            Serve {
                drop_after: Some(100_000),
                ignore_range: true,
                ..Serve::default()
            },
        ),
    ];
    for (what, body, how) in cases {
        // Dirty the disk again so skipped zeros must have been zeroed.
        File::options()
            .write(true)
            .open(&disk.dev)
            .unwrap()
            .write_all_at(&vec![0xA5; 64 << 20], 0)
            .unwrap();
        let (url, count) = serve(body, how);
        let out = image2disk(&url, &disk.dev, &format!("  sha256: {sum}\n"))
            .unwrap_or_else(|e| panic!("{what}: {}", dragonfly_core::Chain(&e)));
        assert!(
            out.message.contains("sha256 verified"),
            "{what}: {}",
            out.message
        );
        assert!(
            out.message.contains("MiB of zeros skipped"),
            "{what}: {}",
            out.message
        );
        assert_eq!(sha256(&disk.read(0, img.len())), sum, "{what}");
        assert_eq!(out.bytes, Some(img.len() as u64));
        let expected_requests = if how.drop_after.is_some() { 2 } else { 1 };
        assert_eq!(count.load(Ordering::SeqCst), expected_requests, "{what}");
    }
    // sha512 too.
    let (url, _) = serve(compress(&img, &["zstd", "-c"]), Serve::default());
    let s512: String = sha2::Sha512::digest(&img)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    image2disk(
        &url,
        &disk.dev,
        &format!("  sha512: {s512}\n  compression: zstd\n"),
    )
    .unwrap();
}

#[test]
fn image2disk_fails_clearly_on_bad_images() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    let img = image();
    let disk = Loop::new(64);
    let z = compress(&img, &["zstd", "-c"]);

    let (url, _) = serve(z.clone(), Serve::default());
    let wrong = "0".repeat(64);
    let e = image2disk(&url, &disk.dev, &format!("  sha256: {wrong}\n")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&wrong) && msg.contains(&sha256(&img)),
        "both digests: {msg}"
    );

    let mut corrupt = z.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let (url, _) = serve(corrupt, Serve::default());
    let e = image2disk(&url, &disk.dev, "").unwrap_err();
    assert!(
        matches!(e, ActionError::Decompress { kind: "zstd", .. }),
        "{}",
        dragonfly_core::Chain(&e)
    );

    // Truncated for good: every connection drops at the same place.
    let (url, _) = serve(z[..z.len() / 3].to_vec(), Serve::default());
    let e = image2disk(&url, &disk.dev, "").unwrap_err();
    assert!(
        matches!(e, ActionError::Decompress { .. }),
        "{}",
        dragonfly_core::Chain(&e)
    );

    let small = Loop::new(16);
    let (url, _) = serve(z, Serve::default());
    let e = image2disk(&url, &small.dev, "").unwrap_err();
    let msg = dragonfly_core::Chain(&e).to_string();
    assert!(matches!(e, ActionError::TooLarge { .. }), "{msg}");
    assert!(
        msg.contains(&format!("which has {} bytes", 16 << 20)),
        "{msg}"
    );

    let e = image2disk("http://127.0.0.1:9/nothing", &disk.dev, "").unwrap_err();
    let msg = dragonfly_core::Chain(&e).to_string();
    assert!(matches!(e, ActionError::Download(_)), "{msg}");
    // The URL, and the cause.
    assert!(
        msg.contains("http://127.0.0.1:9/nothing") && msg.contains("connecting to 127.0.0.1:9"),
        "{msg}"
    );
}

#[test]
fn image2disk_moves_the_gpt_backup_to_a_larger_disks_end() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    // A 32 MiB GPT image with one partition, written to a 96 MiB disk.
    let mut img = std::io::Cursor::new(vec![0u8; 32 << 20]);
    let mut gpt = gptman::GPT::new_from(&mut img, 512, [7; 16]).unwrap();
    gpt[1] = gptman::GPTPartitionEntry {
        partition_type_guid: [1; 16],
        unique_partition_guid: [2; 16],
        starting_lba: 2048,
        ending_lba: 40_000,
        attribute_bits: 0,
        partition_name: "root".into(),
    };
    gpt.write_into(&mut img).unwrap();
    gptman::GPT::write_protective_mbr_into(&mut img, 512).unwrap();
    let img = img.into_inner();
    let disk = Loop::new(96);
    let (url, _) = serve(compress(&img, &["gzip"]), Serve::default());
    let out = image2disk(&url, &disk.dev, "").unwrap();
    assert!(out.message.contains("GPT backup moved"), "{}", out.message);
    let mut f = File::open(&disk.dev).unwrap();
    let g = gptman::GPT::read_from(&mut f, 512).unwrap();
    assert_eq!(g.header.backup_lba, (96u64 << 11) - 1);
    assert_eq!(g[1].partition_name.as_str(), "root");
    // The backup copy is valid where it now is.
    f.seek(SeekFrom::Start(((96u64 << 11) - 1) * 512)).unwrap();
    let backup = gptman::GPTHeader::read_from(&mut f).unwrap();
    assert_eq!(backup.primary_lba, (96u64 << 11) - 1);
    // And the kernel saw the partition.
    assert!(PathBuf::from(format!("{}p1", disk.dev.display())).exists());
}

#[test]
fn kexec_reports_a_refused_kernel_and_a_missing_one() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    let disk = Loop::new(64);
    let d = disk.dev.display();
    run(&format!(
        "- name: disk\n  type: partition\n  disk: {d}\n  table: gpt\n  partitions:\n  \
         - {{label: root, format: ext4}}\n"
    ))
    .unwrap();
    run(&format!(
        "- name: kernel\n  type: writefile\n  device: {d}p1\n  filesystem: ext4\n  \
         path: /boot/vmlinuz\n  contents: not a kernel\n"
    ))
    .unwrap();
    // The kernel refuses a file that is not a kernel: the action succeeds and says the loop
    // must reboot through the firmware (nothing is loaded, nothing reboots here).
    let out = run(&format!(
        "- name: boot\n  type: kexec\n  device: {d}p1\n  filesystem: ext4\n  \
         kernel: /boot/vmlinuz\n  cmdline: root=/dev/vda1 ro\n"
    ))
    .unwrap();
    assert!(
        matches!(out.reboot, Some(actions::kexec::Reboot::Firmware(_))),
        "{out:?}"
    );
    assert!(
        out.message.contains("refused kexec_file_load"),
        "{}",
        out.message
    );
    let e = run(&format!(
        "- name: boot\n  type: kexec\n  device: {d}p1\n  filesystem: ext4\n  \
         kernel: /boot/missing\n  initrd: /boot/initrd.img\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("opening the kernel /boot/missing"),
        "{e}"
    );
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains("/run/dragonfly/mnt-"), "{mounts}");
}
