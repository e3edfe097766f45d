//! The serving plane: an OpenAI-compatible gateway that routes each request
//! to a model deployment on one of several clouds and fails over.
//!
//! - [`body`]: a client's JSON request, kept as sent, read without building a tree.
//! - [`providers`]: the [`providers::Provider`] trait and one file per provider.
//! - `upstream`: the HTTP/1.1 client the providers call their upstreams with.
//! - [`gateway`]: shared state (deployment health, capacity) and the failover loop.
//! - [`server`]: the HTTP API.
//! - [`metrics`]: Prometheus metrics.
//! - [`store`]: the database (SQLite or PostgreSQL) behind [`keystore`] and [`ledger`].

pub mod admin;
pub mod api_error;
pub mod body;
pub mod gateway;
pub mod keystore;
pub mod ledger;
pub mod metrics;
pub mod providers;
pub mod secrets;
pub mod server;
pub mod sse;
pub mod store;
mod upstream;

pub use gateway::Gateway;
