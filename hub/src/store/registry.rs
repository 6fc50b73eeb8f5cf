//! What operators register: accounts, their bank accounts, ATMs and merchants.

use qrcash_protocol::{Currency, Position};
use rusqlite::params;

use super::{Db, StoreError, to_sql};

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
             public_jwk = ?6, kid = ?7, denominations = ?8, active = 1",
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
