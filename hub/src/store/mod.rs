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
pub mod outbox;
mod pg_schema;
pub mod pg_target;
pub mod registry;
pub mod rows;
pub mod schema;
pub mod settlement;
pub mod sql;
pub mod trail;

use std::path::Path;
use std::time::Duration;

use qrcash_protocol::SenderWindow;
use rusqlite::Connection;

pub use error::StoreError;
use sql::{Handle, OptionalExt, Params, PgConn, Row, SqlError, params};

/// The handle every storage function takes: one transaction's (or savepoint's) view of the
/// hub's database, SQLite or PostgreSQL. Handlers and operator commands hold a `Db` and call
/// the typed functions of this module; they cannot run SQL themselves, so every statement
/// the hub runs is written here, once, in the dialect both backends accept ([`sql`]).
///
/// `Db` is `Copy` and runs equally inside a transaction or a savepoint; the caller decides
/// the transaction boundaries ([`Store::begin`], [`Tx::savepoint`]).
#[derive(Clone, Copy)]
pub struct Db<'a>(Handle<'a>);

impl std::fmt::Debug for Db<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

/// The statements of this module. The `_cached` forms go through the connection's
/// prepared-statement cache: the hub runs the same few dozen statements for every message,
/// and parsing them again each time was ~12 % of the writer thread's CPU in the throughput
/// benchmark (docs/BENCHMARKS.md). On PostgreSQL every statement is prepared once per
/// connection, so each costs one round trip.
impl Db<'_> {
    pub(in crate::store) fn execute<P: Params>(self, sql: &str, p: P) -> Result<usize, SqlError> {
        self.0.execute(sql, p, false)
    }

    pub(in crate::store) fn exec_cached<P: Params>(
        self,
        sql: &str,
        p: P,
    ) -> Result<usize, SqlError> {
        self.0.execute(sql, p, true)
    }

    pub(in crate::store) fn query_row<T, P, F>(self, sql: &str, p: P, f: F) -> Result<T, SqlError>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T, SqlError>,
    {
        self.0
            .rows(sql, p, false, f)?
            .into_iter()
            .next()
            .ok_or(SqlError::NoRows)
    }

    pub(in crate::store) fn row_cached<T, P, F>(self, sql: &str, p: P, f: F) -> Result<T, SqlError>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T, SqlError>,
    {
        self.0
            .rows(sql, p, true, f)?
            .into_iter()
            .next()
            .ok_or(SqlError::NoRows)
    }

    pub(in crate::store) fn rows<T, P, F>(self, sql: &str, p: P, f: F) -> Result<Vec<T>, SqlError>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T, SqlError>,
    {
        self.0.rows(sql, p, false, f)
    }

    pub(in crate::store) fn rows_cached<T, P, F>(
        self,
        sql: &str,
        p: P,
        f: F,
    ) -> Result<Vec<T>, SqlError>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T, SqlError>,
    {
        self.0.rows(sql, p, true, f)
    }

    /// Whether this is PostgreSQL (for the few statements whose best form differs).
    pub(in crate::store) fn is_postgres(self) -> bool {
        matches!(self.0, Handle::Pg(_))
    }

    /// One integer read with the caller's own SQL, in the dialect of [`sql`]: for the test
    /// suites and the invariant checks of other crates, which look at the books from outside
    /// the hub's code. `NULL` or no row reads as 0.
    pub fn read_i64(self, sql: &str) -> Result<i64, StoreError> {
        Ok(self
            .0
            .rows(sql, params![], false, |r| r.get::<Option<i64>>(0))?
            .into_iter()
            .next()
            .flatten()
            .unwrap_or(0))
    }
}

/// Raw SQL for the test suites (both backends), which set up states no message can reach
/// and count rows. Never in a production build.
#[cfg(any(test, feature = "testkit"))]
impl Db<'_> {
    /// Runs a statement without parameters; returns the rows changed.
    pub fn test_execute(self, sql: &str) -> Result<usize, StoreError> {
        Ok(self.0.execute(sql, params![], false)?)
    }

    /// The first column of every row, as text.
    pub fn test_texts(self, sql: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.0.rows(sql, params![], false, |r| r.get::<String>(0))?)
    }
}

/// A read-only connection beside the writer ([`Store::open_reader`]).
#[derive(Debug)]
pub struct Reader(Connection);

impl Reader {
    /// Its handle for the storage functions (which fail if asked to write).
    pub fn db(&self) -> Db<'_> {
        Db(Handle::Lite(&self.0))
    }
}

/// A write transaction. On SQLite it is taken `IMMEDIATE`, so that it never has to upgrade a
/// read lock (and so never fails half-way with `SQLITE_BUSY`); on PostgreSQL it is
/// `SERIALIZABLE`, and a transaction that lost a race with another instance's fails with
/// [`StoreError::Conflict`], to be run again from the start. Dropped without
/// [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx<'c>(TxInner<'c>);

#[derive(Debug)]
enum TxInner<'c> {
    Lite(rusqlite::Transaction<'c>),
    Pg(PgScope<'c>),
}

/// An open PostgreSQL transaction or savepoint: rolled back when dropped still open.
#[derive(Debug)]
struct PgScope<'c> {
    conn: &'c PgConn,
    /// `None` for the transaction, the name for a savepoint.
    savepoint: Option<String>,
    open: bool,
}

impl PgScope<'_> {
    fn close(&mut self, keep: bool) -> Result<(), SqlError> {
        self.open = false;
        match (&self.savepoint, keep) {
            (None, true) => self.conn.commit(),
            (None, false) => {
                self.conn.rollback();
                Ok(())
            }
            (Some(name), true) => self.conn.release(name),
            (Some(name), false) => {
                self.conn.rollback_to(name);
                Ok(())
            }
        }
    }
}

impl Drop for PgScope<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback marks the connection: the next `BEGIN` ends what is left
            // open first. Nothing was committed.
            let _ = self.close(false);
        }
    }
}

impl<'c> Tx<'c> {
    /// The transaction's handle for the storage functions.
    pub fn db(&self) -> Db<'_> {
        match &self.0 {
            TxInner::Lite(t) => Db(Handle::Lite(t)),
            TxInner::Pg(s) => Db(Handle::Pg(s.conn)),
        }
    }

    /// A savepoint inside the transaction: its effects are undone if it is dropped without
    /// [`Savepoint::commit`].
    pub fn savepoint(&mut self) -> Result<Savepoint<'_>, StoreError> {
        Ok(Savepoint(match &mut self.0 {
            TxInner::Lite(t) => SpInner::Lite(t.savepoint().map_err(SqlError::from)?),
            TxInner::Pg(s) => {
                let name = s.conn.savepoint()?;
                SpInner::Pg(PgScope {
                    conn: s.conn,
                    savepoint: Some(name),
                    open: true,
                })
            }
        }))
    }

    /// Commits.
    pub fn commit(self) -> Result<(), StoreError> {
        match self.0 {
            TxInner::Lite(t) => Ok(t.commit().map_err(SqlError::from)?),
            TxInner::Pg(mut s) => Ok(s.close(true)?),
        }
    }
}

/// A savepoint inside a [`Tx`]. Dropped without [`Savepoint::commit`], it rolls back.
#[derive(Debug)]
pub struct Savepoint<'t>(SpInner<'t>);

#[derive(Debug)]
enum SpInner<'t> {
    Lite(rusqlite::Savepoint<'t>),
    Pg(PgScope<'t>),
}

impl Savepoint<'_> {
    /// The savepoint's handle for the storage functions.
    pub fn db(&self) -> Db<'_> {
        match &self.0 {
            SpInner::Lite(s) => Db(Handle::Lite(s)),
            SpInner::Pg(s) => Db(Handle::Pg(s.conn)),
        }
    }

    /// Keeps the savepoint's effects (in the enclosing transaction).
    pub fn commit(self) -> Result<(), StoreError> {
        match self.0 {
            SpInner::Lite(s) => Ok(s.commit().map_err(SqlError::from)?),
            SpInner::Pg(mut s) => Ok(s.close(true)?),
        }
    }
}

/// The database behind a [`Store`].
#[derive(Debug)]
enum Backend {
    Lite(Connection),
    Pg(Box<PgConn>),
}

/// An open hub database: a SQLite file (the embedded default) or a PostgreSQL database
/// shared by several hub instances.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
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
        let conn = Connection::open(path).map_err(SqlError::from)?;
        let mut store = Self::setup(conn)?;
        store.path = Some(path.to_owned());
        Ok(store)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::setup(Connection::open_in_memory().map_err(SqlError::from)?)
    }

    /// Connects to the PostgreSQL database `url` (`postgres://user@host/db`, or the
    /// key-value form `host=/run/postgresql dbname=qrcash`; TLS as [`pg_target`] decides) and
    /// migrates it. Several hub instances may do so at once: one migrates, the others wait.
    pub fn open_postgres(url: &str) -> Result<Store, StoreError> {
        let mut target = pg_target::target(url)?;
        let config = &mut target.config;
        // A partitioned network must not hang the writer: connecting, a silent peer and a
        // statement are bounded unless the connection string says otherwise, so that the
        // message is run again ([`crate::handler::RETRY_FOR`]) or fails.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .tcp_user_timeout(Duration::from_secs(15));
        if config.get_options().is_none() {
            config.options("-c statement_timeout=30s -c idle_in_transaction_session_timeout=60s");
        }
        let conn = PgConn::connect(target)?;
        pg_schema::migrate(&conn)?;
        Ok(Store {
            backend: Backend::Pg(Box::new(conn)),
            path: None,
        })
    }

    fn setup(mut conn: Connection) -> Result<Store, StoreError> {
        let lite = |e: rusqlite::Error| StoreError::from(SqlError::from(e));
        // WAL: readers (operator commands) never block the writer; FULL: a commit survives
        // power loss, which the money invariants rely on.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(lite)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(lite)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(lite)?;
        // Every statement of the hot path goes through `prepare_cached` (see [`Db`]):
        // room for all of them, so none is parsed again per message.
        conn.set_prepared_statement_cache_capacity(256);
        conn.busy_timeout(Duration::from_secs(10)).map_err(lite)?;
        schema::migrations()
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Store {
            backend: Backend::Lite(conn),
            path: None,
        })
    }

    /// The schema version the database is at (its migrations applied).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Lite(c) => Ok(c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(SqlError::from)?),
            Backend::Pg(c) => Ok(c.read_one("SELECT MAX(version) FROM qrcash_schema")?),
        }
    }

    /// The database file; `None` in memory and on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether this store is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// Another connection to the same file that can only read: for work beside the writer,
    /// which WAL lets run without blocking it.
    pub fn open_reader(path: &Path) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(SqlError::from)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(SqlError::from)?;
        Ok(Reader(conn))
    }

    /// A handle outside any explicit transaction: each function call commits on its own.
    /// For reads, and for setup in tests and the demo.
    pub fn db(&self) -> Db<'_> {
        match &self.backend {
            Backend::Lite(c) => Db(Handle::Lite(c)),
            Backend::Pg(c) => Db(Handle::Pg(c)),
        }
    }

    /// Starts a write transaction. On PostgreSQL a connection lost to a server restart is
    /// made again first.
    pub fn begin(&mut self) -> Result<Tx<'_>, StoreError> {
        self.begin_at(false)
    }

    /// Starts a write transaction for statements whose effect depends on nothing they read
    /// beyond the rows they lock (forgetting published outbox rows by id, taking due ones
    /// `FOR UPDATE SKIP LOCKED`). On PostgreSQL it runs `READ COMMITTED`: it
    /// takes no predicate locks, so it cannot make the message transactions of other
    /// instances fail to serialize. SQLite has one writer anyway.
    pub fn begin_relaxed(&mut self) -> Result<Tx<'_>, StoreError> {
        self.begin_at(true)
    }

    fn begin_at(&mut self, relaxed: bool) -> Result<Tx<'_>, StoreError> {
        match &mut self.backend {
            Backend::Lite(c) => Ok(Tx(TxInner::Lite(
                c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(SqlError::from)?,
            ))),
            Backend::Pg(c) => {
                c.begin(relaxed)?;
                Ok(Tx(TxInner::Pg(PgScope {
                    conn: c,
                    savepoint: None,
                    open: true,
                })))
            }
        }
    }

    /// The SQLite connection itself, for test suites and tools outside the hub that read
    /// the file with their own SQL; `None` on PostgreSQL. The hub's own code goes through
    /// [`Store::db`] and [`Store::begin`].
    pub fn conn(&self) -> Option<&Connection> {
        match &self.backend {
            Backend::Lite(c) => Some(c),
            Backend::Pg(_) => None,
        }
    }

    /// Round trips to the PostgreSQL server since the store was opened (migrations
    /// included); `None` on SQLite, which runs in the process.
    pub fn round_trips(&self) -> Option<u64> {
        match &self.backend {
            Backend::Lite(_) => None,
            Backend::Pg(c) => Some(c.round_trips()),
        }
    }
}

/// The backend the test suites run on: SQLite in memory unless `QRCASH_TEST_BACKEND` is
/// `postgres`; then a new database on the server `QRCASH_TEST_PG` names (a connection
/// string with an administrator's rights; `scripts/test.sh` starts a private server and
/// runs the hub's suites on both backends).
#[cfg(any(test, feature = "testkit"))]
impl Store {
    /// A fresh, empty, migrated store for one test.
    pub fn open_test() -> Store {
        match std::env::var("QRCASH_TEST_BACKEND").as_deref() {
            Ok("postgres") => {
                let url = Self::test_database().unwrap_or_else(|e| panic!("{e}"));
                Store::open_postgres(&url).unwrap_or_else(|e| panic!("{e}"))
            }
            Ok("sqlite") | Err(_) => Store::open_in_memory().unwrap_or_else(|e| panic!("{e}")),
            Ok(other) => panic!("QRCASH_TEST_BACKEND={other}: sqlite or postgres"),
        }
    }

    /// `n` stores on one fresh database, as `n` hub instances share it: the SQLite file
    /// `file`, or one new PostgreSQL database under `QRCASH_TEST_BACKEND=postgres`.
    pub fn open_test_shared(file: &Path, n: usize) -> Vec<Store> {
        let open = |f: &dyn Fn() -> Result<Store, StoreError>| {
            (0..n)
                .map(|_| f().unwrap_or_else(|e| panic!("{e}")))
                .collect()
        };
        match std::env::var("QRCASH_TEST_BACKEND").as_deref() {
            Ok("postgres") => {
                let url = Self::test_database().unwrap_or_else(|e| panic!("{e}"));
                open(&|| Store::open_postgres(&url))
            }
            _ => open(&|| Store::open(file)),
        }
    }

    /// Creates an empty PostgreSQL database for one test on the server of `QRCASH_TEST_PG`
    /// and returns its connection string.
    pub fn test_database() -> Result<String, String> {
        let admin = std::env::var("QRCASH_TEST_PG")
            .map_err(|_| "QRCASH_TEST_PG is not set (scripts/test.sh sets it)".to_owned())?;
        Self::create_test_database(&admin)
    }

    /// Creates an empty PostgreSQL database on the server `admin` (a connection string with
    /// an administrator's rights) and returns its connection string.
    pub fn create_test_database(admin: &str) -> Result<String, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "qrcash_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut client = postgres::Client::connect(admin, postgres::NoTls)
            .map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| format!("create database {name}: {e}"))?;
        Ok(if admin.contains("://") {
            format!(
                "{}/{name}",
                admin.rsplit_once('/').map_or(admin, |(base, _)| base)
            )
        } else {
            format!("{admin} dbname={name}")
        })
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
/// On PostgreSQL it is a sequence, which never makes two instances' transactions conflict:
/// numbers taken by a transaction that rolls back are skipped, and instances may publish a
/// few numbers out of order, both of which receivers' replay windows accept
/// (docs/protocol.md §3).
pub fn next_seq(db: Db<'_>) -> Result<u64, StoreError> {
    if db.is_postgres() {
        let v: i64 = db.row_cached("SELECT nextval('hub_seq')", [], |r| r.get(0))?;
        return Ok(from_sql(v));
    }
    db.exec_cached(
        "INSERT INTO meta(key, value) VALUES ('seq', 1)
         ON CONFLICT(key) DO UPDATE SET value = value + 1",
        [],
    )?;
    let v: i64 = db.row_cached("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))?;
    Ok(from_sql(v))
}

/// The last outgoing sequence number taken (0 before the first).
pub fn current_seq(db: Db<'_>) -> Result<u64, StoreError> {
    let sql = if db.is_postgres() {
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM hub_seq"
    } else {
        "SELECT value FROM meta WHERE key = 'seq'"
    };
    let v: Option<i64> = db.query_row(sql, [], |r| r.get(0)).optional()?;
    Ok(v.map_or(0, from_sql))
}

/// The replay window of `sender` under key `kid`.
pub fn window(db: Db<'_>, sender: &str, kid: &str) -> Result<SenderWindow, StoreError> {
    let row: Option<(i64, Vec<u8>)> = db
        .row_cached(
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

/// Stores the replay window of `sender` under key `kid`: an update of the row when there is
/// one (no indexed column changes, so on PostgreSQL it stays on its page, a "HOT" update,
/// and touches no index page that other instances' transactions have read), the row
/// inserted otherwise.
pub fn save_window(
    db: Db<'_>,
    sender: &str,
    kid: &str,
    w: &SenderWindow,
) -> Result<(), StoreError> {
    let values = params![
        sender,
        kid,
        to_sql(w.highest),
        w.seen.to_le_bytes().to_vec()
    ];
    let updated = db.exec_cached(
        "UPDATE replay_windows SET highest = ?3, seen = ?4 WHERE sender = ?1 AND kid = ?2",
        values,
    )?;
    if updated == 0 {
        db.exec_cached(
            "INSERT INTO replay_windows(sender, kid, highest, seen) VALUES (?1, ?2, ?3, ?4)",
            values,
        )?;
    }
    Ok(())
}

/// The answers recorded for an already processed message, if it was processed.
pub fn processed(db: Db<'_>, sender: &str, jti: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .row_cached(
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
    db.exec_cached(
        "INSERT INTO processed(sender, jti, at, responses) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(sender, jti) DO UPDATE SET at = excluded.at, responses = excluded.responses",
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

/// Whether this transaction may sweep: on PostgreSQL one instance at a time (a
/// transaction-scoped advisory lock, free again at its commit; others skip their turn rather
/// than wait); SQLite has one writer anyway.
pub fn try_sweep_lock(db: Db<'_>) -> Result<bool, StoreError> {
    if !db.is_postgres() {
        return Ok(true);
    }
    Ok(
        db.row_cached("SELECT pg_try_advisory_xact_lock(7462629940843)", [], |r| {
            r.get::<bool>(0)
        })?,
    )
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
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn()
            .unwrap()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        drop(s);
        // Reopening an up-to-date database is a no-op migration.
        Store::open(&dir.path().join("sub/hub.sqlite")).unwrap();
    }

    #[test]
    fn seq_increases_and_windows_round_trip() {
        let s = Store::open_test();
        let db = s.db();
        assert_eq!(current_seq(db).unwrap(), 0);
        assert_eq!(next_seq(db).unwrap(), 1);
        assert_eq!(next_seq(db).unwrap(), 2);
        assert_eq!(current_seq(db).unwrap(), 2);
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

    /// The two schemas must not drift: the same tables with the same columns. Runs in the
    /// PostgreSQL pass of the suite (`QRCASH_TEST_BACKEND=postgres`); on SQLite alone there is
    /// nothing to compare against.
    #[test]
    fn postgres_and_sqlite_have_the_same_tables_and_columns() {
        if !on_postgres() {
            return;
        }
        let lite = Store::open_in_memory().unwrap();
        let mut lite_columns = lite
            .db()
            .test_texts(
                "SELECT m.name || '.' || p.name FROM sqlite_master m, pragma_table_info(m.name) p
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
            )
            .unwrap();
        let pg = Store::open_test();
        let mut pg_columns = pg
            .db()
            .test_texts(
                "SELECT table_name || '.' || column_name FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name <> 'qrcash_schema'",
            )
            .unwrap();
        lite_columns.sort();
        pg_columns.sort();
        assert!(lite_columns.len() > 100, "{lite_columns:?}");
        assert_eq!(pg_columns, lite_columns);
    }

    fn on_postgres() -> bool {
        std::env::var("QRCASH_TEST_BACKEND").as_deref() == Ok("postgres")
    }

    /// PostgreSQL aborts a transaction at its first error and turns `COMMIT` into a silent
    /// rollback: the store reports that failure instead of a success, forgets it only when a
    /// savepoint taken before it is rolled back, and the connection stays usable.
    #[test]
    fn a_failed_statement_spoils_the_transaction_unless_its_savepoint_is_undone() {
        if !on_postgres() {
            return;
        }
        let mut s = Store::open_test();
        let mut tx = s.begin().unwrap();
        let sp = tx.savepoint().unwrap();
        assert!(
            sp.db()
                .test_execute("INSERT INTO nowhere VALUES (1)")
                .is_err()
        );
        drop(sp);
        next_seq(tx.db()).unwrap();
        tx.commit().unwrap();

        let tx = s.begin().unwrap();
        assert!(
            tx.db()
                .test_execute("INSERT INTO nowhere VALUES (1)")
                .is_err()
        );
        let later = next_seq(tx.db()).unwrap_err();
        assert!(later.to_string().contains("failed earlier"), "{later}");
        let e = tx.commit().unwrap_err();
        assert!(
            matches!(e, StoreError::Database(SqlError::Aborted(_))),
            "{e:?}"
        );
        assert!(!e.is_transient());
        s.begin().unwrap().commit().unwrap();
        assert_eq!(
            current_seq(s.db()).unwrap(),
            1,
            "the spoilt transaction took no number"
        );
    }

    /// A serialization failure a caller swallowed still reaches the commit, as a conflict to
    /// run again.
    #[test]
    fn a_swallowed_conflict_is_reported_at_commit() {
        if !on_postgres() {
            return;
        }
        let url = Store::test_database().unwrap();
        let (mut a, mut b) = (
            Store::open_postgres(&url).unwrap(),
            Store::open_postgres(&url).unwrap(),
        );
        a.db()
            .test_execute("INSERT INTO meta(key, value) VALUES ('k', 0)")
            .unwrap();
        let tb = b.begin().unwrap();
        assert_eq!(
            tb.db()
                .read_i64("SELECT value FROM meta WHERE key = 'k'")
                .unwrap(),
            0
        );
        let ta = a.begin().unwrap();
        ta.db()
            .test_execute("UPDATE meta SET value = 1 WHERE key = 'k'")
            .unwrap();
        ta.commit().unwrap();
        let swallowed = tb
            .db()
            .test_execute("UPDATE meta SET value = 2 WHERE key = 'k'");
        assert!(
            matches!(swallowed, Err(StoreError::Conflict(_))),
            "{swallowed:?}"
        );
        let e = tb.commit().unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(_)) && e.is_transient(),
            "{e:?}"
        );
        assert_eq!(
            a.db()
                .read_i64("SELECT value FROM meta WHERE key = 'k'")
                .unwrap(),
            1
        );
    }
}
