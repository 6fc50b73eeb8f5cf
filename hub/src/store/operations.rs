//! The phone's money operations besides cash: each kept under its idempotency key with its
//! receipt, and the payments (where a device paid) and payouts (to bank accounts) they made.

use super::sql::{OptionalExt, params};

use super::{Db, StoreError, to_sql};
use qrcash_protocol::{Amount, Position};

/// A money operation as recorded under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRow {
    /// `transfer`, `payment`, `bank_withdrawal`, `top_up`.
    pub kind: String,
    /// The request as received (JSON): a repeat must be the same request.
    pub request: String,
    /// The receipt sent (JSON): a repeat gets it again.
    pub receipt: String,
}

/// The operation `account` made under `key`, if any.
pub fn operation(db: Db<'_>, account: &str, key: &str) -> Result<Option<OperationRow>, StoreError> {
    Ok(db
        .row_cached(
            "SELECT kind, request, receipt FROM operations
             WHERE account = ?1 AND idempotency_key = ?2",
            params![account, key],
            |r| {
                Ok(OperationRow {
                    kind: r.get(0)?,
                    request: r.get(1)?,
                    receipt: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// A money operation to record, with the posting it made.
#[derive(Debug)]
pub struct NewOperation<'a> {
    /// The account.
    pub account: &'a str,
    /// Its idempotency key.
    pub key: &'a str,
    /// See [`OperationRow::kind`].
    pub kind: &'a str,
    /// The posting's reference.
    pub reference: &'a str,
    /// See [`OperationRow::request`].
    pub request: &'a str,
    /// The amount.
    pub amount: Amount,
    /// Whether it counts towards the daily payment limit.
    pub counts_to_limit: bool,
    /// See [`OperationRow::receipt`].
    pub receipt: &'a str,
    /// When.
    pub at: u64,
}

/// Records an operation (its key must be new: the caller looked it up first).
pub fn record_operation(db: Db<'_>, op: &NewOperation<'_>) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO operations(account, idempotency_key, kind, reference, request, amount,
                                counts_to_limit, receipt, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            op.account,
            op.key,
            op.kind,
            op.reference,
            op.request,
            to_sql(op.amount.minor),
            op.counts_to_limit,
            op.receipt,
            to_sql(op.at)
        ],
    )?;
    Ok(())
}

/// A payment at a merchant, kept for where the device paid (the new-device policy's
/// position estimate reads it through [`super::trail::sightings`]).
#[derive(Debug)]
pub struct PaymentRow<'a> {
    /// The posting's reference.
    pub reference: &'a str,
    /// The paying account.
    pub account: &'a str,
    /// The paying device.
    pub device: &'a str,
    /// The merchant.
    pub merchant: &'a str,
    /// The amount.
    pub amount: Amount,
    /// When.
    pub at: u64,
    /// The merchant's registered position (never the device's claim).
    pub position: Position,
}

/// Records a payment.
pub fn record_payment(db: Db<'_>, p: &PaymentRow<'_>) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO payments(reference, account, device_id, merchant_id, amount, at, lat, lon)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            p.reference,
            p.account,
            p.device,
            p.merchant,
            to_sql(p.amount.minor),
            to_sql(p.at),
            p.position.lat,
            p.position.lon
        ],
    )?;
    Ok(())
}

/// Records a payout to a bank account, pending until the bank confirms it.
pub fn record_payout(
    db: Db<'_>,
    reference: &str,
    account: &str,
    bank_account: &str,
    amount: Amount,
    at: u64,
) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO payouts(reference, account, bank_account, amount, currency, at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending')",
        params![
            reference,
            account,
            bank_account,
            to_sql(amount.minor),
            amount.currency.as_str(),
            to_sql(at)
        ],
    )?;
    Ok(())
}

/// Which operations [`total_since`] adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Those counting towards the daily payment limit (transfers, payments, payouts).
    PaidOut,
    /// Top-ups.
    TopUps,
}

/// The total amount of `account`'s operations of one kind since `since`.
pub fn total_since(
    db: Db<'_>,
    account: &str,
    since: u64,
    which: Counted,
) -> Result<u64, StoreError> {
    let sql = match which {
        Counted::PaidOut => {
            "SELECT COALESCE(SUM(amount), 0) FROM operations
             WHERE account = ?1 AND at >= ?2 AND counts_to_limit = 1"
        }
        Counted::TopUps => {
            "SELECT COALESCE(SUM(amount), 0) FROM operations
             WHERE account = ?1 AND at >= ?2 AND kind = 'top_up'"
        }
    };
    let v: i64 = db.row_cached(sql, params![account, to_sql(since)], |r| r.get(0))?;
    Ok(super::from_sql(v))
}
