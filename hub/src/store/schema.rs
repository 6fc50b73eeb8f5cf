//! The database schema as ordered migrations (`rusqlite_migration`, tracked in
//! `user_version`). Append new migrations; never edit one that has shipped.

use rusqlite_migration::{M, Migrations};

const V1: &str = r#"
-- Counters of the hub itself (its outgoing message seq).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;

CREATE TABLE accounts (
    id                  TEXT PRIMARY KEY,
    currency            TEXT NOT NULL,
    password_hash       TEXT NOT NULL,
    pin_hash            TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    password_changed_at INTEGER NOT NULL,
    frozen              INTEGER NOT NULL DEFAULT 0,
    frozen_reason       TEXT,
    frozen_at           INTEGER,
    pin_failures        INTEGER NOT NULL DEFAULT 0,
    pin_locked_until    INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Phone devices; one account per device. restricted_* is set by the new-device policy.
CREATE TABLE devices (
    id                 TEXT PRIMARY KEY,
    account            TEXT NOT NULL REFERENCES accounts(id),
    name               TEXT NOT NULL,
    public_jwk         TEXT NOT NULL,
    kid                TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    enrolled_at        INTEGER NOT NULL,
    key_changed_at     INTEGER NOT NULL,
    last_login_at      INTEGER,
    restricted_until   INTEGER,
    restriction_reason TEXT,
    revoked_at         INTEGER,
    revoked_reason     TEXT
) STRICT;
CREATE INDEX devices_by_account ON devices(account);

-- Every successful login with where it happened: input of the new-device policy.
CREATE TABLE logins (
    id         INTEGER PRIMARY KEY,
    account    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    kid        TEXT NOT NULL,
    at         INTEGER NOT NULL,
    lat        REAL,
    lon        REAL,
    accuracy_m REAL,
    new_device INTEGER NOT NULL
) STRICT;
CREATE INDEX logins_by_account ON logins(account, at);

CREATE TABLE atms (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    address       TEXT NOT NULL,
    lat           REAL NOT NULL,
    lon           REAL NOT NULL,
    public_jwk    TEXT NOT NULL,
    kid           TEXT NOT NULL,
    denominations TEXT NOT NULL,
    cassettes     TEXT,
    state         TEXT,
    presence      TEXT,
    last_seen     INTEGER,
    active        INTEGER NOT NULL DEFAULT 1,
    enrolled_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE merchants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    currency   TEXT NOT NULL,
    lat        REAL NOT NULL,
    lon        REAL NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE bank_accounts (
    id         TEXT PRIMARY KEY,
    account    TEXT NOT NULL REFERENCES accounts(id),
    bank       TEXT NOT NULL,
    number     TEXT NOT NULL,
    holder     TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE withdrawals (
    tx_id                TEXT PRIMARY KEY,
    account              TEXT NOT NULL REFERENCES accounts(id),
    device_id            TEXT NOT NULL,
    amount               INTEGER NOT NULL CHECK (amount > 0),
    currency             TEXT NOT NULL,
    phase                TEXT NOT NULL,
    registered_at        INTEGER NOT NULL,
    code_expires_at      INTEGER NOT NULL,
    atm_id               TEXT,
    presented_at         INTEGER,
    confirm_by           INTEGER,
    challenge            TEXT,
    notes                TEXT,
    order_id             TEXT UNIQUE,
    order_expires_at     INTEGER,
    order_payload        TEXT,
    confirmed_at         INTEGER,
    confirmed_by         TEXT,
    settled              INTEGER NOT NULL DEFAULT 0,
    finished_at          INTEGER,
    needs_reconciliation INTEGER NOT NULL DEFAULT 0,
    note                 TEXT
) STRICT;
CREATE INDEX withdrawals_by_account ON withdrawals(account, registered_at);
CREATE INDEX withdrawals_by_phase ON withdrawals(phase);

-- Every dispense report received, applied or not: no dispense record is ever lost.
CREATE TABLE dispense_reports (
    id          INTEGER PRIMARY KEY,
    tx_id       TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    atm_id      TEXT NOT NULL,
    jti         TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    dispensed   INTEGER NOT NULL,
    report      TEXT NOT NULL,
    applied     INTEGER NOT NULL
) STRICT;

CREATE TABLE ledger_accounts (
    id       TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance  INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE postings (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    currency    TEXT NOT NULL,
    reference   TEXT NOT NULL,
    description TEXT NOT NULL
) STRICT;

CREATE TABLE entries (
    posting_id     INTEGER NOT NULL REFERENCES postings(id),
    ledger_account TEXT NOT NULL REFERENCES ledger_accounts(id),
    amount         INTEGER NOT NULL
) STRICT;
CREATE INDEX entries_by_account ON entries(ledger_account, posting_id);

-- Phone money operations with their idempotency key and the answer given.
CREATE TABLE operations (
    account         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            TEXT NOT NULL,
    reference       TEXT NOT NULL,
    request         TEXT NOT NULL,
    amount          INTEGER NOT NULL,
    counts_to_limit INTEGER NOT NULL,
    receipt         TEXT NOT NULL,
    at              INTEGER NOT NULL,
    PRIMARY KEY (account, idempotency_key)
) STRICT;
CREATE INDEX operations_by_time ON operations(account, at);

-- Merchant payments with the merchant's position: input of the device-location estimate.
CREATE TABLE payments (
    reference   TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    amount      INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    lat         REAL NOT NULL,
    lon         REAL NOT NULL
) STRICT;

CREATE TABLE payouts (
    reference    TEXT PRIMARY KEY,
    account      TEXT NOT NULL,
    bank_account TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    at           INTEGER NOT NULL,
    status       TEXT NOT NULL
) STRICT;

-- Anti-replay windows per sender and key, updated with each message's effects.
CREATE TABLE replay_windows (
    sender  TEXT NOT NULL,
    kid     TEXT NOT NULL,
    highest INTEGER NOT NULL,
    seen    BLOB NOT NULL,
    PRIMARY KEY (sender, kid)
) STRICT;

-- Processed message ids and the answers sent, to answer a duplicate the same way.
CREATE TABLE processed (
    sender    TEXT NOT NULL,
    jti       TEXT NOT NULL,
    at        INTEGER NOT NULL,
    responses TEXT NOT NULL,
    PRIMARY KEY (sender, jti)
) STRICT;
CREATE INDEX processed_by_time ON processed(at);

-- Append-only audit log of every message and operator action. Never secrets.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    source   TEXT NOT NULL,
    sender   TEXT,
    topic    TEXT,
    msg_type TEXT,
    jti      TEXT,
    outcome  TEXT NOT NULL,
    reason   TEXT,
    detail   TEXT
) STRICT;
CREATE TRIGGER audit_is_append_only_u BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_is_append_only_d BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- New-device alerts pushed to an account's other devices.
CREATE TABLE alerts (
    id            TEXT PRIMARY KEY,
    account       TEXT NOT NULL,
    new_device    TEXT NOT NULL,
    notified      TEXT NOT NULL,
    at            INTEGER NOT NULL,
    answered_at   INTEGER,
    not_me        INTEGER
) STRICT;
"#;

/// Operators' settlements with their evidence, corrections proposed when a later report
/// contradicts a settlement, and phone pushes decided outside the service (operator
/// commands) that the running service seals and publishes.
const V2: &str = r#"
CREATE TABLE resolutions (
    tx_id       TEXT PRIMARY KEY REFERENCES withdrawals(tx_id),
    operator    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    dispensed   INTEGER NOT NULL,
    low         INTEGER NOT NULL,
    high        INTEGER NOT NULL,
    evidence    TEXT NOT NULL,
    resolved_at INTEGER NOT NULL
) STRICT;

CREATE TABLE corrections (
    id            INTEGER PRIMARY KEY,
    tx_id         TEXT NOT NULL REFERENCES withdrawals(tx_id),
    from_settled  INTEGER NOT NULL,
    to_settled    INTEGER NOT NULL,
    cause         TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('proposed', 'approved', 'rejected')),
    proposed_at   INTEGER NOT NULL,
    decided_by    TEXT,
    decided_at    INTEGER,
    decision_note TEXT
) STRICT;
CREATE INDEX corrections_by_tx ON corrections(tx_id);

CREATE TABLE pending_pushes (
    id         INTEGER PRIMARY KEY,
    device_id  TEXT NOT NULL,
    push       TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
"#;

/// New-device alerts name the key they are about, so that an approval lifts the restriction
/// of that key only (a device re-keyed after the alert was sent is a newer newcomer), and
/// keep the outcome of their first answer, which a repeated answer gets again. Login
/// failures are counted per device and per account name for throttling.
const V3: &str = r#"
ALTER TABLE alerts ADD COLUMN new_kid TEXT;
ALTER TABLE alerts ADD COLUMN outcome TEXT;

-- Wrong passwords in a row per subject ('device:<id>' or 'account:<name>'); rows of
-- subjects that are unlocked and quiet are pruned by the sweeper.
CREATE TABLE login_failures (
    subject      TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    last_at      INTEGER NOT NULL
) STRICT;

-- Refused messages of phones with no enrolled device (self-signed logins): a pruned trail,
-- not the append-only audit log, since such keys cost nothing to make.
CREATE TABLE login_refusals (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    sender   TEXT,
    msg_type TEXT,
    reason   TEXT,
    detail   TEXT
) STRICT;
CREATE INDEX login_refusals_by_time ON login_refusals(at);
CREATE INDEX logins_by_device ON logins(device_id, at);
"#;

/// Which hub key signed each withdrawal's code (a key rotation keeps previous keys, which
/// must verify only the codes they signed before it).
const V4: &str = r#"
CREATE TABLE withdrawal_codes (
    tx_id      TEXT PRIMARY KEY NOT NULL REFERENCES withdrawals(tx_id),
    issuer_kid TEXT NOT NULL
) STRICT;
"#;

/// One-time enrolment codes (`protocol::enrol`), one live code per ATM id: the proof key
/// derived from the code (never the code), its window, the wrong proofs counted against it,
/// when and by which key it was used, and the place and cassettes of an ATM not enrolled yet.
const V5: &str = r#"
CREATE TABLE atm_enrolments (
    atm_id        TEXT PRIMARY KEY NOT NULL,
    proof_key     TEXT NOT NULL,
    issued_at     INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,
    used_at       INTEGER,
    used_kid      TEXT,
    name          TEXT,
    address       TEXT,
    lat           REAL,
    lon           REAL,
    denominations TEXT
) STRICT;
"#;

/// An ATM's previous key after a `RotateKey`: still accepted until `previous_until`, and only
/// for messages numbered up to the rotation's `seq` (`previous_seq`) and dated no later than
/// it (`previous_at`), so messages it queued under the old key are not lost and the old key
/// can sign nothing new.
const V6: &str = r#"
ALTER TABLE atms ADD COLUMN previous_jwk TEXT;
ALTER TABLE atms ADD COLUMN previous_kid TEXT;
ALTER TABLE atms ADD COLUMN previous_until INTEGER;
ALTER TABLE atms ADD COLUMN previous_seq INTEGER;
ALTER TABLE atms ADD COLUMN previous_at INTEGER;
"#;

/// Every change of the cassette counts an ATM reports (`reconcile`): a snapshot is kept when
/// a heartbeat's counts differ from the ATM's last one, with the last dispense report
/// recorded before it (so reports fall between snapshots in the order the hub took them).
const V7: &str = r#"
CREATE TABLE atm_counts (
    id           INTEGER PRIMARY KEY,
    atm_id       TEXT NOT NULL,
    at           INTEGER NOT NULL,
    counts       TEXT NOT NULL,
    reports_upto INTEGER NOT NULL
) STRICT;
CREATE INDEX atm_counts_by_atm ON atm_counts(atm_id, id);
"#;

/// The transactional outbox (`store::outbox`): answers kept with the transaction that
/// decided them until they reached the broker.
const V8: &str = r#"
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    topic      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    due_at     INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX outbox_by_due ON outbox(due_at);
"#;

/// The migrations, oldest first.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(V1),
        M::up(V2),
        M::up(V3),
        M::up(V4),
        M::up(V5),
        M::up(V6),
        M::up(V7),
        M::up(V8),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations().validate().is_ok());
    }
}
