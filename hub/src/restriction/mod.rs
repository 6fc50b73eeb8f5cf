//! The new-device restriction policy: whether a login from another device may move money out,
//! and for how long it may not.
//!
//! When an account already in use on one phone logs in from another device, the new device is
//! kept away from asset-decreasing functions (withdrawal, transfer, payment, bank payout) for
//! a period that is shorter for accounts that log in often. Only evidence the hub observed
//! itself (where the new device paid, where it presented a code) can show that the two
//! devices are the same person's; what a device says about itself (its reported position) is
//! a claim that can make the decision stricter but never lift it, because a fraudster with a
//! phished password reports whatever frees them. The established device can lift it early by
//! approving the newcomer (the hub's alert handler). Balance, history and receiving money stay
//! free.
//!
//! The restriction's one home, in four parts:
//! - [`policy`](RestrictionPolicy): the tunable figures, and how long a restriction lasts
//!   from the account's login habit ([`restriction_period`]);
//! - `locate`: where a device is, from what the hub saw itself ([`observe_new_device`],
//!   [`estimate_position`]) and what it claims;
//! - `decide`: whether a new device is restricted, and why ([`decide`]);
//! - `gate`: which functions a restriction blocks ([`check`]), and the one gate every
//!   asset-decreasing operation passes ([`check_may_move_money`]).
//!
//! All of it is pure: positions, counts and times (Unix seconds) come in as arguments and a
//! [`Decision`] or a [`RejectReason`] comes out. It does not read the clock, store
//! restrictions, count logins or send alerts; the login command loads the evidence through
//! the store, calls [`decide`] and stores the verdict on the device row, and the commands
//! that move money call [`check_may_move_money`]. `docs/restriction.md` is the prose form of
//! the rules and of the defaults' reasons.

mod decide;
mod gate;
mod locate;
mod policy;
#[cfg(test)]
mod tests;

pub use decide::*;
pub use gate::*;
pub use locate::*;
pub use policy::*;

const SECS_PER_HOUR: u64 = 3_600;
const SECS_PER_DAY: u64 = 86_400;
