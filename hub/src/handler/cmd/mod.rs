//! One file per message a device sends: each loads what it needs through the store, decides
//! (the pure rules of `withdrawal`, `restriction`, `limits`, `identity`) and returns the
//! signed answers. [`super::route`] chooses the file.

pub(super) mod answer_alert;
pub(super) mod balance;
pub(super) mod bank_withdrawal;
pub(super) mod change_password;
pub(super) mod confirm;
pub(super) mod decline;
pub(super) mod enrol;
pub(super) mod heartbeat;
pub(super) mod login;
pub(super) mod operation;
pub(super) mod order_refused;
pub(super) mod payment;
pub(super) mod present;
pub(super) mod register;
pub(super) mod report;
pub(super) mod rotate_key;
pub(super) mod session_cancelled;
pub(super) mod sign_out_others;
pub(super) mod top_up;
pub(super) mod transfer;
