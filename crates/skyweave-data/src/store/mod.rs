//! Object stores: one trait, one file per backend.
//!
//! Keys are relative to the location's prefix and use `/` between path
//! segments, whatever the backend (a local directory maps them to its
//! platform's paths). Every backend speaks its cloud's published wire
//! protocol over HTTP (`reqwest`); none hides behind an SDK.
//!
//! Large objects are uploaded in parts: [`ObjectStore::start_upload`],
//! [`ObjectStore::put_part`] for each part, [`ObjectStore::finish_upload`].
//! An upload's id is persisted by the caller, so that an interrupted copy
//! can ask which parts the store already holds
//! ([`ObjectStore::uploaded_parts`]) and send only the others.

pub mod azure;
pub mod gcs;
pub mod local;
pub mod s3;

use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// One object (or file) as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Relative to the location's prefix, `/`-separated, never empty.
    pub key: String,
    pub size: u64,
    /// The store's tag for this version of the object: its ETag (S3,
    /// Azure), generation (GCS), or modification time and size (local). It
    /// changes whenever the content may have; it says nothing about the
    /// content itself (a multipart ETag is no content hash).
    pub version: String,
}

/// Turns a store's "precondition failed" (412) into [`StoreError::Changed`].
pub(crate) fn changed_on_412(error: StoreError) -> StoreError {
    match error {
        StoreError::Refused { at, status: 412, .. } => StoreError::Changed { at },
        other => other,
    }
}

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// One part of a multipart upload, to send.
#[derive(Debug, Clone)]
pub struct Part {
    /// 0-based, in file order.
    pub index: u32,
    /// Where the part starts in the object.
    pub offset: u64,
    pub data: Bytes,
    /// MD5 of `data`, for the store to check what it received.
    pub md5: [u8; 16],
    /// The object's final part.
    pub last: bool,
}

/// One part of a multipart upload, once the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDone {
    /// 0-based, in file order.
    pub index: u32,
    pub size: u64,
    /// What the store returned for the part (S3 ETag, Azure block id, ...),
    /// needed to finish the upload.
    pub tag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object (or upload) does not exist.
    #[error("{at}: not found")]
    NotFound { at: String },
    /// The store answered with an error: its status, code and message.
    #[error("{at}: {status} {code}: {message}")]
    Refused { at: String, status: u16, code: String, message: String },
    /// No answer, a reset, a timeout: worth retrying.
    #[error("{at}: {message}")]
    Transport { at: String, message: String },
    /// The store answered something its protocol does not allow.
    #[error("{at}: unexpected answer: {message}")]
    Protocol { at: String, message: String },
    /// What arrived differs from what was sent or expected.
    #[error("{at}: integrity check failed: {message}")]
    Integrity { at: String, message: String },
    #[error("{at}: {message}")]
    Io { at: String, message: String },
    /// The object is no longer at the version it was listed with.
    #[error("{at}: changed since it was listed; run the sync again")]
    Changed { at: String },
    /// Credentials are missing or were refused.
    #[error("{at}: {message}")]
    Credentials { at: String, message: String },
    /// The store holds less of an upload than was sent (a request that
    /// broke midway): the parts from `held` on go again.
    #[error(
        "{at}: the store holds the first {held} bytes of the upload, not the {offset} sent; the \
         file is tried again from there"
    )]
    Behind { at: String, held: u64, offset: u64 },
}

impl StoreError {
    /// Whether trying the same request again may succeed: transport
    /// failures, throttling (429, 503 SlowDown) and server errors.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Transport { .. } => true,
            StoreError::Refused { status, .. } => {
                *status == 429 || *status == 408 || *status >= 500
            }
            _ => false,
        }
    }

    /// A request that failed on the way (connect, send, read), with the
    /// causes reqwest gives but never the URL: it may carry a SAS token or
    /// a GCS session URI, both capabilities.
    pub(crate) fn transport(at: &str, error: reqwest::Error) -> StoreError {
        let error = error.without_url();
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        StoreError::Transport { at: at.to_string(), message }
    }

    /// Whether trying the whole file again may succeed: a passing failure,
    /// or an upload that resumes from what the store holds.
    pub fn retries_file(&self) -> bool {
        self.is_transient() || matches!(self, StoreError::Behind { .. })
    }
}

#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// The location, for messages and plans: `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Whether parts of one upload may be sent concurrently and in any
    /// order (S3, Azure, local), or must be sent one after the other in
    /// file order (a GCS resumable upload).
    fn parallel_parts(&self) -> bool {
        true
    }

    /// Creates the bucket or container the location is in, if missing (a
    /// sync to a new destination).
    async fn create_container(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every object under the prefix, keys relative to it, any order.
    async fn list(&self) -> Result<Vec<ObjectMeta>, StoreError>;

    /// One object's listing, `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;

    /// The object's bytes, or a range of them.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError>;

    /// The whole object, only while it is still at `version` (as listed):
    /// else [`StoreError::Changed`], so that what is read is the version a
    /// manifest records.
    async fn get_if(&self, key: &str, version: &str) -> Result<ByteStream, StoreError>;

    /// Writes a whole object in one request; `md5` is the MD5 of `data`,
    /// sent for the store to check what it received. Returns its version.
    async fn put(&self, key: &str, data: Bytes, md5: [u8; 16]) -> Result<String, StoreError>;

    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Starts a multipart upload of `size` bytes in parts of `part_size`
    /// (the last may be shorter); returns its id.
    async fn start_upload(
        &self,
        key: &str,
        size: u64,
        part_size: u64,
    ) -> Result<String, StoreError>;

    /// Sends one part of the upload.
    async fn put_part(&self, key: &str, upload: &str, part: Part) -> Result<PartDone, StoreError>;

    /// The parts of an unfinished upload the store already holds (for
    /// resuming), `None` if the upload no longer exists (finished,
    /// aborted, expired).
    async fn uploaded_parts(
        &self,
        key: &str,
        upload: &str,
    ) -> Result<Option<Vec<PartDone>>, StoreError>;

    /// Assembles the parts into the object; returns its version.
    /// A part [`ObjectStore::uploaded_parts`] reported, completed from the
    /// bytes the caller re-read for it (which match what was sent): for a
    /// store that needs something of each part at the finish that its
    /// listing does not give back.
    fn held_part(&self, _upload: &str, part: PartDone, _data: &[u8]) -> PartDone {
        part
    }

    async fn finish_upload(
        &self,
        key: &str,
        upload: &str,
        parts: &[PartDone],
        size: u64,
    ) -> Result<String, StoreError>;

    /// Discards an unfinished upload and its parts.
    async fn abort_upload(&self, key: &str, upload: &str) -> Result<(), StoreError>;
}
