//! The pure core of skyweave.
//!
//! Everything here is deterministic given its inputs: time is passed in as an
//! `Instant`, randomness as an `Rng`. No sockets, no files beyond the text the
//! caller hands to [`config::parse_estate`], no async runtime. The gateway
//! crate wraps these types in the IO it needs.

pub mod calendar;
pub mod capacity;
pub mod compute;
pub mod config;
pub mod egress;
pub mod estate;
pub mod failure;
pub mod health;
pub mod keys;
pub mod region;
pub mod routing;
pub mod tenant;
