//! API keys in the estate's SQLite database (WAL mode).
//!
//! Only each key's SHA-256 is stored (see `skyweave_core::keys`). The
//! gateway keeps the table in memory and, before each authentication,
//! asks SQLite whether another connection (`skyweave keys revoke`, another
//! replica's admin call) changed the file (`PRAGMA data_version`, answered
//! from the shared WAL index without reading the table); if so it reloads.
//! A revocation therefore takes effect on the next request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection};
use skyweave_core::keys::{self, NewKey};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path}: cannot start its writer thread: {source}")]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One key, as stored. Never holds the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub hash: [u8; 32],
    pub created_unix: i64,
    pub expires_unix: Option<i64>,
    pub revoked_unix: Option<i64>,
    /// Narrowing of the tenant's rights; `None`: the tenant's.
    pub models: Option<Vec<String>>,
    pub clouds: Option<Vec<String>>,
    pub regions: Option<Vec<String>>,
    /// The key's own limits, beside its tenant's.
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// The key's own monthly budget in USD (hard).
    pub budget_usd: Option<f64>,
}

impl KeyRecord {
    /// `active`, `revoked` or `expired`.
    pub fn state(&self) -> &'static str {
        if self.revoked_unix.is_some() {
            "revoked"
        } else if self.expires_unix.is_some_and(|at| now_unix() >= at) {
            "expired"
        } else {
            "active"
        }
    }

    /// The key as `keys list --json` and the admin API show it: never the
    /// secret or its hash.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "state": self.state(),
            "created_unix": self.created_unix,
            "expires_unix": self.expires_unix,
            "revoked_unix": self.revoked_unix,
            "models": self.models,
            "clouds": self.clouds,
            "regions": self.regions,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "budget_usd": self.budget_usd,
        })
    }
}

/// What a new key may do beyond its tenant's rights (only less).
#[derive(Debug, Clone, Default)]
pub struct Narrowing {
    pub models: Option<Vec<String>>,
    pub clouds: Option<Vec<String>>,
    pub regions: Option<Vec<String>>,
    pub expires_unix: Option<i64>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub budget_usd: Option<f64>,
}

pub struct KeyStore {
    path: PathBuf,
    connection: Mutex<Connection>,
    cache: Mutex<Cache>,
}

struct Cache {
    version: Option<i64>,
    keys: HashMap<String, KeyRecord>,
}

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
);";

impl KeyStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<KeyStore, StoreError> {
        let error = |source| StoreError::Sql { path: path.to_path_buf(), source };
        let connection = Connection::open(path).map_err(error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| connection.busy_timeout(std::time::Duration::from_secs(5)))
            .and_then(|_| connection.execute_batch(SCHEMA))
            .map_err(error)?;
        Ok(KeyStore {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
            cache: Mutex::new(Cache { version: None, keys: HashMap::new() }),
        })
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql { path: self.path.clone(), source }
    }

    /// Creates a key for `tenant`; the returned `NewKey::key` is the only
    /// copy of the secret.
    pub fn create(
        &self,
        tenant: &str,
        name: &str,
        narrowing: &Narrowing,
        now_unix: i64,
    ) -> Result<NewKey, StoreError> {
        let new = keys::generate(&mut rand::rngs::OsRng);
        let list = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.join(","));
        let connection = self.connection.lock().expect("key store lock");
        connection
            .execute(
                "INSERT INTO api_keys (id, tenant, name, hash, created_unix, expires_unix, \
                 models, clouds, regions, rpm, tpm, budget_usd) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    new.id,
                    tenant,
                    name,
                    &new.hash[..],
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
        self.cache.lock().expect("key cache lock").version = None;
        Ok(new)
    }

    /// Every key, newest first.
    pub fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let connection = self.connection.lock().expect("key store lock");
        let mut keys = load(&connection).map_err(|e| self.error(e))?;
        keys.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// Revokes a key; `false` if there is no such key.
    pub fn revoke(&self, id: &str, now_unix: i64) -> Result<bool, StoreError> {
        let connection = self.connection.lock().expect("key store lock");
        let changed = connection
            .execute(
                "UPDATE api_keys SET revoked_unix = COALESCE(revoked_unix, ?2) WHERE id = ?1",
                params![id, now_unix],
            )
            .map_err(|e| self.error(e))?;
        self.cache.lock().expect("key cache lock").version = None;
        Ok(changed == 1)
    }

    /// The key with this id, as the database holds it now.
    pub fn lookup(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let connection = self.connection.lock().expect("key store lock");
        let version: i64 = connection
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(|e| self.error(e))?;
        let mut cache = self.cache.lock().expect("key cache lock");
        // data_version changes on other connections' commits; our own
        // writes reset `cache.version` instead. An unknown id costs no
        // reload (it would let anyone force one per request).
        if cache.version != Some(version) {
            let keys = load(&connection).map_err(|e| self.error(e))?;
            cache.keys = keys.into_iter().map(|k| (k.id.clone(), k)).collect();
            cache.version = Some(version);
        }
        Ok(cache.keys.get(id).cloned())
    }
}

fn load(connection: &Connection) -> rusqlite::Result<Vec<KeyRecord>> {
    let mut statement = connection.prepare(
        "SELECT id, tenant, name, hash, created_unix, expires_unix, revoked_unix, models, \
         clouds, regions, rpm, tpm, budget_usd FROM api_keys",
    )?;
    let split = |v: Option<String>| {
        v.map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
    };
    let rows = statement.query_map([], |row| {
        let hash: Vec<u8> = row.get(3)?;
        let mut fixed = [0u8; 32];
        if hash.len() == 32 {
            fixed.copy_from_slice(&hash);
        }
        Ok(KeyRecord {
            id: row.get(0)?,
            tenant: row.get(1)?,
            name: row.get(2)?,
            hash: fixed,
            created_unix: row.get(4)?,
            expires_unix: row.get(5)?,
            revoked_unix: row.get(6)?,
            models: split(row.get(7)?),
            clouds: split(row.get(8)?),
            regions: split(row.get(9)?),
            rpm: row.get(10)?,
            tpm: row.get(11)?,
            budget_usd: row.get(12)?,
        })
    })?;
    rows.collect()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
