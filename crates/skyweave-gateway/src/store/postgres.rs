//! The PostgreSQL backend, for many replicas: `tokio-postgres` over TCP or
//! a Unix socket (no TLS: reach the server over a trusted network or a
//! local proxy).
//!
//! A ledger batch is one transaction of three statements whatever its
//! size: each table's rows go in as arrays (`INSERT ... SELECT FROM
//! UNNEST(...)`). Key changes are announced with `NOTIFY skyweave_keys`;
//! every serving replica listens (see [`watch_keys`]) and reloads its keys.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{PostgresTarget, SpendDeltas, SpendTotals, StoreError};
use crate::keystore::{KeyRecord, Narrowing};
use crate::ledger::{AuditEntry, Entry, GroupBy, UsageRow};

/// The advisory lock is taken while creating tables, so that replicas
/// starting together do not race on `CREATE TABLE IF NOT EXISTS`.
const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(8317708158400718437);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    hash BYTEA NOT NULL,
    created_unix BIGINT NOT NULL,
    expires_unix BIGINT,
    revoked_unix BIGINT,
    models TEXT,
    clouds TEXT,
    regions TEXT,
    rpm BIGINT,
    tpm BIGINT,
    budget_usd DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    unix_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    unix_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    tenant TEXT,
    key_id TEXT,
    model TEXT NOT NULL,
    deployment TEXT,
    cloud TEXT,
    region TEXT,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    status INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    stream BOOLEAN NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (unix_ms);
CREATE TABLE IF NOT EXISTS spend_daily (
    day BIGINT NOT NULL,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    replica TEXT NOT NULL,
    usd DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (day, scope, name, replica)
);
CREATE TABLE IF NOT EXISTS ledger_batches (
    replica TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL
);
COMMIT;";

/// Whether every table and index of [`SCHEMA`] exists: then no DDL runs
/// (it would need the tables' owner and take locks on every connect).
const SCHEMA_PRESENT: &str = "SELECT to_regclass('api_keys') IS NOT NULL AND \
    to_regclass('audit') IS NOT NULL AND to_regclass('requests') IS NOT NULL AND \
    to_regclass('requests_time') IS NOT NULL AND to_regclass('spend_daily') IS NOT NULL AND \
    to_regclass('ledger_batches') IS NOT NULL";

const CHANNEL: &str = "skyweave_keys";

/// How often the key-change listener checks that its connection lives.
const HEARTBEAT: Duration = Duration::from_secs(10);

pub(crate) struct Db {
    at: String,
    client: Client,
    /// Drives the connection; ends when `client` is dropped.
    _connection: tokio::task::JoinHandle<()>,
}

impl Db {
    /// Connects on the current runtime and creates the tables if missing.
    pub(crate) async fn connect(
        config: &tokio_postgres::Config,
        at: &str,
    ) -> Result<Db, StoreError> {
        let error = |source| StoreError::Postgres { at: at.to_string(), error: source };
        let (client, connection) = config.connect(NoTls).await.map_err(error)?;
        let shown = at.to_string();
        let connection = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(database = shown.as_str(), error = %error, "database connection ended");
            }
        });
        let present: bool = client
            .query_one(SCHEMA_PRESENT, &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(error)?;
        if !present {
            client.batch_execute(SCHEMA).await.map_err(error)?;
        }
        Ok(Db { at: at.to_string(), client, _connection: connection })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn error(&self, source: tokio_postgres::Error) -> StoreError {
        StoreError::Postgres { at: self.at.clone(), error: source }
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
        let list = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.join(","));
        let (models, clouds, regions) =
            (list(&narrowing.models), list(&narrowing.clouds), list(&narrowing.regions));
        let (rpm, tpm) = (narrowing.rpm.map(i64::from), narrowing.tpm.map(i64::from));
        // One statement: the key and the notification are committed
        // together (a notification is delivered at commit).
        self.client
            .query(
                "WITH added AS (INSERT INTO api_keys (id, tenant, name, hash, created_unix, \
                 expires_unix, models, clouds, regions, rpm, tpm, budget_usd) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id) \
                 SELECT pg_notify('skyweave_keys', id) FROM added",
                &[
                    &id,
                    &tenant,
                    &name,
                    &&hash[..],
                    &now_unix,
                    &narrowing.expires_unix,
                    &models,
                    &clouds,
                    &regions,
                    &rpm,
                    &tpm,
                    &narrowing.budget_usd,
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub(crate) async fn revoke_key(&self, id: &str, now_unix: i64) -> Result<bool, StoreError> {
        let rows = self
            .client
            .query(
                "WITH revoked AS (UPDATE api_keys SET revoked_unix = COALESCE(revoked_unix, $2) \
                 WHERE id = $1 RETURNING id) SELECT pg_notify('skyweave_keys', id) FROM revoked",
                &[&id, &now_unix],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.len() == 1)
    }

    pub(crate) async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, tenant, name, hash, created_unix, expires_unix, revoked_unix, \
                 models, clouds, regions, rpm, tpm, budget_usd FROM api_keys",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        let limit = |v: Option<i64>| v.map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX));
        rows.iter()
            .map(|row| {
                let hash: Vec<u8> = row.try_get(3)?;
                Ok(KeyRecord {
                    id: row.try_get(0)?,
                    tenant: row.try_get(1)?,
                    name: row.try_get(2)?,
                    hash: crate::keystore::fixed_hash(&hash),
                    created_unix: row.try_get(4)?,
                    expires_unix: row.try_get(5)?,
                    revoked_unix: row.try_get(6)?,
                    models: crate::keystore::split_list(row.try_get(7)?),
                    clouds: crate::keystore::split_list(row.try_get(8)?),
                    regions: crate::keystore::split_list(row.try_get(9)?),
                    rpm: limit(row.try_get(10)?),
                    tpm: limit(row.try_get(11)?),
                    budget_usd: row.try_get(12)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.error(e))
    }

    pub(crate) async fn write(
        &mut self,
        batch: &[Entry],
        spend: &SpendDeltas,
        replica: &str,
        sequence: i64,
    ) -> Result<(), StoreError> {
        let requests: Vec<_> = batch
            .iter()
            .filter_map(|e| if let Entry::Request(r) = e { Some(r) } else { None })
            .collect();
        let audits: Vec<_> = batch
            .iter()
            .filter_map(|e| if let Entry::Audit(a) = e { Some(a) } else { None })
            .collect();
        let at = self.at.clone();
        let error = |source| StoreError::Postgres { at: at.clone(), error: source };
        let transaction = self.client.transaction().await.map_err(error)?;
        // First: this batch's number. If it is not above the last one
        // recorded for this replica, the batch was committed by an attempt
        // whose answer was lost; roll back and report success.
        let fresh = transaction
            .execute(
                "INSERT INTO ledger_batches (replica, sequence) VALUES ($1, $2) \
                 ON CONFLICT (replica) DO UPDATE SET sequence = EXCLUDED.sequence \
                 WHERE ledger_batches.sequence < EXCLUDED.sequence",
                &[&replica, &sequence],
            )
            .await
            .map_err(error)?;
        if fresh == 0 {
            return Ok(());
        }
        if !requests.is_empty() {
            let col =
                |f: &dyn Fn(&crate::ledger::Record) -> Option<&str>| -> Vec<Option<Cow<str>>> {
                    requests.iter().map(|r| f(r).map(text)).collect()
                };
            let unix_ms: Vec<i64> = requests.iter().map(|r| r.unix_ms).collect();
            let request_id = col(&|r| Some(r.request_id.as_str()));
            let tenant = col(&|r| r.tenant.as_deref());
            let key_id = col(&|r| r.key_id.as_deref());
            let model = col(&|r| Some(r.model.as_str()));
            let deployment = col(&|r| r.deployment.as_deref());
            let cloud = col(&|r| r.cloud.as_deref());
            let region = col(&|r| r.region.as_deref());
            let prompt: Vec<i64> = requests.iter().map(|r| r.prompt_tokens as i64).collect();
            let completion: Vec<i64> =
                requests.iter().map(|r| r.completion_tokens as i64).collect();
            let cost: Vec<f64> = requests.iter().map(|r| r.cost_usd).collect();
            let latency: Vec<f64> = requests.iter().map(|r| r.latency_ms).collect();
            let ttft: Vec<Option<f64>> = requests.iter().map(|r| r.ttft_ms).collect();
            let status: Vec<i32> = requests.iter().map(|r| i32::from(r.status)).collect();
            let attempts: Vec<i32> =
                requests.iter().map(|r| i32::try_from(r.attempts).unwrap_or(i32::MAX)).collect();
            let stream: Vec<bool> = requests.iter().map(|r| r.stream).collect();
            let params: [&(dyn ToSql + Sync); 16] = [
                &unix_ms,
                &request_id,
                &tenant,
                &key_id,
                &model,
                &deployment,
                &cloud,
                &region,
                &prompt,
                &completion,
                &cost,
                &latency,
                &ttft,
                &status,
                &attempts,
                &stream,
            ];
            transaction
                .execute(
                    "INSERT INTO requests (unix_ms, request_id, tenant, key_id, model, \
                     deployment, cloud, region, prompt_tokens, completion_tokens, cost_usd, \
                     latency_ms, ttft_ms, status, attempts, stream) \
                     SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
                     $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::BIGINT[], \
                     $10::BIGINT[], $11::FLOAT8[], $12::FLOAT8[], $13::FLOAT8[], \
                     $14::INTEGER[], $15::INTEGER[], $16::BOOLEAN[])",
                    &params,
                )
                .await
                .map_err(error)?;
        }
        if !audits.is_empty() {
            let unix_ms: Vec<i64> = audits.iter().map(|a| a.unix_ms).collect();
            let actor: Vec<Cow<str>> = audits.iter().map(|a| text(&a.actor)).collect();
            let action: Vec<Cow<str>> = audits.iter().map(|a| text(&a.action)).collect();
            let target: Vec<Cow<str>> = audits.iter().map(|a| text(&a.target)).collect();
            let status: Vec<i32> = audits.iter().map(|a| i32::from(a.status)).collect();
            let detail: Vec<Cow<str>> = audits.iter().map(|a| text(&a.detail)).collect();
            // WITH ORDINALITY keeps the batch's order in the serial ids.
            transaction
                .execute(
                    "INSERT INTO audit (unix_ms, actor, action, target, status, detail) \
                     SELECT m, a, c, t, s, d FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], \
                     $4::TEXT[], $5::INTEGER[], $6::TEXT[]) WITH ORDINALITY AS x(m, a, c, t, s, \
                     d, n) ORDER BY n",
                    &[&unix_ms, &actor, &action, &target, &status, &detail],
                )
                .await
                .map_err(error)?;
        }
        if !spend.is_empty() {
            let day: Vec<i64> = spend.keys().map(|k| k.0).collect();
            let scope: Vec<&str> = spend.keys().map(|k| k.1).collect();
            let name: Vec<Cow<str>> = spend.keys().map(|k| text(&k.2)).collect();
            let usd: Vec<f64> = spend.values().copied().collect();
            transaction
                .execute(
                    "INSERT INTO spend_daily (day, scope, name, replica, usd) \
                     SELECT d, s, n, $5, u FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], \
                     $4::FLOAT8[]) AS x(d, s, n, u) \
                     ON CONFLICT (day, scope, name, replica) DO UPDATE SET usd = spend_daily.usd \
                     + EXCLUDED.usd",
                    &[&day, &scope, &name, &usd, &replica],
                )
                .await
                .map_err(error)?;
        }
        transaction.commit().await.map_err(error)
    }

    pub(crate) async fn usage(
        &self,
        by: GroupBy,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let sql = format!(
            "SELECT COALESCE({column}, '-'), COUNT(*), COUNT(*) FILTER (WHERE status >= 400), \
             COALESCE(SUM(prompt_tokens), 0)::BIGINT, \
             COALESCE(SUM(completion_tokens), 0)::BIGINT, COALESCE(SUM(cost_usd), 0) \
             FROM requests WHERE unix_ms >= $1 AND unix_ms < $2 \
             GROUP BY 1 ORDER BY 6 DESC, COALESCE({column}, '-') COLLATE \"C\"",
            column = by.column()
        );
        let rows = self.client.query(&sql, &[&from_ms, &to_ms]).await.map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                Ok(UsageRow {
                    group: row.try_get(0)?,
                    requests: row.try_get::<_, i64>(1)? as u64,
                    errors: row.try_get::<_, i64>(2)? as u64,
                    prompt_tokens: row.try_get::<_, i64>(3)? as u64,
                    completion_tokens: row.try_get::<_, i64>(4)? as u64,
                    cost_usd: row.try_get(5)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.error(e))
    }

    pub(crate) async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT unix_ms, actor, action, target, status, detail FROM audit \
                 ORDER BY unix_ms DESC, id DESC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await
            .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    unix_ms: row.try_get(0)?,
                    actor: row.try_get(1)?,
                    action: row.try_get(2)?,
                    target: row.try_get(3)?,
                    status: u16::try_from(row.try_get::<_, i32>(4)?).unwrap_or(0),
                    detail: row.try_get(5)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.error(e))
    }

    pub(crate) async fn cloud_spend(
        &self,
        cloud: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<f64, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE cloud = $1 AND unix_ms >= \
                 $2 AND unix_ms < $3",
                &[&cloud, &from_ms, &to_ms],
            )
            .await
            .map_err(|e| self.error(e))?;
        row.try_get(0).map_err(|e| self.error(e))
    }

    pub(crate) async fn spend_totals(
        &self,
        except_replica: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<SpendTotals, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT scope, name, SUM(usd) FROM spend_daily WHERE day >= $1 AND day <= $2 \
                 AND replica <> $3 GROUP BY 1, 2",
                &[&from_day, &to_day, &except_replica],
            )
            .await
            .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| Ok(((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.error(e))
    }
}

/// PostgreSQL text cannot hold NUL; a caller-supplied name with one is
/// stored with U+FFFD in its place rather than refused with its batch.
fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// A task listening for key changes on its own connection. `generation`
/// moves on every change, connect and disconnect; while `listening` is
/// false a change could go unseen, so the key store reloads on every
/// lookup. The task ends when this is dropped.
pub(crate) struct KeyWatch {
    pub generation: Arc<AtomicU64>,
    pub listening: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts listening on the current runtime.
pub(crate) fn watch_keys(target: &PostgresTarget) -> KeyWatch {
    let generation = Arc::new(AtomicU64::new(0));
    let listening = Arc::new(AtomicBool::new(false));
    let (config, at) = (target.config.clone(), target.shown.clone());
    let (g, l) = (generation.clone(), listening.clone());
    let task = tokio::spawn(async move {
        loop {
            match config.connect(NoTls).await {
                Err(error) => {
                    tracing::warn!(database = at.as_str(), error = %error, "cannot listen for key changes; keys are re-read on every request until it can")
                }
                Ok((client, mut connection)) => {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            std::pin::pin!(futures::stream::poll_fn(
                                move |cx| connection.poll_message(cx)
                            ));
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(AsyncMessage::Notification(_)) => {
                                    let _ = tx.send(());
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    });
                    if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
                        g.fetch_add(1, Ordering::SeqCst);
                        l.store(true, Ordering::SeqCst);
                        tracing::info!(database = at.as_str(), "listening for key changes");
                        // A heartbeat, so that a connection that died
                        // without a word (a half-open TCP connection) is
                        // noticed within seconds, not hours.
                        let mut heartbeat = tokio::time::interval(HEARTBEAT);
                        heartbeat.tick().await;
                        loop {
                            tokio::select! {
                                message = rx.recv() => match message {
                                    Some(()) => { g.fetch_add(1, Ordering::SeqCst); }
                                    None => break,
                                },
                                _ = heartbeat.tick() => {
                                    let alive = tokio::time::timeout(HEARTBEAT / 2, client.simple_query("SELECT 1")).await;
                                    if !matches!(alive, Ok(Ok(_))) {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    l.store(false, Ordering::SeqCst);
                    g.fetch_add(1, Ordering::SeqCst);
                    driver.abort();
                    tracing::warn!(
                        database = at.as_str(),
                        "lost the key-change listener; reconnecting"
                    );
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    KeyWatch { generation, listening, task }
}
