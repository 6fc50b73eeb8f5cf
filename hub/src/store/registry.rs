//! What operators register: accounts, their bank accounts, ATMs and merchants.

use super::sql::{OptionalExt, params};
use qrcash_protocol::{Currency, Position};

use super::{Db, StoreError, from_sql, to_sql};

/// Creates an account (its id must be new). Password and PIN come as PHC hashes.
pub fn insert_account(
    db: Db<'_>,
    id: &str,
    currency: Currency,
    password_hash: &str,
    pin_hash: &str,
    at: u64,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO accounts(id, currency, password_hash, pin_hash, created_at, password_changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![id, currency.as_str(), password_hash, pin_hash, to_sql(at)],
    )?;
    Ok(())
}

/// A bank account to register for payouts and top-ups.
#[derive(Debug)]
pub struct BankAccountRow<'a> {
    /// Its id.
    pub id: &'a str,
    /// The qrcash account that owns it.
    pub account: &'a str,
    /// The bank.
    pub bank: &'a str,
    /// The account number at the bank.
    pub number: &'a str,
    /// The holder's name.
    pub holder: &'a str,
}

/// Registers a bank account (its id must be new).
pub fn insert_bank_account(db: Db<'_>, b: &BankAccountRow<'_>, at: u64) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO bank_accounts(id, account, bank, number, holder, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![b.id, b.account, b.bank, b.number, b.holder, to_sql(at)],
    )?;
    Ok(())
}

/// An ATM to enrol (or enrol again with a new key or place).
#[derive(Debug)]
pub struct AtmEnrolment<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its street address.
    pub address: &'a str,
    /// Where it stands.
    pub position: Position,
    /// Its public key (JWK JSON).
    pub public_jwk: &'a str,
    /// That key's id.
    pub kid: &'a str,
    /// Its cassette denominations (JSON array).
    pub denominations: &'a str,
}

/// Enrols an ATM; enrolling an existing id replaces its key, place and cassettes and puts it
/// back in service.
pub fn enroll_atm(db: Db<'_>, a: &AtmEnrolment<'_>, at: u64) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO atms(id, name, address, lat, lon, public_jwk, kid, denominations, active, enrolled_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9)
         ON CONFLICT(id) DO UPDATE SET name = ?2, address = ?3, lat = ?4, lon = ?5,
             public_jwk = ?6, kid = ?7, denominations = ?8, active = 1,
             previous_jwk = NULL, previous_kid = NULL, previous_until = NULL,
             previous_seq = NULL, previous_at = NULL",
        params![
            a.id,
            a.name,
            a.address,
            a.position.lat,
            a.position.lon,
            a.public_jwk,
            a.kid,
            a.denominations,
            to_sql(at)
        ],
    )?;
    Ok(())
}

/// Puts the ATM back in service under a key (its place and cassettes stay). A new key drops
/// any earlier one still in its overlap; the same key keeps it (its queued messages).
pub fn set_atm_key(db: Db<'_>, id: &str, public_jwk: &str, kid: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE atms SET active = 1,
             previous_jwk = CASE WHEN kid = ?3 THEN previous_jwk END,
             previous_kid = CASE WHEN kid = ?3 THEN previous_kid END,
             previous_until = CASE WHEN kid = ?3 THEN previous_until END,
             previous_seq = CASE WHEN kid = ?3 THEN previous_seq END,
             previous_at = CASE WHEN kid = ?3 THEN previous_at END,
             public_jwk = ?2, kid = ?3
         WHERE id = ?1",
        params![id, public_jwk, kid],
    )?;
    Ok(())
}

/// The ATM hands over from its key to a new one by the rotation message `seq` dated `at`:
/// the old key stays accepted until `until` for messages numbered up to `seq` and dated no
/// later than `at`.
pub fn rotate_atm_key(
    db: Db<'_>,
    id: &str,
    new: (&str, &str),
    rotation: (u64, u64),
    until: u64,
) -> Result<(), StoreError> {
    let ((public_jwk, kid), (seq, at)) = (new, rotation);
    db.execute(
        "UPDATE atms SET previous_jwk = public_jwk, previous_kid = kid, previous_until = ?4,
             previous_seq = ?5, previous_at = ?6, public_jwk = ?2, kid = ?3
         WHERE id = ?1",
        params![id, public_jwk, kid, to_sql(until), to_sql(seq), to_sql(at)],
    )?;
    Ok(())
}

/// Where and with which cassettes a new ATM will stand, kept with its enrolment code.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAtm {
    /// Its name.
    pub name: String,
    /// Its street address.
    pub address: String,
    /// Where it stands.
    pub position: Position,
    /// Its cassette denominations.
    pub denominations: Vec<u64>,
}

/// An enrolment code as the hub keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrolmentRow {
    /// The ATM id it is bound to.
    pub atm_id: String,
    /// `protocol::enrol::proof_key` of the code, hex.
    pub proof_key: String,
    /// Issued, Unix seconds.
    pub issued_at: u64,
    /// Refused from this second on.
    pub expires_at: u64,
    /// Wrong proofs so far.
    pub failures: u32,
    /// When it was used, and by which key.
    pub used: Option<(u64, String)>,
    /// For an ATM not enrolled yet.
    pub pending: Option<PendingAtm>,
}

/// Issues (or replaces) the ATM's enrolment code.
pub fn put_enrolment(db: Db<'_>, e: &EnrolmentRow) -> Result<(), StoreError> {
    let pending = e.pending.as_ref();
    let denoms = pending
        .map(|p| serde_json::to_string(&p.denominations))
        .transpose()
        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
    db.execute(
        "INSERT INTO atm_enrolments(atm_id, proof_key, issued_at, expires_at,
             failures, used_at, used_kid, name, address, lat, lon, denominations)
         VALUES (?1, ?2, ?3, ?4, 0, NULL, NULL, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(atm_id) DO UPDATE SET proof_key = excluded.proof_key,
             issued_at = excluded.issued_at, expires_at = excluded.expires_at, failures = 0,
             used_at = NULL, used_kid = NULL, name = excluded.name,
             address = excluded.address, lat = excluded.lat, lon = excluded.lon,
             denominations = excluded.denominations",
        params![
            e.atm_id,
            e.proof_key,
            to_sql(e.issued_at),
            to_sql(e.expires_at),
            pending.map(|p| p.name.as_str()),
            pending.map(|p| p.address.as_str()),
            pending.map(|p| p.position.lat),
            pending.map(|p| p.position.lon),
            denoms,
        ],
    )?;
    Ok(())
}

type EnrolmentColumns = (
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<f64>,
    Option<String>,
);

/// The ATM's enrolment code, if one was issued.
pub fn enrolment(db: Db<'_>, atm_id: &str) -> Result<Option<EnrolmentRow>, StoreError> {
    let row: Option<EnrolmentColumns> = db
        .query_row(
            "SELECT proof_key, issued_at, expires_at, failures, used_at, used_kid,
                    name, address, lat, lon, denominations
             FROM atm_enrolments WHERE atm_id = ?1",
            [atm_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            },
        )
        .optional()?;
    let Some((key, issued, expires, failures, used_at, used_kid, name, address, lat, lon, denoms)) =
        row
    else {
        return Ok(None);
    };
    let pending = match (name, address, lat, lon, denoms) {
        (Some(name), Some(address), Some(lat), Some(lon), Some(denoms)) => Some(PendingAtm {
            name,
            address,
            position: Position::new(lat, lon, 0.0),
            denominations: serde_json::from_str(&denoms).map_err(|e| {
                StoreError::Corrupt(format!("denominations of enrolment {atm_id}: {e}"))
            })?,
        }),
        _ => None,
    };
    Ok(Some(EnrolmentRow {
        atm_id: atm_id.to_owned(),
        proof_key: key,
        issued_at: from_sql(issued),
        expires_at: from_sql(expires),
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        used: used_at.zip(used_kid).map(|(at, kid)| (from_sql(at), kid)),
        pending,
    }))
}

/// Counts a wrong proof against the ATM's code.
pub fn enrolment_failed(db: Db<'_>, atm_id: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE atm_enrolments SET failures = failures + 1 WHERE atm_id = ?1",
        [atm_id],
    )?;
    Ok(())
}

/// Spends the ATM's code on `kid`.
pub fn enrolment_used(db: Db<'_>, atm_id: &str, kid: &str, at: u64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE atm_enrolments SET used_at = ?2, used_kid = ?3 WHERE atm_id = ?1",
        params![atm_id, to_sql(at), kid],
    )?;
    Ok(())
}

/// Registers a merchant (its id must be new).
pub fn insert_merchant(
    db: Db<'_>,
    id: &str,
    name: &str,
    currency: Currency,
    position: Position,
    at: u64,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO merchants(id, name, currency, lat, lon, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, name, currency.as_str(), position.lat, position.lon, to_sql(at)],
    )?;
    Ok(())
}
