//! Carrying out a plan: copies streamed through memory (never staged on
//! disk), hashed as they stream, checked by the destination part by part,
//! resumable, and recorded in the destination's manifest; and `check`,
//! which reads both sides.
//!
//! Memory: every buffer holds at most one part (`part_size`) and a
//! semaphore hands out `parallelism` buffers in all, so the bytes in
//! flight never exceed `part_size x parallelism` (plus the HTTP clients'
//! own buffers). Files no larger than a part go in one request; larger ones
//! are read once, in order (one BLAKE3 over the whole file), and their parts
//! uploaded concurrently where the store allows it.
//!
//! Resuming: a multipart upload's id, part size and the parts sent (with
//! their MD5s) are written to a state file under `state_dir` after every
//! part. The next run that copies the same file from the same source
//! version asks the store which parts it holds, re-reads those from the
//! source only to hash them (checking each against the MD5 recorded when
//! it was sent), and sends only the others. A state file whose source has
//! changed, or whose upload is gone, is discarded and its upload aborted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use md5::Digest as _;
use serde::{Deserialize, Serialize};
use skyweave_core::egress::EgressPrices;
use tokio::sync::Semaphore;

use crate::manifest::{hex, Entry, Manifest, MANIFEST_KEY};
use crate::plan::{plan, Action, Place, Plan, PlanError};
use crate::store::{ObjectMeta, ObjectStore, Part, PartDone, StoreError};

/// A location opened for use.
#[derive(Clone)]
pub struct Endpoint {
    pub place: Place,
    pub store: Arc<dyn ObjectStore>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes per part of a multipart upload (and the largest file sent in
    /// one request).
    pub part_size: u64,
    /// Buffers in flight (and files copied at once).
    pub parallelism: usize,
    /// Re-read every copied file from the destination and compare hashes.
    pub verify_remote: bool,
    /// Where unfinished uploads are remembered.
    pub state_dir: PathBuf,
}

impl Options {
    /// The memory the transfer's buffers may hold.
    pub fn memory_bound(&self) -> u64 {
        self.part_size * self.parallelism as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// Counters a progress display reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    /// Bytes read from sources (or, for `check`, from both sides).
    pub bytes_done: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub copied_files: u64,
    pub copied_bytes: u64,
    /// Bytes not sent again thanks to resumed uploads.
    pub resumed_bytes: u64,
    pub skipped_files: u64,
    pub deleted_files: u64,
    pub verified_files: u64,
    pub failures: Vec<Failure>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub path: String,
    pub error: String,
}

/// Reads the destination's manifest (an empty one if it has none).
pub async fn load_manifest(dest: &dyn ObjectStore) -> Result<Manifest, EngineError> {
    match read_all(dest, MANIFEST_KEY).await {
        Ok(bytes) => Ok(Manifest::parse(&bytes, &format!("{}{MANIFEST_KEY}", dest.describe()))?),
        Err(StoreError::NotFound { .. }) => Ok(Manifest::new()),
        Err(error) => Err(error.into()),
    }
}

async fn read_all(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>, StoreError> {
    let chunks: Vec<Bytes> = store.get(key, None).await?.try_collect().await?;
    Ok(chunks.concat())
}

/// What [`prepare`] found: the plan, the destination's manifest, each
/// source's listing, and whether the destination's bucket or container is
/// missing (created before the first copy).
pub struct Prepared {
    pub plan: Plan,
    pub manifest: Manifest,
    pub listings: Vec<Vec<ObjectMeta>>,
    pub destination_missing: bool,
}

/// Lists every source and the destination and plans the sync.
pub async fn prepare(
    sources: &[Endpoint],
    dest: &Endpoint,
    delete: bool,
) -> Result<Prepared, EngineError> {
    let listings: Vec<Vec<ObjectMeta>> =
        futures::future::try_join_all(sources.iter().map(|s| with_retries(|| s.store.list())))
            .await?;
    let (existing, destination_missing) = match with_retries(|| dest.store.list()).await {
        Ok(listing) => (listing, false),
        // No such bucket or container yet.
        Err(StoreError::NotFound { .. } | StoreError::Refused { status: 404, .. }) => {
            (Vec::new(), true)
        }
        Err(error) => return Err(error.into()),
    };
    let manifest = if destination_missing {
        Manifest::new()
    } else {
        load_manifest(dest.store.as_ref()).await?
    };
    let replicas: Vec<(Place, Vec<ObjectMeta>)> =
        sources.iter().map(|s| s.place.clone()).zip(listings.iter().cloned()).collect();
    let plan = plan(
        &replicas,
        &(dest.place.clone(), existing),
        &manifest,
        delete,
        &EgressPrices::shipped(),
    )?;
    Ok(Prepared { plan, manifest, listings, destination_missing })
}

/// Retries a store operation that failed for a passing reason: up to eight
/// attempts, pauses from 0.2 s doubling to at most 10 s, each with up to
/// half again of random jitter (so that parallel requests throttled
/// together do not retry together): about a minute in all.
pub async fn with_retries<T, F, Fut>(op: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(error) if error.is_transient() && attempt < 8 => {
                tracing::warn!(error = %error, attempt, "store request failed; retrying");
                let jitter = Duration::from_millis(
                    (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos()) as u64)
                        % (pause.as_millis() as u64 / 2 + 1),
                );
                tokio::time::sleep(pause + jitter).await;
                pause = (pause * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Carries out `plan`: copies, then deletes, then writes the manifest.
pub async fn execute(
    prepared: Prepared,
    sources: &[Endpoint],
    dest: &Endpoint,
    options: &Options,
    progress: &Progress,
) -> Result<Report, EngineError> {
    let Prepared { plan, manifest, listings, destination_missing } = prepared;
    let (plan, listings) = (&plan, &listings);
    let started = Instant::now();
    if destination_missing && plan.copy.files > 0 {
        with_retries(|| dest.store.create_container()).await?;
    }
    progress.files_total.store(plan.copy.files, Ordering::Relaxed);
    progress.bytes_total.store(plan.copy.bytes, Ordering::Relaxed);
    let buffers = Arc::new(Semaphore::new(options.parallelism.max(1)));
    let report = Mutex::new(Report { skipped_files: plan.skip.files, ..Report::default() });
    // The manifest is written as files complete (every CHECKPOINT_FILES
    // files or CHECKPOINT_EVERY), so that an interrupted sync keeps what it
    // copied; one write at a time.
    let manifest = tokio::sync::Mutex::new((manifest, 0u64, Instant::now()));
    // Each file's listed version, found once.
    let versions: Vec<std::collections::HashMap<&str, &str>> = listings
        .iter()
        .map(|l| l.iter().map(|m| (m.key.as_str(), m.version.as_str())).collect())
        .collect();
    let copies = plan.actions.iter().filter_map(|action| match action {
        Action::Copy { path, size, from, .. } => Some((path.clone(), *size, *from)),
        _ => None,
    });
    futures::stream::iter(copies)
        .for_each_concurrent(options.parallelism.max(1), |(path, size, from)| {
            let (buffers, report, manifest, versions) = (buffers.clone(), &report, &manifest, &versions);
            async move {
                let source = &sources[from];
                let version = versions[from].get(path.as_str()).copied().unwrap_or_default();
                let part_size = part_size_for(size, options.part_size);
                let copy = Copy { path: &path, size, version, source, dest, options, progress, part_size };
                // A file whose copy fails for a passing reason is tried
                // again (a resumed upload makes that cheap).
                let mut attempt = 1;
                let result = loop {
                    match copy.run(&buffers).await {
                        Err(EngineError::Store(error)) if error.retries_file() && attempt < 3 => {
                            tracing::warn!(path = path.as_str(), error = %error, "copy failed; trying again");
                            tokio::time::sleep(Duration::from_secs(attempt)).await;
                            attempt += 1;
                        }
                        result => break result,
                    }
                };
                match result {
                    Ok(outcome) => {
                        {
                            let mut report = report.lock().expect("report lock");
                            report.copied_files += 1;
                            report.copied_bytes += size;
                            report.resumed_bytes += outcome.resumed_bytes;
                            report.verified_files += u64::from(outcome.verified);
                        }
                        progress.files_done.fetch_add(1, Ordering::Relaxed);
                        let mut guard = manifest.lock().await;
                        let (manifest, since, last) = &mut *guard;
                        manifest.files.insert(path.clone(), outcome.entry);
                        *since += 1;
                        if *since >= CHECKPOINT_FILES || last.elapsed() >= CHECKPOINT_EVERY {
                            if let Err(error) = write_manifest(dest, manifest).await {
                                tracing::warn!(error = %error, "cannot checkpoint the manifest; trying again later");
                            }
                            *since = 0;
                            *last = Instant::now();
                        }
                    }
                    Err(error) => report
                        .lock()
                        .expect("report lock")
                        .failures
                        .push(Failure { path: path.clone(), error: error.to_string() }),
                }
            }
        })
        .await;
    let (mut manifest, _, _) = manifest.into_inner();
    let mut report = report.into_inner().expect("report lock");
    let deletes: Vec<&String> = plan
        .actions
        .iter()
        .filter_map(|a| if let Action::Delete { path, .. } = a { Some(path) } else { None })
        .collect();
    let results: Vec<(&String, Result<(), StoreError>)> = futures::stream::iter(deletes)
        .map(|path| async move { (path, with_retries(|| dest.store.delete(path)).await) })
        .buffer_unordered(options.parallelism.max(1))
        .collect()
        .await;
    for (path, result) in results {
        match result {
            Ok(()) => {
                manifest.files.remove(path);
                report.deleted_files += 1;
            }
            Err(error) => {
                report.failures.push(Failure { path: path.clone(), error: error.to_string() })
            }
        }
    }
    // Entries for files no longer at the destination go too. A manifest
    // that cannot be written is a failure to report, not a reason to hide
    // what was copied.
    if plan.delete.files > 0 || !report.failures.is_empty() || report.copied_files > 0 {
        if let Err(error) = write_manifest(dest, &manifest).await {
            report.failures.push(Failure {
                path: MANIFEST_KEY.to_string(),
                error: format!("{error}; the next sync copies again what this one copied"),
            });
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Checkpoints of the manifest during a transfer.
const CHECKPOINT_FILES: u64 = 500;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

async fn write_manifest(dest: &Endpoint, manifest: &Manifest) -> Result<(), StoreError> {
    let bytes = Bytes::from(manifest.to_bytes());
    let md5: [u8; 16] = md5::Md5::digest(&bytes).into();
    with_retries(|| dest.store.put(MANIFEST_KEY, bytes.clone(), md5)).await.map(|_| ())
}

/// Parts no smaller than asked, but few enough for every store: S3 takes at
/// most 10,000 parts (a file of more than 156 GiB at 16 MiB parts gets
/// larger parts, whole MiB).
pub fn part_size_for(size: u64, asked: u64) -> u64 {
    const MAX_PARTS: u64 = 10_000;
    const MIB: u64 = 1024 * 1024;
    asked.max(size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB).max(1)
}

struct Copy<'a> {
    /// This file's part size (see [`part_size_for`]).
    part_size: u64,
    path: &'a str,
    size: u64,
    /// The source version the plan listed.
    version: &'a str,
    source: &'a Endpoint,
    dest: &'a Endpoint,
    options: &'a Options,
    progress: &'a Progress,
}

struct Outcome {
    entry: Entry,
    resumed_bytes: u64,
    verified: bool,
}

/// A multipart upload in progress, as remembered between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadState {
    destination: String,
    path: String,
    upload: String,
    part_size: u64,
    size: u64,
    source: String,
    source_version: String,
    /// Part index -> MD5 (hex) of what was sent.
    sent: std::collections::BTreeMap<u32, String>,
}

impl Copy<'_> {
    fn file_error(&self, message: impl Into<String>) -> EngineError {
        EngineError::File { path: self.path.to_string(), message: message.into() }
    }

    async fn run(&self, buffers: &Arc<Semaphore>) -> Result<Outcome, EngineError> {
        let (blake3, dst_version, resumed_bytes) = if self.size <= self.part_size {
            self.single(buffers).await?
        } else {
            self.multipart(buffers).await?
        };
        // A local file rewritten while it was read (its change time moves)
        // was copied torn: not recorded, reported. Cloud sources are read
        // in one request pinned to the listed version (`get_if`), which a
        // store serves whole or refuses.
        if self.source.place.cloud == "local" {
            let now = with_retries(|| self.source.store.head(self.path)).await?;
            if now.as_ref().map(|m| m.version.as_str()) != Some(self.version) {
                return Err(self.file_error(
                    "the source changed while it was copied; the destination may hold a mix \
                     of both versions until the next sync copies it again",
                ));
            }
        }
        let verified = if self.options.verify_remote {
            let (remote, read) = hash_of(self.dest.store.as_ref(), self.path, None).await?;
            if remote != blake3 || read != self.size {
                return Err(self.file_error(format!(
                    "the destination holds other bytes than were copied ({read} bytes, BLAKE3 \
                     {remote}; expected {} bytes, {blake3})",
                    self.size
                )));
            }
            true
        } else {
            false
        };
        let sources = std::collections::BTreeMap::from([(
            self.source.place.location.clone(),
            self.version.to_string(),
        )]);
        Ok(Outcome {
            entry: Entry { size: self.size, blake3, dst_version, sources },
            resumed_bytes,
            verified,
        })
    }

    /// A file that fits in one part: one read, one request.
    async fn single(&self, buffers: &Arc<Semaphore>) -> Result<(String, String, u64), EngineError> {
        let _buffer = buffers.clone().acquire_owned().await.expect("the semaphore stays open");
        let mut stream = with_retries(|| self.source.store.get_if(self.path, self.version)).await?;
        let mut data = BytesMut::with_capacity(self.size as usize);
        while let Some(chunk) = stream.try_next().await? {
            if data.len() as u64 + chunk.len() as u64 > self.size {
                return Err(self.file_error("the source grew while being read; copy it again"));
            }
            self.progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            data.extend_from_slice(&chunk);
        }
        if data.len() as u64 != self.size {
            return Err(self.file_error(format!(
                "the source gave {} bytes, the listing said {}; copy it again",
                data.len(),
                self.size
            )));
        }
        let data = data.freeze();
        let blake3 = hex(blake3::hash(&data).as_bytes());
        let md5: [u8; 16] = md5::Md5::digest(&data).into();
        let version = with_retries(|| self.dest.store.put(self.path, data.clone(), md5)).await?;
        Ok((blake3, version, 0))
    }

    fn state_path(&self) -> PathBuf {
        let id = blake3::hash(format!("{}\n{}", self.dest.store.describe(), self.path).as_bytes());
        self.options.state_dir.join(format!("{}.json", &hex(id.as_bytes())[..32]))
    }

    fn save_state(&self, state: &UploadState) -> Result<(), EngineError> {
        let path = self.state_path();
        write_state(&self.options.state_dir, &path, state).map_err(|e| {
            self.file_error(format!(
                "cannot write the upload state {}: {e} (set --state-dir to a writable directory)",
                path.display()
            ))
        })
    }

    /// The upload to continue (with the parts the store holds and that we
    /// remember sending), or a new one.
    async fn upload(&self) -> Result<(UploadState, Vec<PartDone>), EngineError> {
        let store = &self.dest.store;
        if let Some(state) = read_state(&self.state_path()) {
            let same = state.size == self.size
                && state.part_size == self.part_size
                && state.source == self.source.place.location
                && state.source_version == self.version;
            // A store that cannot say what it holds (the upload in a state
            // it refuses to continue) gets a fresh upload rather than the
            // same error on every run.
            let held = if same {
                match with_retries(|| store.uploaded_parts(self.path, &state.upload)).await {
                    Ok(held) => held,
                    Err(error) if !error.is_transient() => {
                        tracing::warn!(path = self.path, error = %error, "cannot resume the upload; starting it again");
                        None
                    }
                    Err(error) => return Err(error.into()),
                }
            } else {
                None
            };
            match held {
                Some(held) => {
                    let parts = held
                        .into_iter()
                        .filter(|p| {
                            state.sent.contains_key(&p.index) && p.size == self.part_len(p.index)
                        })
                        .collect();
                    return Ok((state, parts));
                }
                None => {
                    // Changed source or a vanished upload: start afresh.
                    let _ = store.abort_upload(self.path, &state.upload).await;
                }
            }
        }
        let upload =
            with_retries(|| store.start_upload(self.path, self.size, self.part_size)).await?;
        let state = UploadState {
            destination: store.describe(),
            path: self.path.to_string(),
            upload,
            part_size: self.part_size,
            size: self.size,
            source: self.source.place.location.clone(),
            source_version: self.version.to_string(),
            sent: Default::default(),
        };
        self.save_state(&state)?;
        Ok((state, Vec::new()))
    }

    fn parts(&self) -> u32 {
        self.size.div_ceil(self.part_size) as u32
    }

    fn part_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * self.part_size;
        self.part_size.min(self.size - start)
    }

    async fn multipart(
        &self,
        buffers: &Arc<Semaphore>,
    ) -> Result<(String, String, u64), EngineError> {
        let store = self.dest.store.clone();
        let (state, held) = self.upload().await?;
        let state = Arc::new(Mutex::new(state));
        let upload = state.lock().expect("state lock").upload.clone();
        let done: Arc<Mutex<Vec<PartDone>>> = Arc::new(Mutex::new(Vec::new()));
        let mut resumed_bytes = 0;
        let mut hasher = blake3::Hasher::new();
        let mut stream = with_retries(|| self.source.store.get_if(self.path, self.version)).await?;
        let mut pending = BytesMut::new();
        let mut uploads = tokio::task::JoinSet::new();
        let parallel = store.parallel_parts();
        let count = self.parts();
        for index in 0..count {
            let want = self.part_len(index) as usize;
            let permit = buffers.clone().acquire_owned().await.expect("the semaphore stays open");
            let mut buffer = BytesMut::with_capacity(want);
            buffer.extend_from_slice(&pending.split_to(pending.len().min(want)));
            while buffer.len() < want {
                let Some(chunk) = stream.try_next().await? else {
                    return Err(self.file_error(format!(
                        "the source ended at {} of {} bytes; copy it again",
                        u64::from(index) * self.part_size + buffer.len() as u64,
                        self.size
                    )));
                };
                self.progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                let take = (want - buffer.len()).min(chunk.len());
                buffer.extend_from_slice(&chunk[..take]);
                pending.extend_from_slice(&chunk[take..]);
            }
            let data = buffer.freeze();
            hasher.update(&data);
            let md5: [u8; 16] = md5::Md5::digest(&data).into();
            if let Some(part) = held.iter().find(|p| p.index == index) {
                let recorded = state.lock().expect("state lock").sent.get(&index).cloned();
                if recorded.as_deref() == Some(hex(&md5).as_str()) {
                    resumed_bytes += data.len() as u64;
                    let part = store.held_part(&upload, part.clone(), &data);
                    done.lock().expect("done lock").push(part);
                    continue;
                }
                // Sent from other bytes than the source holds now: send it
                // again.
            }
            let part = Part {
                index,
                offset: u64::from(index) * self.part_size,
                data,
                md5,
                last: index + 1 == count,
            };
            let task = {
                let (store, upload, path) = (store.clone(), upload.clone(), self.path.to_string());
                let (state, done) = (state.clone(), done.clone());
                let state_path = self.state_path();
                let state_dir = self.options.state_dir.clone();
                async move {
                    let sent = with_retries(|| store.put_part(&path, &upload, part.clone())).await;
                    drop(permit);
                    let sent = sent?;
                    // Written under the lock: the file always holds the
                    // latest state, never an older snapshot.
                    let saved = {
                        let mut state = state.lock().expect("state lock");
                        state.sent.insert(sent.index, hex(&part.md5));
                        write_state(&state_dir, &state_path, &state)
                    };
                    done.lock().expect("done lock").push(sent);
                    saved.map_err(|e| EngineError::File {
                        path: path.clone(),
                        message: format!("cannot write the upload state: {e}"),
                    })
                }
            };
            if !parallel {
                // Parts in order, one at a time: the previous part is sent
                // before this one starts (reading this one overlapped it).
                while let Some(result) = uploads.join_next().await {
                    result.map_err(|e| self.file_error(format!("a part upload failed: {e}")))??;
                }
            }
            // A task of its own: it runs while this one reads on (and waits
            // for a buffer it frees).
            uploads.spawn(task);
            // Reap finished uploads as we go, so that a failure stops the
            // reading early (dropping the set aborts the rest).
            while let Some(result) = uploads.try_join_next() {
                result.map_err(|e| self.file_error(format!("a part upload failed: {e}")))??;
            }
        }
        while let Some(result) = uploads.join_next().await {
            result.map_err(|e| self.file_error(format!("a part upload failed: {e}")))??;
        }
        if !pending.is_empty() || stream.try_next().await?.is_some_and(|c| !c.is_empty()) {
            return Err(self.file_error("the source is longer than listed; copy it again"));
        }
        let mut parts = std::mem::take(&mut *done.lock().expect("done lock"));
        parts.sort_by_key(|p| p.index);
        let version =
            with_retries(|| store.finish_upload(self.path, &upload, &parts, self.size)).await?;
        let _ = std::fs::remove_file(self.state_path());
        Ok((hex(hasher.finalize().as_bytes()), version, resumed_bytes))
    }
}

/// An upload's state, if the file holds one (a torn or foreign file is
/// none: the upload starts afresh).
fn read_state(path: &std::path::Path) -> Option<UploadState> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes an upload's state through a temporary file of its own and a
/// rename (readable by its owner only: a GCS session URI is a capability).
fn write_state(
    dir: &std::path::Path,
    path: &std::path::Path,
    state: &UploadState,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension(format!(
        "{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(&serde_json::to_vec(state).expect("state serializes"))?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// What `check` found for one path.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// At the source only.
    Missing,
    /// At the destination only.
    Extra,
    /// Listed on both sides, but one side could not be read (gone since
    /// the listing, or refused): the message says which and why.
    Unreadable {
        error: String,
    },
    SizeDiffers {
        source: u64,
        destination: u64,
    },
    ContentDiffers {
        source: String,
        destination: String,
    },
    /// Both sides agree; the manifest records another hash.
    ManifestDiffers {
        recorded: String,
        actual: String,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub matched: u64,
    pub matched_bytes: u64,
    pub differences: Vec<(String, Difference)>,
    pub seconds: f64,
}

/// Hashes `path` on `store`.
async fn hash_of(
    store: &dyn ObjectStore,
    path: &str,
    progress: Option<&Progress>,
) -> Result<(String, u64), StoreError> {
    let mut stream = with_retries(|| store.get(path, None)).await?;
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        read += chunk.len() as u64;
        if let Some(progress) = progress {
            progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        hasher.update(&chunk);
    }
    Ok((hex(hasher.finalize().as_bytes()), read))
}

/// Verifies that `dest` holds what `source` holds, reading both sides in
/// full (the stores' ETags are no content hashes). Files of different sizes
/// are reported without being read.
pub async fn check(
    source: &Endpoint,
    dest: &Endpoint,
    parallelism: usize,
    progress: &Progress,
) -> Result<CheckReport, EngineError> {
    use std::collections::BTreeMap;
    let started = Instant::now();
    let data = |m: &ObjectMeta| !m.key.starts_with(crate::manifest::RESERVED_PREFIX);
    let src: BTreeMap<String, u64> = with_retries(|| source.store.list())
        .await?
        .into_iter()
        .filter(data)
        .map(|m| (m.key, m.size))
        .collect();
    let dst: BTreeMap<String, u64> = with_retries(|| dest.store.list())
        .await?
        .into_iter()
        .filter(data)
        .map(|m| (m.key, m.size))
        .collect();
    let manifest = load_manifest(dest.store.as_ref()).await?;
    let mut report = CheckReport::default();
    let mut both = Vec::new();
    for (path, size) in &src {
        match dst.get(path) {
            None => report.differences.push((path.clone(), Difference::Missing)),
            Some(other) if other != size => report.differences.push((
                path.clone(),
                Difference::SizeDiffers { source: *size, destination: *other },
            )),
            Some(_) => both.push((path.clone(), *size)),
        }
    }
    for path in dst.keys().filter(|p| !src.contains_key(*p)) {
        report.differences.push((path.clone(), Difference::Extra));
    }
    progress.files_total.store(both.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(both.iter().map(|(_, s)| s * 2).sum(), Ordering::Relaxed);
    type Hashed = (String, u64, Result<(String, String), StoreError>);
    let results: Vec<Hashed> = futures::stream::iter(both)
        .map(|(path, size)| async move {
            let hashes = futures::future::try_join(
                hash_of(source.store.as_ref(), &path, Some(progress)),
                hash_of(dest.store.as_ref(), &path, Some(progress)),
            )
            .await
            .map(|((a, _), (b, _))| (a, b));
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            (path, size, hashes)
        })
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await;
    for (path, size, hashes) in results {
        // One file that cannot be read is reported, not a reason to drop
        // what was found for the others. Credentials and transport
        // failures still end the check.
        let (a, b) = match hashes {
            Ok(hashes) => hashes,
            Err(
                error @ (StoreError::NotFound { .. }
                | StoreError::Refused { .. }
                | StoreError::Io { .. }),
            ) => {
                report
                    .differences
                    .push((path, Difference::Unreadable { error: error.to_string() }));
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if a != b {
            report
                .differences
                .push((path, Difference::ContentDiffers { source: a, destination: b }));
        } else if let Some(entry) = manifest.files.get(&path).filter(|e| e.blake3 != a) {
            report.differences.push((
                path,
                Difference::ManifestDiffers { recorded: entry.blake3.clone(), actual: a },
            ));
        } else {
            report.matched += 1;
            report.matched_bytes += size;
        }
    }
    report.differences.sort_by(|a, b| a.0.cmp(&b.0));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Aborts the uploads remembered in `state_dir` for `dest` that no longer
/// serve: their file is not in `keep` (a later sync dropped it) and nothing
/// has touched them for [`STALE_AFTER`] (another sync into the same
/// destination may be using a fresher one). Returns how many were aborted.
/// How long an unfinished upload's state must lie untouched before a sync
/// that no longer needs it aborts it.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

pub async fn abandon_stale_uploads(
    dest: &dyn ObjectStore,
    state_dir: &std::path::Path,
    keep: &std::collections::BTreeSet<String>,
) -> usize {
    let Ok(entries) = std::fs::read_dir(state_dir) else { return 0 };
    let mut aborted = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let idle = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if !idle {
            continue;
        }
        let Some(state) = read_state(&entry.path()) else {
            continue;
        };
        if state.destination != dest.describe() || keep.contains(&state.path) {
            continue;
        }
        if dest.abort_upload(&state.path, &state.upload).await.is_ok() {
            let _ = std::fs::remove_file(entry.path());
            aborted += 1;
        }
    }
    aborted
}
