//! The background sweep: expires unused codes and unconfirmed sessions (telling the ATM),
//! marks orders without a report long after their expiry as in doubt, lifts restrictions
//! whose time is up, sends the pushes operator commands queued (resolution receipts) and
//! forgets processed message ids past their retention and the traces of login attempts
//! (failure counts, refusals of self-signed logins, windows of keys that never enrolled).

use super::{Ctx, Fail, Outgoing, steps};
use crate::error::StoreError;
use crate::store;
use crate::store::audit::{self, AuditEntry};
use crate::store::rows::{self, Listing, WithdrawalRow};
use crate::withdrawal::{Event, transition};

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Registered codes that expired.
    pub codes_expired: usize,
    /// Presented withdrawals whose confirmation deadline passed.
    pub sessions_expired: usize,
    /// Ordered withdrawals without a report long after the order expired (now in doubt).
    pub orders_overdue: usize,
    /// Device restrictions whose time was up.
    pub restrictions_lifted: usize,
    /// Processed message ids forgotten.
    pub processed_pruned: usize,
    /// Pushes queued by operator commands, sealed and sent.
    pub pushes_sent: usize,
    /// Login-failure counts of subjects unlocked and quiet, refusals of self-signed logins
    /// past their retention, and replay windows of keys that never enrolled, forgotten.
    pub login_traces_pruned: usize,
    /// Answers of the transactional outbox published again (not confirmed in time).
    pub outbox_resent: usize,
    /// Answers that expired in the outbox unconfirmed (their receivers would refuse them).
    pub outbox_expired: usize,
    /// Another instance was sweeping (PostgreSQL): this one skipped its turn.
    pub skipped: bool,
}

impl SweepReport {
    /// Whether the sweep changed anything.
    pub fn is_empty(&self) -> bool {
        SweepReport {
            skipped: false,
            ..*self
        } == SweepReport::default()
    }
}

fn step_all(
    ctx: &mut Ctx<'_>,
    list: Vec<WithdrawalRow>,
    event: Event,
    what: &str,
) -> Result<(usize, Vec<Outgoing>), StoreError> {
    let mut out = Vec::new();
    let mut n = 0;
    for w in list {
        let Ok(step) = transition(&w.lifecycle(), event) else {
            continue;
        };
        match steps::apply(ctx, &w, &step, None) {
            Ok(o) => {
                out.extend(o);
                n += 1;
                audit::append(
                    ctx.db,
                    &AuditEntry {
                        at: ctx.now,
                        source: "sweeper".into(),
                        msg_type: Some(what.into()),
                        outcome: "done".into(),
                        detail: Some(format!("tx {} {} → {}", w.tx_id, w.phase, step.next)),
                        ..AuditEntry::default()
                    },
                )?;
                tracing::info!(tx = %w.tx_id, to = %step.next, "{what}");
            }
            Err(Fail::Refused(_)) => {}
            Err(Fail::Store(e)) => return Err(e),
        }
    }
    Ok((n, out))
}

pub(super) fn sweep(ctx: &mut Ctx<'_>) -> Result<(Vec<Outgoing>, SweepReport), StoreError> {
    let mut report = SweepReport::default();
    let mut out = Vec::new();

    let codes = rows::withdrawals(ctx.db, &Listing::CodeExpired { now: ctx.now })?;
    let (n, o) = step_all(
        ctx,
        codes,
        Event::CodeExpired { now: ctx.now },
        "code expired",
    )?;
    report.codes_expired = n;
    out.extend(o);

    let sessions = rows::withdrawals(ctx.db, &Listing::ConfirmationOverdue { now: ctx.now })?;
    let (n, o) = step_all(
        ctx,
        sessions,
        Event::DeadlinePassed { now: ctx.now },
        "confirmation timed out",
    )?;
    report.sessions_expired = n;
    out.extend(o);

    let before = ctx.now.saturating_sub(ctx.cfg.withdrawal.report_grace_s);
    let orders = rows::withdrawals(ctx.db, &Listing::ReportOverdue { before })?;
    let (n, o) = step_all(ctx, orders, Event::ReportOverdue, "dispense report overdue")?;
    report.orders_overdue = n;
    out.extend(o);

    let lifted = rows::restrictions_ended(ctx.db, ctx.now)?;
    for (id, until) in &lifted {
        rows::set_restriction(ctx.db, id, None, None)?;
        audit::append(
            ctx.db,
            &AuditEntry {
                at: ctx.now,
                source: "sweeper".into(),
                sender: Some(id.clone()),
                msg_type: Some("restriction lifted".into()),
                outcome: "done".into(),
                detail: Some(format!("restriction of device {id} ended at {}", until)),
                ..AuditEntry::default()
            },
        )?;
    }
    report.restrictions_lifted = lifted.len();

    // Receipts and other pushes decided by operator commands (outside this process).
    for (device, push) in store::settlement::take_pushes(ctx.db)? {
        out.push(ctx.push_phone(&device, push)?);
        report.pushes_sent += 1;
    }

    report.processed_pruned = store::prune_processed(
        ctx.db,
        ctx.now
            .saturating_sub(ctx.cfg.storage.processed_retention_s),
    )?;
    let auth = &ctx.cfg.auth;
    report.login_traces_pruned = rows::prune_login_failures(
        ctx.db,
        ctx.now,
        ctx.now.saturating_sub(auth.login_failure_memory_s),
        ctx.now.saturating_sub(auth.login_lock_max_s),
    )? + audit::prune_login_refusals(
        ctx.db,
        ctx.now.saturating_sub(auth.login_refusal_retention_s),
    )? + store::prune_stranger_windows(ctx.db)?;
    Ok((out, report))
}
