//! Small persisted values: the agent's own `seq` counter, the hub's replay window and the
//! last known agent state (read by `qrcash-agent status`).

use qrcash_protocol::replay::SenderWindow;
use rusqlite::{Connection, OptionalExtension, params};

use super::Store;
use crate::error::StoreError;

const SEQ: &str = "seq";
const HUB_WINDOW: &str = "hub_window";

pub(crate) fn get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

pub(crate) fn set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Reserves the next `seq` inside the caller's transaction: the number is durable exactly
/// when the message that carries it is.
pub(crate) fn next_seq(conn: &Connection) -> Result<u64, StoreError> {
    let last: u64 = match get(conn, SEQ)? {
        Some(v) => v.parse().map_err(|_| StoreError::Corrupt {
            what: "seq counter",
            detail: v.clone(),
        })?,
        None => 0,
    };
    let next = last + 1;
    set(conn, SEQ, &next.to_string())?;
    Ok(next)
}

pub(crate) fn save_hub_window(conn: &Connection, w: SenderWindow) -> Result<(), StoreError> {
    let text = serde_json::to_string(&w).map_err(|e| StoreError::Corrupt {
        what: "hub window",
        detail: e.to_string(),
    })?;
    set(conn, HUB_WINDOW, &text)
}

impl Store {
    /// The last `seq` used by this agent.
    pub fn last_seq(&mut self) -> Result<u64, StoreError> {
        Ok(get(self.conn(), SEQ)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Spends the next `seq` on a message that does not go through the outbox (the
    /// doctor's probe heartbeat), unless it would run `span` or more ahead of the oldest
    /// message waiting in the outbox (`None`): arriving first, it would move the hub's
    /// replay window past that message. Committed before it is used, in one write
    /// transaction with the check, so the agent never reuses it even while it runs.
    pub fn reserve_probe_seq(&mut self, span: u64) -> Result<Option<u64>, StoreError> {
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seq = next_seq(&tx)?;
        if let Some(oldest) = super::outbox::oldest_waiting_seq(&tx)?
            && seq.saturating_sub(oldest) >= span
        {
            return Ok(None); // rolled back: the number is not spent
        }
        tx.commit()?;
        Ok(Some(seq))
    }

    /// The hub's replay window as last accepted.
    pub fn hub_window(&mut self) -> Result<SenderWindow, StoreError> {
        match get(self.conn(), HUB_WINDOW)? {
            Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                what: "hub window",
                detail: e.to_string(),
            }),
            None => Ok(SenderWindow::default()),
        }
    }

    /// Saves the hub's replay window.
    pub fn save_hub_window(&mut self, w: SenderWindow) -> Result<(), StoreError> {
        save_hub_window(self.conn(), w)
    }

    /// A status value that is a Unix time (`alive_at`, `stopped_at`, `hub_heard_at`); `None`
    /// when unset or not a number.
    pub fn status_time(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.status_value(key)?.and_then(|v| v.parse().ok()))
    }

    /// Whether an agent runs on this database at `now`, from the liveness it records
    /// ([`crate::runtime::agent_alive`]).
    pub fn agent_running(&mut self, now: u64) -> Result<bool, StoreError> {
        let alive = self.status_time("alive_at")?;
        let stopped = self.status_time("stopped_at")?;
        Ok(crate::runtime::agent_alive(alive, stopped, now))
    }

    /// Reads a free-form status value (`state`, `link`, …).
    pub fn status_value(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        get(self.conn(), &format!("status.{key}"))
    }

    /// Writes a free-form status value.
    pub fn set_status_value(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        set(self.conn(), &format!("status.{key}"), value)
    }

    /// Writes a status value and when it became true (`status_since`), in one transaction.
    pub fn set_status_since(&mut self, key: &str, value: &str, now: u64) -> Result<(), StoreError> {
        let tx = self.conn().transaction()?;
        set(&tx, &format!("status.{key}"), value)?;
        set(&tx, &format!("status.{key}.since"), &now.to_string())?;
        tx.commit()?;
        Ok(())
    }

    /// When a status value written with [`Store::set_status_since`] became true.
    pub fn status_since(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(get(self.conn(), &format!("status.{key}.since"))?.and_then(|v| v.parse().ok()))
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing;

    #[test]
    fn hub_window_and_status_round_trip() {
        let (_dir, mut s) = testing::store();
        let w = qrcash_protocol::SenderWindow::default().record(9);
        s.save_hub_window(w).unwrap();
        assert_eq!(s.hub_window().unwrap(), w);
        s.set_status_value("link", "up").unwrap();
        s.set_status_value("link", "down").unwrap();
        assert_eq!(s.status_value("link").unwrap().as_deref(), Some("down"));
    }
}
