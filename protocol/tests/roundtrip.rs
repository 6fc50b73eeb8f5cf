//! Property: every message type survives sign → serialize → parse → verify unchanged, and
//! no mutation of a sealed message is ever accepted.

use std::time::Duration;

use proptest::prelude::*;
use qrcash_protocol::messages::*;
use qrcash_protocol::{
    Amount, Claims, Currency, MAX_DOWNLINK_BYTES, OrderId, Position, PrivateKey, Sealed, Signer,
    TxId,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A sealed-secret-shaped value carrying arbitrary text (the round trip is about JSON, not
/// about HPKE).
fn sealed(text: String) -> qrcash_protocol::SealedSecret {
    qrcash_protocol::SealedSecret {
        kid: text.clone(),
        enc: text.chars().rev().collect(),
        ct: text,
    }
}

fn amount() -> impl Strategy<Value = Amount> {
    (
        any::<u64>(),
        prop_oneof![Just(Currency::JPY), Just(Currency::EUR)],
    )
        .prop_map(|(m, c)| Amount::new(m, c))
}
fn text() -> impl Strategy<Value = String> {
    // Includes quotes, backslashes, control characters and non-ASCII text.
    "\\PC{0,24}"
}
fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}
fn tx() -> impl Strategy<Value = TxId> {
    any::<[u8; 16]>().prop_map(TxId)
}
fn order() -> impl Strategy<Value = OrderId> {
    any::<[u8; 16]>().prop_map(OrderId)
}
fn pos() -> impl Strategy<Value = Position> {
    (-90.0f64..=90.0, -180.0f64..=180.0, 0.0f64..1e6).prop_map(|(a, b, c)| Position::new(a, b, c))
}
fn jwk() -> impl Strategy<Value = qrcash_protocol::PublicJwk> {
    any::<[u8; 32]>().prop_map(|seed| PrivateKey::from_bytes(seed).public().to_jwk())
}
fn notes() -> impl Strategy<Value = Vec<NoteCount>> {
    proptest::collection::vec(
        (any::<u64>(), any::<u32>()).prop_map(|(denomination, count)| NoteCount {
            denomination,
            count,
        }),
        0..4,
    )
}
fn reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::Malformed),
        Just(RejectReason::CodeAlreadyUsed),
        (amount()).prop_map(|max| RejectReason::LimitExceeded {
            limit: LimitKind::Daily,
            max
        }),
        text().prop_map(|field| RejectReason::TransactionMismatch { field }),
        (any::<u64>(), any::<u64>()).prop_map(|(distance_m, allowed_m)| {
            RejectReason::TooFarFromAtm {
                distance_m,
                allowed_m,
            }
        }),
        any::<u64>().prop_map(|until| RejectReason::Restricted { until }),
    ]
}

fn phone_up() -> impl Strategy<Value = PhoneUp> {
    prop_oneof![
        (
            id(),
            text(),
            id(),
            text(),
            jwk(),
            proptest::option::of(pos())
        )
            .prop_map(|(account, pw, device_id, name, public_key, position)| {
                PhoneUp::Login(Login {
                    account,
                    password: sealed(pw),
                    device: DeviceInfo {
                        device_id,
                        name,
                        public_key,
                    },
                    position,
                })
            }),
        (id(), amount()).prop_map(|(account, amount)| PhoneUp::RegisterWithdrawal(
            RegisterWithdrawal { account, amount }
        )),
        (
            tx(),
            id(),
            amount(),
            text(),
            proptest::option::of(pos()),
            proptest::option::of(text()),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(
                |(tx_id, atm_id, amount, challenge, position, pin, bio, at)| {
                    PhoneUp::ConfirmWithdrawal(ConfirmWithdrawal {
                        tx_id,
                        atm_id,
                        amount,
                        challenge,
                        position,
                        identity: IdentityEvidence {
                            pin: pin.map(sealed),
                            biometric: bio.then_some(BiometricAttestation {
                                method: BiometricMethod::Fingerprint,
                                verified_at: at,
                            }),
                        },
                    })
                }
            ),
        (tx(), any::<bool>()).prop_map(|(tx_id, not_me)| PhoneUp::DeclineWithdrawal(
            DeclineWithdrawal { tx_id, not_me }
        )),
        (text(), id(), amount(), proptest::option::of(text())).prop_map(
            |(idempotency_key, to_account, amount, memo)| PhoneUp::Transfer(Transfer {
                idempotency_key,
                to_account,
                amount,
                memo
            })
        ),
        (text(), id(), amount()).prop_map(|(idempotency_key, merchant_id, amount)| {
            PhoneUp::Payment(Payment {
                idempotency_key,
                merchant_id,
                amount,
            })
        }),
        (text(), id(), amount()).prop_map(|(idempotency_key, bank_account, amount)| {
            PhoneUp::BankWithdrawal(BankWithdrawal {
                idempotency_key,
                bank_account,
                amount,
            })
        }),
        (text(), amount()).prop_map(|(idempotency_key, amount)| PhoneUp::TopUp(TopUp {
            from: "bank-1".into(),
            idempotency_key,
            amount
        })),
        (id(), any::<u32>()).prop_map(|(account, history)| PhoneUp::BalanceQuery(BalanceQuery {
            account,
            history
        })),
        (text(), any::<bool>()).prop_map(|(alert_id, not_me)| PhoneUp::AnswerNewDeviceAlert(
            AnswerNewDeviceAlert { alert_id, not_me }
        )),
    ]
}

fn phone_push() -> impl Strategy<Value = PhonePush> {
    prop_oneof![
        (
            id(),
            id(),
            any::<bool>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(account, device_id, new_device, until)| PhonePush::LoginResult(LoginResult {
                    account,
                    device_id,
                    new_device,
                    restriction: until.map(|u| RestrictionInfo {
                        until: Some(u),
                        reason: RestrictionReason::NewDevice
                    }),
                })
            ),
        (tx(), amount(), text(), any::<u64>(), text(), text()).prop_map(
            |(tx_id, amount, token, expires_at, qr_png, qr_svg)| PhonePush::CodeIssued(
                CodeIssued {
                    tx_id,
                    amount,
                    token,
                    expires_at,
                    qr_png,
                    qr_svg
                }
            )
        ),
        (
            tx(),
            amount(),
            id(),
            text(),
            pos(),
            any::<u64>(),
            text(),
            text()
        )
            .prop_map(
                |(tx_id, amount, atm_id, name, position, t, challenge, warning)| {
                    PhonePush::ConfirmRequest(ConfirmRequest {
                        tx_id,
                        amount,
                        atm: AtmInfo {
                            atm_id,
                            name: name.clone(),
                            address: name,
                            position,
                        },
                        presented_at: t,
                        confirm_by: t.saturating_add(120),
                        challenge,
                        warnings: vec![FraudWarning {
                            code: "general".into(),
                            lang: "ja".into(),
                            text: warning,
                        }],
                        auth: AuthRequired {
                            pin: true,
                            biometric: false,
                            location: true,
                        },
                    })
                }
            ),
        (text(), amount(), amount(), any::<u64>()).prop_map(|(reference, a, b, at)| {
            PhonePush::Receipt(Receipt {
                reference,
                kind: ReceiptKind::Withdrawal,
                requested: a,
                settled: b,
                status: ReceiptStatus::InDoubt,
                balance: a,
                at,
            })
        }),
        (
            text(),
            id(),
            id(),
            text(),
            proptest::option::of(pos()),
            any::<u64>()
        )
            .prop_map(
                |(alert_id, account, device_id, device_name, position, at)| {
                    PhonePush::NewDeviceAlert(NewDeviceAlert {
                        alert_id,
                        account,
                        device_id,
                        device_name,
                        position,
                        at,
                        restricted_until: Some(at),
                    })
                }
            ),
        (id(), amount(), amount(), text(), any::<u64>()).prop_map(
            |(account, available, held, description, at)| PhonePush::Balance(Balance {
                account,
                available,
                held,
                history: vec![HistoryEntry {
                    at,
                    direction: EntryDirection::Credit,
                    amount: held,
                    description
                }]
            })
        ),
        (reason(), text())
            .prop_map(|(reason, message)| PhonePush::Rejected(Rejected { reason, message })),
    ]
}

fn atm_up() -> impl Strategy<Value = AtmUp> {
    prop_oneof![
        text().prop_map(|token| AtmUp::CodePresented(CodePresented { token })),
        (
            order(),
            tx(),
            any::<[u32; 4]>(),
            amount(),
            proptest::option::of(text())
        )
            .prop_map(|(order_id, tx_id, c, dispensed, device_error)| {
                AtmUp::DispenseReport(DispenseReport {
                    order_id,
                    tx_id,
                    notes: vec![NoteOutcome {
                        denomination: 10_000,
                        requested: c[0],
                        picked: c[1],
                        exited: c[2],
                        rejected: c[3],
                    }],
                    dispensed,
                    outcome: DispenseOutcome::Partial,
                    device_error,
                    max_dispensed: Some(dispensed),
                    source: Some(qrcash_protocol::messages::CountSource::LateAnswer),
                })
            }),
        (order(), tx(), text()).prop_map(|(order_id, tx_id, reason)| AtmUp::OrderRefused(
            OrderRefused {
                order_id,
                tx_id,
                reason
            }
        )),
        tx().prop_map(|tx_id| AtmUp::SessionCancelled(SessionCancelled {
            tx_id,
            reason: CancelReason::Timeout
        })),
        (any::<u32>(), text()).prop_map(|(outbox, software)| AtmUp::Heartbeat(Heartbeat {
            state: AtmState::Idle,
            cassettes: vec![CassetteStatus {
                denomination: 1000,
                notes: outbox,
                state: CassetteState::Low
            }],
            outbox,
            software
        })),
    ]
}

fn atm_down() -> impl Strategy<Value = AtmDown> {
    prop_oneof![
        (tx(), amount(), any::<u64>()).prop_map(|(tx_id, amount, confirm_by)| {
            AtmDown::AwaitConfirmation(AwaitConfirmation {
                tx_id,
                amount,
                confirm_by,
            })
        }),
        (order(), tx(), id(), amount(), notes(), any::<u64>()).prop_map(
            |(order_id, tx_id, atm_id, amount, notes, expires_at)| AtmDown::DispenseOrder(
                DispenseOrder {
                    order_id,
                    tx_id,
                    atm_id,
                    amount,
                    notes,
                    expires_at
                }
            )
        ),
        tx().prop_map(|tx_id| AtmDown::Abort(Abort {
            tx_id,
            reason: AbortReason::NotMe
        })),
        proptest::collection::vec(text(), 0..5).prop_map(|ids| AtmDown::Ack(Ack { ids })),
        (reason(), text())
            .prop_map(|(reason, message)| AtmDown::Rejected(Rejected { reason, message })),
    ]
}

fn round_trip<B: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    signer: &Signer,
    msg: B,
    seq: u64,
) -> Result<(), TestCaseError> {
    let claims = Claims::new(
        signer.id(),
        "hub",
        seq,
        1_800_000_000,
        Duration::from_secs(60),
        msg,
    );
    let wire = signer.seal(&claims);
    let sealed = Sealed::parse(wire.as_bytes(), MAX_DOWNLINK_BYTES).unwrap();
    let opened: Claims<B> = sealed.open(signer.key().public()).unwrap();
    prop_assert_eq!(&opened, &claims);
    // Changing any single byte breaks it (parse, verify or decode fails).
    let bytes = wire.as_bytes();
    let i = (seq as usize) % bytes.len();
    let mut bad = bytes.to_vec();
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    let accepted = Sealed::parse(&bad, MAX_DOWNLINK_BYTES)
        .ok()
        .and_then(|s| s.open::<B>(signer.key().public()).ok());
    prop_assert!(accepted.is_none(), "mutated byte {} accepted", i);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn phone_up_round_trips(m in phone_up(), seq in 1u64..u64::MAX, seed in any::<[u8; 32]>()) {
        round_trip(&Signer::new("dev-1", PrivateKey::from_bytes(seed)), m, seq)?;
    }

    #[test]
    fn phone_push_round_trips(m in phone_push(), seq in 1u64..u64::MAX, seed in any::<[u8; 32]>()) {
        round_trip(&Signer::new("hub", PrivateKey::from_bytes(seed)), m, seq)?;
    }

    #[test]
    fn atm_up_round_trips(m in atm_up(), seq in 1u64..u64::MAX, seed in any::<[u8; 32]>()) {
        round_trip(&Signer::new("atm-1", PrivateKey::from_bytes(seed)), m, seq)?;
    }

    #[test]
    fn atm_down_round_trips(m in atm_down(), seq in 1u64..u64::MAX, seed in any::<[u8; 32]>()) {
        round_trip(&Signer::new("hub", PrivateKey::from_bytes(seed)), m, seq)?;
    }

    /// Arbitrary bytes never panic the parser and are never accepted.
    #[test]
    fn garbage_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let key = PrivateKey::from_bytes([9; 32]);
        if let Ok(s) = Sealed::parse(&bytes, MAX_DOWNLINK_BYTES) {
            prop_assert!(s.open::<AtmUp>(key.public()).is_err());
        }
    }
}
