//! Anti-replay: a per-sender sliding sequence window plus clock checks. Pure logic.
//!
//! Each sender numbers its messages with a strictly increasing `seq` that it persists, so a
//! number never repeats after a reboot. The receiver keeps, per sender, the highest number
//! accepted and a bitmap of the [`ReplayConfig::seq_window`] numbers below it (the IPsec
//! anti-replay scheme): a message may arrive out of order within the window (MQTT QoS 1
//! redelivery, outbox resends), but never twice. [`SenderWindow`] is the persisted state;
//! the caller stores it in the same transaction as the message's effects.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ReplayError;

/// The largest supported window (the bitmap is a `u128`).
pub const MAX_WINDOW: u64 = 128;

/// Tunables of the replay rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// How far below the highest accepted `seq` a message may still arrive (≤ 128).
    pub seq_window: u64,
    /// How far `iat` may lie in the future, and how long after `exp` a message still counts
    /// as unexpired: the clock difference tolerated between sender and receiver.
    pub max_skew: Duration,
    /// How old (by `iat`) a message may be when it arrives. An outbox that was offline for
    /// days re-signs nothing: its messages must be accepted, so agents' reports carry a long
    /// `exp` and the hub configures this generously; phones' requests are short-lived.
    pub max_age: Duration,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            seq_window: 64,
            max_skew: Duration::from_secs(30),
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Per-sender replay state: the highest accepted `seq` and which of the `window` numbers
/// below it were seen (bit `i` = `highest - i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SenderWindow {
    /// Highest accepted sequence number (0: none yet; `seq` starts at 1).
    pub highest: u64,
    /// Seen-bitmap below and including `highest`.
    pub seen: u128,
}

impl SenderWindow {
    /// Checks `seq` against this window without changing it.
    pub fn check(&self, seq: u64, window: u64) -> Result<(), ReplayError> {
        let window = window.clamp(1, MAX_WINDOW);
        if seq == 0 {
            return Err(ReplayError::ZeroSeq);
        }
        if seq > self.highest {
            return Ok(());
        }
        let offset = self.highest - seq;
        if offset >= window {
            return Err(ReplayError::TooOld {
                seq,
                highest: self.highest,
                window,
            });
        }
        if self.seen & (1u128 << offset) != 0 {
            return Err(ReplayError::Replayed { seq });
        }
        Ok(())
    }

    /// The window after accepting `seq` (call only after [`SenderWindow::check`] passed).
    pub fn record(&self, seq: u64) -> SenderWindow {
        if seq > self.highest {
            let shift = seq - self.highest;
            let seen = if shift >= 128 { 0 } else { self.seen << shift };
            SenderWindow {
                highest: seq,
                seen: seen | 1,
            }
        } else {
            SenderWindow {
                highest: self.highest,
                seen: self.seen | (1u128 << (self.highest - seq)),
            }
        }
    }
}

/// Checks `iat` and `exp` against the receiver's clock `now` (Unix seconds).
pub fn check_times(config: &ReplayConfig, iat: u64, exp: u64, now: u64) -> Result<(), ReplayError> {
    let skew = config.max_skew.as_secs();
    if exp <= iat {
        return Err(ReplayError::BadLifetime { iat, exp });
    }
    if iat > now.saturating_add(skew) {
        return Err(ReplayError::FutureDated {
            ahead_s: iat - now,
            skew_s: skew,
        });
    }
    let max_age = config.max_age.as_secs();
    if now > iat.saturating_add(max_age) {
        return Err(ReplayError::Stale {
            age_s: now - iat,
            max_age_s: max_age,
        });
    }
    if now > exp.saturating_add(skew) {
        return Err(ReplayError::Expired { ago_s: now - exp });
    }
    Ok(())
}

/// In-memory anti-replay state for many senders, for receivers that persist it as a whole
/// (the agent) or tests. The hub keeps [`SenderWindow`]s in its database instead.
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    config: ReplayConfig,
    senders: HashMap<String, SenderWindow>,
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new(config: ReplayConfig) -> Self {
        ReplayGuard {
            config,
            senders: HashMap::new(),
        }
    }

    /// A guard restored from persisted windows.
    pub fn with_state(
        config: ReplayConfig,
        state: impl IntoIterator<Item = (String, SenderWindow)>,
    ) -> Self {
        ReplayGuard {
            config,
            senders: state.into_iter().collect(),
        }
    }

    /// The rules in force.
    pub fn config(&self) -> &ReplayConfig {
        &self.config
    }

    /// The persisted state of one sender.
    pub fn window(&self, sender: &str) -> SenderWindow {
        self.senders.get(sender).copied().unwrap_or_default()
    }

    /// Checks a message without recording it.
    pub fn check(
        &self,
        sender: &str,
        seq: u64,
        iat: u64,
        exp: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        check_times(&self.config, iat, exp, now)?;
        self.window(sender).check(seq, self.config.seq_window)
    }

    /// Checks and records a message; returns the sender's new window for the caller to
    /// persist together with the message's effects.
    pub fn accept(
        &mut self,
        sender: &str,
        seq: u64,
        iat: u64,
        exp: u64,
        now: u64,
    ) -> Result<SenderWindow, ReplayError> {
        self.check(sender, seq, iat, exp, now)?;
        let next = self.window(sender).record(seq);
        self.senders.insert(sender.to_owned(), next);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn guard() -> ReplayGuard {
        ReplayGuard::new(ReplayConfig {
            seq_window: 8,
            max_skew: Duration::from_secs(30),
            max_age: Duration::from_secs(600),
        })
    }

    fn accept(g: &mut ReplayGuard, seq: u64) -> Result<SenderWindow, ReplayError> {
        g.accept("atm-1", seq, NOW, NOW + 60, NOW)
    }

    #[test]
    fn replay_is_refused() {
        let mut g = guard();
        accept(&mut g, 1).unwrap();
        assert_eq!(
            accept(&mut g, 1).unwrap_err(),
            ReplayError::Replayed { seq: 1 }
        );
        assert_eq!(accept(&mut g, 0).unwrap_err(), ReplayError::ZeroSeq);
        // Other senders have their own windows.
        g.accept("atm-2", 1, NOW, NOW + 60, NOW).unwrap();
    }

    #[test]
    fn reorder_within_the_window_is_accepted_once() {
        let mut g = guard();
        for seq in [5, 3, 4, 1, 2, 7, 6] {
            accept(&mut g, seq).unwrap();
        }
        for seq in 1..=7 {
            assert!(accept(&mut g, seq).is_err(), "seq {seq} accepted twice");
        }
        assert_eq!(g.window("atm-1").highest, 7);
    }

    #[test]
    fn below_the_window_is_too_old() {
        let mut g = guard();
        accept(&mut g, 100).unwrap();
        accept(&mut g, 93).unwrap();
        assert_eq!(
            accept(&mut g, 92).unwrap_err(),
            ReplayError::TooOld {
                seq: 92,
                highest: 100,
                window: 8
            }
        );
    }

    #[test]
    fn a_large_jump_clears_the_bitmap() {
        let mut g = guard();
        accept(&mut g, 1).unwrap();
        accept(&mut g, 1000).unwrap();
        accept(&mut g, 999).unwrap();
        assert!(accept(&mut g, 1000).is_err());
    }

    #[test]
    fn clock_rules() {
        let g = guard();
        let c = *g.config();
        // Future-dated beyond the skew.
        assert_eq!(
            check_times(&c, NOW + 31, NOW + 90, NOW).unwrap_err(),
            ReplayError::FutureDated {
                ahead_s: 31,
                skew_s: 30
            }
        );
        assert!(check_times(&c, NOW + 30, NOW + 90, NOW).is_ok());
        // Too old.
        assert_eq!(
            check_times(&c, NOW - 601, NOW + 90, NOW).unwrap_err(),
            ReplayError::Stale {
                age_s: 601,
                max_age_s: 600
            }
        );
        // Expired (beyond the skew).
        assert_eq!(
            check_times(&c, NOW - 100, NOW - 31, NOW).unwrap_err(),
            ReplayError::Expired { ago_s: 31 }
        );
        assert!(check_times(&c, NOW - 100, NOW - 30, NOW).is_ok());
        // Nonsense lifetime.
        assert!(matches!(
            check_times(&c, NOW, NOW, NOW),
            Err(ReplayError::BadLifetime { .. })
        ));
    }

    #[test]
    fn a_rejected_message_changes_nothing() {
        let mut g = guard();
        accept(&mut g, 3).unwrap();
        let before = g.window("atm-1");
        assert!(g.accept("atm-1", 4, NOW, NOW - 100, NOW).is_err());
        assert_eq!(g.window("atm-1"), before);
        accept(&mut g, 4).unwrap();
    }

    #[test]
    fn state_survives_a_restart() {
        let mut g = guard();
        accept(&mut g, 10).unwrap();
        let saved = vec![("atm-1".to_owned(), g.window("atm-1"))];
        let mut restored = ReplayGuard::with_state(*g.config(), saved);
        assert!(accept(&mut restored, 10).is_err());
        accept(&mut restored, 11).unwrap();
    }

    proptest! {
        /// Whatever the arrival order, each number is accepted at most once, and every
        /// number at or above `highest - window` that was not seen is accepted.
        #[test]
        fn each_seq_accepted_at_most_once(seqs in proptest::collection::vec(1u64..40, 1..80)) {
            let mut g = guard();
            let mut accepted = std::collections::HashSet::new();
            for s in seqs {
                let highest = g.window("atm-1").highest;
                match accept(&mut g, s) {
                    Ok(_) => prop_assert!(accepted.insert(s), "seq {} accepted twice", s),
                    Err(ReplayError::Replayed { .. }) => prop_assert!(accepted.contains(&s)),
                    Err(ReplayError::TooOld { .. }) => prop_assert!(s + 8 <= highest),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
        }
    }
}
