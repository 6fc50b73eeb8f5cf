//! SQLite storage: opening the database (WAL, `synchronous=FULL`, migrations) and the typed
//! reads and writes every other module uses.
//!
//! Every function takes a [`Db`], the handle of one transaction or savepoint; the caller
//! decides the transaction boundaries. This module is the only place in the hub that holds
//! SQL, and nothing here decides business rules.

pub mod audit;
mod error;
pub mod ledger;
pub mod operations;
pub mod registry;
pub mod rows;
pub mod schema;
pub mod settlement;
pub mod trail;

use std::path::Path;
use std::time::Duration;

use qrcash_protocol::SenderWindow;
use rusqlite::{Connection, OptionalExtension, params};

pub use error::StoreError;

/// The handle every storage function takes: one transaction's (or savepoint's) view of the
/// hub's database. Handlers and operator commands hold a `Db` and call the typed functions of
/// this module; they cannot run SQL themselves, so every statement the hub runs is written
/// here, and a second backend (PostgreSQL) is a second implementation of these functions, not
/// a hunt through the handlers.
///
/// `Db` is `Copy` and runs equally inside a transaction or a savepoint; the caller decides
/// the transaction boundaries ([`Store::begin`], [`Tx::savepoint`]).
#[derive(Clone, Copy)]
pub struct Db<'a>(&'a Connection);

impl std::fmt::Debug for Db<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

/// The statements of this module. `exec_cached` and `row_cached` go through the connection's
/// prepared-statement cache: the hub runs the same few dozen statements for every message,
/// and parsing them again each time was ~12 % of the writer thread's CPU in the throughput
/// benchmark (docs/BENCHMARKS.md).
impl<'a> Db<'a> {
    pub(in crate::store) fn execute<P: rusqlite::Params>(
        self,
        sql: &str,
        params: P,
    ) -> rusqlite::Result<usize> {
        self.0.execute(sql, params)
    }

    pub(in crate::store) fn query_row<T, P, F>(
        self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.0.query_row(sql, params, f)
    }

    pub(in crate::store) fn prepare(self, sql: &str) -> rusqlite::Result<rusqlite::Statement<'a>> {
        self.0.prepare(sql)
    }

    pub(in crate::store) fn prepare_cached(
        self,
        sql: &str,
    ) -> rusqlite::Result<rusqlite::CachedStatement<'a>> {
        self.0.prepare_cached(sql)
    }

    pub(in crate::store) fn exec_cached<P: rusqlite::Params>(
        self,
        sql: &str,
        params: P,
    ) -> rusqlite::Result<usize> {
        self.0.prepare_cached(sql)?.execute(params)
    }

    pub(in crate::store) fn row_cached<T, P, F>(
        self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.0.prepare_cached(sql)?.query_row(params, f)
    }

    pub(in crate::store) fn last_insert_rowid(self) -> i64 {
        self.0.last_insert_rowid()
    }
}

/// A read-only connection beside the writer ([`Store::open_reader`]).
#[derive(Debug)]
pub struct Reader(Connection);

impl Reader {
    /// Its handle for the storage functions (which fail if asked to write).
    pub fn db(&self) -> Db<'_> {
        Db(&self.0)
    }
}

/// A write transaction, taken `IMMEDIATE` so that it never has to upgrade a read lock (and so
/// never fails half-way with `SQLITE_BUSY`). Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx<'c>(rusqlite::Transaction<'c>);

impl<'c> Tx<'c> {
    /// The transaction's handle for the storage functions.
    pub fn db(&self) -> Db<'_> {
        Db(&self.0)
    }

    /// A savepoint inside the transaction: its effects are undone if it is dropped without
    /// [`Savepoint::commit`].
    pub fn savepoint(&mut self) -> Result<Savepoint<'_>, StoreError> {
        Ok(Savepoint(self.0.savepoint()?))
    }

    /// Commits.
    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit()?)
    }
}

/// A savepoint inside a [`Tx`]. Dropped without [`Savepoint::commit`], it rolls back.
#[derive(Debug)]
pub struct Savepoint<'t>(rusqlite::Savepoint<'t>);

impl Savepoint<'_> {
    /// The savepoint's handle for the storage functions.
    pub fn db(&self) -> Db<'_> {
        Db(&self.0)
    }

    /// Keeps the savepoint's effects (in the enclosing transaction).
    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit()?)
    }
}

/// An open hub database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: Option<std::path::PathBuf>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it. The database and
    /// its `-wal`/`-shm` files are readable by the owner only (0600, tightened if an earlier
    /// version left them wider) and a directory created for it is 0700: it holds PIN and
    /// password hashes and the ledger.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let tightened = qrcash_io::files::private_database(path).map_err(|e| {
            StoreError::Migration(format!("cannot prepare {}: {e}", path.display()))
        })?;
        for file in tightened {
            tracing::warn!(file = %file.display(), "database file was readable by others: now 0600");
        }
        let conn = Connection::open(path)?;
        let mut store = Self::setup(conn)?;
        store.path = Some(path.to_owned());
        Ok(store)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Store, StoreError> {
        // WAL: readers (operator commands) never block the writer; FULL: a commit survives
        // power loss, which the money invariants rely on.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every statement of the hot path goes through `prepare_cached` (see [`Db`]):
        // room for all of them, so none is parsed again per message.
        conn.set_prepared_statement_cache_capacity(256);
        conn.busy_timeout(Duration::from_secs(10))?;
        schema::migrations()
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Store { conn, path: None })
    }

    /// The database file; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Another connection to the same file that can only read: for work beside the writer,
    /// which WAL lets run without blocking it.
    pub fn open_reader(path: &Path) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(Reader(conn))
    }

    /// A handle outside any explicit transaction: each function call commits on its own.
    /// For reads, and for setup in tests and the demo.
    pub fn db(&self) -> Db<'_> {
        Db(&self.conn)
    }

    /// Starts a write transaction.
    pub fn begin(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(Tx(self.conn.transaction_with_behavior(
            rusqlite::TransactionBehavior::Immediate,
        )?))
    }

    /// The SQLite connection itself, for test suites and tools outside the hub that read
    /// the file with their own SQL (invariant checks). The hub's own code goes through
    /// [`Store::db`] and [`Store::begin`].
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// SQLite integers are signed; amounts and times are `u64` in code. Values above
/// `i64::MAX` are refused before they get here, so this saturates only on corrupt input.
pub fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The inverse of [`to_sql`]; a negative stored value reads as 0.
pub fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Takes the next outgoing sequence number of the hub (persisted, strictly increasing).
pub fn next_seq(db: Db<'_>) -> Result<u64, StoreError> {
    db.execute(
        "INSERT INTO meta(key, value) VALUES ('seq', 1)
         ON CONFLICT(key) DO UPDATE SET value = value + 1",
        [],
    )?;
    let v: i64 = db.query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))?;
    Ok(from_sql(v))
}

/// The last outgoing sequence number taken (0 before the first).
pub fn current_seq(db: Db<'_>) -> Result<u64, StoreError> {
    let v: Option<i64> = db
        .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))
        .optional()?;
    Ok(v.map_or(0, from_sql))
}

/// The replay window of `sender` under key `kid`.
pub fn window(db: Db<'_>, sender: &str, kid: &str) -> Result<SenderWindow, StoreError> {
    let row: Option<(i64, Vec<u8>)> = db
        .query_row(
            "SELECT highest, seen FROM replay_windows WHERE sender = ?1 AND kid = ?2",
            params![sender, kid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        None => SenderWindow::default(),
        Some((highest, seen)) => {
            let seen: [u8; 16] = seen
                .try_into()
                .map_err(|_| StoreError::Corrupt(format!("replay window of {sender}")))?;
            SenderWindow {
                highest: from_sql(highest),
                seen: u128::from_le_bytes(seen),
            }
        }
    })
}

/// Stores the replay window of `sender` under key `kid`.
pub fn save_window(
    db: Db<'_>,
    sender: &str,
    kid: &str,
    w: &SenderWindow,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO replay_windows(sender, kid, highest, seen) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(sender, kid) DO UPDATE SET highest = ?3, seen = ?4",
        params![
            sender,
            kid,
            to_sql(w.highest),
            w.seen.to_le_bytes().to_vec()
        ],
    )?;
    Ok(())
}

/// The answers recorded for an already processed message, if it was processed.
pub fn processed(db: Db<'_>, sender: &str, jti: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .query_row(
            "SELECT responses FROM processed WHERE sender = ?1 AND jti = ?2",
            params![sender, jti],
            |r| r.get(0),
        )
        .optional()?)
}

/// Records a processed message and the answers sent for it (a JSON array).
pub fn record_processed(
    db: Db<'_>,
    sender: &str,
    jti: &str,
    at: u64,
    responses: &str,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT OR REPLACE INTO processed(sender, jti, at, responses) VALUES (?1, ?2, ?3, ?4)",
        params![sender, jti, to_sql(at), responses],
    )?;
    Ok(())
}

/// Forgets the replay windows of keys that are no enrolled ATM's or device's (keys that
/// never enrolled, or that a device replaced); returns how many.
pub fn prune_stranger_windows(db: Db<'_>) -> Result<usize, StoreError> {
    Ok(db.exec_cached(
        "DELETE FROM replay_windows AS w
         WHERE NOT EXISTS (SELECT 1 FROM atms a WHERE a.id = w.sender AND a.kid = w.kid)
           AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = w.sender AND d.kid = w.kid)",
        [],
    )?)
}

/// Forgets processed ids older than `before` (their messages are refused as stale anyway).
pub fn prune_processed(db: Db<'_>, before: u64) -> Result<usize, StoreError> {
    Ok(db.execute("DELETE FROM processed WHERE at < ?1", [to_sql(before)])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_database_uses_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("sub/hub.sqlite")).unwrap();
        let mode: String = s
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        drop(s);
        // Reopening an up-to-date database is a no-op migration.
        Store::open(&dir.path().join("sub/hub.sqlite")).unwrap();
    }

    #[test]
    fn seq_increases_and_windows_round_trip() {
        let s = Store::open_in_memory().unwrap();
        let db = s.db();
        assert_eq!(next_seq(db).unwrap(), 1);
        assert_eq!(next_seq(db).unwrap(), 2);
        assert_eq!(window(db, "atm-1", "k").unwrap(), SenderWindow::default());
        let w = SenderWindow {
            highest: 9,
            seen: (1u128 << 127) | 5,
        };
        save_window(db, "atm-1", "k", &w).unwrap();
        assert_eq!(window(db, "atm-1", "k").unwrap(), w);
        assert_eq!(
            window(db, "atm-1", "other").unwrap(),
            SenderWindow::default()
        );
        record_processed(db, "atm-1", "j1", 100, "[]").unwrap();
        assert_eq!(processed(db, "atm-1", "j1").unwrap().as_deref(), Some("[]"));
        assert_eq!(prune_processed(db, 101).unwrap(), 1);
        assert_eq!(processed(db, "atm-1", "j1").unwrap(), None);
    }
}
