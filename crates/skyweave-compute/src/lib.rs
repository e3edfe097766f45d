//! The compute plane: where should a training or batch job run, at what
//! cost, and where does it go if that capacity is missing?
//!
//! - [`catalog`]: accelerator offerings from SkyPilot catalog v8 CSV files
//!   (a real extract ships with the crate) and the estate's private capacity.
//! - [`job`]: job specifications (TOML).
//! - [`plan`]: candidates, the exact single-job ranking and the batch MILP.
//!
//! Like `skyweave-core`, this crate does no IO: callers hand it text.

pub mod catalog;
pub mod job;
pub mod plan;
