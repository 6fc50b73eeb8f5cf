//! Typed rows: accounts, devices, ATMs, merchants, bank accounts and withdrawals, with the
//! reads and writes the handler and the operator commands need.

use super::sql::{OptionalExt, Param, Row, SqlError, params};
use crate::store::Db;
use crate::throttle::Failures;
use qrcash_protocol::messages::{CassetteStatus, NoteCount};
use qrcash_protocol::{Amount, Currency, OrderId, Position, TxId};

use super::{from_sql, to_sql};
use crate::error::StoreError;
use crate::identity::PinState;
use crate::withdrawal::{Lifecycle, Phase};

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn currency(text: &str) -> Result<Currency, StoreError> {
    Currency::new(text).map_err(corrupt)
}

/// A customer account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// Account id.
    pub id: String,
    /// Its currency.
    pub currency: Currency,
    /// Argon2 PHC hash of the password.
    pub password_hash: String,
    /// Argon2 PHC hash of the PIN.
    pub pin_hash: String,
    /// Created, Unix seconds.
    pub created_at: u64,
    /// Last password change (equals `created_at` until changed).
    pub password_changed_at: u64,
    /// Asset-decreasing functions frozen ("not me").
    pub frozen: bool,
    /// Why frozen.
    pub frozen_reason: Option<String>,
    /// PIN attempt state.
    pub pin: PinState,
}

/// Loads an account.
pub fn account(db: Db<'_>, id: &str) -> Result<Option<AccountRow>, StoreError> {
    let row = db
        .row_cached(
            "SELECT id, currency, password_hash, pin_hash, created_at, password_changed_at,
                    frozen, frozen_reason, pin_failures, pin_locked_until
             FROM accounts WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<i64>(4)?,
                    r.get::<i64>(5)?,
                    r.get::<bool>(6)?,
                    r.get(7)?,
                    r.get::<i64>(8)?,
                    r.get::<i64>(9)?,
                ))
            },
        )
        .optional()?;
    row.map(|(id, cur, ph, pinh, ca, pca, frozen, fr, pf, plu)| {
        Ok(AccountRow {
            id,
            currency: currency(&cur)?,
            password_hash: ph,
            pin_hash: pinh,
            created_at: from_sql(ca),
            password_changed_at: from_sql(pca),
            frozen,
            frozen_reason: fr,
            pin: PinState {
                failures: u32::try_from(pf).unwrap_or(u32::MAX),
                locked_until: from_sql(plu),
            },
        })
    })
    .transpose()
}

/// Stores the PIN attempt state.
pub fn save_pin_state(db: Db<'_>, account: &str, s: &PinState) -> Result<(), StoreError> {
    db.exec_cached(
        "UPDATE accounts SET pin_failures = ?2, pin_locked_until = ?3 WHERE id = ?1",
        params![account, s.failures, to_sql(s.locked_until)],
    )?;
    Ok(())
}

/// Freezes (or unfreezes) an account's asset-decreasing functions.
pub fn set_frozen(
    db: Db<'_>,
    account: &str,
    frozen: bool,
    reason: Option<&str>,
    at: u64,
) -> Result<bool, StoreError> {
    let n = db.exec_cached(
        "UPDATE accounts SET frozen = ?2, frozen_reason = ?3, frozen_at = ?4 WHERE id = ?1",
        params![account, frozen, reason, frozen.then_some(to_sql(at))],
    )?;
    Ok(n == 1)
}

/// Device status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// May be used.
    Active,
    /// Revoked by an operator or by the owner's "not me".
    Revoked,
}

/// A phone device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// Device id (its topic id).
    pub id: String,
    /// The account it is enrolled for.
    pub account: String,
    /// Human name.
    pub name: String,
    /// Enrolled public key (JWK JSON).
    pub public_jwk: String,
    /// Its key id.
    pub kid: String,
    /// Active or revoked.
    pub status: DeviceStatus,
    /// First enrolled.
    pub enrolled_at: u64,
    /// Key last (re-)enrolled.
    pub key_changed_at: u64,
    /// Start of the current session (its last successful login); `None` when signed out
    /// (password changed elsewhere, "sign out other devices"). Past logins are in `logins`.
    pub last_login_at: Option<u64>,
    /// May not move money out before this time (new-device policy).
    pub restricted_until: Option<u64>,
    /// Why restricted.
    pub restriction_reason: Option<String>,
    /// Why revoked.
    pub revoked_reason: Option<String>,
}

const DEVICE_COLS: &str = "id, account, name, public_jwk, kid, status, enrolled_at, key_changed_at,
     last_login_at, restricted_until, restriction_reason, revoked_reason";

fn device_from(r: &Row<'_>) -> Result<DeviceRow, SqlError> {
    let status: String = r.get(5)?;
    Ok(DeviceRow {
        id: r.get(0)?,
        account: r.get(1)?,
        name: r.get(2)?,
        public_jwk: r.get(3)?,
        kid: r.get(4)?,
        status: if status == "active" {
            DeviceStatus::Active
        } else {
            DeviceStatus::Revoked
        },
        enrolled_at: from_sql(r.get(6)?),
        key_changed_at: from_sql(r.get(7)?),
        last_login_at: r.get::<Option<i64>>(8)?.map(from_sql),
        restricted_until: r.get::<Option<i64>>(9)?.map(from_sql),
        restriction_reason: r.get(10)?,
        revoked_reason: r.get(11)?,
    })
}

/// Loads a device.
pub fn device(db: Db<'_>, id: &str) -> Result<Option<DeviceRow>, StoreError> {
    Ok(db
        .row_cached(
            &format!("SELECT {DEVICE_COLS} FROM devices WHERE id = ?1"),
            [id],
            device_from,
        )
        .optional()?)
}

/// All devices, or those of one account.
pub fn devices(db: Db<'_>, account: Option<&str>) -> Result<Vec<DeviceRow>, StoreError> {
    Ok(db.rows(
        &format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE CAST(?1 AS TEXT) IS NULL OR account = ?1 ORDER BY account, id"
        ),
        [account],
        device_from,
    )?)
}

/// Enrols a new device or replaces the key of an existing one, and records the login.
pub fn upsert_device_login(
    db: Db<'_>,
    d: &DeviceRow,
    at: u64,
    position: Option<&Position>,
    new_device: bool,
) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO devices(id, account, name, public_jwk, kid, status, enrolled_at,
                             key_changed_at, last_login_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7, ?8)
         ON CONFLICT(id) DO UPDATE SET name = ?3, public_jwk = ?4, kid = ?5,
                             key_changed_at = ?7, last_login_at = ?8",
        params![
            d.id,
            d.account,
            d.name,
            d.public_jwk,
            d.kid,
            to_sql(d.enrolled_at),
            to_sql(d.key_changed_at),
            to_sql(at)
        ],
    )?;
    db.exec_cached(
        "INSERT INTO logins(account, device_id, kid, at, lat, lon, accuracy_m, new_device)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            d.account,
            d.id,
            d.kid,
            to_sql(at),
            position.map(|p| p.lat),
            position.map(|p| p.lon),
            position.map(|p| p.accuracy_m),
            new_device
        ],
    )?;
    Ok(())
}

/// Revokes a device.
pub fn revoke_device(db: Db<'_>, id: &str, reason: &str, at: u64) -> Result<bool, StoreError> {
    let n = db.exec_cached(
        "UPDATE devices SET status = 'revoked', revoked_at = ?2, revoked_reason = ?3
         WHERE id = ?1 AND status = 'active'",
        params![id, to_sql(at), reason],
    )?;
    Ok(n == 1)
}

/// The login failures of a subject (`device:<id>` or `account:<name>`); none yet is the
/// default.
pub fn login_failures(db: Db<'_>, subject: &str) -> Result<Failures, StoreError> {
    Ok(db
        .row_cached(
            "SELECT failures, locked_until, last_at FROM login_failures WHERE subject = ?1",
            [subject],
            |r| {
                Ok(Failures {
                    count: u32::try_from(r.get::<i64>(0)?).unwrap_or(u32::MAX),
                    locked_until: from_sql(r.get(1)?),
                    last_at: from_sql(r.get(2)?),
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// Stores a subject's login failures; the default state deletes the row.
pub fn save_login_failures(db: Db<'_>, subject: &str, f: &Failures) -> Result<(), StoreError> {
    if *f == Failures::default() {
        db.exec_cached("DELETE FROM login_failures WHERE subject = ?1", [subject])?;
    } else {
        db.exec_cached(
            "INSERT INTO login_failures(subject, failures, locked_until, last_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(subject) DO UPDATE SET failures = ?2, locked_until = ?3, last_at = ?4",
            params![
                subject,
                i64::from(f.count),
                to_sql(f.locked_until),
                to_sql(f.last_at)
            ],
        )?;
    }
    Ok(())
}

/// Forgets the failure counts of subjects that are unlocked and quiet: since `before_real`
/// for an account that exists (so that waiting does not reset a guesser's doubling lock),
/// since `before_other` for device ids (an owner's typos are forgiven after a quiet hour) and
/// for names no account exists under (throw-away names would otherwise pile up). Returns how
/// many.
pub fn prune_login_failures(
    db: Db<'_>,
    now: u64,
    before_real: u64,
    before_other: u64,
) -> Result<usize, StoreError> {
    Ok(db.exec_cached(
        "DELETE FROM login_failures AS f
         WHERE f.locked_until <= ?1
           AND f.last_at < CASE
               WHEN EXISTS (SELECT 1 FROM accounts a WHERE 'account:' || a.id = f.subject)
               THEN CAST(?2 AS BIGINT) ELSE CAST(?3 AS BIGINT) END",
        params![to_sql(now), to_sql(before_real), to_sql(before_other)],
    )?)
}

/// Sets a new password hash for an account.
pub fn set_password(db: Db<'_>, account: &str, hash: &str, at: u64) -> Result<bool, StoreError> {
    let n = db.exec_cached(
        "UPDATE accounts SET password_hash = ?2, password_changed_at = ?3 WHERE id = ?1",
        params![account, hash, to_sql(at)],
    )?;
    Ok(n == 1)
}

/// Ends the sessions of an account's devices, except `keep`; returns the devices that had
/// one, sorted. They must log in again.
pub fn end_sessions(
    db: Db<'_>,
    account: &str,
    keep: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut ids = db.rows_cached(
        "UPDATE devices SET last_login_at = NULL
         WHERE account = ?1 AND (CAST(?2 AS TEXT) IS NULL OR id <> ?2) AND last_login_at IS NOT NULL
         RETURNING id",
        params![account, keep],
        |r| r.get::<String>(0),
    )?;
    ids.sort();
    Ok(ids)
}

/// Sets or clears a device's restriction.
pub fn set_restriction(
    db: Db<'_>,
    id: &str,
    until: Option<u64>,
    reason: Option<&str>,
) -> Result<bool, StoreError> {
    let n = db.exec_cached(
        "UPDATE devices SET restricted_until = ?2, restriction_reason = ?3 WHERE id = ?1",
        params![id, until.map(to_sql), reason],
    )?;
    Ok(n == 1)
}

/// An enrolled ATM.
#[derive(Debug, Clone, PartialEq)]
pub struct AtmRow {
    /// ATM id (its topic id).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Street address.
    pub address: String,
    /// Registered position.
    pub position: Position,
    /// Enrolled public key (JWK JSON).
    pub public_jwk: String,
    /// Its key id.
    pub kid: String,
    /// Cassette denominations.
    pub denominations: Vec<u64>,
    /// Latest reported cassettes, if any heartbeat arrived.
    pub cassettes: Option<Vec<CassetteStatus>>,
    /// Latest reported state.
    pub state: Option<String>,
    /// Latest presence (`online`/`offline`).
    pub presence: Option<String>,
    /// Last message.
    pub last_seen: Option<u64>,
    /// Enrolled and not retired.
    pub active: bool,
    /// The key it rotated away from, still accepted until the time given.
    pub previous: Option<PreviousKey>,
}

/// An ATM's previous key during the overlap after a rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousKey {
    /// The public key (JWK JSON).
    pub public_jwk: String,
    /// Its key id.
    pub kid: String,
    /// Accepted before this Unix second.
    pub until: u64,
    /// Only for messages numbered up to this `seq` (the rotation's own)...
    pub up_to_seq: u64,
    /// ... and dated no later than this (the rotation's `iat`).
    pub dated_by: u64,
}

/// Loads an ATM.
pub fn atm(db: Db<'_>, id: &str) -> Result<Option<AtmRow>, StoreError> {
    let row = db
        .row_cached(
            "SELECT id, name, address, lat, lon, public_jwk, kid, denominations, cassettes,
                    state, presence, last_seen, active, previous_jwk, previous_kid, previous_until,
                    previous_seq, previous_at
             FROM atms WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<f64>(3)?,
                    r.get::<f64>(4)?,
                    r.get::<String>(5)?,
                    r.get::<String>(6)?,
                    r.get::<String>(7)?,
                    r.get::<Option<String>>(8)?,
                    r.get::<Option<String>>(9)?,
                    r.get::<Option<String>>(10)?,
                    r.get::<Option<i64>>(11)?,
                    r.get::<bool>(12)?,
                    (
                        r.get::<Option<String>>(13)?,
                        r.get::<Option<String>>(14)?,
                        r.get::<Option<i64>>(15)?,
                        r.get::<Option<i64>>(16)?,
                        r.get::<Option<i64>>(17)?,
                    ),
                ))
            },
        )
        .optional()?;
    let Some((
        id,
        name,
        address,
        lat,
        lon,
        jwk,
        kid,
        denoms,
        cass,
        state,
        presence,
        seen,
        active,
        (prev_jwk, prev_kid, prev_until, prev_seq, prev_at),
    )) = row
    else {
        return Ok(None);
    };
    let denominations: Vec<u64> = serde_json::from_str(&denoms)
        .map_err(|e| corrupt(format!("denominations of ATM {id}: {e}")))?;
    let cassettes = cass
        .map(|c| serde_json::from_str(&c))
        .transpose()
        .map_err(|e| corrupt(format!("cassettes of ATM {id}: {e}")))?;
    Ok(Some(AtmRow {
        id,
        name,
        address,
        position: Position::new(lat, lon, 0.0),
        public_jwk: jwk,
        kid,
        denominations,
        cassettes,
        state,
        presence,
        last_seen: seen.map(from_sql),
        active,
        previous: match (prev_jwk, prev_kid, prev_until, prev_seq, prev_at) {
            (Some(public_jwk), Some(kid), Some(until), Some(seq), Some(at)) => Some(PreviousKey {
                public_jwk,
                kid,
                until: from_sql(until),
                up_to_seq: from_sql(seq),
                dated_by: from_sql(at),
            }),
            _ => None,
        },
    }))
}

/// All ATM ids.
pub fn atm_ids(db: Db<'_>) -> Result<Vec<String>, StoreError> {
    Ok(db.rows("SELECT id FROM atms ORDER BY id", [], |r| r.get(0))?)
}

/// Records an ATM heartbeat.
pub fn atm_heartbeat(
    db: Db<'_>,
    id: &str,
    state: &str,
    cassettes: &[CassetteStatus],
    at: u64,
) -> Result<(), StoreError> {
    let cass = serde_json::to_string(cassettes).map_err(|e| corrupt(e.to_string()))?;
    db.exec_cached(
        "UPDATE atms SET state = ?2, cassettes = ?3, last_seen = ?4 WHERE id = ?1",
        params![id, state, cass, to_sql(at)],
    )?;
    // A snapshot for reconciliation when the counts changed.
    let counts: Vec<(u64, u32)> = cassettes
        .iter()
        .map(|c| (c.denomination, c.notes))
        .collect();
    let counts = serde_json::to_string(&counts).map_err(|e| corrupt(e.to_string()))?;
    let last: Option<String> = db
        .row_cached(
            "SELECT counts FROM atm_counts WHERE atm_id = ?1 ORDER BY id DESC LIMIT 1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    if last.as_deref() != Some(counts.as_str()) {
        db.exec_cached(
            "INSERT INTO atm_counts(atm_id, at, counts, reports_upto)
             VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(id), 0) FROM dispense_reports))",
            params![id, to_sql(at), counts],
        )?;
    }
    Ok(())
}

/// One change of an ATM's reported cassette counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountSnapshot {
    /// When, Unix seconds.
    pub at: u64,
    /// (denomination, notes), as reported.
    pub counts: Vec<(u64, u32)>,
    /// The last dispense report (row id) the hub recorded before it.
    pub reports_upto: i64,
}

/// The ATM's count snapshots, oldest first.
pub fn atm_count_history(db: Db<'_>, id: &str) -> Result<Vec<CountSnapshot>, StoreError> {
    let rows = db.rows(
        "SELECT at, counts, reports_upto FROM atm_counts WHERE atm_id = ?1 ORDER BY id",
        [id],
        |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)),
    )?;
    rows.into_iter()
        .map(|(at, counts, reports_upto)| {
            let counts = serde_json::from_str(&counts)
                .map_err(|e| corrupt(format!("counts of ATM {id}: {e}")))?;
            Ok(CountSnapshot {
                at: from_sql(at),
                counts,
                reports_upto,
            })
        })
        .collect()
}

/// Notes picked per denomination by the applied dispense reports of ATM `id` recorded after
/// report row `after` up to row `upto`.
pub fn picked_notes_between(
    db: Db<'_>,
    id: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<(u64, u32)>, StoreError> {
    let reports = db.rows(
        "SELECT report FROM dispense_reports
         WHERE atm_id = ?1 AND applied = 1 AND id > ?2 AND id <= ?3 ORDER BY id",
        params![id, after, upto],
        |r| r.get::<String>(0),
    )?;
    let mut picked: Vec<(u64, u32)> = Vec::new();
    for text in reports {
        let report: qrcash_protocol::messages::DispenseReport = serde_json::from_str(&text)
            .map_err(|e| corrupt(format!("dispense report of ATM {id}: {e}")))?;
        for n in report.notes {
            match picked.iter_mut().find(|(d, _)| *d == n.denomination) {
                Some((_, p)) => *p = p.saturating_add(n.picked),
                None => picked.push((n.denomination, n.picked)),
            }
        }
    }
    Ok(picked)
}

/// Records an ATM's presence (last will or online notice).
pub fn atm_presence(db: Db<'_>, id: &str, presence: &str, at: u64) -> Result<bool, StoreError> {
    let n = db.exec_cached(
        "UPDATE atms SET presence = ?2, last_seen = ?3 WHERE id = ?1",
        params![id, presence, to_sql(at)],
    )?;
    Ok(n == 1)
}

/// A merchant.
#[derive(Debug, Clone, PartialEq)]
pub struct MerchantRow {
    /// Merchant id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Currency it accepts.
    pub currency: Currency,
    /// Where it is.
    pub position: Position,
}

/// Loads a merchant.
pub fn merchant(db: Db<'_>, id: &str) -> Result<Option<MerchantRow>, StoreError> {
    let row = db
        .row_cached(
            "SELECT id, name, currency, lat, lon FROM merchants WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<f64>(3)?,
                    r.get::<f64>(4)?,
                ))
            },
        )
        .optional()?;
    row.map(|(id, name, cur, lat, lon)| {
        Ok(MerchantRow {
            id,
            name,
            currency: currency(&cur)?,
            position: Position::new(lat, lon, 0.0),
        })
    })
    .transpose()
}

/// The owner account of a registered bank account.
pub fn bank_account_owner(db: Db<'_>, id: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .row_cached(
            "SELECT account FROM bank_accounts WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?)
}

/// A withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawalRow {
    /// Transaction id.
    pub tx_id: TxId,
    /// Account debited.
    pub account: String,
    /// Device that registered it.
    pub device_id: String,
    /// Amount.
    pub amount: Amount,
    /// Phase.
    pub phase: Phase,
    /// Registered at.
    pub registered_at: u64,
    /// Code expiry.
    pub code_expires_at: u64,
    /// ATM it was presented at.
    pub atm_id: Option<String>,
    /// Presented at.
    pub presented_at: Option<u64>,
    /// Confirmation deadline.
    pub confirm_by: Option<u64>,
    /// Challenge sent with the confirmation request.
    pub challenge: Option<String>,
    /// Note breakdown planned at presentation.
    pub notes: Option<Vec<NoteCount>>,
    /// Dispense order id.
    pub order_id: Option<OrderId>,
    /// Dispense order expiry.
    pub order_expires_at: Option<u64>,
    /// The signed order as sent (resent verbatim when the ATM must answer it).
    pub order_payload: Option<String>,
    /// Confirmed at.
    pub confirmed_at: Option<u64>,
    /// Device that confirmed.
    pub confirmed_by: Option<String>,
    /// Value captured.
    pub settled: u64,
    /// When it reached a final phase.
    pub finished_at: Option<u64>,
    /// Flagged for operator reconciliation.
    pub needs_reconciliation: bool,
    /// Operator-facing note (why flagged, how resolved).
    pub note: Option<String>,
}

impl WithdrawalRow {
    /// The facts the transition function needs.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            phase: self.phase,
            amount: self.amount.minor,
            code_expires_at: self.code_expires_at,
            confirm_by: self.confirm_by,
        }
    }
}

const W_COLS: &str = "tx_id, account, device_id, amount, currency, phase, registered_at,
    code_expires_at, atm_id, presented_at, confirm_by, challenge, notes, order_id,
    order_expires_at, order_payload, confirmed_at, confirmed_by, settled, finished_at,
    needs_reconciliation, note";

type RawW = (
    (String, String, String, i64, String, String, i64, i64),
    (
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
    ),
    (
        Option<String>,
        Option<i64>,
        Option<String>,
        i64,
        Option<i64>,
        bool,
        Option<String>,
    ),
);

fn raw_w(r: &Row<'_>) -> Result<RawW, SqlError> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ),
        (
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
            r.get(13)?,
            r.get(14)?,
        ),
        (
            r.get(15)?,
            r.get(16)?,
            r.get(17)?,
            r.get(18)?,
            r.get(19)?,
            r.get(20)?,
            r.get(21)?,
        ),
    ))
}

fn withdrawal_from(raw: RawW) -> Result<WithdrawalRow, StoreError> {
    let ((tx, account, device, amount, cur, phase, reg, exp), b, c) = raw;
    let (atm_id, presented_at, confirm_by, challenge, notes, order_id, order_exp) = b;
    let (order_payload, confirmed_at, confirmed_by, settled, finished_at, flag, note) = c;
    let tx_id: TxId = tx.parse().map_err(corrupt)?;
    Ok(WithdrawalRow {
        tx_id,
        account,
        device_id: device,
        amount: Amount::new(from_sql(amount), currency(&cur)?),
        phase: phase.parse().map_err(corrupt)?,
        registered_at: from_sql(reg),
        code_expires_at: from_sql(exp),
        atm_id,
        presented_at: presented_at.map(from_sql),
        confirm_by: confirm_by.map(from_sql),
        challenge,
        notes: notes
            .map(|n| serde_json::from_str(&n))
            .transpose()
            .map_err(|e| corrupt(format!("notes of {tx_id}: {e}")))?,
        order_id: order_id
            .map(|o| o.parse::<OrderId>())
            .transpose()
            .map_err(corrupt)?,
        order_expires_at: order_exp.map(from_sql),
        order_payload,
        confirmed_at: confirmed_at.map(from_sql),
        confirmed_by,
        settled: from_sql(settled),
        finished_at: finished_at.map(from_sql),
        needs_reconciliation: flag,
        note,
    })
}

/// Loads a withdrawal.
pub fn withdrawal(db: Db<'_>, tx: &TxId) -> Result<Option<WithdrawalRow>, StoreError> {
    db.row_cached(
        &format!("SELECT {W_COLS} FROM withdrawals WHERE tx_id = ?1"),
        [tx.to_string()],
        raw_w,
    )
    .optional()?
    .map(withdrawal_from)
    .transpose()
}

/// Which withdrawals to list, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing<'a> {
    /// Registered, their code expired at `now`.
    CodeExpired {
        /// The time of the sweep.
        now: u64,
    },
    /// Presented, the confirmation deadline passed before `now`.
    ConfirmationOverdue {
        /// The time of the sweep.
        now: u64,
    },
    /// Ordered, the order expired before `before` without a report.
    ReportOverdue {
        /// The order's expiry plus the report grace.
        before: u64,
    },
    /// Ordered at ATM `atm`, the order still valid at `now`, no report yet.
    OrderOutstanding {
        /// The ATM.
        atm: &'a str,
        /// Now.
        now: u64,
    },
    /// Not yet final, or flagged for reconciliation.
    Unsettled,
    /// The operator's filter: a phase, only flagged ones, one account (each optional).
    Matching {
        /// Only this phase.
        phase: Option<Phase>,
        /// Only those flagged for reconciliation.
        flagged: bool,
        /// Only this account.
        account: Option<&'a str>,
    },
}

/// The withdrawals of a [`Listing`].
pub fn withdrawals(db: Db<'_>, which: &Listing<'_>) -> Result<Vec<WithdrawalRow>, StoreError> {
    match which {
        Listing::CodeExpired { now } => withdrawals_where(
            db,
            "phase = 'registered' AND code_expires_at <= ?1",
            &[&to_sql(*now)],
        ),
        Listing::ConfirmationOverdue { now } => withdrawals_where(
            db,
            "phase = 'presented' AND confirm_by < ?1",
            &[&to_sql(*now)],
        ),
        Listing::ReportOverdue { before } => withdrawals_where(
            db,
            "phase = 'ordered' AND order_expires_at < ?1",
            &[&to_sql(*before)],
        ),
        Listing::OrderOutstanding { atm, now } => withdrawals_where(
            db,
            "phase = 'ordered' AND atm_id = ?1 AND order_expires_at > ?2",
            &[atm, &to_sql(*now)],
        ),
        Listing::Unsettled => withdrawals_where(
            db,
            "phase IN ('registered', 'presented', 'ordered', 'in_doubt') OR needs_reconciliation = 1",
            &[],
        ),
        Listing::Matching {
            phase,
            flagged,
            account,
        } => withdrawals_where(
            db,
            "(CAST(?1 AS TEXT) IS NULL OR phase = ?1) AND (?2 = 0 OR needs_reconciliation = 1)
             AND (CAST(?3 AS TEXT) IS NULL OR account = ?3)",
            &[&phase.map(|p| p.as_str()), flagged, account],
        ),
    }
}

/// Withdrawals matching an SQL condition on the table.
fn withdrawals_where(
    db: Db<'_>,
    condition: &str,
    args: &[&dyn Param],
) -> Result<Vec<WithdrawalRow>, StoreError> {
    let raws = db.rows(
        &format!(
            "SELECT {W_COLS} FROM withdrawals WHERE {condition} ORDER BY registered_at, tx_id"
        ),
        args,
        raw_w,
    )?;
    raws.into_iter().map(withdrawal_from).collect()
}

/// Records which hub key signed the code of withdrawal `tx`.
pub fn record_code_issuer(db: Db<'_>, tx: &TxId, kid: &str) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO withdrawal_codes(tx_id, issuer_kid) VALUES (?1, ?2)",
        params![tx.to_string(), kid],
    )?;
    Ok(())
}

/// The key id that signed the code of withdrawal `tx`; `None` for withdrawals registered
/// before it was recorded.
pub fn code_issuer(db: Db<'_>, tx: &TxId) -> Result<Option<String>, StoreError> {
    Ok(db
        .row_cached(
            "SELECT issuer_kid FROM withdrawal_codes WHERE tx_id = ?1",
            params![tx.to_string()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Inserts a newly registered withdrawal.
pub fn insert_withdrawal(db: Db<'_>, w: &WithdrawalRow) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO withdrawals(tx_id, account, device_id, amount, currency, phase,
                                 registered_at, code_expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            w.tx_id.to_string(),
            w.account,
            w.device_id,
            to_sql(w.amount.minor),
            w.amount.currency.as_str(),
            w.phase.as_str(),
            to_sql(w.registered_at),
            to_sql(w.code_expires_at)
        ],
    )?;
    Ok(())
}

/// Binds a registered withdrawal to the ATM that presented it: a conditional update, so of
/// two presentations racing for the same code exactly one changes the row. Returns whether
/// this call won.
pub fn claim_presentation(
    db: Db<'_>,
    tx: &TxId,
    atm_id: &str,
    presented_at: u64,
    confirm_by: u64,
    challenge: &str,
    notes: &[NoteCount],
) -> Result<bool, StoreError> {
    let notes = serde_json::to_string(notes).map_err(|e| corrupt(e.to_string()))?;
    let n = db.exec_cached(
        "UPDATE withdrawals SET phase = 'presented', atm_id = ?2, presented_at = ?3,
                confirm_by = ?4, challenge = ?5, notes = ?6
         WHERE tx_id = ?1 AND phase = 'registered' AND code_expires_at > ?3",
        params![
            tx.to_string(),
            atm_id,
            to_sql(presented_at),
            to_sql(confirm_by),
            challenge,
            notes
        ],
    )?;
    Ok(n == 1)
}

/// Moves a withdrawal from `from` to `to` (conditional on `from`); returns whether it moved.
pub fn set_phase(
    db: Db<'_>,
    tx: &TxId,
    from: Phase,
    to: Phase,
    at: u64,
) -> Result<bool, StoreError> {
    let n = db.exec_cached(
        "UPDATE withdrawals SET phase = ?3,
                finished_at = CASE WHEN ?5 THEN ?4 ELSE finished_at END
         WHERE tx_id = ?1 AND phase = ?2",
        params![
            tx.to_string(),
            from.as_str(),
            to.as_str(),
            to_sql(at),
            to.is_final()
        ],
    )?;
    Ok(n == 1)
}

/// Records the dispense order of a confirmed withdrawal.
pub fn record_order(
    db: Db<'_>,
    tx: &TxId,
    order_id: &OrderId,
    expires_at: u64,
    payload: &str,
    confirmed_at: u64,
    device: &str,
) -> Result<(), StoreError> {
    db.exec_cached(
        "UPDATE withdrawals SET order_id = ?2, order_expires_at = ?3, order_payload = ?4,
                confirmed_at = ?5, confirmed_by = ?6 WHERE tx_id = ?1",
        params![
            tx.to_string(),
            order_id.to_string(),
            to_sql(expires_at),
            payload,
            to_sql(confirmed_at),
            device
        ],
    )?;
    Ok(())
}

/// Adds to the captured value and sets or clears the reconciliation flag with a note.
pub fn record_settlement(
    db: Db<'_>,
    tx: &TxId,
    settled: u64,
    flag: bool,
    note: Option<&str>,
) -> Result<(), StoreError> {
    db.exec_cached(
        "UPDATE withdrawals SET settled = ?2, needs_reconciliation = ?3,
                note = COALESCE(?4, note) WHERE tx_id = ?1",
        params![tx.to_string(), to_sql(settled), flag, note],
    )?;
    Ok(())
}

/// Flags a withdrawal for reconciliation with a note.
pub fn flag(db: Db<'_>, tx: &TxId, note: &str) -> Result<(), StoreError> {
    db.exec_cached(
        "UPDATE withdrawals SET needs_reconciliation = 1, note = ?2 WHERE tx_id = ?1",
        params![tx.to_string(), note],
    )?;
    Ok(())
}

/// How many earlier withdrawals of `account` gave out cash at `atm` (all but `except`).
pub fn cash_taken_at(
    db: Db<'_>,
    account: &str,
    atm: &str,
    except: &TxId,
) -> Result<u64, StoreError> {
    let n: i64 = db.row_cached(
        "SELECT COUNT(*) FROM withdrawals WHERE account = ?1 AND atm_id = ?2
         AND phase IN ('dispensed', 'partial') AND tx_id != ?3",
        params![account, atm, except.to_string()],
        |r| r.get(0),
    )?;
    Ok(from_sql(n))
}

/// How many credential changes `account` saw since `since`: a device enrolled that is not
/// the account's very first, a device re-keyed, or a password change.
pub fn credential_changes_since(db: Db<'_>, account: &str, since: u64) -> Result<u64, StoreError> {
    let n: i64 = db.row_cached(
        "SELECT
           (SELECT COUNT(*) FROM devices d WHERE d.account = ?1 AND
              ((d.enrolled_at >= ?2 AND d.enrolled_at > (SELECT MIN(enrolled_at) FROM devices
                 WHERE account = ?1)) OR d.key_changed_at > d.enrolled_at AND d.key_changed_at >= ?2))
         + (SELECT COUNT(*) FROM accounts a WHERE a.id = ?1 AND a.password_changed_at >= ?2
              AND a.password_changed_at > a.created_at)",
        params![account, to_sql(since)],
        |r| r.get(0),
    )?;
    Ok(from_sql(n))
}

/// The devices whose restriction ended at or before `now`, with when it ended.
pub fn restrictions_ended(db: Db<'_>, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
    Ok(db.rows(
        "SELECT id, restricted_until FROM devices
         WHERE restricted_until IS NOT NULL AND restricted_until <= ?1 ORDER BY id",
        [to_sql(now)],
        |r| Ok((r.get(0)?, from_sql(r.get(1)?))),
    )?)
}

/// The withdrawals `account` registered since `since`: phase, amount and settled amount.
pub fn withdrawn_since(
    db: Db<'_>,
    account: &str,
    since: u64,
) -> Result<Vec<(Phase, u64, u64)>, StoreError> {
    let rows = db.rows_cached(
        "SELECT phase, amount, settled FROM withdrawals WHERE account = ?1 AND registered_at >= ?2",
        params![account, to_sql(since)],
        |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?, r.get::<i64>(2)?)),
    )?;
    rows.into_iter()
        .map(|(phase, amount, settled)| {
            Ok((
                phase.parse().map_err(StoreError::Corrupt)?,
                from_sql(amount),
                from_sql(settled),
            ))
        })
        .collect()
}
