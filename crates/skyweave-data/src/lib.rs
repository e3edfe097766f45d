//! The data plane: replicate model weights and datasets between object
//! stores on different clouds, verified end to end.
//!
//! - [`store`]: the [`store::ObjectStore`] trait and one file per backend
//!   (S3, Azure Blob, Google Cloud Storage, local directories).
//! - [`manifest`] and [`plan`]: pure: what the destination is known to hold,
//!   and what a sync will do and cost.
//! - [`location`]: `s3://`, `az://`, `gs://`, `NAME:path` and directories.
//! - [`engine`]: carrying a plan out (streamed, hashed, resumable) and
//!   `check`.

pub mod engine;
pub mod location;
pub mod manifest;
pub mod plan;
pub mod store;
