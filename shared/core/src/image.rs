//! The image library: OS images as resources (`kind: Image`), and how a template's
//! `image2disk` that names one becomes an action the agent can run.
//!
//! An image is either **remote** (a URL the agent downloads from, e.g. a distribution's
//! mirror) or **local**: a file in the images directory (`/var/lib/dragonfly/images`) that
//! ipxed serves. A local image is checksummed once, when it is added (apid does it in the
//! background: `status.phase` is `Pending`, then `Ready` or `Failed`), and ipxed refuses to
//! serve a file whose size or modification time no longer match what was checksummed — a file
//! replaced in place is not silently installed under the old name's checksum.
//!
//! Two checksums, for two different things: `spec.sha256`/`sha512` are the *decompressed*
//! image's, given by whoever built it (our builder writes it in its manifest), and the agent
//! verifies them after writing the disk; `spec.fileSha256`/`fileSha512` are the stored file's
//! (what a download page publishes beside the file), and apid refuses the image (`Failed`) when
//! the file it checksums does not match them — as it does when an uncompressed image's file
//! does not match `sha256`. `status.fileSha256`/`fileSha512` are what apid computed.
//!
//! Pure: resolution takes the image record and the configured URL; the files are read by
//! apid and ipxed.

use serde::{Deserialize, Serialize};

use crate::template::{Action, Compression, check_hex, check_image_name, check_url};

/// `kind: Image`.
pub const IMAGE: &str = "Image";

/// What an image is and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSpec {
    /// A remote image: where the agent downloads it (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A local image: a file name in the images directory (no `/`), served by ipxed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Only `raw`: a whole-disk image, written byte for byte.
    #[serde(default)]
    pub format: ImageFormat,
    /// How the file is compressed (`auto`: the agent detects it from magic bytes).
    #[serde(default)]
    pub compression: Compression,
    /// SHA-256 of the decompressed image, hex: the agent verifies the written disk against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// SHA-512 of the decompressed image, hex (at most one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
    /// A local image: SHA-256 of the file as stored (compressed), hex. When given, an image
    /// whose file does not match is refused when it is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sha256: Option<String>,
    /// A local image: SHA-512 of the file as stored, hex; like `fileSha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sha512: Option<String>,
    /// A local image anyone on the provisioning network may download. By default only an
    /// agent with a live boot token may (images often hold licensed software or site data).
    #[serde(default)]
    pub public: bool,
}

/// An image's on-disk format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Raw,
}

/// Where a local image is in being added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagePhase {
    /// Being checksummed (a local image just added); not yet usable.
    Pending,
    /// Usable.
    Ready,
    /// The file could not be read; `message` says why.
    Failed,
}

impl ImagePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePhase::Pending => "Pending",
            ImagePhase::Ready => "Ready",
            ImagePhase::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Pending" => Some(ImagePhase::Pending),
            "Ready" => Some(ImagePhase::Ready),
            "Failed" => Some(ImagePhase::Failed),
            _ => None,
        }
    }
}

/// What Dragonfly found of a local image's file when it was added (a remote image is `Ready`
/// at once and has none of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    pub phase: ImagePhase,
    /// The file's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The file's modification time when it was checksummed, in nanoseconds since 1970.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_ns: Option<i64>,
    /// SHA-256 of the file as stored (compressed), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sha256: Option<String>,
    /// SHA-512 of the file as stored, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sha512: Option<String>,
    /// Why the phase is `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why an image document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("metadata.name: {0:?} is not an image name (1–63 characters of a-z, 0-9, '-' and '.')")]
    Name(String),
    #[error("spec: give exactly one of url and file")]
    UrlOrFile,
    #[error("spec.url: {0:?} is not an http:// or https:// URL with a host")]
    Url(String),
    #[error(
        "spec.file: {0:?} is not a plain file name (letters, digits, '.', '_', '-'; no '/', not \
         starting with '.')"
    )]
    File(String),
    #[error("spec.public: only a local image (spec.file) is served by Dragonfly")]
    PublicRemote,
    #[error("spec.{0}: must be {1} hex digits")]
    Checksum(&'static str, usize),
    #[error("spec: give sha256 or sha512, not both")]
    TwoChecksums,
    #[error("spec.{0}: only a local image (spec.file) has a file Dragonfly checksums")]
    FileChecksumRemote(&'static str),
}

/// Whether `name` is a plain file name: ASCII letters, digits, `.`, `_` and `-`, not starting
/// with `.`, at most 255 bytes. It then has no directory part and no `..`.
pub fn check_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl ImageSpec {
    /// Checks a document before it is stored.
    pub fn validate(&self, name: &str) -> Result<(), ImageError> {
        if !check_image_name(name) {
            return Err(ImageError::Name(name.to_owned()));
        }
        match (&self.url, &self.file) {
            (Some(url), None) => {
                if !check_url(url) {
                    return Err(ImageError::Url(url.clone()));
                }
                if self.public {
                    return Err(ImageError::PublicRemote);
                }
            }
            (None, Some(file)) => {
                if !check_file_name(file) {
                    return Err(ImageError::File(file.clone()));
                }
            }
            _ => return Err(ImageError::UrlOrFile),
        }
        if self.sha256.is_some() && self.sha512.is_some() {
            return Err(ImageError::TwoChecksums);
        }
        if self.sha256.as_ref().is_some_and(|s| !check_hex(s, 64)) {
            return Err(ImageError::Checksum("sha256", 64));
        }
        if self.sha512.as_ref().is_some_and(|s| !check_hex(s, 128)) {
            return Err(ImageError::Checksum("sha512", 128));
        }
        for (field, value, len) in [
            ("fileSha256", &self.file_sha256, 64),
            ("fileSha512", &self.file_sha512, 128),
        ] {
            if let Some(v) = value {
                if self.file.is_none() {
                    return Err(ImageError::FileChecksumRemote(field));
                }
                if !check_hex(v, len) {
                    return Err(ImageError::Checksum(field, len));
                }
            }
        }
        Ok(())
    }

    /// Why the file apid checksummed (`status`, phase Ready) is not the one this spec expects,
    /// if it is not: a given `fileSha256`/`fileSha512`, or, for an uncompressed image, its
    /// `sha256`/`sha512`, differs from what was computed.
    pub fn file_mismatch(&self, status: &ImageStatus) -> Option<String> {
        let raw = self.compression == Compression::None;
        let expected = [
            ("fileSha256", self.file_sha256.as_ref(), &status.file_sha256),
            ("fileSha512", self.file_sha512.as_ref(), &status.file_sha512),
            (
                "sha256",
                self.sha256.as_ref().filter(|_| raw),
                &status.file_sha256,
            ),
            (
                "sha512",
                self.sha512.as_ref().filter(|_| raw),
                &status.file_sha512,
            ),
        ];
        expected.into_iter().find_map(|(field, want, got)| {
            let want = want?;
            let got = got.as_deref()?;
            (!want.eq_ignore_ascii_case(got)).then(|| {
                format!(
                    "the file's {} is {got}, not spec.{field} {want}",
                    field[field.len() - 6..].to_lowercase()
                )
            })
        })
    }
}

/// Why a template's `image: NAME` cannot become an action now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("image {0:?} is still being checksummed; try again when its phase is Ready")]
    Pending(String),
    #[error("image {0:?} failed when it was added: {1}")]
    Failed(String, String),
    #[error(
        "image {0:?} is a local file, and apid has no [apid] images_url (ipxed's /images URL as \
         agents reach it)"
    )]
    NoImagesUrl(String),
}

/// Turns an `image2disk` that names `name` (whose record is `spec`/`status`) into one the
/// agent runs: the image's URL (a remote image's own, or `images_url/NAME` for a local one),
/// its checksum unless the template gave one, its compression unless the template chose one,
/// and `authenticate` for a local image that is not public. Other actions are left as they are.
pub fn resolve(
    action: &mut Action,
    name: &str,
    spec: &ImageSpec,
    status: &ImageStatus,
    images_url: Option<&str>,
) -> Result<(), ResolveError> {
    let Action::Image2disk {
        url,
        image,
        authenticate,
        sha256,
        sha512,
        compression,
        ..
    } = action
    else {
        return Ok(());
    };
    match status.phase {
        ImagePhase::Ready => {}
        ImagePhase::Pending => return Err(ResolveError::Pending(name.to_owned())),
        ImagePhase::Failed => {
            return Err(ResolveError::Failed(
                name.to_owned(),
                status.message.clone().unwrap_or_default(),
            ));
        }
    }
    match (&spec.url, &spec.file) {
        (Some(remote), _) => remote.clone_into(url),
        (None, _) => {
            let base = images_url.ok_or_else(|| ResolveError::NoImagesUrl(name.to_owned()))?;
            *url = format!("{}/{name}", base.trim_end_matches('/'));
            *authenticate = !spec.public;
        }
    }
    if sha256.is_none() && sha512.is_none() {
        sha256.clone_from(&spec.sha256);
        sha512.clone_from(&spec.sha512);
    }
    if *compression == Compression::Auto {
        *compression = spec.compression;
    }
    *image = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::DiskSelector;

    fn local() -> ImageSpec {
        ImageSpec {
            url: None,
            file: Some("debian-12.img.zst".into()),
            format: ImageFormat::Raw,
            compression: Compression::Zstd,
            sha256: Some("a".repeat(64)),
            sha512: None,
            file_sha256: None,
            file_sha512: None,
            public: false,
        }
    }

    fn ready() -> ImageStatus {
        ImageStatus {
            phase: ImagePhase::Ready,
            size: Some(1),
            modified_ns: Some(1),
            file_sha256: Some("b".repeat(64)),
            file_sha512: None,
            message: None,
        }
    }

    fn named(name: &str) -> Action {
        Action::Image2disk {
            url: String::new(),
            image: Some(name.into()),
            authenticate: false,
            disk: DiskSelector::Path("/dev/vda".into()),
            sha256: None,
            sha512: None,
            compression: Compression::Auto,
        }
    }

    #[test]
    fn validation() {
        assert_eq!(local().validate("debian-12"), Ok(()));
        assert_eq!(
            local().validate("Debian"),
            Err(ImageError::Name("Debian".into()))
        );
        for bad in ["../x", "a/b", ".hidden", "", "a b"] {
            let s = ImageSpec {
                file: Some(bad.into()),
                ..local()
            };
            assert_eq!(s.validate("x"), Err(ImageError::File(bad.into())), "{bad}");
        }
        let both = ImageSpec {
            url: Some("http://a/b".into()),
            ..local()
        };
        assert_eq!(both.validate("x"), Err(ImageError::UrlOrFile));
        let remote = ImageSpec {
            url: Some("http://a/b".into()),
            file: None,
            public: true,
            ..local()
        };
        assert_eq!(remote.validate("x"), Err(ImageError::PublicRemote));
        let s = ImageSpec {
            sha512: Some("c".repeat(128)),
            ..local()
        };
        assert_eq!(s.validate("x"), Err(ImageError::TwoChecksums));
        let s = ImageSpec {
            sha256: Some("xyz".into()),
            ..local()
        };
        assert_eq!(s.validate("x"), Err(ImageError::Checksum("sha256", 64)));
    }

    #[test]
    fn a_file_that_is_not_the_one_expected_is_named() {
        let got = ready();
        assert_eq!(local().file_mismatch(&got), None);
        let s = ImageSpec {
            file_sha256: Some("B".repeat(64)),
            ..local()
        };
        assert_eq!(s.file_mismatch(&got), None, "hex in either case");
        let s = ImageSpec {
            file_sha256: Some("c".repeat(64)),
            ..local()
        };
        assert!(s.file_mismatch(&got).unwrap().contains("spec.fileSha256"));
        // Uncompressed: the image's own checksum is the file's.
        let s = ImageSpec {
            compression: Compression::None,
            ..local()
        };
        assert!(s.file_mismatch(&got).unwrap().contains("spec.sha256"));
        let remote = ImageSpec {
            url: Some("http://a/b".into()),
            file: None,
            file_sha256: Some("c".repeat(64)),
            ..local()
        };
        assert_eq!(
            remote.validate("x"),
            Err(ImageError::FileChecksumRemote("fileSha256"))
        );
    }

    #[test]
    fn a_local_image_resolves_to_ipxed_with_the_token() {
        let mut a = named("debian-12");
        resolve(
            &mut a,
            "debian-12",
            &local(),
            &ready(),
            Some("http://10.0.0.1:8080/images/"),
        )
        .unwrap();
        let Action::Image2disk {
            url,
            image,
            authenticate,
            sha256,
            compression,
            ..
        } = &a
        else {
            unreachable!()
        };
        assert_eq!(url, "http://10.0.0.1:8080/images/debian-12");
        assert_eq!(*image, None);
        assert!(*authenticate);
        assert_eq!(sha256.as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!(*compression, Compression::Zstd);
        // The resolved action is one a template could not have written (authenticate), but
        // it is otherwise a valid image2disk.
        let public = ImageSpec {
            public: true,
            ..local()
        };
        let mut a = named("debian-12");
        resolve(&mut a, "debian-12", &public, &ready(), Some("http://h/i")).unwrap();
        assert!(matches!(
            a,
            Action::Image2disk {
                authenticate: false,
                ..
            }
        ));
    }

    #[test]
    fn a_remote_image_keeps_its_url_and_sends_no_token() {
        let spec = ImageSpec {
            url: Some("https://cloud.debian.org/x.raw".into()),
            file: None,
            ..local()
        };
        let mut a = named("deb");
        resolve(&mut a, "deb", &spec, &ready(), None).unwrap();
        assert!(matches!(
            &a,
            Action::Image2disk { url, authenticate: false, .. } if url == "https://cloud.debian.org/x.raw"
        ));
    }

    #[test]
    fn the_template_wins_and_unready_images_are_refused() {
        let mut a = named("d");
        if let Action::Image2disk {
            sha512,
            compression,
            ..
        } = &mut a
        {
            *sha512 = Some("c".repeat(128));
            *compression = Compression::None;
        }
        resolve(&mut a, "d", &local(), &ready(), Some("http://h/i")).unwrap();
        assert!(matches!(
            &a,
            Action::Image2disk {
                sha256: None,
                sha512: Some(_),
                compression: Compression::None,
                ..
            }
        ));
        let pending = ImageStatus {
            phase: ImagePhase::Pending,
            ..ready()
        };
        assert_eq!(
            resolve(&mut named("d"), "d", &local(), &pending, Some("http://h/i")),
            Err(ResolveError::Pending("d".into()))
        );
        assert_eq!(
            resolve(&mut named("d"), "d", &local(), &ready(), None),
            Err(ResolveError::NoImagesUrl("d".into()))
        );
    }
}
