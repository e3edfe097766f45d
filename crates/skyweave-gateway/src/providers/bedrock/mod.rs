//! AWS Bedrock Runtime: the Converse / ConverseStream wire protocol.
//!
//! - [`converse`]: pure translation between OpenAI chat completions and
//!   Converse (requests, responses, stream events, error classification).
//! - [`eventstream`]: an incremental decoder of the binary
//!   `application/vnd.amazon.eventstream` framing ConverseStream answers in.
//!
//! - [`provider`]: the [`crate::providers::Provider`] that signs with SigV4
//!   and wires the two to the network.

pub(crate) mod converse;
pub(crate) mod eventstream;
mod provider;

pub(crate) use provider::Bedrock;
