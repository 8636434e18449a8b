//! OCI vocabulary shared by every berth crate: digests and streaming hashers, repository names,
//! tags and references, media types, manifest parsing and validation, and the table of error
//! codes of the OCI Distribution Specification. This crate does no I/O.

pub mod annotations;
mod code;
mod digest;
pub mod manifest;
pub mod media;
mod name;

pub use annotations::Annotations;
pub use code::ErrorCode;
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use name::{NameError, Reference, RepoName, Tag};
