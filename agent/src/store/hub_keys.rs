//! What the agent trusts of the hub's keys beyond its configured `hub_keys`: the state of
//! [`HubTrust`] (the newest key set it applied, the keys it taught, the keys forgotten),
//! kept as one JSON value and changed in one transaction with its journal entry.

use serde_json::json;

use super::journal::{self, JournalKind};
use super::{Store, meta};
use crate::error::StoreError;
use qrcash_protocol::keyset::{HubTrust, TrustChange, TrustState};

const HUB_TRUST: &str = "hub_trust";

impl Store {
    /// The saved trust state; `None` before any key set, or when it does not parse (it is
    /// then learned again from the hub's retained key set).
    pub fn hub_trust_state(&mut self) -> Result<Option<TrustState>, StoreError> {
        let Some(text) = meta::get(self.conn(), HUB_TRUST)? else {
            return Ok(None);
        };
        match serde_json::from_str(&text) {
            Ok(state) => Ok(Some(state)),
            Err(e) => {
                tracing::warn!(error = %e, "the saved hub key state does not parse: ignored");
                Ok(None)
            }
        }
    }

    /// Saves `trust` after a key set changed it, journalling `change` as `hub_key`.
    pub fn save_hub_trust(
        &mut self,
        trust: &HubTrust,
        change: &TrustChange,
        now: u64,
    ) -> Result<(), StoreError> {
        let detail = json!({
            "added": change.added.iter().map(|k| k.kid().as_str()).collect::<Vec<_>>(),
            "dropped": change.dropped.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "current": change.current.as_ref().map(|k| k.kid().as_str()),
            "endorsed_by": trust.state().endorsed_by,
            "iat": trust.state().iat,
        });
        self.put_hub_trust(trust, detail, now)
    }

    /// Saves `trust` after `kid` was forgotten, journalled as `hub_key`.
    pub fn save_forgotten_hub_key(
        &mut self,
        trust: &HubTrust,
        kid: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.put_hub_trust(trust, json!({ "forgotten": kid }), now)
    }

    fn put_hub_trust(
        &mut self,
        trust: &HubTrust,
        detail: serde_json::Value,
        now: u64,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(trust.state()).unwrap_or_default();
        let tx = self.conn().transaction()?;
        meta::set(&tx, HUB_TRUST, &text)?;
        journal::append(&tx, now, JournalKind::HubKey, None, None, &detail)?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::PrivateKey;
    use qrcash_protocol::keyset::{HubKeys, KeySet};

    #[test]
    fn the_trust_state_is_kept_with_its_journal_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let mut store = Store::open(&path, Default::default()).unwrap();
        assert_eq!(store.hub_trust_state().unwrap(), None);
        let old = PrivateKey::generate();
        let new = PrivateKey::generate();
        let mut trust = HubTrust::new(vec![old.public().clone()], None);
        let set = KeySet::new("hub", 100, new.public(), &[old.public().clone()]);
        let change = trust
            .apply(&HubKeys::new(&set, &[&old]).to_bytes(), "hub")
            .unwrap();
        store.save_hub_trust(&trust, &change, 100).unwrap();
        assert!(trust.forget(new.kid().as_str()));
        store
            .save_forgotten_hub_key(&trust, new.kid().as_str(), 101)
            .unwrap();
        drop(store);

        let mut store = Store::open(&path, Default::default()).unwrap();
        let state = store.hub_trust_state().unwrap().unwrap();
        assert_eq!(&state, trust.state());
        assert_eq!(state.forgotten, vec![new.kid().to_string()]);
        let entries = store.journal_of_kind(JournalKind::HubKey).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].detail["added"][0], new.kid().as_str());
        assert_eq!(entries[1].detail["forgotten"], new.kid().as_str());
    }
}
