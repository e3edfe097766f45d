//! The data plane: replicate model weights and datasets between object
//! stores on different clouds, verified end to end.
//!
//! - [`store`]: the [`store::ObjectStore`] trait and one file per backend
//!   (S3, Azure Blob, Google Cloud Storage, local directories).

pub mod store;
