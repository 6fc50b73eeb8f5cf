//! Where and how often the hub saw a device: its logins, the places it paid and presented
//! codes, and the new-device alerts sent about it. The new-device restriction reads its
//! evidence from here.

use super::sql::{OptionalExt, params};
use qrcash_protocol::Position;

use super::{Db, StoreError, from_sql, to_sql};
use crate::restriction::{DeviceFix, Sighting};

/// How many logins `device` made since `since`, and when the oldest of them was.
pub fn logins_since(
    db: Db<'_>,
    device: &str,
    since: u64,
) -> Result<(u64, Option<u64>), StoreError> {
    let (n, oldest): (i64, Option<i64>) = db.row_cached(
        "SELECT COUNT(*), MIN(at) FROM logins WHERE device_id = ?1 AND at >= ?2",
        params![device, to_sql(since)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((from_sql(n), oldest.map(from_sql)))
}

/// The position of `device`'s latest login that carried one, as the device reported it.
pub fn last_login_fix(db: Db<'_>, device: &str) -> Result<Option<DeviceFix>, StoreError> {
    Ok(db
        .row_cached(
            "SELECT at, lat, lon, accuracy_m FROM logins
             WHERE device_id = ?1 AND lat IS NOT NULL ORDER BY at DESC LIMIT 1",
            [device],
            |r| {
                Ok(DeviceFix {
                    at: from_sql(r.get(0)?),
                    position: Position::new(r.get(1)?, r.get(2)?, r.get(3)?),
                })
            },
        )
        .optional()?)
}

/// Where the hub saw a device: the merchants it paid and the ATMs where it presented a
/// code, newest first (at most 100 of each).
pub fn sightings(db: Db<'_>, device: &str) -> Result<Vec<Sighting>, StoreError> {
    let mut out = Vec::new();
    for sql in [
        "SELECT at, lat, lon FROM payments WHERE device_id = ?1 ORDER BY at DESC LIMIT 100",
        "SELECT w.presented_at, a.lat, a.lon FROM withdrawals w JOIN atms a ON a.id = w.atm_id
         WHERE w.device_id = ?1 AND w.presented_at IS NOT NULL
         ORDER BY w.presented_at DESC LIMIT 100",
    ] {
        out.extend(db.rows_cached(sql, [device], |r| {
            Ok(Sighting {
                at: from_sql(r.get(0)?),
                position: Position::new(r.get(1)?, r.get(2)?, 0.0),
            })
        })?);
    }
    Ok(out)
}

/// A new-device alert sent to one device of the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    /// The alert's id (random, given to the notified device).
    pub id: String,
    /// The account.
    pub account: String,
    /// The device the alert is about.
    pub new_device: String,
    /// The key that device had when the alert was sent (NULL in alerts older than the key
    /// binding: they approve nothing).
    pub new_kid: Option<String>,
    /// The device that was told.
    pub notified: String,
    /// When it was sent.
    pub at: u64,
    /// When it was first answered.
    pub answered_at: Option<u64>,
    /// The first answer's outcome (snake case), once answered.
    pub outcome: Option<String>,
}

/// Records an alert as sent.
pub fn insert_alert(db: Db<'_>, a: &AlertRow) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO alerts(id, account, new_device, new_kid, notified, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            a.id,
            a.account,
            a.new_device,
            a.new_kid,
            a.notified,
            to_sql(a.at)
        ],
    )?;
    Ok(())
}

/// Alert `id` as sent to device `notified` (`None` for another device's alert).
pub fn alert(db: Db<'_>, id: &str, notified: &str) -> Result<Option<AlertRow>, StoreError> {
    Ok(db
        .row_cached(
            "SELECT account, new_device, new_kid, at, answered_at, outcome FROM alerts
             WHERE id = ?1 AND notified = ?2",
            params![id, notified],
            |r| {
                Ok(AlertRow {
                    id: id.to_owned(),
                    account: r.get(0)?,
                    new_device: r.get(1)?,
                    new_kid: r.get(2)?,
                    notified: notified.to_owned(),
                    at: from_sql(r.get(3)?),
                    answered_at: r.get::<Option<i64>>(4)?.map(from_sql),
                    outcome: r.get(5)?,
                })
            },
        )
        .optional()?)
}

/// Records the first answer to alert `id`.
pub fn answer_alert(
    db: Db<'_>,
    id: &str,
    at: u64,
    not_me: bool,
    outcome: &str,
) -> Result<(), StoreError> {
    db.exec_cached(
        "UPDATE alerts SET answered_at = ?2, not_me = ?3, outcome = ?4 WHERE id = ?1",
        params![id, to_sql(at), not_me, outcome],
    )?;
    Ok(())
}
