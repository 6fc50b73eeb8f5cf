//! The double-entry ledger model: accounts, postings and the conservation rule. Pure.
//!
//! Every money movement is a [`Posting`]: a set of entries (signed minor units) across
//! ledger accounts that sums to zero, so the sum over all accounts is zero at all times.
//! Customer money sits in two accounts per customer, `available` and `held`; system
//! accounts stand for the world outside:
//!
//! | account | meaning | sign |
//! | --- | --- | --- |
//! | `cust:{id}:available` | spendable | ≥ 0 |
//! | `cust:{id}:held` | reserved for withdrawals in progress or in doubt | ≥ 0 |
//! | `sys:topup:{cur}` | money that came in from outside (top-ups, opening balances) | ≤ 0 |
//! | `sys:atm_cash:{atm}:{cur}` | cash that left one ATM, to settle with its operator | ≥ 0 |
//! | `sys:payouts:{cur}` | bank payouts accepted, not yet settled | ≥ 0 |
//! | `merchant:{id}` | owed to a merchant | ≥ 0 |
//!
//! Applying postings and checking the books against the database is [`crate::store::ledger`].

use std::fmt;

use qrcash_protocol::Currency;

/// One ledger account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LedgerAccount {
    /// A customer's spendable balance.
    Available(String),
    /// A customer's held balance.
    Held(String),
    /// Money that came in from outside.
    TopUpSource(Currency),
    /// Cash paid out by one ATM (one account per machine: per-machine settlement, and no
    /// row that every instance's dispenses update at once).
    AtmCash(String, Currency),
    /// Bank payouts pending settlement.
    Payouts(Currency),
    /// A merchant's receivable.
    Merchant(String),
}

impl LedgerAccount {
    /// The account's key in the database.
    pub fn key(&self) -> String {
        match self {
            LedgerAccount::Available(a) => format!("cust:{a}:available"),
            LedgerAccount::Held(a) => format!("cust:{a}:held"),
            LedgerAccount::TopUpSource(c) => format!("sys:topup:{c}"),
            LedgerAccount::AtmCash(atm, c) => format!("sys:atm_cash:{atm}:{c}"),
            LedgerAccount::Payouts(c) => format!("sys:payouts:{c}"),
            LedgerAccount::Merchant(m) => format!("merchant:{m}"),
        }
    }

    /// The kind stored next to the key.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerAccount::Available(_) => "available",
            LedgerAccount::Held(_) => "held",
            LedgerAccount::TopUpSource(_) => "topup_source",
            LedgerAccount::AtmCash(..) => "atm_cash",
            LedgerAccount::Payouts(_) => "payouts",
            LedgerAccount::Merchant(_) => "merchant",
        }
    }

    /// Whether the balance may go below zero (only the outside-money source may).
    pub fn may_be_negative(kind: &str) -> bool {
        kind == "topup_source"
    }
}

impl fmt::Display for LedgerAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// What a posting is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostingKind {
    /// Money in from outside (also opening balances).
    TopUp,
    /// Reserve a withdrawal amount.
    Hold,
    /// Cash left an ATM.
    Capture,
    /// A hold given back.
    Release,
    /// Customer to customer.
    Transfer,
    /// Customer to merchant.
    Payment,
    /// Customer to a bank payout.
    BankWithdrawal,
    /// An approved correction of a settled ATM withdrawal (a later report proved another
    /// amount left the machine): between the customer and the ATM cash account.
    Correction,
}

impl PostingKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            PostingKind::TopUp => "topup",
            PostingKind::Hold => "hold",
            PostingKind::Capture => "capture",
            PostingKind::Release => "release",
            PostingKind::Transfer => "transfer",
            PostingKind::Payment => "payment",
            PostingKind::BankWithdrawal => "bank_withdrawal",
            PostingKind::Correction => "correction",
        }
    }
}

/// One entry of a posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// The account.
    pub account: LedgerAccount,
    /// Signed minor units: negative leaves the account, positive enters it.
    pub amount: i64,
}

/// A balanced set of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// What it is for.
    pub kind: PostingKind,
    /// The withdrawal or operation it belongs to.
    pub reference: String,
    /// Text for the account history.
    pub description: String,
    /// Currency of every leg.
    pub currency: Currency,
    /// The entries; they sum to zero.
    pub legs: Vec<Leg>,
}

/// A posting could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostingError {
    /// Zero or beyond what the database can hold.
    #[error("amount {0} is not a valid posting amount")]
    BadAmount(u64),
}

impl Posting {
    /// Moves `amount` from `from` to `to`.
    pub fn movement(
        kind: PostingKind,
        from: LedgerAccount,
        to: LedgerAccount,
        amount: u64,
        currency: Currency,
        reference: impl Into<String>,
        description: impl Into<String>,
    ) -> Result<Posting, PostingError> {
        let v = i64::try_from(amount)
            .ok()
            .filter(|v| *v > 0)
            .ok_or(PostingError::BadAmount(amount))?;
        Ok(Posting {
            kind,
            reference: reference.into(),
            description: description.into(),
            currency,
            legs: vec![
                Leg {
                    account: from,
                    amount: -v,
                },
                Leg {
                    account: to,
                    amount: v,
                },
            ],
        })
    }

    /// Whether the entries sum to zero (checked in i128: no overflow can hide an imbalance).
    pub fn is_balanced(&self) -> bool {
        !self.legs.is_empty() && self.legs.iter().map(|l| i128::from(l.amount)).sum::<i128>() == 0
    }
}

/// The books after a check: what was found wrong, if anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerReport {
    /// Postings examined.
    pub postings: u64,
    /// Ledger accounts examined.
    pub accounts: u64,
    /// Sum of all balances per currency (must be zero).
    pub totals: Vec<(String, i128)>,
    /// Violations, one line each; empty when the books are right.
    pub problems: Vec<String>,
    /// Corrections proposed from a report that contradicts a settlement and not yet decided:
    /// the books balance, but are known to be wrong for these withdrawals.
    pub corrections_waiting: Vec<String>,
}

impl LedgerReport {
    /// Whether every rule held and no correction is waiting.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.corrections_waiting.is_empty()
    }
}

impl fmt::Display for LedgerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} postings over {} accounts",
            self.postings, self.accounts
        )?;
        for (c, t) in &self.totals {
            writeln!(f, "sum of balances in {c}: {t}")?;
        }
        for c in &self.corrections_waiting {
            writeln!(f, "CORRECTION WAITING: {c}")?;
        }
        if self.is_ok() {
            write!(f, "ledger OK")
        } else {
            for p in &self.problems {
                writeln!(f, "PROBLEM: {p}")?;
            }
            write!(
                f,
                "ledger has {} problem(s) and {} correction(s) awaiting a decision",
                self.problems.len(),
                self.corrections_waiting.len()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movements_balance_and_refuse_bad_amounts() {
        let p = Posting::movement(
            PostingKind::Hold,
            LedgerAccount::Available("a".into()),
            LedgerAccount::Held("a".into()),
            500,
            Currency::JPY,
            "tx",
            "hold",
        )
        .unwrap();
        assert!(p.is_balanced());
        assert_eq!(p.legs[0].amount, -500);
        for bad in [0, u64::MAX] {
            assert_eq!(
                Posting::movement(
                    PostingKind::Hold,
                    LedgerAccount::Available("a".into()),
                    LedgerAccount::Held("a".into()),
                    bad,
                    Currency::JPY,
                    "tx",
                    "hold",
                )
                .unwrap_err(),
                PostingError::BadAmount(bad)
            );
        }
        let mut q = p.clone();
        q.legs[1].amount = 499;
        assert!(!q.is_balanced());
        assert_eq!(
            LedgerAccount::TopUpSource(Currency::JPY).key(),
            "sys:topup:JPY"
        );
        assert!(LedgerAccount::may_be_negative("topup_source"));
        assert!(!LedgerAccount::may_be_negative("available"));
    }
}
