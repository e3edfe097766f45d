//! Google Vertex AI: the Gemini `generateContent` / `streamGenerateContent`
//! wire protocol.
//!
//! - [`gemini`]: pure translation between OpenAI chat completions and Gemini
//!   (requests, responses, `?alt=sse` stream chunks, prompt blocks and error
//!   classification). No IO, HTTP or auth.
//! - [`provider`]: the [`crate::providers::Provider`] for both modes (Gemini,
//!   and Vertex's OpenAI-compatible endpoint), with OAuth bearer tokens.

pub(crate) mod gemini;
mod provider;

pub(crate) use provider::Vertex;
