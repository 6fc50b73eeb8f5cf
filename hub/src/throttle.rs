//! Login throttling: how long a run of wrong passwords locks a device or an account out.
//!
//! Pure: a [`Failures`] state and the time come in, a new state or the lock's end comes out.
//! The login handler keeps one state per device id and one per account name (the table
//! `login_failures`), checks both *before* it evaluates the password (so a locked subject
//! costs the hub no argon2 at all) and records the outcome after. `docs/hub.md` ("Login
//! throttling") is the prose form.
//!
//! The lock doubles with every failure past the free ones: with the defaults (5 free, 30 s,
//! at most 1 h) one device id or one account name gets 5 guesses, then one after 30 s,
//! 60 s, 120 s, … and from the 13th failure on one an hour.

use serde::{Deserialize, Serialize};

/// The figures of the rule (the `[auth]` table's `login_*` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottlePolicy {
    /// Wrong passwords in a row that cost nothing.
    pub free_failures: u32,
    /// The first lock, seconds; each further failure doubles it.
    pub base_lock_s: u64,
    /// The longest lock, seconds.
    pub max_lock_s: u64,
}

/// The consecutive failures of one subject (a device id or an account name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// Wrong passwords in a row.
    pub count: u32,
    /// No attempt is evaluated before this Unix time (0: not locked).
    pub locked_until: u64,
    /// The last failure, Unix seconds.
    pub last_at: u64,
}

impl Failures {
    /// `Err(until)` while locked at `now`.
    pub fn check(&self, now: u64) -> Result<(), u64> {
        if now < self.locked_until {
            Err(self.locked_until)
        } else {
            Ok(())
        }
    }

    /// The state after one more wrong password at `now`.
    pub fn fail(self, now: u64, policy: &ThrottlePolicy) -> Failures {
        let count = self.count.saturating_add(1);
        let locked_until = match count.checked_sub(policy.free_failures) {
            None | Some(0) => 0,
            Some(past) => {
                let doublings = (past - 1).min(63);
                let lock = policy
                    .base_lock_s
                    .saturating_mul(1u64 << doublings)
                    .min(policy.max_lock_s);
                now.saturating_add(lock)
            }
        };
        Failures {
            count,
            locked_until,
            last_at: now,
        }
    }

    /// Whether the row may be forgotten at `now`: unlocked and quiet for `forget_after_s`.
    pub fn forgettable(&self, now: u64, forget_after_s: u64) -> bool {
        self.check(now).is_ok() && now >= self.last_at.saturating_add(forget_after_s)
    }
}

/// The throttling subjects of a login from device `sender` for account name `account`: the
/// device id always, the account name unless the device is the account's own established
/// one with its enrolled key (`own`), so guessing from elsewhere cannot lock the owner's
/// phone out. A long name is replaced by its digest: a name of kilobytes must not become a
/// key of kilobytes.
pub fn subjects(sender: &str, account: &str, own: bool) -> Vec<String> {
    let mut out = vec![device_subject(sender)];
    if !own {
        out.push(account_subject(account));
    }
    out
}

/// The subject of a device id.
pub fn device_subject(device_id: &str) -> String {
    format!("device:{device_id}")
}

/// The subject of an account name.
pub fn account_subject(account: &str) -> String {
    if account.len() <= 64 {
        format!("account:{account}")
    } else {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(account.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("account#{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: ThrottlePolicy = ThrottlePolicy {
        free_failures: 5,
        base_lock_s: 30,
        max_lock_s: 3_600,
    };

    #[test]
    fn five_free_failures_then_a_lock_that_doubles_up_to_the_maximum() {
        let mut f = Failures::default();
        let now = 1_000;
        for _ in 0..5 {
            f = f.fail(now, &POLICY);
            assert_eq!(f.check(now), Ok(()));
        }
        let locks: Vec<u64> = (0..10)
            .map(|_| {
                f = f.fail(now, &POLICY);
                f.locked_until.saturating_sub(now)
            })
            .collect();
        assert_eq!(locks, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(f.check(now + 3_599), Err(now + 3_600));
        assert_eq!(f.check(now + 3_600), Ok(()));
    }

    proptest! {
        #[test]
        fn a_lock_never_exceeds_the_maximum_and_never_shrinks(
            count in 0u32..=u32::MAX,
            now in 0u64..=u64::MAX / 2,
            base in 0u64..=u64::MAX,
            max in 0u64..=1u64 << 40,
        ) {
            let policy = ThrottlePolicy { free_failures: 5, base_lock_s: base, max_lock_s: max };
            let f = Failures { count, locked_until: 0, last_at: 0 };
            let once = f.fail(now, &policy);
            prop_assert!(once.locked_until <= now.saturating_add(max));
            let twice = once.fail(now, &policy);
            prop_assert!(twice.locked_until >= once.locked_until);
        }
    }
}
