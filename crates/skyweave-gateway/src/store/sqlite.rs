//! The SQLite backend: one file in WAL mode. Every process on the host
//! opens it; commits survive the process being killed (`synchronous =
//! NORMAL`: only a power loss can undo the last ones).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection};

use super::{SpendDeltas, SpendTotals, StoreError};
use crate::keystore::{KeyRecord, Narrowing};
use crate::ledger::{AuditEntry, Entry, GroupBy, UsageRow};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    hash BLOB NOT NULL,
    created_unix INTEGER NOT NULL,
    expires_unix INTEGER,
    revoked_unix INTEGER,
    models TEXT,
    clouds TEXT,
    regions TEXT,
    rpm INTEGER,
    tpm INTEGER,
    budget_usd REAL
);
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

/// Created apart, so that a database from before it gets its spend
/// summed from the ledger once.
const SPEND_SCHEMA: &str = "
CREATE TABLE spend_daily (
    day INTEGER NOT NULL,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    replica TEXT NOT NULL,
    usd REAL NOT NULL,
    PRIMARY KEY (day, scope, name, replica)
);
INSERT INTO spend_daily (day, scope, name, replica, usd)
    SELECT unix_ms / 86400000, 'tenant', tenant, 'ledger', SUM(cost_usd) FROM requests
    WHERE tenant IS NOT NULL GROUP BY 1, 3;
INSERT INTO spend_daily (day, scope, name, replica, usd)
    SELECT unix_ms / 86400000, 'key', key_id, 'ledger', SUM(cost_usd) FROM requests
    WHERE key_id IS NOT NULL GROUP BY 1, 3;
INSERT INTO spend_daily (day, scope, name, replica, usd)
    SELECT unix_ms / 86400000, 'cloud', cloud, 'ledger', SUM(cost_usd) FROM requests
    WHERE cloud IS NOT NULL GROUP BY 1, 3;";

pub(crate) struct Db {
    path: PathBuf,
    connection: Connection,
}

impl Db {
    pub(crate) fn open(path: &Path) -> Result<Db, StoreError> {
        let at = path.display().to_string();
        let error = |source| StoreError::Sqlite { at: at.clone(), error: source };
        let mut connection = Connection::open(path).map_err(error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| connection.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| connection.busy_timeout(Duration::from_secs(5)))
            .and_then(|_| connection.execute_batch(SCHEMA))
            .map_err(error)?;
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(error)?;
        let has_spend: bool = transaction
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = \
                 'spend_daily'",
                [],
                |row| row.get(0),
            )
            .map_err(error)?;
        if !has_spend {
            transaction.execute_batch(SPEND_SCHEMA).map_err(error)?;
        }
        transaction.commit().map_err(error)?;
        Ok(Db { path: path.to_path_buf(), connection })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { at: self.path.display().to_string(), error: source }
    }

    pub(crate) fn data_version(&self) -> Result<i64, StoreError> {
        self.connection
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(|e| self.error(e))
    }

    pub(crate) fn insert_key(
        &self,
        id: &str,
        tenant: &str,
        name: &str,
        hash: &[u8; 32],
        narrowing: &Narrowing,
        now_unix: i64,
    ) -> Result<(), StoreError> {
        let list = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.join(","));
        self.connection
            .execute(
                "INSERT INTO api_keys (id, tenant, name, hash, created_unix, expires_unix, \
                 models, clouds, regions, rpm, tpm, budget_usd) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    id,
                    tenant,
                    name,
                    &hash[..],
                    now_unix,
                    narrowing.expires_unix,
                    list(&narrowing.models),
                    list(&narrowing.clouds),
                    list(&narrowing.regions),
                    narrowing.rpm,
                    narrowing.tpm,
                    narrowing.budget_usd,
                ],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub(crate) fn revoke_key(&self, id: &str, now_unix: i64) -> Result<bool, StoreError> {
        let changed = self
            .connection
            .execute(
                "UPDATE api_keys SET revoked_unix = COALESCE(revoked_unix, ?2) WHERE id = ?1",
                params![id, now_unix],
            )
            .map_err(|e| self.error(e))?;
        Ok(changed == 1)
    }

    pub(crate) fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let load = || -> rusqlite::Result<Vec<KeyRecord>> {
            let mut statement = self.connection.prepare_cached(
                "SELECT id, tenant, name, hash, created_unix, expires_unix, revoked_unix, \
                 models, clouds, regions, rpm, tpm, budget_usd FROM api_keys",
            )?;
            let rows = statement.query_map([], |row| {
                let hash: Vec<u8> = row.get(3)?;
                Ok(KeyRecord {
                    id: row.get(0)?,
                    tenant: row.get(1)?,
                    name: row.get(2)?,
                    hash: crate::keystore::fixed_hash(&hash),
                    created_unix: row.get(4)?,
                    expires_unix: row.get(5)?,
                    revoked_unix: row.get(6)?,
                    models: crate::keystore::split_list(row.get(7)?),
                    clouds: crate::keystore::split_list(row.get(8)?),
                    regions: crate::keystore::split_list(row.get(9)?),
                    rpm: row.get(10)?,
                    tpm: row.get(11)?,
                    budget_usd: row.get(12)?,
                })
            })?;
            rows.collect()
        };
        load().map_err(|e| self.error(e))
    }

    pub(crate) fn write(
        &mut self,
        batch: &[Entry],
        spend: &SpendDeltas,
        replica: &str,
    ) -> Result<(), StoreError> {
        let write = |connection: &mut Connection| -> rusqlite::Result<()> {
            let transaction = connection.transaction()?;
            {
                let mut audit = transaction.prepare_cached(
                    "INSERT INTO audit (unix_ms, actor, action, target, status, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO requests (unix_ms, request_id, tenant, key_id, model, \
                     deployment, cloud, region, prompt_tokens, completion_tokens, cost_usd, \
                     latency_ms, ttft_ms, status, attempts, stream) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
                     ?16)",
                )?;
                for entry in batch {
                    match entry {
                        Entry::Flush(_) => {}
                        Entry::Audit(a) => {
                            audit.execute(params![
                                a.unix_ms, a.actor, a.action, a.target, a.status, a.detail
                            ])?;
                        }
                        Entry::Request(r) => {
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
                }
                let mut add = transaction.prepare_cached(
                    "INSERT INTO spend_daily (day, scope, name, replica, usd) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (day, scope, name, replica) DO UPDATE SET usd = usd + \
                     excluded.usd",
                )?;
                for ((day, scope, name), usd) in spend {
                    add.execute(params![day, scope, name, replica, usd])?;
                }
            }
            transaction.commit()
        };
        write(&mut self.connection).map_err(|e| self.error(e))
    }

    pub(crate) fn usage(
        &self,
        by: GroupBy,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let sql = format!(
            "SELECT COALESCE({column}, '-'), COUNT(*), SUM(status >= 400), SUM(prompt_tokens), \
             SUM(completion_tokens), SUM(cost_usd) FROM requests \
             WHERE unix_ms >= ?1 AND unix_ms < ?2 GROUP BY 1 ORDER BY 6 DESC, 1",
            column = by.column()
        );
        let query = || -> rusqlite::Result<Vec<UsageRow>> {
            let mut statement = self.connection.prepare(&sql)?;
            let rows = statement.query_map(params![from_ms, to_ms], |row| {
                Ok(UsageRow {
                    group: row.get(0)?,
                    requests: row.get::<_, i64>(1)? as u64,
                    errors: row.get::<_, i64>(2)? as u64,
                    prompt_tokens: row.get::<_, i64>(3)? as u64,
                    completion_tokens: row.get::<_, i64>(4)? as u64,
                    cost_usd: row.get(5)?,
                })
            })?;
            rows.collect()
        };
        query().map_err(|e| self.error(e))
    }

    pub(crate) fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let query = || -> rusqlite::Result<Vec<AuditEntry>> {
            let mut statement = self.connection.prepare(
                "SELECT unix_ms, actor, action, target, status, detail FROM audit \
                 ORDER BY unix_ms DESC, rowid DESC LIMIT ?1",
            )?;
            let rows = statement.query_map(params![limit], |row| {
                Ok(AuditEntry {
                    unix_ms: row.get(0)?,
                    actor: row.get(1)?,
                    action: row.get(2)?,
                    target: row.get(3)?,
                    status: row.get(4)?,
                    detail: row.get(5)?,
                })
            })?;
            rows.collect()
        };
        query().map_err(|e| self.error(e))
    }

    pub(crate) fn cloud_spend(
        &self,
        cloud: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<f64, StoreError> {
        self.connection
            .query_row(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE cloud = ?1 AND unix_ms >= \
                 ?2 AND unix_ms < ?3",
                params![cloud, from_ms, to_ms],
                |row| row.get(0),
            )
            .map_err(|e| self.error(e))
    }

    pub(crate) fn spend_totals(
        &self,
        except_replica: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<SpendTotals, StoreError> {
        let query = || -> rusqlite::Result<SpendTotals> {
            let mut statement = self.connection.prepare_cached(
                "SELECT scope, name, SUM(usd) FROM spend_daily WHERE day >= ?1 AND day <= ?2 \
                 AND replica <> ?3 GROUP BY 1, 2",
            )?;
            let rows = statement.query_map(params![from_day, to_day, except_replica], |row| {
                Ok(((row.get(0)?, row.get(1)?), row.get(2)?))
            })?;
            rows.collect()
        };
        query().map_err(|e| self.error(e))
    }
}
