//! The ledger in the database: applying postings and checking the books.
//!
//! [`apply`] writes a [`Posting`] (posting row, entries, balances) and refuses one that is
//! unbalanced or would overdraw an account that must not go negative, so a bug upstream
//! cannot corrupt the books. [`check`] recomputes everything from the entries.

use crate::store::Db;
use std::collections::BTreeMap;

use super::sql::{OptionalExt, Param, params};
use qrcash_protocol::Currency;

use super::{from_sql, to_sql};
use crate::error::StoreError;
use crate::ledger::{LedgerAccount, LedgerReport, Posting};
use crate::withdrawal::Phase;

/// Writes a posting at time `at`; returns its id.
///
/// Three statements whatever the number of legs, on both backends: the balances of the
/// accounts that exist move in one `UPDATE` (which takes their row locks in key order, so
/// two postings over the same accounts cannot deadlock); an account's first posting creates
/// it with that posting's amount; then the posting row, and its entries in one `INSERT`.
/// Creating accounts in passing (rather than an `INSERT … ON CONFLICT DO NOTHING` for every
/// leg) keeps a posting from touching rows other instances are changing: under
/// `SERIALIZABLE` that insert fails whenever another transaction updated the account since
/// this one's snapshot.
pub fn apply(db: Db<'_>, p: &Posting, at: u64) -> Result<i64, StoreError> {
    if !p.is_balanced() {
        return Err(StoreError::Unbalanced(format!(
            "{} {}",
            p.kind.as_str(),
            p.reference
        )));
    }
    let keys: Vec<String> = p.legs.iter().map(|l| l.account.key()).collect();
    if (1..keys.len()).any(|i| keys[..i].contains(&keys[i])) {
        return Err(StoreError::Unbalanced(format!(
            "{} {} names an account twice",
            p.kind.as_str(),
            p.reference
        )));
    }
    let mut moved: Vec<(String, String, String, i64)> = {
        let mut values: Vec<&dyn Param> = Vec::with_capacity(keys.len() * 2);
        for (key, leg) in keys.iter().zip(&p.legs) {
            values.push(key);
            values.push(&leg.amount);
        }
        let (cases, ids): (Vec<String>, Vec<String>) = (0..keys.len())
            .map(|i| {
                (
                    format!("WHEN ?{} THEN CAST(?{} AS BIGINT)", 2 * i + 1, 2 * i + 2),
                    format!("?{}", 2 * i + 1),
                )
            })
            .unzip();
        db.rows_cached(
            &format!(
                "UPDATE ledger_accounts SET balance = balance + CASE id {} END
                 WHERE id IN ({}) RETURNING id, kind, currency, balance",
                cases.join(" "),
                ids.join(", ")
            ),
            values.as_slice(),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?
    };
    for (key, leg) in keys.iter().zip(&p.legs) {
        if moved.iter().any(|m| &m.0 == key) {
            continue;
        }
        let kind = leg.account.kind();
        db.exec_cached(
            "INSERT INTO ledger_accounts(id, kind, currency, balance) VALUES (?1, ?2, ?3, ?4)",
            params![key, kind, p.currency.as_str(), leg.amount],
        )?;
        moved.push((
            key.clone(),
            kind.to_owned(),
            p.currency.as_str().to_owned(),
            leg.amount,
        ));
    }
    for (key, kind, currency, balance) in &moved {
        if currency != p.currency.as_str() {
            return Err(StoreError::Unbalanced(format!(
                "{key} is in {currency}, posting in {}",
                p.currency
            )));
        }
        if *balance < 0 && !LedgerAccount::may_be_negative(kind) {
            return Err(StoreError::Overdraft(key.clone()));
        }
    }
    let id: i64 = db.row_cached(
        "INSERT INTO postings(at, kind, currency, reference, description)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        params![
            to_sql(at),
            p.kind.as_str(),
            p.currency.as_str(),
            p.reference,
            p.description
        ],
        |r| r.get(0),
    )?;
    let mut values: Vec<&dyn Param> = Vec::with_capacity(1 + keys.len() * 2);
    values.push(&id);
    let rows: Vec<String> = keys
        .iter()
        .zip(&p.legs)
        .enumerate()
        .map(|(i, (key, leg))| {
            values.push(key);
            values.push(&leg.amount);
            format!("(?1, ?{}, ?{})", 2 * i + 2, 2 * i + 3)
        })
        .collect();
    db.exec_cached(
        &format!(
            "INSERT INTO entries(posting_id, ledger_account, amount) VALUES {}",
            rows.join(", ")
        ),
        values.as_slice(),
    )?;
    Ok(id)
}

/// The balance of one ledger account (0 if it never moved).
pub fn balance(db: Db<'_>, account: &LedgerAccount) -> Result<i64, StoreError> {
    Ok(db
        .row_cached(
            "SELECT balance FROM ledger_accounts WHERE id = ?1",
            [account.key()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// A customer's available and held balances, as unsigned minor units.
pub fn customer_balances(db: Db<'_>, account: &str) -> Result<(u64, u64), StoreError> {
    let a = balance(db, &LedgerAccount::Available(account.to_owned()))?;
    let h = balance(db, &LedgerAccount::Held(account.to_owned()))?;
    Ok((from_sql(a), from_sql(h)))
}

/// One line of a customer's history: (at, signed amount on `available`, description).
pub fn history(
    db: Db<'_>,
    account: &str,
    limit: u32,
) -> Result<Vec<(u64, i64, String)>, StoreError> {
    Ok(db.rows(
        "SELECT p.at, e.amount, p.description FROM entries e JOIN postings p ON p.id = e.posting_id
         WHERE e.ledger_account = ?1 ORDER BY p.id DESC LIMIT ?2",
        params![LedgerAccount::Available(account.to_owned()).key(), limit],
        |r| Ok((from_sql(r.get(0)?), r.get(1)?, r.get(2)?)),
    )?)
}

/// Recomputes the books: every posting sums to zero; every stored balance equals the sum of
/// its entries; balances sum to zero per currency; no account is negative that must not be;
/// and each customer's held balance equals the amounts of their withdrawals that hold funds.
pub fn check(db: Db<'_>) -> Result<LedgerReport, StoreError> {
    let mut report = LedgerReport {
        postings: from_sql(db.row_cached("SELECT COUNT(*) FROM postings", [], |r| r.get(0))?),
        ..LedgerReport::default()
    };

    let unbalanced = db.rows(
        "SELECT p.id, p.kind, p.reference, COALESCE(SUM(e.amount), 0), COUNT(e.amount)
         FROM postings p LEFT JOIN entries e ON e.posting_id = p.id
         GROUP BY p.id, p.kind, p.reference
         HAVING COALESCE(SUM(e.amount), 0) != 0 OR COUNT(e.amount) < 2",
        [],
        |r| {
            Ok(format!(
                "posting {} ({} {}) sums to {} over {} entries",
                r.get::<i64>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<i64>(3)?,
                r.get::<i64>(4)?
            ))
        },
    )?;
    report.problems.extend(unbalanced);

    let accounts = db.rows(
        "SELECT a.id, a.kind, a.currency, a.balance,
                (SELECT COALESCE(SUM(amount), 0) FROM entries e WHERE e.ledger_account = a.id)
         FROM ledger_accounts a ORDER BY a.id",
        [],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<i64>(3)?,
                r.get::<i64>(4)?,
            ))
        },
    )?;
    let mut totals: BTreeMap<String, i128> = BTreeMap::new();
    for (id, kind, currency, balance, sum) in &accounts {
        report.accounts += 1;
        if balance != sum {
            report.problems.push(format!(
                "{id}: stored balance {balance} but entries sum to {sum}"
            ));
        }
        if *balance < 0 && !LedgerAccount::may_be_negative(kind) {
            report
                .problems
                .push(format!("{id}: negative balance {balance}"));
        }
        *totals.entry(currency.clone()).or_default() += i128::from(*balance);
    }
    for (c, t) in &totals {
        if *t != 0 {
            report
                .problems
                .push(format!("balances in {c} sum to {t}, not 0"));
        }
    }
    report.totals = totals.into_iter().collect();

    // Held balances against the withdrawals that hold funds.
    let holding: Vec<String> = Phase::ALL
        .iter()
        .filter(|p| p.holds_funds())
        .map(|p| format!("'{}'", p.as_str()))
        .collect();
    let sql = format!(
        "SELECT a.id, a.balance,
                (SELECT COALESCE(SUM(w.amount), 0) FROM withdrawals w
                 WHERE 'cust:' || w.account || ':held' = a.id AND w.phase IN ({}))
         FROM ledger_accounts a WHERE a.kind = 'held'",
        holding.join(",")
    );
    let held = db.rows(&sql, [], |r| {
        Ok((r.get::<String>(0)?, r.get::<i64>(1)?, r.get::<i64>(2)?))
    })?;
    for (id, balance, expected) in held {
        if balance != expected {
            report.problems.push(format!(
                "{id}: held {balance} but withdrawals in progress or in doubt total {expected}"
            ));
        }
    }
    report.corrections_waiting = super::settlement::corrections(db, None, true)?
        .into_iter()
        .map(|c| {
            format!(
                "correction {} of tx {}: settled {}, the ATM's report says {} ({})",
                c.id, c.tx_id, c.from_settled, c.to_settled, c.cause
            )
        })
        .collect();
    Ok(report)
}

/// Total of all balances of `currency` (zero when the books balance).
pub fn total(db: Db<'_>, currency: Currency) -> Result<i64, StoreError> {
    Ok(db.row_cached(
        "SELECT COALESCE(SUM(balance), 0) FROM ledger_accounts WHERE currency = ?1",
        [currency.as_str()],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Leg, PostingKind};
    use crate::store::Store;

    fn mv(kind: PostingKind, from: LedgerAccount, to: LedgerAccount, v: u64) -> Posting {
        Posting::movement(kind, from, to, v, Currency::JPY, "ref", "test").unwrap()
    }

    #[test]
    fn postings_move_balances_and_the_books_balance() {
        let s = Store::open_test();
        let db = s.db();
        let avail = LedgerAccount::Available("alice".into());
        let held = LedgerAccount::Held("alice".into());
        apply(
            db,
            &mv(
                PostingKind::TopUp,
                LedgerAccount::TopUpSource(Currency::JPY),
                avail.clone(),
                10_000,
            ),
            1,
        )
        .unwrap();
        assert_eq!(customer_balances(db, "alice").unwrap(), (10_000, 0));
        assert_eq!(total(db, Currency::JPY).unwrap(), 0);
        let r = check(db).unwrap();
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.postings, 1);
        // A hold without a withdrawal holding funds is reported.
        apply(db, &mv(PostingKind::Hold, avail.clone(), held, 1_000), 2).unwrap();
        let r = check(db).unwrap();
        assert!(!r.is_ok());
        assert!(r.problems[0].contains("held 1000"), "{r}");
        let h = history(db, "alice", 10).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].1, -1_000);
    }

    #[test]
    fn overdrafts_and_unbalanced_postings_are_refused() {
        let s = Store::open_test();
        let db = s.db();
        let avail = LedgerAccount::Available("bob".into());
        let err = apply(
            db,
            &mv(
                PostingKind::Payment,
                avail.clone(),
                LedgerAccount::Merchant("m".into()),
                1,
            ),
            1,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Overdraft(_)));
        let bad = Posting {
            kind: PostingKind::TopUp,
            reference: "r".into(),
            description: "d".into(),
            currency: Currency::JPY,
            legs: vec![Leg {
                account: avail,
                amount: 5,
            }],
        };
        assert!(matches!(
            apply(db, &bad, 1).unwrap_err(),
            StoreError::Unbalanced(_)
        ));
    }

    #[test]
    fn a_first_posting_opens_its_accounts_and_is_checked_like_any_other() {
        let s = Store::open_test();
        let db = s.db();
        let source = LedgerAccount::TopUpSource(Currency::JPY);
        let avail = LedgerAccount::Available("bob".into());
        let cash = LedgerAccount::AtmCash("atm-9".into(), Currency::JPY);
        // Both accounts are new: opened with the posting's amounts, one of them negative
        // (the only kind that may be).
        apply(
            db,
            &mv(PostingKind::TopUp, source.clone(), avail.clone(), 700),
            1,
        )
        .unwrap();
        assert_eq!(balance(db, &source).unwrap(), -700);
        assert_eq!(balance(db, &avail).unwrap(), 700);
        // One existing account, one new.
        apply(
            db,
            &mv(PostingKind::Capture, avail.clone(), cash.clone(), 200),
            2,
        )
        .unwrap();
        assert_eq!(balance(db, &avail).unwrap(), 500);
        assert_eq!(balance(db, &cash).unwrap(), 200);
        // A new account that may not go negative is refused, as an existing one would be.
        let carol = LedgerAccount::Available("carol".into());
        assert!(matches!(
            apply(db, &mv(PostingKind::Transfer, carol.clone(), avail.clone(), 1), 3),
            Err(StoreError::Overdraft(k)) if k == carol.key()
        ));
        // An account named twice in one posting is refused.
        let twice = mv(PostingKind::Transfer, avail.clone(), avail.clone(), 5);
        assert!(matches!(
            apply(db, &twice, 4),
            Err(StoreError::Unbalanced(_))
        ));
        // Another currency's posting to an account is refused.
        let euros = Posting::movement(
            PostingKind::Transfer,
            avail.clone(),
            LedgerAccount::Available("dave".into()),
            1,
            Currency::EUR,
            "ref",
            "test",
        )
        .unwrap();
        assert!(matches!(
            apply(db, &euros, 5),
            Err(StoreError::Unbalanced(_))
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let s = Store::open_test();
        let db = s.db();
        apply(
            db,
            &mv(
                PostingKind::TopUp,
                LedgerAccount::TopUpSource(Currency::JPY),
                LedgerAccount::Available("c".into()),
                500,
            ),
            1,
        )
        .unwrap();
        db.exec_cached(
            "UPDATE ledger_accounts SET balance = 600 WHERE id = 'cust:c:available'",
            [],
        )
        .unwrap();
        let r = check(db).unwrap();
        assert_eq!(r.problems.len(), 2, "{r}");
    }
}
