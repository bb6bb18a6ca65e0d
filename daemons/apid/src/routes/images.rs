//! `/apis/dragonfly.computer/v1/images`: the image library (see [`dragonfly_core::image`]).
//!
//! Adding a local image names a file already in `[apid] images_dir` (copied there by the
//! operator: `install -m 0644 debian-12.img.zst /var/lib/dragonfly/images/`); apid answers at
//! once with the image `Pending` and checksums the file in the background, one image at a
//! time, so adding a 10 GiB image neither holds an HTTP request open for a minute nor takes
//! every core. What is left `Pending` by a restart is checksummed again at the next start
//! ([`resume`]): the store says what is unfinished.
//!
//! The file is opened like ipxed opens it: a plain name in the directory, never through a
//! symlink, a regular file only. Its size and modification time are recorded with the digests,
//! and ipxed refuses to serve a file that no longer matches them.

use std::io::Read as _;
use std::path::Path;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use dragonfly_core::image::{IMAGE, ImagePhase, ImageSpec, ImageStatus};
use dragonfly_core::resource::{self, ObjectMeta, Resource};
use dragonfly_runtime::cli::Chain;
use dragonfly_store::images::{Image, initial_status, modified_ns};
use serde::Serialize;
use sha2::{Digest as _, Sha256, Sha512};

use crate::AppState;
use crate::error::{ApiError, ApiPath, ErrorBody};
use crate::routes::resources::{ListMeta, render};
use crate::routes::workflows::parse_doc;

/// An Image document.
pub type ImageDoc = Resource<ImageSpec, ImageStatus>;

fn image_doc(i: &Image) -> ImageDoc {
    Resource::new(
        IMAGE,
        ObjectMeta {
            name: i.name.clone(),
            uid: None,
            labels: Default::default(),
            annotations: Default::default(),
            creation_timestamp: Some(i.created_at),
            resource_version: Some(i.resource_version.to_string()),
        },
        i.spec.clone(),
        Some(i.status.clone()),
    )
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageList {
    api_version: &'static str,
    kind: &'static str,
    metadata: ListMeta,
    items: Vec<ImageDoc>,
}

/// Lists images (JSON, or YAML with `Accept: application/yaml`).
#[utoipa::path(get, path = "/apis/dragonfly.computer/v1/images", tag = "resources",
    responses((status = 200, description = "An ImageList", content(
        (Object = "application/json"), (String = "application/yaml"))),
        (status = 401, body = ErrorBody)))]
pub async fn list_images(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let items = state.db.images().list().await?;
    render(
        &headers,
        &ImageList {
            api_version: resource::API_VERSION,
            kind: "ImageList",
            metadata: ListMeta { continue_: None },
            items: items.iter().map(image_doc).collect(),
        },
    )
}

/// Adds an image from an `Image` document (JSON, or YAML by Content-Type). A local image
/// (`spec.file`) must be a regular file in `[apid] images_dir`; it is `Pending` until apid has
/// checksummed it (`status.phase` then `Ready`, or `Failed` with a message).
#[utoipa::path(post, path = "/apis/dragonfly.computer/v1/images", tag = "resources",
    request_body(content = Object, description = "An Image document", content_type = "application/json"),
    responses((status = 201, description = "The stored Image"),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let doc: ImageDoc = parse_doc(&headers, &body)?;
    doc.check_type(IMAGE)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    doc.spec
        .validate(&doc.metadata.name)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if let Some(file) = &doc.spec.file {
        // Say now, in the answer, what would only fail later in the background.
        let (dir, name) = (state.config.images_dir.clone(), file.clone());
        let opened = tokio::task::spawn_blocking(move || open_image(&dir, &name).map(|_| ()))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        if let Err(e) = opened {
            return Err(ApiError::Unprocessable(format!(
                "spec.file: {file:?} in {}: {e}",
                state.config.images_dir.display()
            )));
        }
    }
    let status = initial_status(&doc.spec);
    let image = state
        .db
        .images()
        .create(doc.metadata.name, doc.spec, status, jiff::Timestamp::now())
        .await?;
    tracing::info!(image = %image.name, phase = image.status.phase.as_str(), "image added");
    if image.status.phase == ImagePhase::Pending {
        tokio::spawn(checksum(state.clone(), image.clone()));
    }
    let mut r = render(&headers, &image_doc(&image))?;
    *r.status_mut() = StatusCode::CREATED;
    Ok(r)
}

/// Gets one image.
#[utoipa::path(get, path = "/apis/dragonfly.computer/v1/images/{name}", tag = "resources",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 200, description = "An Image document", content(
        (Object = "application/json"), (String = "application/yaml"))),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let image = state
        .db
        .images()
        .get(&name)
        .await?
        .ok_or(ApiError::NotFound("image"))?;
    render(&headers, &image_doc(&image))
}

/// Removes an image from the library (not its file); 409 while a template names it.
#[utoipa::path(delete, path = "/apis/dragonfly.computer/v1/images/{name}", tag = "resources",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete_image(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let image = state.db.images().delete(name, None).await?;
    tracing::info!(image = %image.name, "image removed from the library");
    Ok(StatusCode::NO_CONTENT)
}

/// Checksums every image a previous run left `Pending`. Run once at start.
pub async fn resume(state: AppState) {
    match state.db.images().pending().await {
        Ok(pending) => {
            for image in pending {
                checksum(state.clone(), image).await;
            }
        }
        Err(e) => {
            tracing::error!(error = %Chain(&e), "cannot list the images left to checksum");
        }
    }
}

/// Checksums a local image's file and records the result, one image at a time.
async fn checksum(state: AppState, image: Image) {
    let Some(file) = image.spec.file.clone() else {
        return;
    };
    let _turn = state.image_checks.acquire().await;
    let (dir, name) = (state.config.images_dir.clone(), file.clone());
    let started = std::time::Instant::now();
    let digested = tokio::task::spawn_blocking(move || digest(&dir, &name)).await;
    let status = match digested {
        Ok(Ok(status)) if let Some(why) = image.spec.file_mismatch(&status) => {
            tracing::warn!(image = %image.name, file = %file, reason = %why, "image refused: not the file expected");
            ImageStatus {
                phase: ImagePhase::Failed,
                message: Some(format!("refused: {why}")),
                ..status
            }
        }
        Ok(Ok(status)) => {
            tracing::info!(
                image = %image.name,
                file = %file,
                size = status.size,
                seconds = started.elapsed().as_secs_f64(),
                "image checksummed"
            );
            status
        }
        Ok(Err(e)) => {
            tracing::warn!(image = %image.name, file = %file, error = %Chain(&e), "image cannot be checksummed");
            failed(format!("{file:?}: {e}"))
        }
        Err(e) => {
            tracing::error!(image = %image.name, error = %Chain(&e), "image checksum task failed");
            failed(format!("checksumming failed: {e}"))
        }
    };
    match state
        .db
        .images()
        .set_status(
            image.name.clone(),
            image.resource_version,
            status,
            jiff::Timestamp::now(),
        )
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::info!(image = %image.name, "image changed while checksummed; result dropped")
        }
        Err(e) => {
            tracing::error!(image = %image.name, error = %Chain(&e), "cannot record an image's checksum")
        }
    }
}

fn failed(message: String) -> ImageStatus {
    ImageStatus {
        phase: ImagePhase::Failed,
        size: None,
        modified_ns: None,
        file_sha256: None,
        file_sha512: None,
        message: Some(message),
    }
}

/// Why a local image's file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no such file")]
    Missing,
    #[error("is a symbolic link (the images directory holds regular files only)")]
    Symlink,
    #[error("is not a regular file")]
    NotRegular,
    #[error("not readable by apid's user")]
    Permission,
    #[error("changed while it was being checksummed")]
    Changed,
    #[error(transparent)]
    Io(std::io::Error),
}

/// Opens a file of the images directory as ipxed does ([`dragonfly_store::images::open_file`]),
/// saying why it cannot be used.
pub fn open_image(dir: &Path, file: &str) -> Result<(std::fs::File, std::fs::Metadata), FileError> {
    dragonfly_store::images::open_file(dir, file).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => FileError::Missing,
        Some(libc::ELOOP) => FileError::Symlink,
        Some(libc::EACCES | libc::EPERM) => FileError::Permission,
        None if e.kind() == std::io::ErrorKind::NotFound => FileError::NotRegular,
        _ => FileError::Io(e),
    })
}

/// SHA-256 and SHA-512 of a file in one pass, with its size and modification time (the same
/// before and after the pass, or [`FileError::Changed`]).
pub fn digest(dir: &Path, file: &str) -> Result<ImageStatus, FileError> {
    let (mut file, before) = open_image(dir, file)?;
    let mut s256 = Sha256::new();
    let mut s512 = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FileError::Io(e)),
        };
        s256.update(&buf[..n]);
        s512.update(&buf[..n]);
        total += n as u64;
    }
    let after = file.metadata().map_err(FileError::Io)?;
    if after.len() != before.len()
        || total != before.len()
        || modified_ns(&after) != modified_ns(&before)
    {
        return Err(FileError::Changed);
    }
    Ok(ImageStatus {
        phase: ImagePhase::Ready,
        size: Some(total),
        modified_ns: modified_ns(&before),
        file_sha256: Some(hex(&s256.finalize())),
        file_sha512: Some(hex(&s512.finalize())),
        message: None,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_tools() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.img");
        std::fs::write(&path, b"abc").unwrap();
        let s = digest(dir.path(), "a.img").unwrap();
        assert_eq!(s.size, Some(3));
        assert_eq!(
            s.file_sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert!(s.file_sha512.unwrap().starts_with("ddaf35a193617aba"));
        std::os::unix::fs::symlink(&path, dir.path().join("link")).unwrap();
        assert!(matches!(
            digest(dir.path(), "link"),
            Err(FileError::Symlink)
        ));
        assert!(matches!(
            digest(dir.path(), "none"),
            Err(FileError::Missing)
        ));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(matches!(
            digest(dir.path(), "sub"),
            Err(FileError::NotRegular)
        ));
    }
}
