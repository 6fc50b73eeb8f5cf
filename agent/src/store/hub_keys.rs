//! Hub keys the agent learned from the hub's key set (`qrcash_protocol::keyset`), endorsed by
//! a key it already trusted. Kept across restarts beside the configured `hub_keys`; a
//! technician lists them with `qrcash-agent hub-keys` and removes one with `hub-keys forget`.

use rusqlite::params;
use serde_json::json;

use super::Store;
use super::journal::{self, JournalKind};
use crate::error::StoreError;
use qrcash_protocol::{KeyId, PublicKey};

/// A learned hub key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedKey {
    /// The key.
    pub key: PublicKey,
    /// The trusted key whose endorsement taught it.
    pub endorsed_by: String,
    /// When, Unix seconds.
    pub learned_at: u64,
}

impl Store {
    /// Every learned hub key, oldest first. A row that no longer parses is skipped with a
    /// warning (it cannot be trusted).
    pub fn learned_hub_keys(&mut self) -> Result<Vec<LearnedKey>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT kid, jwk, endorsed_by, learned_at FROM hub_keys ORDER BY learned_at, kid",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(kid, jwk, endorsed_by, at)| {
                match PublicKey::from_jwk_json(&jwk)
                    .ok()
                    .filter(|k| k.kid().as_str() == kid)
                {
                    Some(key) => Some(LearnedKey {
                        key,
                        endorsed_by,
                        learned_at: at.max(0) as u64,
                    }),
                    None => {
                        tracing::warn!(kid, "a learned hub key does not parse: ignored");
                        None
                    }
                }
            })
            .collect())
    }

    /// Keeps `keys` as learned from `endorsed_by`'s endorsement and journals each new one, in
    /// one transaction. Returns the keys that were new.
    pub fn learn_hub_keys(
        &mut self,
        keys: &[PublicKey],
        endorsed_by: &KeyId,
        now: u64,
    ) -> Result<Vec<PublicKey>, StoreError> {
        let tx = self.conn().transaction()?;
        let mut added = Vec::new();
        for key in keys {
            let jwk = serde_json::to_string(&key.to_jwk()).unwrap_or_default();
            let n = tx.execute(
                "INSERT OR IGNORE INTO hub_keys (kid, jwk, endorsed_by, learned_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![key.kid().as_str(), jwk, endorsed_by.as_str(), now as i64],
            )?;
            if n == 1 {
                let detail =
                    json!({ "learned": key.kid().as_str(), "endorsed_by": endorsed_by.as_str() });
                journal::append(&tx, now, JournalKind::HubKey, None, None, &detail)?;
                added.push(key.clone());
            }
        }
        tx.commit()?;
        Ok(added)
    }

    /// Forgets a learned hub key (journalled); false when none has this id.
    pub fn forget_hub_key(&mut self, kid: &str, now: u64) -> Result<bool, StoreError> {
        let tx = self.conn().transaction()?;
        let n = tx.execute("DELETE FROM hub_keys WHERE kid = ?1", [kid])?;
        if n == 1 {
            let detail = json!({ "forgotten": kid });
            journal::append(&tx, now, JournalKind::HubKey, None, None, &detail)?;
        }
        tx.commit()?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::PrivateKey;

    #[test]
    fn learned_keys_are_kept_once_journalled_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let mut store = Store::open(&path, Default::default()).unwrap();
        let old = PrivateKey::generate();
        let new = PrivateKey::generate();
        let keys = [new.public().clone(), old.public().clone()];
        let added = store.learn_hub_keys(&keys, old.kid(), 100).unwrap();
        assert_eq!(added.len(), 2);
        assert!(
            store
                .learn_hub_keys(&keys, old.kid(), 101)
                .unwrap()
                .is_empty()
        );
        drop(store);

        let mut store = Store::open(&path, Default::default()).unwrap();
        let learned = store.learned_hub_keys().unwrap();
        assert_eq!(learned.len(), 2);
        assert!(learned.iter().all(|l| l.endorsed_by == old.kid().as_str()));
        assert_eq!(store.journal_of_kind(JournalKind::HubKey).unwrap().len(), 2);
        assert!(store.forget_hub_key(new.kid().as_str(), 102).unwrap());
        assert!(!store.forget_hub_key(new.kid().as_str(), 103).unwrap());
        let learned = store.learned_hub_keys().unwrap();
        assert_eq!(learned.len(), 1);
        assert_eq!(&learned[0].key, old.public());
        assert_eq!(store.journal_of_kind(JournalKind::HubKey).unwrap().len(), 3);
    }
}
