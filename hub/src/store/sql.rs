//! The two SQL backends behind one handle: SQLite (the embedded default) and PostgreSQL
//! (a bank's hub, several instances on one database).
//!
//! The store's functions write their SQL once, in the dialect both accept: numbered
//! parameters `?1`, `?2`… (sent to PostgreSQL as `$1`, `$2`…), `ON CONFLICT … DO`,
//! `RETURNING`, integers for booleans. They bind [`Param`]s and read [`Row`]s, whose cells
//! convert between the backends' types here, so nothing above this module knows which
//! database it talks to.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// One value bound to, or read from, a statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// SQL `NULL`.
    Null,
    /// An integer (also booleans, as 0 and 1).
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// A value that can be bound to a statement's parameter.
pub trait Param {
    /// The value to bind.
    fn value(&self) -> Value<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u8, bool);

impl Param for f64 {
    fn value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}
impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

/// A statement's parameters: `[]`, an array of one type (`[id]`), or [`params!`]'s list.
pub trait Params {
    /// The values, in order.
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for [&dyn Param; 0] {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}
impl Params for &[&dyn Param] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|p| p.value()).collect()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: Param> Params for [T; $n] {
            fn values(&self) -> Vec<Value<'_>> {
                self.iter().map(Param::value).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);

/// Parameters of mixed types: `params![id, to_sql(at), flag]`.
macro_rules! params {
    () => { [] as [&dyn $crate::store::sql::Param; 0] };
    ($($p:expr),+ $(,)?) => { [$(&$p as &dyn $crate::store::sql::Param),+] };
}
pub(crate) use params;

/// A value read from a row, converted from either backend's type.
pub trait FromCell: Sized {
    /// Converts; `None` when the cell holds another kind of value.
    fn from_cell(cell: Value<'_>) -> Option<Self>;
    /// What it expects, for the error message.
    const WANTED: &'static str;
}

impl FromCell for i64 {
    const WANTED: &'static str = "an integer";
    fn from_cell(cell: Value<'_>) -> Option<Self> {
        match cell {
            Value::Int(v) => Some(v),
            _ => None,
        }
    }
}
impl FromCell for u32 {
    const WANTED: &'static str = "a 32-bit unsigned integer";
    fn from_cell(cell: Value<'_>) -> Option<Self> {
        i64::from_cell(cell).and_then(|v| u32::try_from(v).ok())
    }
}
impl FromCell for bool {
    const WANTED: &'static str = "a boolean";
    fn from_cell(cell: Value<'_>) -> Option<Self> {
        i64::from_cell(cell).map(|v| v != 0)
    }
}
impl FromCell for f64 {
    const WANTED: &'static str = "a number";
    fn from_cell(cell: Value<'_>) -> Option<Self> {
        match cell {
            Value::Real(v) => Some(v),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }
}
impl FromCell for String {
    const WANTED: &'static str = "text";
    fn from_cell(cell: Value<'_>) -> Option<Self> {
        match cell {
            Value::Text(v) => Some(v.to_owned()),
            _ => None,
        }
    }
}
impl FromCell for Vec<u8> {
    const WANTED: &'static str = "bytes";
    fn from_cell(cell: Value<'_>) -> Option<Self> {
        match cell {
            Value::Blob(v) => Some(v.to_vec()),
            _ => None,
        }
    }
}
impl<T: FromCell> FromCell for Option<T> {
    const WANTED: &'static str = T::WANTED;
    fn from_cell(cell: Value<'_>) -> Option<Self> {
        match cell {
            Value::Null => Some(None),
            other => T::from_cell(other).map(Some),
        }
    }
}

/// How a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// SQLite reported an error.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error (or the connection failed).
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    /// The transaction failed earlier (see [`PgConn`]); this is that failure.
    #[error("the transaction failed earlier: {}", .0.message)]
    Aborted(Failure),
    /// A statement that must return a row returned none.
    #[error("no row")]
    NoRows,
    /// A cell held a value of another kind than the code reads.
    #[error("column {column} holds {found}, not {wanted}")]
    Type {
        /// Its index.
        column: usize,
        /// What the code reads.
        wanted: &'static str,
        /// What it holds.
        found: String,
    },
}

/// A PostgreSQL error with the server's own words (the client's `Display` says only
/// "db error"), or the client's with its causes ("error performing TLS handshake: invalid
/// peer certificate: UnknownIssuer").
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({}): {detail}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let c_text = c.to_string();
                if !text.ends_with(&c_text) {
                    text = format!("{text}: {c_text}");
                }
                cause = c.source();
            }
            text
        }
    }
}

impl SqlError {
    /// PostgreSQL's SQLSTATE, if it sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SqlError::Postgres(e) => e.code().map(postgres::error::SqlState::code),
            _ => None,
        }
    }

    /// The transaction lost a race with another one (serialization failure or deadlock):
    /// running it again from the start is correct and will most likely succeed.
    pub fn is_conflict(&self) -> bool {
        match self {
            SqlError::Aborted(f) => f.conflict,
            _ => matches!(self.sqlstate(), Some("40001" | "40P01")),
        }
    }

    /// The connection to the server is gone (restart, network): the transaction did not
    /// commit, or its outcome is unknown if it failed at `COMMIT`. Errors of our own side
    /// (a value that does not convert, a statement the server refused) are not.
    pub fn is_connection(&self) -> bool {
        match self {
            SqlError::Postgres(e) => {
                let io = std::error::Error::source(e)
                    .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
                e.is_closed()
                    || io
                    || matches!(
                        e.code().map(postgres::error::SqlState::code),
                        Some(
                            "57P01"
                                | "57P02"
                                | "57P03"
                                | "08000"
                                | "08001"
                                | "08003"
                                | "08004"
                                | "08006"
                                | "08P01"
                        )
                    )
            }
            SqlError::Aborted(f) => f.connection,
            _ => false,
        }
    }
}

/// `Result::optional` for single-row reads: no row is `None`.
pub trait OptionalExt<T> {
    /// `Ok(None)` for [`SqlError::NoRows`].
    fn optional(self) -> Result<Option<T>, SqlError>;
}

impl<T> OptionalExt<T> for Result<T, SqlError> {
    fn optional(self) -> Result<Option<T>, SqlError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One result row of either backend.
pub enum Row<'r> {
    /// SQLite's.
    Lite(&'r rusqlite::Row<'r>),
    /// PostgreSQL's.
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    /// Cell `i` as a `T`.
    pub fn get<T: FromCell>(&self, i: usize) -> Result<T, SqlError> {
        let convert = |cell: Value<'_>| {
            T::from_cell(cell).ok_or_else(|| SqlError::Type {
                column: i,
                wanted: T::WANTED,
                found: format!("{cell:?}"),
            })
        };
        match self {
            Row::Lite(r) => {
                let cell = match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(
                        std::str::from_utf8(t)
                            .map_err(|e| SqlError::Sqlite(rusqlite::Error::Utf8Error(e)))?,
                    ),
                    ValueRef::Blob(b) => Value::Blob(b),
                };
                convert(cell)
            }
            Row::Pg(r) => pg_cell(r, i, convert),
        }
    }
}

/// Reads cell `i` of a PostgreSQL row by its column type and hands it to `f`.
fn pg_cell<T>(
    r: &postgres::Row,
    i: usize,
    f: impl FnOnce(Value<'_>) -> Result<T, SqlError>,
) -> Result<T, SqlError> {
    let ty = r
        .columns()
        .get(i)
        .map(|c| c.type_().clone())
        .ok_or(SqlError::Type {
            column: i,
            wanted: "a column",
            found: "no such column".into(),
        })?;
    let int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
    let cell = match ty {
        Type::INT8 => int(r.try_get::<_, Option<i64>>(i)?),
        Type::INT4 => int(r.try_get::<_, Option<i32>>(i)?.map(i64::from)),
        Type::INT2 => int(r.try_get::<_, Option<i16>>(i)?.map(i64::from)),
        Type::BOOL => int(r.try_get::<_, Option<bool>>(i)?.map(i64::from)),
        Type::FLOAT8 => r
            .try_get::<_, Option<f64>>(i)?
            .map_or(Value::Null, Value::Real),
        Type::FLOAT4 => r
            .try_get::<_, Option<f32>>(i)?
            .map_or(Value::Null, |v| Value::Real(f64::from(v))),
        Type::NUMERIC => match r.try_get::<_, Option<Numeric>>(i)? {
            None => Value::Null,
            Some(Numeric(v)) => Value::Int(i64::try_from(v).map_err(|_| SqlError::Type {
                column: i,
                wanted: "a 64-bit integer",
                found: format!("numeric {v}"),
            })?),
        },
        Type::BYTEA => {
            return f(r
                .try_get::<_, Option<&[u8]>>(i)?
                .map_or(Value::Null, Value::Blob));
        }
        _ => {
            return f(r
                .try_get::<_, Option<&str>>(i)?
                .map_or(Value::Null, Value::Text));
        }
    };
    f(cell)
}

/// An integral PostgreSQL `numeric` (what `SUM` of `bigint` returns), decoded from its
/// binary form: base-10000 digits with a weight. A fraction or NaN is refused.
#[derive(Debug, Clone, Copy)]
struct Numeric(i128);

impl<'a> postgres::types::FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |k: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(2 * k..2 * k + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "short numeric".into())
        };
        let ndigits = usize::from(word(0)?);
        let weight = i32::from(word(1)? as i16);
        let sign = word(2)?;
        if sign != 0x0000 && sign != 0x4000 {
            return Err(format!("numeric NaN or infinity (sign {sign:#06x})").into());
        }
        let mut value: i128 = 0;
        for k in 0..ndigits {
            let digit = i128::from(word(4 + k)?);
            let power = weight - k as i32;
            if power < 0 {
                if digit != 0 {
                    return Err("numeric with a fraction".into());
                }
                continue;
            }
            value = value
                .checked_add(
                    digit
                        .checked_mul(
                            10_000i128
                                .checked_pow(power as u32)
                                .ok_or("numeric too large")?,
                        )
                        .ok_or("numeric too large")?,
                )
                .ok_or("numeric too large")?;
        }
        Ok(Numeric(if sign == 0x4000 { -value } else { value }))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(v),
            Value::Real(v) => ValueRef::Real(v),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// Our values encode as whatever PostgreSQL inferred for the parameter: an integer binds to
/// `bigint`, `integer`, `smallint` or `boolean` (`CASE WHEN ?5`), a number to either float.
impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (*self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Value::Int(v), &Type::INT4) => i32::try_from(v)?.to_sql(ty, out),
            (Value::Int(v), &Type::INT2) => i16::try_from(v)?.to_sql(ty, out),
            (Value::Int(v), &Type::BOOL) => (v != 0).to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)]
            (Value::Int(v), &Type::FLOAT8) => (v as f64).to_sql(ty, out),
            (Value::Real(v), &Type::FLOAT8) => v.to_sql(ty, out),
            #[allow(clippy::cast_possible_truncation)]
            (Value::Real(v), &Type::FLOAT4) => (v as f32).to_sql(ty, out),
            (Value::Text(t), &(Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME)) => {
                t.to_sql(ty, out)
            }
            (Value::Blob(b), &Type::BYTEA) => b.to_sql(ty, out),
            (v, ty) => Err(format!("cannot bind {v:?} to a parameter of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// `?N` placeholders as PostgreSQL's `$N`, leaving quoted text alone.
pub(crate) fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// A PostgreSQL connection with its prepared statements and the state of its transaction.
/// Statements are prepared once per connection (one round trip each after that) and
/// forgotten when it is replaced.
///
/// PostgreSQL aborts a transaction at its first error: every later statement fails with
/// "current transaction is aborted" (25P02) and `COMMIT` silently rolls back. So the
/// connection remembers the first failure since `BEGIN` ([`Failure`]): a later 25P02 is
/// reported as that failure (a conflict stays a conflict, to be run again), `COMMIT` of a
/// failed transaction is refused with it, and only `ROLLBACK TO` a savepoint taken before
/// an ordinary failure clears it (never a conflict or a lost connection).
pub struct PgConn {
    /// `None` only while being dropped.
    client: RefCell<Option<postgres::Client>>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
    target: super::pg_target::PgTarget,
    names: Cell<u32>,
    /// Open savepoints.
    depth: Cell<u32>,
    in_transaction: Cell<bool>,
    failure: RefCell<Option<Failure>>,
    /// A rollback failed: the server may still hold a transaction for this connection.
    dirty: Cell<bool>,
    /// Round trips so far ([`PgConn::round_trips`]).
    trips: Cell<u64>,
}

impl Drop for PgConn {
    /// `postgres::Client` closes its connection by blocking on a runtime of its own, which
    /// panics on a thread that drives tokio tasks (a hub service handing its store back at
    /// shutdown, say): there it is closed from a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

/// A new client for `target`.
fn open(target: &super::pg_target::PgTarget) -> Result<postgres::Client, SqlError> {
    Ok(match &target.tls {
        Some(tls) => target.config.connect(tls.clone())?,
        None => target.config.connect(postgres::NoTls)?,
    })
}

/// The first failure inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Savepoints open when it happened.
    depth: u32,
    /// It was a serialization failure or deadlock.
    pub conflict: bool,
    /// The connection was lost.
    pub connection: bool,
    /// What the server said.
    pub message: String,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("closed", &self.client().is_closed())
            .field("in_transaction", &self.in_transaction.get())
            .finish_non_exhaustive()
    }
}

impl PgConn {
    /// Connects, over TLS when the target says so ([`super::pg_target`]).
    pub fn connect(target: super::pg_target::PgTarget) -> Result<PgConn, SqlError> {
        let client = open(&target)?;
        Ok(PgConn {
            client: RefCell::new(Some(client)),
            statements: RefCell::new(HashMap::new()),
            target,
            names: Cell::new(0),
            depth: Cell::new(0),
            in_transaction: Cell::new(false),
            failure: RefCell::new(None),
            dirty: Cell::new(false),
            trips: Cell::new(0),
        })
    }

    /// The connection, for one round trip to the server (counted: [`PgConn::round_trips`]).
    fn trip(&self) -> std::cell::RefMut<'_, postgres::Client> {
        self.trips.set(self.trips.get() + 1);
        self.client()
    }

    /// Round trips to the server since the connection was opened: statements prepared and
    /// run, transactions begun and committed (each is one message and its answer).
    pub fn round_trips(&self) -> u64 {
        self.trips.get()
    }

    /// The connection.
    fn client(&self) -> std::cell::RefMut<'_, postgres::Client> {
        std::cell::RefMut::map(self.client.borrow_mut(), |c| {
            c.as_mut().expect("the client is taken only by drop")
        })
    }

    fn reconnect(&self) -> Result<(), SqlError> {
        let fresh = open(&self.target)?;
        *self.client.borrow_mut() = Some(fresh);
        self.statements.borrow_mut().clear();
        self.dirty.set(false);
        Ok(())
    }

    /// Notes a failed statement; returns the error to report (a 25P02 after an earlier
    /// failure is reported as that failure).
    fn failed(&self, e: SqlError) -> SqlError {
        if !self.in_transaction.get() {
            return e;
        }
        let mut failure = self.failure.borrow_mut();
        match &*failure {
            Some(first) if e.sqlstate() == Some("25P02") => SqlError::Aborted(first.clone()),
            Some(_) => e,
            None => {
                *failure = Some(Failure {
                    depth: self.depth.get(),
                    conflict: e.is_conflict(),
                    connection: e.is_connection(),
                    message: e.to_string(),
                });
                e
            }
        }
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement, SqlError> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client()
            .prepare(&pg_placeholders(sql))
            .map_err(|e| self.failed(e.into()))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn query(&self, sql: &str, params: &[Value<'_>]) -> Result<Vec<postgres::Row>, SqlError> {
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.trip().query(&statement, &refs);
        rows.map_err(|e| self.failed(e.into()))
    }

    fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<usize, SqlError> {
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let n = self.trip().execute(&statement, &refs);
        let n = n.map_err(|e| self.failed(e.into()))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// One integer from a statement without parameters (`NULL` or no row is 0).
    pub(crate) fn read_one(&self, sql: &str) -> Result<i64, SqlError> {
        self.query(sql, &[])?
            .first()
            .map_or(Ok(None), |r| Row::Pg(r).get::<Option<i64>>(0))
            .map(Option::unwrap_or_default)
    }

    /// Runs statements without parameters (schema, locks), one round trip.
    pub(crate) fn batch(&self, sql: &str) -> Result<(), SqlError> {
        let done = self.trip().batch_execute(sql);
        done.map_err(|e| self.failed(e.into()))
    }

    /// Starts a `SERIALIZABLE` transaction, first connecting again if the connection was
    /// lost (a server restart) and ending whatever a failed rollback left open. `relaxed`
    /// starts a `READ COMMITTED` one instead ([`super::Store::begin_relaxed`]).
    pub(crate) fn begin(&self, relaxed: bool) -> Result<(), SqlError> {
        if self.client().is_closed() {
            self.reconnect()?;
        } else if self.dirty.get() {
            let cleared = self.trip().batch_execute("ROLLBACK");
            if cleared.is_err() {
                self.reconnect()?;
            }
            self.dirty.set(false);
        }
        self.trip().batch_execute(if relaxed {
            "BEGIN ISOLATION LEVEL READ COMMITTED"
        } else {
            "BEGIN ISOLATION LEVEL SERIALIZABLE"
        })?;
        self.in_transaction.set(true);
        self.depth.set(0);
        *self.failure.borrow_mut() = None;
        Ok(())
    }

    /// Commits; a transaction that failed is rolled back instead and its failure reported.
    pub(crate) fn commit(&self) -> Result<(), SqlError> {
        if let Some(failure) = self.failure.borrow_mut().take() {
            self.end("ROLLBACK");
            return Err(SqlError::Aborted(failure));
        }
        let done = self.trip().batch_execute("COMMIT");
        self.in_transaction.set(false);
        done.map_err(|e| {
            let e = SqlError::from(e);
            if e.is_connection() {
                self.dirty.set(true);
            }
            e
        })
    }

    /// Rolls the transaction back.
    pub(crate) fn rollback(&self) {
        self.failure.borrow_mut().take();
        self.end("ROLLBACK");
    }

    fn end(&self, sql: &str) {
        if self.trip().batch_execute(sql).is_err() {
            self.dirty.set(true);
        }
        self.in_transaction.set(false);
    }

    /// Takes a savepoint; returns its name.
    pub(crate) fn savepoint(&self) -> Result<String, SqlError> {
        let n = self.names.get().wrapping_add(1);
        self.names.set(n);
        let name = format!("sp{n}");
        self.batch(&format!("SAVEPOINT {name}"))?;
        self.depth.set(self.depth.get() + 1);
        Ok(name)
    }

    /// Keeps a savepoint's effects in the transaction.
    pub(crate) fn release(&self, name: &str) -> Result<(), SqlError> {
        let done = self.batch(&format!("RELEASE SAVEPOINT {name}"));
        self.close_level();
        done
    }

    /// Undoes a savepoint's effects; an ordinary failure inside it is forgotten.
    pub(crate) fn rollback_to(&self, name: &str) {
        let level = self.depth.get();
        let done = self.trip().batch_execute(&format!(
            "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
        ));
        if done.is_err() {
            self.dirty.set(true);
        } else {
            let mut failure = self.failure.borrow_mut();
            if failure
                .as_ref()
                .is_some_and(|f| f.depth >= level && !f.conflict && !f.connection)
            {
                *failure = None;
            }
        }
        self.close_level();
    }

    fn close_level(&self) {
        let depth = self.depth.get().saturating_sub(1);
        self.depth.set(depth);
        if let Some(f) = self.failure.borrow_mut().as_mut() {
            f.depth = f.depth.min(depth);
        }
    }
}

/// The handle every storage function takes (see [`super::Db`]): a borrowed connection of
/// one backend.
#[derive(Clone, Copy)]
pub(crate) enum Handle<'a> {
    Lite(&'a rusqlite::Connection),
    Pg(&'a PgConn),
}

impl Handle<'_> {
    pub(crate) fn execute<P: Params>(
        self,
        sql: &str,
        p: P,
        cached: bool,
    ) -> Result<usize, SqlError> {
        let values = p.values();
        match self {
            Handle::Lite(c) => {
                let params = rusqlite::params_from_iter(values.iter());
                Ok(if cached {
                    c.prepare_cached(sql)?.execute(params)?
                } else {
                    c.execute(sql, params)?
                })
            }
            Handle::Pg(c) => c.execute(sql, &values),
        }
    }

    pub(crate) fn rows<T, P, F>(
        self,
        sql: &str,
        p: P,
        cached: bool,
        mut f: F,
    ) -> Result<Vec<T>, SqlError>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T, SqlError>,
    {
        let values = p.values();
        match self {
            Handle::Lite(c) => {
                if cached {
                    lite_rows(&mut *c.prepare_cached(sql)?, &values, f)
                } else {
                    lite_rows(&mut c.prepare(sql)?, &values, f)
                }
            }
            Handle::Pg(c) => c
                .query(sql, &values)?
                .iter()
                .map(|r| f(&Row::Pg(r)))
                .collect(),
        }
    }
}

fn lite_rows<T>(
    stmt: &mut rusqlite::Statement<'_>,
    values: &[Value<'_>],
    mut f: impl FnMut(&Row<'_>) -> Result<T, SqlError>,
) -> Result<Vec<T>, SqlError> {
    let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(&Row::Lite(r))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_outside_quotes() {
        assert_eq!(
            pg_placeholders("SELECT '?1', a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT '?1', a FROM t WHERE b = $1 AND c = $12"
        );
    }

    #[test]
    fn cells_convert_and_refuse_other_kinds() {
        assert_eq!(bool::from_cell(Value::Int(1)), Some(true));
        assert_eq!(f64::from_cell(Value::Int(2)), Some(2.0));
        assert_eq!(Option::<String>::from_cell(Value::Null), Some(None));
        assert_eq!(String::from_cell(Value::Int(1)), None);
        assert_eq!(u32::from_cell(Value::Int(-1)), None);
        assert_eq!(i64::from_cell(Value::Null), None);
    }

    #[test]
    fn numerics_decode_when_integral() {
        use postgres::types::FromSql;
        // 1_0000_0002 = digits [1, 0, 2], weight 2, positive.
        let raw = [0, 3, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(
            Numeric::from_sql(&Type::NUMERIC, &raw).unwrap().0,
            100_000_002
        );
        // -5
        let raw = [0, 1, 0, 0, 0x40, 0, 0, 0, 0, 5];
        assert_eq!(Numeric::from_sql(&Type::NUMERIC, &raw).unwrap().0, -5);
        // 0 has no digits.
        let raw = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Numeric::from_sql(&Type::NUMERIC, &raw).unwrap().0, 0);
        // 1.5 = digits [1, 5000], weight 0.
        let raw = [0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert!(Numeric::from_sql(&Type::NUMERIC, &raw).is_err());
    }
}
