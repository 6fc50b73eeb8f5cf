//! The outbox task: publishes what the agent's store holds for the hub, oldest first,
//! resends unacknowledged messages with backoff and after every reconnection. It never
//! deletes: the core applies the hub's acks to the store, and the queue read back is the
//! truth after any crash.

use std::sync::Arc;
use std::time::Duration;

use qrcash_io::Backoff;
use qrcash_io::link::{LinkHandle, PublishError};
use qrcash_protocol::Clock;
use tokio::sync::mpsc;

use crate::store::Store;

/// What the core tells the outbox task.
#[derive(Debug)]
pub(super) enum OutboxCmd {
    /// The link is up (subscribed): publish the queue from its oldest message.
    LinkUp,
    /// The link is down: stop publishing until it is up again.
    LinkDown,
    /// Something was queued or acknowledged: look at the queue again.
    Wake,
}

/// Messages published per round; the rest follow once these are acknowledged.
const OUTBOX_BATCH: u32 = 64;

/// Publishes queued messages in order, resends unacknowledged ones with backoff and after
/// every reconnection; deletes nothing itself (the core applies acks).
pub(super) async fn run_outbox(
    mut store: Store,
    mqtt: LinkHandle,
    up_topic: String,
    mut cmds: mpsc::UnboundedReceiver<OutboxCmd>,
    mut backoff: Backoff,
    clock: Arc<dyn Clock>,
) {
    let mut up = false;
    // jtis published on the current connection and not yet acknowledged.
    let mut sent: std::collections::HashSet<String> = Default::default();
    let mut resend_at: Option<tokio::time::Instant> = None;
    loop {
        let timer = async {
            match resend_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let mut resend_all = false;
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(mut cmd) = cmd else { return };
                // Apply every command already waiting (in order) before one pass over the
                // queue: after an offline period each `Ack` sends a `Wake`, and one pass per
                // burst is enough because a pass reads the queue as it is now.
                loop {
                    match cmd {
                        OutboxCmd::LinkUp => {
                            up = true;
                            sent.clear();
                            backoff.reset();
                        }
                        OutboxCmd::LinkDown => {
                            up = false;
                            resend_at = None;
                        }
                        OutboxCmd::Wake => {}
                    }
                    match cmds.try_recv() {
                        Ok(next) => cmd = next,
                        Err(_) => break,
                    }
                }
            }
            () = timer => {
                resend_all = true;
            }
        }
        if !up {
            continue;
        }
        let pending = match store.pending(OUTBOX_BATCH) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                resend_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                continue;
            }
        };
        let waiting: std::collections::HashSet<String> =
            pending.iter().map(|m| m.jti.clone()).collect();
        let acked_something = sent.iter().any(|j| !waiting.contains(j));
        sent.retain(|j| waiting.contains(j));
        if acked_something {
            backoff.reset();
        }
        let mut published = Vec::new();
        // Order: outside a resend round, a new message goes out only while nothing older is
        // still unacknowledged; otherwise it waits for the next round, which republishes the
        // whole queue oldest first.
        let mut older_outstanding = false;
        for m in &pending {
            if !resend_all && sent.contains(&m.jti) {
                older_outstanding = true;
                continue;
            }
            if !resend_all && older_outstanding {
                break;
            }
            // try_publish: never block on the client's queue while the link is shaky.
            match mqtt.try_publish(&up_topic, m.sealed.clone().into_bytes()) {
                Ok(()) => {
                    sent.insert(m.jti.clone());
                    published.push(m.id);
                }
                Err(PublishError::Full) => {
                    tracing::debug!("MQTT client queue full; retrying later");
                    break;
                }
                Err(PublishError::Closed) => return,
            }
        }
        if !published.is_empty() {
            tracing::debug!(
                count = published.len(),
                resend = resend_all,
                "outbox published"
            );
            if let Err(e) = store.mark_sent(&published, clock.now()) {
                tracing::warn!(error = %e, "cannot record outbox attempts");
            }
        }
        resend_at = if pending.is_empty() {
            None
        } else if resend_all || resend_at.is_none() || acked_something {
            Some(tokio::time::Instant::now() + backoff.next_delay())
        } else {
            resend_at
        };
    }
}
