//! The image library (migration `0008_images`): see [`dragonfly_core::image`].
//!
//! apid writes: an operator's document ([`Images::create`], [`Images::delete`]) and, for a
//! local image, the status its checksum task finds ([`Images::set_status`], only if the image
//! is still the one that was checksummed). apid and ipxed read ([`Images::get`]). A local
//! image starts `Pending`; apid finds the ones left `Pending` by a restart with
//! [`Images::pending`] and checksums them again, so an image is never stuck half-added.

use dragonfly_core::image::{ImagePhase, ImageSpec, ImageStatus};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::db::write;
use crate::error::Sql;
use crate::schema::Shared;
use crate::time::{from_column, to_column};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// The image library.
    pub fn images(&self) -> Images<'_> {
        Images { db: self }
    }
}

/// The `images` table: see [`Db::images`].
#[derive(Debug, Clone, Copy)]
pub struct Images<'a> {
    db: &'a Db<Shared>,
}

/// A stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub spec: ImageSpec,
    pub status: ImageStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub resource_version: i64,
}

const COLUMNS: &str = "name, spec, status, created_at_ms, updated_at_ms, resource_version";

type Raw = (String, String, String, i64, i64, i64);

fn raw(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn decode((name, spec, status, c, u, v): Raw) -> Result<Image, StoreError> {
    Ok(Image {
        name,
        spec: serde_json::from_str(&spec).map_err(|e| StoreError::corrupt("image spec", e))?,
        status: serde_json::from_str(&status)
            .map_err(|e| StoreError::corrupt("image status", e))?,
        created_at: from_column(c)?,
        updated_at: from_column(u)?,
        resource_version: v,
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::corrupt("json", e))
}

fn get_tx(c: &Connection, name: &str) -> Result<Option<Image>, StoreError> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM images WHERE name = ?1"))
        .sql()?
        .query_row([name], raw)
        .optional()
        .sql()?
        .map(decode)
        .transpose()
}

fn query(c: &Connection, sql: &str) -> Result<Vec<Image>, StoreError> {
    let mut st = c.prepare_cached(sql).sql()?;
    let rows = st.query_map([], raw).sql()?;
    rows.map(|r| r.sql().and_then(decode)).collect()
}

impl Images<'_> {
    /// Stores a new image; [`StoreError::AlreadyExists`] when the name is taken.
    pub async fn create(
        self,
        name: String,
        spec: ImageSpec,
        status: ImageStatus,
        now: Timestamp,
    ) -> Result<Image, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let n = tx
                        .execute(
                            "INSERT INTO images (name, spec, status, phase, created_at_ms, \
                             updated_at_ms, resource_version) VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1) \
                             ON CONFLICT (name) DO NOTHING",
                            params![
                                name,
                                json(&spec)?,
                                json(&status)?,
                                status.phase.as_str(),
                                to_column(now)
                            ],
                        )
                        .sql()?;
                    if n == 0 {
                        return Err(StoreError::AlreadyExists { what: "image" });
                    }
                    get_tx(tx, &name)?.ok_or(StoreError::NotFound { what: "image" })
                })
            })
            .await
    }

    /// One image by name.
    pub async fn get(self, name: &str) -> Result<Option<Image>, StoreError> {
        let name = name.to_owned();
        self.db.run(move |c| get_tx(c, &name)).await
    }

    /// Every image, by name.
    pub async fn list(self) -> Result<Vec<Image>, StoreError> {
        self.db
            .run(|c| query(c, &format!("SELECT {COLUMNS} FROM images ORDER BY name")))
            .await
    }

    /// The images still to be checksummed.
    pub async fn pending(self) -> Result<Vec<Image>, StoreError> {
        self.db
            .run(|c| {
                query(
                    c,
                    &format!("SELECT {COLUMNS} FROM images WHERE phase = 'Pending' ORDER BY name"),
                )
            })
            .await
    }

    /// Records what checksumming found, if the image is still version `expected` (the one
    /// checksummed: not deleted and added again meanwhile). `None` when it is not.
    pub async fn set_status(
        self,
        name: String,
        expected: i64,
        status: ImageStatus,
        now: Timestamp,
    ) -> Result<Option<Image>, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let n = tx
                        .execute(
                            "UPDATE images SET status = ?3, phase = ?4, updated_at_ms = ?5, \
                             resource_version = resource_version + 1 \
                             WHERE name = ?1 AND resource_version = ?2",
                            params![
                                name,
                                expected,
                                json(&status)?,
                                status.phase.as_str(),
                                to_column(now)
                            ],
                        )
                        .sql()?;
                    if n == 0 {
                        return Ok(None);
                    }
                    get_tx(tx, &name)
                })
            })
            .await
    }

    /// Deletes an image (if its version is still `expected`, when given), unless a template
    /// names it ([`StoreError::InUse`]). Workflows already created carry the image's URL and
    /// are not asked: an install under way from a deleted local image fails at its download.
    pub async fn delete(self, name: String, expected: Option<i64>) -> Result<Image, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let cur = get_tx(tx, &name)?.ok_or(StoreError::NotFound { what: "image" })?;
                    if let Some(e) = expected.filter(|e| *e != cur.resource_version) {
                        return Err(StoreError::Conflict {
                            expected: e,
                            current: cur.resource_version,
                        });
                    }
                    let user: Option<String> = tx
                        .query_row(
                            "SELECT t.name FROM templates t, json_each(t.spec, '$.actions') a \
                             WHERE json_extract(a.value, '$.image') = ?1 ORDER BY t.name LIMIT 1",
                            [&name],
                            |r| r.get(0),
                        )
                        .optional()
                        .sql()?;
                    if let Some(by) = user {
                        return Err(StoreError::InUse {
                            what: "image",
                            by: format!("template {by}"),
                        });
                    }
                    tx.execute("DELETE FROM images WHERE name = ?1", [&name])
                        .sql()?;
                    Ok(cur)
                })
            })
            .await
    }
}

/// Opens a local image's file, `dir/file`, the one way apid (to checksum it) and ipxed (to
/// serve it) both do: never through a symlink (`O_NOFOLLOW`: refused by the kernel at open
/// time, no check-then-open race), never blocking on a FIFO left there, and only a regular
/// file (else `NotFound`). `file` is a spec's, checked as a plain name when it was added.
pub fn open_file(
    dir: &std::path::Path,
    file: &str,
) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(dir.join(file))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    Ok((f, meta))
}

/// A file's modification time in nanoseconds since 1970: what [`ImageStatus::modified_ns`]
/// records and ipxed compares.
pub fn modified_ns(meta: &std::fs::Metadata) -> Option<i64> {
    use std::os::unix::fs::MetadataExt as _;
    meta.mtime()
        .checked_mul(1_000_000_000)?
        .checked_add(meta.mtime_nsec())
}

/// What apid records of a local image's file once it has checked it (phase Ready), without
/// the digests: for tests and benchmarks that put an image in a store without apid.
pub fn ready_status(meta: &std::fs::Metadata) -> ImageStatus {
    ImageStatus {
        phase: ImagePhase::Ready,
        size: Some(meta.len()),
        modified_ns: modified_ns(meta),
        file_sha256: None,
        file_sha512: None,
        message: None,
    }
}

/// A local image's spec: `file`, compression detected by the agent, no checksum.
pub fn local_spec(file: &str, public: bool) -> ImageSpec {
    ImageSpec {
        url: None,
        file: Some(file.to_owned()),
        format: dragonfly_core::image::ImageFormat::Raw,
        compression: dragonfly_core::template::Compression::Auto,
        sha256: None,
        sha512: None,
        file_sha256: None,
        file_sha512: None,
        public,
    }
}

/// The status of a newly added image: a remote one is usable at once, a local one waits
/// for its checksum.
pub fn initial_status(spec: &ImageSpec) -> ImageStatus {
    ImageStatus {
        phase: if spec.file.is_some() {
            ImagePhase::Pending
        } else {
            ImagePhase::Ready
        },
        size: None,
        modified_ns: None,
        file_sha256: None,
        file_sha512: None,
        message: None,
    }
}

#[cfg(test)]
mod tests {
    use dragonfly_core::image::ImageFormat;
    use dragonfly_core::template::{Compression, TemplateSpec};

    use super::*;
    use crate::testing::TestDb;

    fn local(file: &str) -> ImageSpec {
        ImageSpec {
            url: None,
            file: Some(file.into()),
            format: ImageFormat::Raw,
            compression: Compression::Zstd,
            sha256: None,
            sha512: None,
            file_sha256: None,
            file_sha512: None,
            public: false,
        }
    }

    #[tokio::test]
    async fn an_image_is_added_checksummed_and_deleted() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let images = t.db.images();
        let spec = local("a.img.zst");
        let img = images
            .create("a".into(), spec.clone(), initial_status(&spec), now)
            .await
            .unwrap();
        assert_eq!(img.status.phase, ImagePhase::Pending);
        assert!(matches!(
            images
                .create("a".into(), spec.clone(), initial_status(&spec), now)
                .await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(images.pending().await.unwrap().len(), 1);
        let ready = ImageStatus {
            phase: ImagePhase::Ready,
            size: Some(10),
            modified_ns: Some(5),
            file_sha256: Some("0".repeat(64)),
            ..initial_status(&spec)
        };
        // A stale version (the image was replaced meanwhile) is not overwritten.
        assert_eq!(
            images
                .set_status("a".into(), 7, ready.clone(), now)
                .await
                .unwrap(),
            None
        );
        let img = images
            .set_status("a".into(), img.resource_version, ready.clone(), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(img.status, ready);
        assert!(images.pending().await.unwrap().is_empty());
        assert_eq!(images.list().await.unwrap().len(), 1);

        // A template naming it keeps it.
        let tpl: TemplateSpec = serde_yaml_ng::from_str(
            "actions:\n- name: image\n  type: image2disk\n  image: a\n  disk: /dev/vda\n",
        )
        .unwrap();
        t.db.templates()
            .create("uses-a".into(), tpl, now)
            .await
            .unwrap();
        assert!(matches!(
            images.delete("a".into(), None).await,
            Err(StoreError::InUse { by, .. }) if by == "template uses-a"
        ));
        t.db.templates()
            .delete("uses-a".into(), None)
            .await
            .unwrap();
        assert!(matches!(
            images.delete("a".into(), Some(1)).await,
            Err(StoreError::Conflict { .. })
        ));
        images.delete("a".into(), None).await.unwrap();
        assert_eq!(images.get("a").await.unwrap(), None);
    }
}
