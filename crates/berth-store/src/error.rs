//! The storage engine's failures, named with the distribution spec's nouns. `berth-api` maps
//! each variant to an OCI error code and status in one place.

use berth_driver::DriverError;
use berth_oci::manifest::ManifestError;
use berth_oci::{Digest, RepoName};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("repository {0} is not known")]
    NameUnknown(RepoName),
    #[error("blob {0} is not known in this repository")]
    BlobUnknown(Digest),
    #[error("manifest {0} is not known in this repository")]
    ManifestUnknown(String),
    #[error("upload session {0} is not known in this repository")]
    UploadUnknown(String),
    #[error("digest {expected} does not match the content, which has digest {actual}")]
    DigestInvalid { expected: Digest, actual: Digest },
    #[error(transparent)]
    ManifestInvalid(#[from] ManifestError),
    #[error("manifest references {0}, which is not in the repository")]
    ManifestBlobUnknown(Digest),
    #[error("manifest is larger than the limit of {limit} bytes")]
    ManifestTooLarge { limit: u64 },
    /// A chunk that does not start where the upload ends (answered 416 with the current range).
    #[error("chunk starts at {start} but the upload holds {size} bytes")]
    ChunkOutOfOrder { start: u64, size: u64 },
    #[error("{0}")]
    SizeInvalid(String),
    /// A `Range` that does not overlap the blob (answered 416 with `Content-Range: bytes */size`).
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// Free space is below `[storage] min_free_space`: new data is refused.
    #[error("the registry's storage has {free} bytes free, below the {min} bytes kept free for cleanup ([storage] min_free_space); uploads are refused until space is freed")]
    InsufficientSpace { free: u64, min: u64 },
    /// A refused operation, with the reason for the client.
    #[error("{0}")]
    Unsupported(String),
    /// The request body ended in an error (usually the client went away).
    #[error("request body failed: {0}")]
    Body(std::io::Error),
    /// Stored bytes do not match their digest.
    #[error("stored content is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Meta(#[from] berth_meta::MetaError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
