//! The usage ledger: one row per API request, in the estate's database
//! (see [`crate::store`]), written off the request path.
//!
//! Handlers hand a [`Record`] to [`Ledger::record`], which only pushes it on
//! a channel. A writer thread with its own connection takes what has
//! arrived, waits at most [`FLUSH_INTERVAL`] for more (up to
//! [`MAX_BATCH`] rows), and commits the batch in one transaction, together
//! with the spend it adds per day, tenant, key and cloud. A committed
//! transaction survives the process being killed (SQLite in WAL mode; a
//! PostgreSQL commit is on the server). So:
//!
//! - graceful shutdown ([`Ledger::close`]) writes every record;
//! - after `kill -9`, the records that can be lost are those of requests
//!   that ended within the last `FLUSH_INTERVAL` plus the time of one
//!   commit (a few milliseconds): records older than that are stored.
//!
//! A commit that fails for a passing reason (the database unreachable,
//! restarting, busy) is retried with a fresh connection, the batch held in
//! memory, until it succeeds; on shutdown for at most [`CLOSE_RETRY`] in
//! all, after which the records still held are reported as lost. A batch
//! PostgreSQL may have committed before the connection dropped is not
//! written twice: each carries this writer's sequence number, recorded in
//! the same transaction. A batch refused for good (a value the database
//! rejects) is written one record at a time, so that only the offending
//! record is lost, and logged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::store::StoreError;
use crate::store::{Database, SpendDeltas, Store, Writer};

/// How long a record may wait in memory before its batch is committed.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
pub const MAX_BATCH: usize = 1000;
/// How long a closing ledger keeps retrying a failed commit.
pub const CLOSE_RETRY: Duration = Duration::from_secs(10);

/// One API request, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub unix_ms: i64,
    pub request_id: String,
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub model: String,
    pub deployment: Option<String>,
    pub cloud: Option<String>,
    pub region: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub status: u16,
    pub attempts: u32,
    pub stream: bool,
}

/// An admin action or a policy refusal.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    pub unix_ms: i64,
    /// `admin`, or the key id (or `-`) a refused request presented.
    pub actor: String,
    /// e.g. `key.create`, `key.revoke`, `admin.denied`, `request.refused`.
    pub action: String,
    /// What it acted on: a key id, a tenant, a model.
    pub target: String,
    /// HTTP status of the outcome.
    pub status: u16,
    pub detail: String,
}

pub(crate) enum Entry {
    Request(Record),
    Audit(AuditEntry),
    /// Commit what came before, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

pub struct Ledger {
    /// This process's name in `spend_daily`: the spend of every other
    /// name is the other replicas' (and earlier runs').
    replica: String,
    store: Store,
    sender: Mutex<Option<Sender<Entry>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closing: Arc<AtomicBool>,
    /// Set once a record found the writer gone (reported once).
    writer_lost: AtomicBool,
}

impl Ledger {
    /// Opens (creating its tables if needed) the ledger and starts its
    /// writer thread.
    pub async fn open(database: &Database) -> Result<Ledger, StoreError> {
        let store = Store::open(database).await?;
        let replica = replica_name();
        let (sender, receiver) = channel::<Entry>();
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let closing = Arc::new(AtomicBool::new(false));
        let (database, writer_replica, writer_closing) =
            (database.clone(), replica.clone(), closing.clone());
        let writer = std::thread::Builder::new()
            .name("skyweave-ledger".into())
            .spawn(move || {
                let mut writer = match Writer::open(&database) {
                    Ok(writer) => {
                        let _ = opened_tx.send(Ok(()));
                        writer
                    }
                    Err(error) => {
                        let _ = opened_tx.send(Err(error));
                        return;
                    }
                };
                let at = database.describe();
                let mut state = WriterState { sequence: 0, closing_since: None };
                while let Ok(first) = receiver.recv() {
                    // Everything queued before a flush that starts a batch is
                    // already committed.
                    let first = match first {
                        Entry::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                        entry => entry,
                    };
                    let mut batch = vec![first];
                    let mut waiting = None;
                    let deadline = Instant::now() + FLUSH_INTERVAL;
                    while batch.len() < MAX_BATCH {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match receiver.recv_timeout(left) {
                            Ok(Entry::Flush(done)) => {
                                waiting = Some(done);
                                break;
                            }
                            Ok(record) => batch.push(record),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                                break
                            }
                        }
                    }
                    let batch: Vec<Entry> =
                        batch.into_iter().filter(|e| !matches!(e, Entry::Flush(_))).collect();
                    if let Err(error) =
                        commit(&mut writer, &batch, &writer_replica, &at, &writer_closing, &mut state)
                    {
                        // Refused for good: one record at a time, so that
                        // only what the database rejects is lost.
                        tracing::error!(database = at.as_str(), error = %error, records = batch.len(), "ledger batch refused; writing its records one by one");
                        for entry in batch {
                            let one = [entry];
                            if let Err(error) = commit(
                                &mut writer,
                                &one,
                                &writer_replica,
                                &at,
                                &writer_closing,
                                &mut state,
                            ) {
                                tracing::error!(database = at.as_str(), error = %error, record = ?describe_entry(&one[0]), "ledger record refused by the database; it is lost");
                            }
                        }
                    }
                    if let Some(done) = waiting {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|source| StoreError::Thread {
                at: store.describe().to_string(),
                error: source,
            })?;
        let started = opened.await.unwrap_or(Ok(()));
        let ledger = Ledger {
            replica,
            store,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            closing,
            writer_lost: AtomicBool::new(false),
        };
        started.map(|()| ledger)
    }

    /// Where the ledger is, for messages.
    pub fn describe(&self) -> &str {
        self.store.describe()
    }

    /// The database, for reports.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Queues a record; never blocks on the database.
    pub fn record(&self, record: Record) {
        self.send(Entry::Request(record));
    }

    fn send(&self, entry: Entry) {
        if let Some(sender) = self.sender.lock().expect("ledger lock").as_ref() {
            if sender.send(entry).is_err() && !self.writer_lost.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    database = self.describe(),
                    "the ledger writer has stopped; requests are no longer recorded"
                );
            }
        }
    }

    /// Queues an audit entry (and logs it); never blocks on the database.
    pub fn audit(&self, entry: AuditEntry) {
        tracing::info!(
            audit = true,
            actor = entry.actor.as_str(),
            action = entry.action.as_str(),
            target = entry.target.as_str(),
            status = entry.status,
            detail = entry.detail.as_str(),
            "audit"
        );
        self.send(Entry::Audit(entry));
    }

    /// Blocks until everything queued before the call is committed.
    pub fn flush(&self) {
        let (done, committed) = channel();
        if let Some(sender) = self.sender.lock().expect("ledger lock").as_ref() {
            if sender.send(Entry::Flush(done)).is_ok() {
                let _ = committed.recv();
            }
        }
    }

    /// Writes every queued record and stops the writer.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.sender.lock().expect("ledger lock").take();
        if let Some(writer) = self.writer.lock().expect("ledger lock").take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

/// A name for this process, unique among replicas: 12 random hex digits.
fn replica_name() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spend a batch adds, per day and tenant, key and cloud.
fn spend_of(batch: &[Entry]) -> SpendDeltas {
    let mut spend = SpendDeltas::new();
    for entry in batch {
        let Entry::Request(r) = entry else { continue };
        if r.cost_usd <= 0.0 {
            continue;
        }
        let day = r.unix_ms.div_euclid(86_400_000);
        for (scope, name) in [("tenant", &r.tenant), ("key", &r.key_id), ("cloud", &r.cloud)] {
            if let Some(name) = name {
                *spend.entry((day, scope, name.clone())).or_default() += r.cost_usd;
            }
        }
    }
    spend
}

/// The writer thread's progress: the sequence number of its last batch,
/// and since when it has been closing with commits failing.
struct WriterState {
    sequence: i64,
    closing_since: Option<Instant>,
}

/// What a lost record was, for the log (no secrets: ids, not keys).
fn describe_entry(entry: &Entry) -> String {
    match entry {
        Entry::Request(r) => format!("request {} at {}", r.request_id, r.unix_ms),
        Entry::Audit(a) => format!("audit {} {} at {}", a.action, a.target, a.unix_ms),
        Entry::Flush(_) => "flush".into(),
    }
}

/// Commits a batch, retrying a passing failure with a fresh connection
/// until it succeeds (once the ledger is closing, until [`CLOSE_RETRY`]
/// after the first failure). `Err` is a failure retrying cannot mend.
fn commit(
    writer: &mut Writer,
    batch: &[Entry],
    replica: &str,
    at: &str,
    closing: &AtomicBool,
    state: &mut WriterState,
) -> Result<(), StoreError> {
    let spend = spend_of(batch);
    state.sequence += 1;
    let mut pause = Duration::from_millis(100);
    loop {
        let error = match writer.write(batch, &spend, replica, state.sequence) {
            Ok(()) => return Ok(()),
            Err(error) if !error.is_transient() => return Err(error),
            Err(error) => error,
        };
        if closing.load(Ordering::SeqCst) {
            let since = *state.closing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= CLOSE_RETRY {
                tracing::error!(
                    database = at,
                    error = %error,
                    records = batch.len(),
                    "ledger write failed while shutting down; these records are lost"
                );
                return Ok(());
            }
        }
        tracing::error!(database = at, error = %error, records = batch.len(), "ledger write failed; retrying");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
        if let Err(error) = writer.reconnect() {
            tracing::warn!(database = at, error = %error, "cannot reconnect to the ledger database");
        }
    }
}

/// Usage rows as CSV, the group column headed `by`; fields with commas or
/// quotes are quoted.
pub fn usage_csv(by: &str, rows: &[UsageRow]) -> String {
    let mut out = format!("{by},requests,errors,prompt_tokens,completion_tokens,cost_usd\n");
    for r in rows {
        let group = if r.group.contains([',', '"', '\n']) {
            format!("\"{}\"", r.group.replace('"', "\"\""))
        } else {
            r.group.clone()
        };
        out.push_str(&format!(
            "{group},{},{},{},{},{:.6}\n",
            r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.cost_usd
        ));
    }
    out
}

/// Spend and tokens per group over a period.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageRow {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// What to group usage by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Cloud,
    Tenant,
    Model,
    Deployment,
}

impl GroupBy {
    pub(crate) fn column(self) -> &'static str {
        match self {
            GroupBy::Cloud => "cloud",
            GroupBy::Tenant => "tenant",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64, cloud: &str, cost: f64, status: u16) -> Record {
        Record {
            unix_ms: 1_000 + i,
            request_id: format!("req_{i}"),
            tenant: Some("t".into()),
            key_id: None,
            model: "m".into(),
            deployment: Some(format!("m@{cloud}")),
            cloud: Some(cloud.into()),
            region: Some("r".into()),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: cost,
            latency_ms: 1.0,
            ttft_ms: None,
            status,
            attempts: 1,
            stream: false,
        }
    }

    #[tokio::test]
    async fn records_are_written_and_summed() {
        let dir = std::env::temp_dir().join(format!("skyweave-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.db");
        let _ = std::fs::remove_file(&path);
        let database = Database::Sqlite(path.clone());
        let ledger = Ledger::open(&database).await.unwrap();
        for i in 0..2500 {
            let cloud = if i % 5 == 0 { "gcp" } else { "aws" };
            ledger.record(record(i, cloud, 0.5, if i % 100 == 0 { 503 } else { 200 }));
        }
        ledger.close();
        let rows = ledger.store().usage(GroupBy::Cloud, 0, i64::MAX).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].group.as_str(), rows[0].requests, rows[0].errors), ("aws", 2000, 0));
        assert_eq!((rows[1].group.as_str(), rows[1].requests, rows[1].errors), ("gcp", 500, 25));
        assert_eq!(rows[0].prompt_tokens, 20_000);
        assert!((rows[0].cost_usd - 1000.0).abs() < 1e-9);
        // The period bounds are honoured.
        let early = ledger.store().usage(GroupBy::Cloud, 0, 1_010).await.unwrap();
        assert_eq!(early.iter().map(|r| r.requests).sum::<u64>(), 10);
        // The daily spend was summed in the same transactions: all of it on
        // day 0, none of it this replica's to exclude from another's view.
        let totals = ledger.store().spend_totals("someone-else", 0, 0).await.unwrap();
        assert!((totals[&("cloud".to_string(), "aws".to_string())] - 1000.0).abs() < 1e-9);
        assert!((totals[&("tenant".to_string(), "t".to_string())] - 1250.0).abs() < 1e-9);
        let mine = ledger.store().spend_totals(ledger.replica(), 0, 0).await.unwrap();
        assert!(mine.is_empty(), "{mine:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
