//! Where API keys, the usage ledger and the audit log live: a SQLite file
//! (WAL; one host, any number of processes on it) or a PostgreSQL server
//! (many replicas on many hosts). One file per backend; this module is the
//! front both are used through.
//!
//! The schema is the same in both:
//!
//! - `api_keys`: one row per key, its SHA-256 only;
//! - `requests`: the ledger, one row per API request;
//! - `audit`: admin actions and policy refusals;
//! - `spend_daily`: USD per day, scope (`tenant`, `key`, `cloud`), name and
//!   replica, added to in the same transaction as the requests it sums. A
//!   replica reads the other replicas' spend from it (a few rows, however
//!   long the ledger) to hold budgets and commitments across replicas.

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::keystore::{KeyRecord, Narrowing};
use crate::ledger::{AuditEntry, Entry, GroupBy, UsageRow};

pub(crate) use postgres::{watch_keys, KeyWatch};

/// Which database, before connecting.
#[derive(Clone)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(Box<PostgresTarget>),
}

/// A PostgreSQL server and database, with a description safe to show (no
/// password).
#[derive(Clone)]
pub struct PostgresTarget {
    config: tokio_postgres::Config,
    shown: String,
}

impl PostgresTarget {
    /// Parses a connection string (`postgres://user:password@host:port/db`
    /// or `host=... user=... dbname=...`) read from environment variable
    /// `from_env`. The error never repeats the string (it may hold a
    /// password).
    pub fn parse(url: &str, from_env: &str) -> Result<PostgresTarget, String> {
        // The driver splits user:password from the host at the first `@`:
        // an unencoded `@` in the password would put its tail in the host
        // name (and so in every message that names the server).
        if let Some(rest) =
            url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))
        {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            if authority.matches('@').count() > 1 {
                return Err(format!(
                    "the URL in {from_env} has more than one `@` before the host; write an `@` \
                     in the user name or password as %40"
                ));
            }
        }
        let mut config: tokio_postgres::Config = url.parse().map_err(|error| {
            format!(
                "the value of {from_env} is not a PostgreSQL connection string ({error}); write \
                 it as postgres://user:password@host:5432/dbname"
            )
        })?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        // Unless the URL says otherwise: give up connecting after 10 s, and
        // notice a dead connection within a minute rather than the
        // operating system's two hours.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_keepalives_idle() >= Duration::from_secs(7200) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "PostgreSQL {}@{}:{}/{} (from {from_env})",
            config.get_user().unwrap_or("-"),
            if hosts.is_empty() { "localhost".to_string() } else { hosts.join(",") },
            port,
            config.get_dbname().unwrap_or("-"),
        );
        Ok(PostgresTarget { config, shown })
    }
}

impl Database {
    /// Where the data is, for messages: a path, or the server without its
    /// password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(target) => target.shown.clone(),
        }
    }
}

/// A database failure. The message carries the whole chain of causes
/// (PostgreSQL's own error under the driver's), so that a log line has it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {at}: {}", chain(.error))]
    Sqlite { at: String, error: rusqlite::Error },
    #[error("database {at}: {}", chain(.error))]
    Postgres { at: String, error: tokio_postgres::Error },
    #[error("database {at}: cannot start its writer thread: {error}")]
    Thread { at: String, error: std::io::Error },
    #[error("database {at}: no answer within {} s", .after.as_secs())]
    Timeout { at: String, after: Duration },
}

impl StoreError {
    /// Whether trying again (on a fresh connection) may succeed: the
    /// database was unreachable, restarting, busy or slow. A value or
    /// statement it refuses is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Postgres { error, .. } => {
                if error.is_closed() {
                    return true;
                }
                if let Some(db) = error.as_db_error() {
                    // Connection exceptions, operator intervention
                    // (shutdown, terminated backends), insufficient
                    // resources, serialization failures and lock timeouts.
                    let code = db.code().code();
                    return ["08", "57", "53", "40"].iter().any(|class| code.starts_with(class))
                        || code == "55P03";
                }
                // Otherwise an I/O failure (connect, reset) is passing; a
                // conversion of our own values is not.
                std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
            }
            StoreError::Sqlite { error, .. } => {
                use rusqlite::ErrorCode::*;
                matches!(
                    error.sqlite_error_code(),
                    Some(
                        DatabaseBusy
                            | DatabaseLocked
                            | DiskFull
                            | SystemIoFailure
                            | CannotOpen
                            | OutOfMemory
                    )
                )
            }
            StoreError::Thread { .. } | StoreError::Timeout { .. } => true,
        }
    }
}

/// Longest wait for one PostgreSQL statement or batch before the
/// connection is given up as hung.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Spend added by one ledger batch: (day, scope, name) -> USD.
pub(crate) type SpendDeltas = HashMap<(i64, &'static str, String), f64>;

/// Total USD per (scope, name) over a range of days.
pub type SpendTotals = HashMap<(String, String), f64>;

/// A connection for everything but the ledger's writes (which have a
/// thread and a connection of their own).
pub struct Store {
    at: String,
    backend: Backend,
}

enum Backend {
    Sqlite(Mutex<sqlite::Db>),
    Postgres(Pg),
}

/// A PostgreSQL connection that is replaced when it closes (the server
/// restarted, the connection was terminated).
struct Pg {
    target: PostgresTarget,
    current: Mutex<Arc<postgres::Db>>,
}

impl Pg {
    async fn fresh(&self) -> Result<Arc<postgres::Db>, StoreError> {
        let db = Arc::new(postgres::Db::connect(&self.target.config, &self.target.shown).await?);
        *self.current.lock().expect("database lock") = db.clone();
        Ok(db)
    }

    /// A live connection: the current one, or a new one if it has closed.
    async fn live(&self) -> Result<Arc<postgres::Db>, StoreError> {
        let db = self.current.lock().expect("database lock").clone();
        if db.is_closed() {
            self.fresh().await
        } else {
            Ok(db)
        }
    }

    async fn timed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(QUERY_TIMEOUT, op).await.unwrap_or_else(|_| {
            Err(StoreError::Timeout { at: self.target.shown.clone(), after: QUERY_TIMEOUT })
        })
    }

    /// Runs an idempotent `op` on a live connection, and once more on a
    /// fresh one if it fails for a passing reason (the connection closed,
    /// the backend was terminated, no answer in time).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<postgres::Db>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        match self.timed(op(self.live().await?)).await {
            Err(error) if error.is_transient() => self.timed(op(self.fresh().await?)).await,
            result => result,
        }
    }

    /// Runs `op` once: for writes whose outcome a lost connection leaves in
    /// doubt.
    async fn run_once<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<postgres::Db>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        self.timed(op(self.live().await?)).await
    }
}

impl Store {
    /// Connects, creating the tables if they are missing.
    pub async fn open(database: &Database) -> Result<Store, StoreError> {
        let at = database.describe();
        let backend = match database {
            Database::Sqlite(path) => Backend::Sqlite(Mutex::new(sqlite::Db::open(path)?)),
            Database::Postgres(target) => Backend::Postgres(Pg {
                current: Mutex::new(Arc::new(
                    postgres::Db::connect(&target.config, &target.shown).await?,
                )),
                target: (**target).clone(),
            }),
        };
        Ok(Store { at, backend })
    }

    pub fn describe(&self) -> &str {
        &self.at
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    fn sqlite(&self) -> Option<std::sync::MutexGuard<'_, sqlite::Db>> {
        match &self.backend {
            Backend::Sqlite(db) => Some(db.lock().expect("database lock")),
            Backend::Postgres(_) => None,
        }
    }

    /// SQLite's `PRAGMA data_version`: changes when another connection
    /// commits. `None` for PostgreSQL (see [`watch_keys`]).
    pub(crate) fn data_version(&self) -> Result<Option<i64>, StoreError> {
        match self.sqlite() {
            Some(db) => db.data_version().map(Some),
            None => Ok(None),
        }
    }

    pub(crate) async fn insert_key(
        &self,
        id: &str,
        tenant: &str,
        name: &str,
        hash: &[u8; 32],
        narrowing: &Narrowing,
        now_unix: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db
                .lock()
                .expect("database lock")
                .insert_key(id, tenant, name, hash, narrowing, now_unix),
            Backend::Postgres(pg) => {
                pg.run_once(|db| async move {
                    db.insert_key(id, tenant, name, hash, narrowing, now_unix).await
                })
                .await
            }
        }
    }

    pub(crate) async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.lock().expect("database lock").keys(),
            Backend::Postgres(pg) => pg.run(|db| async move { db.keys().await }).await,
        }
    }

    pub(crate) async fn revoke_key(&self, id: &str, now_unix: i64) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.lock().expect("database lock").revoke_key(id, now_unix),
            Backend::Postgres(pg) => {
                pg.run(|db| async move { db.revoke_key(id, now_unix).await }).await
            }
        }
    }

    /// Usage from `from_ms` (inclusive) to `to_ms` (exclusive), by group,
    /// largest spend first.
    pub async fn usage(
        &self,
        by: GroupBy,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.lock().expect("database lock").usage(by, from_ms, to_ms),
            Backend::Postgres(pg) => {
                pg.run(|db| async move { db.usage(by, from_ms, to_ms).await }).await
            }
        }
    }

    /// The latest audit entries, newest first.
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.lock().expect("database lock").recent_audit(limit),
            Backend::Postgres(pg) => pg.run(|db| async move { db.recent_audit(limit).await }).await,
        }
    }

    /// Recorded spend on `cloud` from `from_ms` (inclusive) to `to_ms`
    /// (exclusive), from the ledger's rows.
    pub async fn cloud_spend(
        &self,
        cloud: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<f64, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                db.lock().expect("database lock").cloud_spend(cloud, from_ms, to_ms)
            }
            Backend::Postgres(pg) => {
                pg.run(|db| async move { db.cloud_spend(cloud, from_ms, to_ms).await }).await
            }
        }
    }

    /// USD per (scope, name) recorded on days `from_day..=to_day` by every
    /// replica but `except_replica`.
    pub async fn spend_totals(
        &self,
        except_replica: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<SpendTotals, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                db.lock().expect("database lock").spend_totals(except_replica, from_day, to_day)
            }
            Backend::Postgres(pg) => {
                pg.run(|db| async move { db.spend_totals(except_replica, from_day, to_day).await })
                    .await
            }
        }
    }
}

/// The ledger writer's own connection, used from its thread only.
pub(crate) enum Writer {
    Sqlite(sqlite::Db),
    /// A current-thread runtime of its own: the writer thread blocks on it,
    /// outside the gateway's runtime.
    Postgres(Box<PgWriter>),
}

pub(crate) struct PgWriter {
    runtime: tokio::runtime::Runtime,
    db: postgres::Db,
    target: PostgresTarget,
}

impl Writer {
    pub(crate) fn open(database: &Database) -> Result<Writer, StoreError> {
        match database {
            Database::Sqlite(path) => Ok(Writer::Sqlite(sqlite::Db::open(path)?)),
            Database::Postgres(target) => {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(
                        |source| StoreError::Thread { at: target.shown.clone(), error: source },
                    )?;
                let db = runtime.block_on(postgres::Db::connect(&target.config, &target.shown))?;
                Ok(Writer::Postgres(Box::new(PgWriter { runtime, db, target: (**target).clone() })))
            }
        }
    }

    /// Commits one batch (requests, audit entries and the spend they add)
    /// in one transaction.
    /// `sequence` numbers this writer's batches: PostgreSQL skips a batch
    /// whose number it already committed (a retry after a connection lost
    /// at commit time). A local SQLite commit cannot be in doubt.
    pub(crate) fn write(
        &mut self,
        batch: &[Entry],
        spend: &SpendDeltas,
        replica: &str,
        sequence: i64,
    ) -> Result<(), StoreError> {
        match self {
            Writer::Sqlite(db) => db.write(batch, spend, replica),
            Writer::Postgres(w) => {
                let at = w.target.shown.clone();
                let write = w.db.write(batch, spend, replica, sequence);
                // The timer is made inside the runtime, which drives it.
                w.runtime
                    .block_on(async { tokio::time::timeout(QUERY_TIMEOUT, write).await })
                    .unwrap_or(Err(StoreError::Timeout { at, after: QUERY_TIMEOUT }))
            }
        }
    }

    /// A fresh connection after a failure (PostgreSQL restarted, the
    /// network dropped).
    pub(crate) fn reconnect(&mut self) -> Result<(), StoreError> {
        match self {
            Writer::Sqlite(db) => {
                let path = db.path().to_path_buf();
                *db = sqlite::Db::open(&path)?;
            }
            Writer::Postgres(w) => {
                w.db =
                    w.runtime.block_on(postgres::Db::connect(&w.target.config, &w.target.shown))?;
            }
        }
        Ok(())
    }
}
