//! Every storage path berth uses, computed in this one module. Nothing else builds a path.
//!
//! ```text
//! <root>/
//! ├── _berth/
//! │   ├── format                  on-disk format stamp ("berth-layout 1")
//! │   ├── lock                    held (flock) by the one process that owns the root
//! │   ├── ready                   written and removed by the readiness probe (`/readyz`)
//! │   └── meta.redb               the metadata store (bookkeeping; rebuilt from the layouts)
//! ├── _cas/<alg>/<hex>            the content-addressed store: every blob once
//! ├── _uploads/<uuid>/
//! │   ├── info                    JSON: repository, algorithm, creation time
//! │   └── data                    the bytes received so far
//! ├── .tmp/                       the driver's temporary files (atomic writes)
//! └── <repository name>/          one OCI Image Layout per repository (image-layout.md)
//!     ├── oci-layout              {"imageLayoutVersion":"1.0.0"}
//!     ├── index.json              every manifest; a tag is org.opencontainers.image.ref.name
//!     └── blobs/<alg>/<hex>       blobs and manifests: hard links to `_cas` (copies
//!                                 when `[storage] dedupe = false`)
//! ```
//!
//! Repository names start with `[a-z0-9]`, so they never collide with `_berth`, `_uploads` or
//! `.tmp`. A nested repository (`a/b`) lives inside its parent's directory (`a/`); the names
//! `blobs`, `index.json` and `oci-layout` are refused as nested components (see
//! `berth_oci::RepoName`), so a nested repository never lands on a parent's layout files.

use berth_driver::{DriverError, DriverPath};
use berth_oci::{Digest, RepoName};

/// Directory of berth's own bookkeeping files.
pub const META_DIR: &str = "_berth";
/// The content-addressed store.
pub const CAS_DIR: &str = "_cas";
/// Directory of upload sessions.
pub const UPLOADS_DIR: &str = "_uploads";
/// The on-disk format stamp written into `_berth/format`.
pub const FORMAT_STAMP: &str = "berth-layout 1\n";
/// Names inside a repository directory that belong to its layout.
pub const LAYOUT_FILES: [&str; 3] = ["blobs", "index.json", "oci-layout"];

fn path(s: &str) -> Result<DriverPath, DriverError> {
    DriverPath::new(s)
}

pub fn format_file() -> Result<DriverPath, DriverError> {
    path(&format!("{META_DIR}/format"))
}

/// The file the readiness probe writes and removes to prove the storage accepts writes.
pub fn ready_probe() -> Result<DriverPath, DriverError> {
    path(&format!("{META_DIR}/ready"))
}

pub fn uploads_dir() -> Result<DriverPath, DriverError> {
    path(UPLOADS_DIR)
}

pub fn upload_dir(id: &str) -> Result<DriverPath, DriverError> {
    path(&format!("{UPLOADS_DIR}/{id}"))
}

pub fn upload_data(id: &str) -> Result<DriverPath, DriverError> {
    path(&format!("{UPLOADS_DIR}/{id}/data"))
}

pub fn upload_info(id: &str) -> Result<DriverPath, DriverError> {
    path(&format!("{UPLOADS_DIR}/{id}/info"))
}

/// A blob in the content-addressed store.
pub fn cas_blob(digest: &Digest) -> Result<DriverPath, DriverError> {
    path(&format!(
        "{CAS_DIR}/{}/{}",
        digest.algorithm().as_str(),
        digest.hex()
    ))
}

/// A repository's blob directory for one algorithm.
pub fn blob_dir(repo: &RepoName, alg: berth_oci::Algorithm) -> Result<DriverPath, DriverError> {
    path(&format!("{repo}/blobs/{}", alg.as_str()))
}

pub fn repo_dir(repo: &RepoName) -> Result<DriverPath, DriverError> {
    path(repo.as_str())
}

pub fn oci_layout(repo: &RepoName) -> Result<DriverPath, DriverError> {
    path(&format!("{repo}/oci-layout"))
}

pub fn index_json(repo: &RepoName) -> Result<DriverPath, DriverError> {
    path(&format!("{repo}/index.json"))
}

/// `<repo>/_index.journal`: entries added since `index.json` was last written, one JSON
/// descriptor per line (see `repo.rs`). A leading `_` keeps it out of every repository name.
pub fn index_journal(repo: &RepoName) -> Result<DriverPath, DriverError> {
    path(&format!("{repo}/_index.journal"))
}

pub fn blob(repo: &RepoName, digest: &Digest) -> Result<DriverPath, DriverError> {
    path(&format!(
        "{repo}/blobs/{}/{}",
        digest.algorithm().as_str(),
        digest.hex()
    ))
}

/// The lock file, relative to the root: held (flock) by the one process that owns the root.
/// It is a filesystem path, not a driver path: root ownership is a property of a local root.
pub const LOCK_FILE: &str = "_berth/lock";

/// The metadata store's file, relative to the root (a filesystem path, like [`LOCK_FILE`]).
pub const META_FILE: &str = "_berth/meta.redb";
