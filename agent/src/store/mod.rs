//! The agent's SQLite database: the electronic journal, the order records, the outbox and
//! a few counters. One file, WAL mode, `synchronous=FULL`: a commit is on disk (fsync) when
//! it returns, which is what the write-ahead dispense rule relies on.
//!
//! Each task that needs the database opens its own [`Store`] on the same file (a rusqlite
//! connection is not shared between threads); SQLite serialises the writers.
//! Not here: what the records mean for a session (`session`), when to resend (`outbox` task).

mod cassettes;
mod hub_keys;
mod journal;
mod meta;
mod orders;
mod outbox;

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

pub use journal::ExportError;
pub use journal::{JournalEntry, JournalKind};
pub use orders::{OrderRecord, OrderState};
pub use outbox::{DeadLetter, OutboxBounds, OutboxMessage, OutboxStats, Outgoing, Priority};

use crate::error::StoreError;

const SCHEMA_V1: &str = r#"
CREATE TABLE journal (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    tx_id    TEXT,
    order_id TEXT,
    detail   TEXT    NOT NULL
);
CREATE INDEX journal_order ON journal(order_id);
CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal
BEGIN SELECT RAISE(ABORT, 'the electronic journal is append-only'); END;
CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
BEGIN SELECT RAISE(ABORT, 'the electronic journal is append-only'); END;

CREATE TABLE orders (
    order_id    TEXT    PRIMARY KEY NOT NULL,
    tx_id       TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('dispensing', 'finished')),
    order_json  TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    report_json TEXT,
    finished_at INTEGER,
    CHECK ((state = 'dispensing') = (report_json IS NULL))
);

CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    jti          TEXT    NOT NULL UNIQUE,
    kind         TEXT    NOT NULL,
    critical     INTEGER NOT NULL,
    sealed       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_sent_at INTEGER
);

CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    jti        TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    sealed     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    failed_at  INTEGER NOT NULL,
    reason     TEXT    NOT NULL
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
"#;

/// The notes per cassette (`cassettes.rs`): kept across restarts, never reset from the
/// configuration.
const SCHEMA_V2: &str = r#"
CREATE TABLE cassettes (
    denomination INTEGER PRIMARY KEY NOT NULL CHECK (denomination > 0),
    notes        INTEGER NOT NULL CHECK (notes >= 0),
    updated_at   INTEGER NOT NULL
);
"#;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(SCHEMA_V1), M::up(SCHEMA_V2)])
}

/// One connection to the agent database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    bounds: OutboxBounds,
}

impl Store {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path, bounds: OutboxBounds) -> Result<Store, StoreError> {
        // The journal and outbox hold the ATM's money records: owner only (0600, 0700 for a
        // directory created here), tightened if an earlier version left them wider.
        let tightened =
            qrcash_io::files::private_database(path).map_err(|e| StoreError::Corrupt {
                what: "database file",
                detail: format!("{}: {e}", path.display()),
            })?;
        for file in tightened {
            tracing::warn!(file = %file.display(), "database file was readable by others: now 0600");
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations().to_latest(&mut conn)?;
        Ok(Store { conn, bounds })
    }

    /// What SQLite's `quick_check` finds wrong with the file: nothing for a sound database.
    pub fn integrity_problems(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("PRAGMA quick_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut problems = Vec::new();
        for row in rows {
            let row = row?;
            if row != "ok" {
                problems.push(row);
            }
        }
        Ok(problems)
    }

    /// The outbox bounds in force.
    pub fn bounds(&self) -> OutboxBounds {
        self.bounds
    }

    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A store on a fresh temporary file (kept alive by the returned guard).
    pub fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.db"), OutboxBounds::default()).unwrap();
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_pragmas_hold() {
        migrations().validate().unwrap();
        let (_dir, mut store) = testing::store();
        let mode: String = store
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }
}
