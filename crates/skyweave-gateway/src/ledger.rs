//! The usage ledger: one row per API request, in the estate's SQLite
//! database (WAL), written off the request path.
//!
//! Handlers hand a [`Record`] to [`Ledger::record`], which only pushes it on
//! a channel. A writer thread with its own connection takes what has
//! arrived, waits at most [`FLUSH_INTERVAL`] for more (up to
//! [`MAX_BATCH`] rows), and commits the batch in one transaction. A
//! committed transaction survives the process being killed (WAL,
//! `synchronous = NORMAL`: only a power loss can undo it). So:
//!
//! - graceful shutdown ([`Ledger::close`]) writes every record;
//! - after `kill -9`, the records that can be lost are those of requests
//!   that ended within the last `FLUSH_INTERVAL` plus the time of one
//!   commit (a few milliseconds): records older than that are on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use crate::keystore::StoreError;

/// How long a record may wait in memory before its batch is committed.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
pub const MAX_BATCH: usize = 1000;

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

enum Entry {
    Request(Record),
    Audit(AuditEntry),
    /// Commit what came before, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    unix_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    unix_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    tenant TEXT,
    key_id TEXT,
    model TEXT NOT NULL,
    deployment TEXT,
    cloud TEXT,
    region TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    status INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    stream INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (unix_ms);";

pub struct Ledger {
    path: PathBuf,
    sender: Mutex<Option<Sender<Entry>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger in the database at `path` and
    /// starts its writer thread.
    pub fn open(path: &Path) -> Result<Ledger, StoreError> {
        let connection = open_connection(path)?;
        let (sender, receiver) = channel::<Entry>();
        let writer_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("skyweave-ledger".into())
            .spawn(move || {
                let mut connection = connection;
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
                    if let Err(error) = write_batch(&mut connection, &batch) {
                        // Keep the rows rather than lose them: retry once
                        // after a pause, then report.
                        std::thread::sleep(Duration::from_millis(100));
                        if let Err(error2) = write_batch(&mut connection, &batch) {
                            tracing::error!(
                                database = %writer_path.display(),
                                error = %error,
                                retry_error = %error2,
                                records = batch.len(),
                                "ledger write failed"
                            );
                        }
                    }
                    if let Some(done) = waiting {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|source| StoreError::Thread { path: path.to_path_buf(), source })?;
        Ok(Ledger {
            path: path.to_path_buf(),
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; never blocks on the database.
    pub fn record(&self, record: Record) {
        if let Some(sender) = self.sender.lock().expect("ledger lock").as_ref() {
            let _ = sender.send(Entry::Request(record));
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
        if let Some(sender) = self.sender.lock().expect("ledger lock").as_ref() {
            let _ = sender.send(Entry::Audit(entry));
        }
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

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let error = |source| StoreError::Sql { path: path.to_path_buf(), source };
    let connection = Connection::open(path).map_err(error)?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .and_then(|_| connection.pragma_update(None, "synchronous", "NORMAL"))
        .and_then(|_| connection.busy_timeout(Duration::from_secs(5)))
        .and_then(|_| connection.execute_batch(SCHEMA))
        .map_err(error)?;
    Ok(connection)
}

fn write_batch(connection: &mut Connection, batch: &[Entry]) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    {
        let mut audit = transaction.prepare_cached(
            "INSERT INTO audit (unix_ms, actor, action, target, status, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut insert = transaction.prepare_cached(
            "INSERT INTO requests (unix_ms, request_id, tenant, key_id, model, deployment, \
             cloud, region, prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, \
             status, attempts, stream) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        for entry in batch {
            let r = match entry {
                Entry::Request(record) => record,
                Entry::Flush(_) => continue,
                Entry::Audit(a) => {
                    audit.execute(params![
                        a.unix_ms, a.actor, a.action, a.target, a.status, a.detail
                    ])?;
                    continue;
                }
            };
            insert.execute(params![
                r.unix_ms,
                r.request_id,
                r.tenant,
                r.key_id,
                r.model,
                r.deployment,
                r.cloud,
                r.region,
                r.prompt_tokens as i64,
                r.completion_tokens as i64,
                r.cost_usd,
                r.latency_ms,
                r.ttft_ms,
                r.status,
                r.attempts,
                r.stream,
            ])?;
        }
    }
    transaction.commit()
}

/// USD per tenant or per key.
pub type SpendBy = HashMap<String, f64>;

/// Spend since `since_ms` per tenant and per key.
pub fn spend_since(path: &Path, since_ms: i64) -> Result<(SpendBy, SpendBy), StoreError> {
    let connection = open_connection(path)?;
    let error = |source| StoreError::Sql { path: path.to_path_buf(), source };
    let sum = |column: &str| -> Result<SpendBy, StoreError> {
        let sql = format!(
            "SELECT {column}, SUM(cost_usd) FROM requests WHERE unix_ms >= ?1 AND {column} IS \
             NOT NULL GROUP BY 1"
        );
        let mut statement = connection.prepare(&sql).map_err(error)?;
        let rows = statement
            .query_map(params![since_ms], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, f64>(1)?))
            })
            .map_err(error)?;
        rows.collect::<Result<_, _>>().map_err(error)
    };
    Ok((sum("tenant")?, sum("key_id")?))
}

/// The latest audit entries, newest first.
pub fn recent_audit(path: &Path, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    let connection = open_connection(path)?;
    let error = |source| StoreError::Sql { path: path.to_path_buf(), source };
    let mut statement = connection
        .prepare(
            "SELECT unix_ms, actor, action, target, status, detail FROM audit \
             ORDER BY unix_ms DESC, rowid DESC LIMIT ?1",
        )
        .map_err(error)?;
    let rows = statement
        .query_map(params![limit], |row| {
            Ok(AuditEntry {
                unix_ms: row.get(0)?,
                actor: row.get(1)?,
                action: row.get(2)?,
                target: row.get(3)?,
                status: row.get(4)?,
                detail: row.get(5)?,
            })
        })
        .map_err(error)?;
    rows.collect::<Result<_, _>>().map_err(error)
}

/// Recorded spend on `cloud` from `from_ms` (inclusive) to `to_ms`
/// (exclusive).
pub fn cloud_spend(path: &Path, cloud: &str, from_ms: i64, to_ms: i64) -> Result<f64, StoreError> {
    let connection = open_connection(path)?;
    connection
        .query_row(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE cloud = ?1 AND unix_ms >= ?2 \
             AND unix_ms < ?3",
            params![cloud, from_ms, to_ms],
            |row| row.get(0),
        )
        .map_err(|source| StoreError::Sql { path: path.to_path_buf(), source })
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
    fn column(self) -> &'static str {
        match self {
            GroupBy::Cloud => "cloud",
            GroupBy::Tenant => "tenant",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment",
        }
    }
}

/// Usage from `from_ms` (inclusive) to `to_ms` (exclusive), by group,
/// largest spend first.
pub fn usage(
    path: &Path,
    by: GroupBy,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<UsageRow>, StoreError> {
    let connection = open_connection(path)?;
    let error = |source| StoreError::Sql { path: path.to_path_buf(), source };
    let sql = format!(
        "SELECT COALESCE({column}, '-'), COUNT(*), SUM(status >= 400), SUM(prompt_tokens), \
         SUM(completion_tokens), SUM(cost_usd) FROM requests \
         WHERE unix_ms >= ?1 AND unix_ms < ?2 GROUP BY 1 ORDER BY 6 DESC, 1",
        column = by.column()
    );
    let mut statement = connection.prepare(&sql).map_err(error)?;
    let rows = statement
        .query_map(params![from_ms, to_ms], |row| {
            Ok(UsageRow {
                group: row.get(0)?,
                requests: row.get::<_, i64>(1)? as u64,
                errors: row.get::<_, i64>(2)? as u64,
                prompt_tokens: row.get::<_, i64>(3)? as u64,
                completion_tokens: row.get::<_, i64>(4)? as u64,
                cost_usd: row.get(5)?,
            })
        })
        .map_err(error)?;
    rows.collect::<Result<_, _>>().map_err(error)
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

    #[test]
    fn records_are_written_and_summed() {
        let dir = std::env::temp_dir().join(format!("skyweave-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.db");
        let _ = std::fs::remove_file(&path);
        let ledger = Ledger::open(&path).unwrap();
        for i in 0..2500 {
            let cloud = if i % 5 == 0 { "gcp" } else { "aws" };
            ledger.record(record(i, cloud, 0.5, if i % 100 == 0 { 503 } else { 200 }));
        }
        ledger.close();
        let rows = usage(&path, GroupBy::Cloud, 0, i64::MAX).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].group.as_str(), rows[0].requests, rows[0].errors), ("aws", 2000, 0));
        assert_eq!((rows[1].group.as_str(), rows[1].requests, rows[1].errors), ("gcp", 500, 25));
        assert_eq!(rows[0].prompt_tokens, 20_000);
        assert!((rows[0].cost_usd - 1000.0).abs() < 1e-9);
        // The period bounds are honoured.
        let early = usage(&path, GroupBy::Cloud, 0, 1_010).unwrap();
        assert_eq!(early.iter().map(|r| r.requests).sum::<u64>(), 10);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
