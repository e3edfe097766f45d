//! API keys, in the estate's database (see [`crate::store`]).
//!
//! Only each key's SHA-256 is stored (see `skyweave_core::keys`). The
//! gateway keeps the table in memory and reloads it when it changes:
//!
//! - SQLite: before each authentication it asks whether another connection
//!   (`skyweave keys revoke`, another process's admin call) committed
//!   (`PRAGMA data_version`, answered from the shared WAL index without
//!   reading the table). A revocation takes effect on the next request.
//! - PostgreSQL: every change is announced with `NOTIFY`, which each
//!   serving replica listens for. A revocation takes effect on the next
//!   request at the replica that made it, and at the others once the
//!   notification arrives (about a millisecond on one network; the
//!   integration test measures it). While a replica's listener is down it
//!   re-reads the keys on every request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use skyweave_core::keys::{self, NewKey};

pub use crate::store::StoreError;
use crate::store::{Database, Store};

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
    store: Store,
    cache: Mutex<Cache>,
    watch: Option<crate::store::KeyWatch>,
    /// Moves after each change made through this store, once written: a
    /// load that began before it cannot be taken for current.
    local_changes: AtomicU64,
}

struct Cache {
    /// (database version, `local_changes`) when `keys` was read.
    version: Option<(i64, u64)>,
    keys: HashMap<String, KeyRecord>,
}

impl KeyStore {
    /// Opens (creating its tables if needed) the key database.
    pub async fn open(database: &Database) -> Result<KeyStore, StoreError> {
        Ok(KeyStore {
            store: Store::open(database).await?,
            cache: Mutex::new(Cache { version: None, keys: HashMap::new() }),
            watch: None,
            local_changes: AtomicU64::new(0),
        })
    }

    /// For a serving gateway on PostgreSQL: listen for other replicas'
    /// key changes (on the current runtime), so that lookups can answer
    /// from memory. Without it every lookup re-reads the keys.
    pub fn watch(&mut self, database: &Database) {
        if let Database::Postgres(target) = database {
            self.watch = Some(crate::store::watch_keys(target));
        }
    }

    pub fn describe(&self) -> &str {
        self.store.describe()
    }

    fn forget(&self) {
        self.local_changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Creates a key for `tenant`; the returned `NewKey::key` is the only
    /// copy of the secret.
    pub async fn create(
        &self,
        tenant: &str,
        name: &str,
        narrowing: &Narrowing,
        now_unix: i64,
    ) -> Result<NewKey, StoreError> {
        let new = keys::generate(&mut rand::rngs::OsRng);
        let result =
            self.store.insert_key(&new.id, tenant, name, &new.hash, narrowing, now_unix).await;
        self.forget();
        result.map(|()| new)
    }

    /// Every key, newest first.
    pub async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys = self.store.keys().await?;
        keys.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// Revokes a key; `false` if there is no such key.
    pub async fn revoke(&self, id: &str, now_unix: i64) -> Result<bool, StoreError> {
        let result = self.store.revoke_key(id, now_unix).await;
        self.forget();
        result
    }

    /// The key with this id, as the database holds it now.
    pub async fn lookup(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        // SQLite's data_version changes on other connections' commits;
        // PostgreSQL's notifications move the watch's generation. Our own
        // writes move `local_changes` (read before the database's version,
        // so that a load racing a local change is never current).
        let local = self.local_changes.load(Ordering::SeqCst);
        let version = if self.store.is_postgres() {
            self.watch
                .as_ref()
                .filter(|w| w.listening.load(Ordering::SeqCst))
                .map(|w| w.generation.load(Ordering::SeqCst) as i64)
        } else {
            self.store.data_version()?
        };
        let version = version.map(|v| (v, local));
        {
            let cache = self.cache.lock().expect("key cache lock");
            if version.is_some() && cache.version == version {
                return Ok(cache.keys.get(id).cloned());
            }
        }
        // An unknown id costs no reload when nothing changed (it would
        // let anyone force one per request).
        let keys = self.store.keys().await?;
        let found = keys.iter().find(|k| k.id == id).cloned();
        let mut cache = self.cache.lock().expect("key cache lock");
        cache.keys = keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        cache.version = version;
        Ok(found)
    }
}

/// A stored hash as 32 bytes (all zeros, matching no key, if the column
/// was tampered with).
pub(crate) fn fixed_hash(hash: &[u8]) -> [u8; 32] {
    let mut fixed = [0u8; 32];
    if hash.len() == 32 {
        fixed.copy_from_slice(hash);
    }
    fixed
}

/// A comma-separated list column.
pub(crate) fn split_list(value: Option<String>) -> Option<Vec<String>> {
    value.map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
