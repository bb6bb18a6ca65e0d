//! The images the end-to-end tests boot, built by scripts and cached under `target/`:
//!
//! - [`test_image`], the test "agent": a Debian kernel and a busybox initramfs that prints
//!   [`crate::MARKER`] with the MAC it was booted for and powers off. Built by
//!   `integration/e2e/build-test-image.sh`, cached under `target/e2e-cache/test-image-<hash of
//!   the script>/`.
//! - [`test_os`], the test OS: a GPT disk image that boots under BIOS and UEFI from its own
//!   disk and prints [`TESTOS_MARKER`] with the hostname found on its root filesystem. Built
//!   by `integration/test-os/build.sh`, cached under `target/test-os/<hash of the inputs>/`.
//!
//! Neither function ever changes what it returns once built: a test that needs an image
//! changed (another hostname) changes a copy ([`TestOs::copy_with_hostname`]).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};

const SCRIPT: &str = include_str!("../e2e/build-test-image.sh");
const SCRIPT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/build-test-image.sh");

/// The test OS's ext4 root partition (integration/test-os/README.md, "Layout").
const ROOT_PARTITION: u32 = 3;

/// Paths of the built kernel and initramfs (their directory can serve as ipxed's `agent_dir`).
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Holds `vmlinuz` and `initrd.img`, nothing else.
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

/// Builds the test image once (the first run downloads the kernel package with
/// `apt-get download`, ~70 MB) and returns it; later calls and runs reuse the cache.
///
/// # Panics
/// When the build script fails (its output is in the message).
pub fn test_image() -> TestImage {
    let cache = crate::cache_dir();
    let dir = cache.join(format!("test-image-{:016x}", fnv1a(SCRIPT.as_bytes())));
    let image = TestImage {
        vmlinuz: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        dir: dir.clone(),
    };
    if image.vmlinuz.is_file() && image.initrd.is_file() {
        return image;
    }
    let lock = open_lock(&cache.join("build.lock"));
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking target/e2e-cache/build.lock");
    if image.vmlinuz.is_file() && image.initrd.is_file() {
        return image;
    }
    let out = Command::new("bash")
        .arg(SCRIPT_PATH)
        .arg(&cache)
        .arg(&dir)
        .output()
        .expect("running bash integration/e2e/build-test-image.sh");
    assert!(
        out.status.success() && image.vmlinuz.is_file() && image.initrd.is_file(),
        "build-test-image.sh failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// What the test OS's `/init` prints on the serial console once it has read its root
/// filesystem: `DRAGONFLY-TESTOS-BOOTED hostname=<name> firmware=<bios|uefi> root=<dev>
/// uptime=<s>`.
pub const TESTOS_MARKER: &str = "DRAGONFLY-TESTOS-BOOTED";

const TESTOS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-os/build.sh");

/// The test OS disk image (see `integration/test-os/build.sh` for its layout): what a
/// provisioning test serves to image2disk, and boots.
#[derive(Debug, Clone)]
pub struct TestOs {
    /// `target/test-os/<key>/`, holding the files below and `SHA256SUMS`.
    pub dir: PathBuf,
    /// The raw GPT disk image (64 MiB, sparse).
    pub image: PathBuf,
    /// [`image`](Self::image) compressed with zstd.
    pub compressed: PathBuf,
    /// `manifest.json`: layout, package versions, sizes, digests.
    pub manifest: PathBuf,
    /// sha256 of the raw image, lowercase hex.
    pub image_sha256: String,
    /// sha256 of the compressed image, lowercase hex.
    pub compressed_sha256: String,
    /// Where the ext4 root filesystem (partition 3, label `dragonfly-root`) starts, in bytes.
    pub root_offset: u64,
    /// The root filesystem's label.
    pub root_label: String,
    /// The kernel command line the image boots `/boot/vmlinuz` with (from its grub.cfg); a
    /// kexec of `/boot/vmlinuz` + `/boot/initrd.img` needs the same.
    pub cmdline: String,
    /// The hostname in the image's `/etc/hostname` as built.
    pub default_hostname: String,
}

/// Builds the test OS when its inputs changed (cold: ~25 s and ~77 MB of Debian packages,
/// cached in `target/test-os/cache/`), else finds it (~1 s: the script asks apt which
/// package versions are current). Once per process; other processes wait on the same lock
/// as [`test_image`].
///
/// # Panics
/// When the build script fails (its output is in the message) or its manifest is not what
/// this function reads.
pub fn test_os() -> TestOs {
    static BUILT: OnceLock<TestOs> = OnceLock::new();
    BUILT.get_or_init(build_test_os).clone()
}

fn build_test_os() -> TestOs {
    let cache = crate::cache_dir();
    let out = cache
        .parent()
        .expect("target/e2e-cache inside target/")
        .join("test-os");
    let lock = open_lock(&cache.join("build.lock"));
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking target/e2e-cache/build.lock");
    let run = Command::new("bash")
        .arg(TESTOS_SCRIPT)
        .env("OUT", &out)
        .output()
        .expect("running bash integration/test-os/build.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "integration/test-os/build.sh failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default());
    let manifest = dir.join("manifest.json");
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&manifest).unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display())),
    )
    .unwrap_or_else(|e| panic!("parsing {}: {e}", manifest.display()));
    let text = |v: &serde_json::Value| {
        v.as_str()
            .unwrap_or_else(|| panic!("{}: expected a string, found {v}", manifest.display()))
            .to_owned()
    };
    let root = m["partitions"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["name"] == "root"))
        .unwrap_or_else(|| panic!("{}: no partition named root", manifest.display()));
    TestOs {
        image: dir.join(text(&m["image"]["file"])),
        compressed: dir.join(text(&m["compressed"]["file"])),
        image_sha256: text(&m["image"]["sha256"]),
        compressed_sha256: text(&m["compressed"]["sha256"]),
        root_offset: root["startBytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: root has no startBytes", manifest.display())),
        root_label: text(&root["label"]),
        cmdline: text(&m["cmdline"]),
        default_hostname: text(&m["defaultHostname"]),
        manifest,
        dir,
    }
}

impl TestOs {
    /// The template that installs this image, as an operator would write it (a
    /// `dragonfly.computer/v1` Template document, JSON): image2disk of the zstd image from
    /// `image_url` onto the first non-removable disk, checked against the raw image's sha256;
    /// writefile of
    /// `/etc/hostname` on the root partition from the machine's hostname (`{{hostname}}`,
    /// rendered by apid when it serves the action); kexec of the installed kernel and initrd
    /// with the image's own command line. No partition action: the image carries its table.
    pub fn template(&self, name: &str, image_url: &str) -> serde_json::Value {
        let disk = serde_json::json!({ "rule": {} });
        let root = serde_json::json!({ "disk": disk, "partition": ROOT_PARTITION });
        serde_json::json!({
            "apiVersion": dragonfly_core::resource::API_VERSION,
            "kind": dragonfly_core::resource::TEMPLATE,
            "metadata": { "name": name },
            "spec": { "actions": [
                {
                    "name": "image",
                    "type": "image2disk",
                    "url": image_url,
                    "disk": disk,
                    // image2disk checks the image it writes: the decompressed bytes.
                    "sha256": self.image_sha256,
                    "compression": "zstd",
                },
                {
                    "name": "hostname",
                    "type": "writefile",
                    "device": root,
                    "filesystem": "ext4",
                    "path": "/etc/hostname",
                    "contents": "{{hostname}}\n",
                    "mode": 0o644,
                },
                {
                    "name": "boot",
                    "type": "kexec",
                    "device": root,
                    "filesystem": "ext4",
                    "kernel": "/boot/vmlinuz",
                    "initrd": "/boot/initrd.img",
                    "cmdline": self.cmdline,
                },
            ]},
        })
    }

    /// Copies the raw image to `dest` (sparse) and puts `hostname` into its `/etc/hostname`
    /// with `debugfs -w` (e2fsprogs; no mount, no root needed): what writefile does on a
    /// machine, for a test that boots the image without installing it.
    ///
    /// # Panics
    /// When copying or debugfs fails.
    pub fn copy_with_hostname(&self, dest: &Path, hostname: &str) {
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(&self.image)
            .arg(dest)
            .status()
            .expect("running cp");
        assert!(
            status.success(),
            "cp {} {}: {status}",
            self.image.display(),
            dest.display()
        );
        let src = dest.with_extension("hostname");
        std::fs::write(&src, format!("{hostname}\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", src.display()));
        // `?offset=`: debugfs opens the filesystem inside the disk image.
        let fs = format!("{}?offset={}", dest.display(), self.root_offset);
        let debugfs = |request: &str| {
            let out = Command::new("debugfs")
                .args(["-w", "-R", request, &fs])
                .output()
                .expect("running debugfs (e2fsprogs)");
            assert!(out.status.success(), "debugfs {request:?} {fs}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        debugfs("rm /etc/hostname");
        debugfs(&format!("write {} /etc/hostname", src.display()));
        let _ = std::fs::remove_file(&src);
        // debugfs exits 0 even when a request failed: read the file back.
        let back = debugfs("cat /etc/hostname");
        assert_eq!(back.trim(), hostname, "/etc/hostname in {fs} after debugfs");
    }
}

pub(crate) fn open_lock(path: &std::path::Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// FNV-1a: a cache key that stays the same across Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_os_template_is_a_valid_template_document() {
        let os = TestOs {
            dir: "/t".into(),
            image: "/t/disk.img".into(),
            compressed: "/t/disk.img.zst".into(),
            manifest: "/t/manifest.json".into(),
            image_sha256: "a".repeat(64),
            compressed_sha256: "b".repeat(64),
            root_offset: 17 << 20,
            root_label: "dragonfly-root".into(),
            cmdline: "root=LABEL=dragonfly-root console=ttyS0,115200 panic=-1".into(),
            default_hostname: "testos".into(),
        };
        let doc: dragonfly_core::resource::Template =
            serde_json::from_value(os.template("test-os", "http://10.99.0.1:8080/os.zst")).unwrap();
        assert_eq!(doc.check_type(dragonfly_core::resource::TEMPLATE), Ok(()));
        assert_eq!(doc.spec.validate(), Ok(()));
        let names: Vec<_> = doc.spec.actions.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["image", "hostname", "boot"]);
        let json = serde_json::to_string(&doc).unwrap();
        assert!(
            json.contains(&"a".repeat(64)),
            "the raw image's digest: {json}"
        );
        assert!(json.contains("{{hostname}}"), "{json}");
        assert!(json.contains("panic=-1"), "{json}");
    }
}

const DEBIAN_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/images/debian-12.sh"
);

/// Dragonfly's Debian 12 cloud image (`packaging/images/debian-12.sh`): what the real-OS
/// end-to-end test installs.
#[derive(Debug, Clone)]
pub struct DebianImage {
    /// The zstd-compressed raw GPT image.
    pub compressed: PathBuf,
    /// sha256 of the raw (decompressed) image, lowercase hex: image2disk checks it.
    pub image_sha256: String,
    /// sha256 of the compressed file (its `.sha256` beside it): apid checks the library's copy.
    pub file_sha256: String,
    /// The command line its GRUB boots the kernel with; a kexec needs the same.
    pub cmdline: String,
    /// `/boot/vmlinuz` and `/boot/initrd.img` (links to the current kernel).
    pub kernel: String,
    pub initrd: String,
}

/// Builds the Debian image when it is missing or its recipe changed (cold: minutes and
/// ~250 MB of Debian packages; cached outside the repository, in `$DRAGONFLY_IMAGE_CACHE` or
/// `/var/cache/dragonfly/images`), else finds it (under a second). Needs root. Once per
/// process; the script itself takes a lock against other processes.
///
/// # Panics
/// When the build fails (its output is in the message) or its manifest is not what this
/// function reads.
pub fn debian_image() -> DebianImage {
    static BUILT: OnceLock<DebianImage> = OnceLock::new();
    BUILT.get_or_init(build_debian_image).clone()
}

fn build_debian_image() -> DebianImage {
    let run = Command::new("bash")
        .arg(DEBIAN_SCRIPT)
        .output()
        .expect("running bash packaging/images/debian-12.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "packaging/images/debian-12.sh failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    // "built FILE" or "cached FILE": the compressed image; the manifest lies beside it.
    let compressed = PathBuf::from(
        stdout
            .lines()
            .last()
            .and_then(|l| l.split_once(' ').map(|(_, f)| f.trim().to_owned()))
            .unwrap_or_else(|| panic!("debian-12.sh printed no file: {stdout}")),
    );
    let manifest = compressed.with_file_name("debian-12-amd64.json");
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&manifest).unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display())),
    )
    .unwrap_or_else(|e| panic!("parsing {}: {e}", manifest.display()));
    let text = |key: &str| {
        m[key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no string {key}", manifest.display()))
            .to_owned()
    };
    let path = |key: &str| {
        m[key]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no string {key}.path", manifest.display()))
            .to_owned()
    };
    let sums = compressed.with_extension("zst.sha256");
    let file_sha256 = std::fs::read_to_string(&sums)
        .unwrap_or_else(|e| panic!("reading {}: {e}", sums.display()))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    DebianImage {
        image_sha256: text("sha256"),
        file_sha256,
        cmdline: text("cmdline"),
        kernel: path("kernel"),
        initrd: path("initrd"),
        compressed,
    }
}

impl DebianImage {
    /// The Image document that adds it to the library (`spec.file` = `file`, a copy of
    /// [`DebianImage::compressed`] in the images directory), with the decompressed image's
    /// checksum, which the agent verifies, and the file's, which apid checks when it is added.
    pub fn image_doc(&self, name: &str, file: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": dragonfly_core::resource::API_VERSION,
            "kind": dragonfly_core::image::IMAGE,
            "metadata": { "name": name },
            "spec": { "file": file, "compression": "zstd", "sha256": self.image_sha256,
                      "fileSha256": self.file_sha256 },
        })
    }

    /// [`DebianImage::template`], naming the library's image `image` instead of a URL: its
    /// URL, checksum and compression come from the Image when a workflow is created.
    pub fn library_template(&self, name: &str, image: &str) -> serde_json::Value {
        let mut t = self.template(name, "http://unused.invalid/");
        let first = t["spec"]["actions"][0]
            .as_object_mut()
            .expect("the template's first action is image2disk");
        for key in ["url", "sha256", "compression"] {
            first.remove(key);
        }
        first.insert("image".into(), image.into());
        t
    }

    /// The template that installs it with cloud-init configured by Dragonfly: image2disk of
    /// the image from `image_url` (its sha256 checked), writefile of the NoCloud datasource
    /// (`{{metadataUrl}}`: the install's own URL, with its secret) into the installed root,
    /// kexec into the installed kernel, and the first boot: cloud-init sets the host name
    /// and installs the operator's SSH keys (`sshKeys`), then phones home.
    pub fn template(&self, name: &str, image_url: &str) -> serde_json::Value {
        let disk = serde_json::json!({ "rule": {} });
        let root = serde_json::json!({ "disk": disk, "partition": ROOT_PARTITION });
        serde_json::json!({
            "apiVersion": dragonfly_core::resource::API_VERSION,
            "kind": dragonfly_core::resource::TEMPLATE,
            "metadata": { "name": name },
            "spec": { "actions": [
                {
                    "name": "image",
                    "type": "image2disk",
                    "url": image_url,
                    "disk": disk,
                    "sha256": self.image_sha256,
                    "compression": "zstd",
                    "timeoutSeconds": 1800,
                },
                {
                    "name": "datasource",
                    "type": "writefile",
                    "device": root,
                    "filesystem": "ext4",
                    "path": "/etc/cloud/cloud.cfg.d/90-dragonfly.cfg",
                    // `network:` here, not only the datasource's network-config: Debian 12's
                    // cloud-init (22.4) does not fetch network-config from a seedfrom URL.
                    "contents": "datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    seedfrom: {{metadataUrl}}\nnetwork: {{networkConfig}}\n",
                    "mode": 0o644,
                },
                {
                    "name": "boot",
                    "type": "kexec",
                    "device": root,
                    "filesystem": "ext4",
                    "kernel": self.kernel,
                    "initrd": self.initrd,
                    "cmdline": self.cmdline,
                },
                {
                    "name": "first-boot",
                    "type": "cloudinit",
                    "timeoutSeconds": 1200,
                    "userData": "#cloud-config\nhostname: {{hostname}}\nfqdn: {{hostname}}.lab.test\nssh_authorized_keys:\n{{#each sshKeys}}\n  - {{this}}\n{{/each}}\n",
                },
            ]},
        })
    }
}
