//! `docs/protocol.md` cannot drift from the code: every JSON example in it parses with the
//! protocol types and serializes back to the same JSON, every message type has an example,
//! and the worked JWS and QR token examples verify.

use std::collections::BTreeSet;

use qrcash_protocol::messages::{AtmDown, AtmUp, PhonePush, PhoneUp};
use qrcash_protocol::token::CodeToken;
use qrcash_protocol::{Claims, PublicKey, Sealed, Signer, envelope};
use serde::Serialize;
use serde::de::DeserializeOwned;

const SPEC: &str = include_str!("../../docs/protocol.md");

/// Fenced blocks as (info string, body).
fn blocks() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in SPEC.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some("")) => out.extend(current.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(
        current.is_none(),
        "unterminated code block in docs/protocol.md"
    );
    out
}

fn block(info: &str) -> String {
    let found: Vec<_> = blocks().into_iter().filter(|(i, _)| i == info).collect();
    assert_eq!(found.len(), 1, "expected exactly one `{info}` block");
    found[0].1.trim().to_owned()
}

/// Parses `json` as `T` and checks it serializes back to the same JSON.
fn check_example<T: Serialize + DeserializeOwned>(json: &str) {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("example is not JSON ({e}): {json}"));
    let parsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("example does not parse ({e}): {json}"));
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(back, value, "example does not round-trip");
}

// The name functions are exhaustive on purpose: a new message type fails to compile here
// until it is listed, and then fails the test until docs/protocol.md has an example of it.

fn name_of_phone_up(m: &PhoneUp) -> &'static str {
    match m {
        PhoneUp::Login(_) => "Login",
        PhoneUp::RegisterWithdrawal(_) => "RegisterWithdrawal",
        PhoneUp::ConfirmWithdrawal(_) => "ConfirmWithdrawal",
        PhoneUp::DeclineWithdrawal(_) => "DeclineWithdrawal",
        PhoneUp::Transfer(_) => "Transfer",
        PhoneUp::Payment(_) => "Payment",
        PhoneUp::BankWithdrawal(_) => "BankWithdrawal",
        PhoneUp::TopUp(_) => "TopUp",
        PhoneUp::BalanceQuery(_) => "BalanceQuery",
        PhoneUp::AnswerNewDeviceAlert(_) => "AnswerNewDeviceAlert",
        PhoneUp::ChangePassword(_) => "ChangePassword",
        PhoneUp::SignOutOtherDevices(_) => "SignOutOtherDevices",
    }
}

fn name_of_phone_push(m: &PhonePush) -> &'static str {
    match m {
        PhonePush::LoginResult(_) => "LoginResult",
        PhonePush::CodeIssued(_) => "CodeIssued",
        PhonePush::ConfirmRequest(_) => "ConfirmRequest",
        PhonePush::Receipt(_) => "Receipt",
        PhonePush::NewDeviceAlert(_) => "NewDeviceAlert",
        PhonePush::AlertAnswered(_) => "AlertAnswered",
        PhonePush::SessionsEnded(_) => "SessionsEnded",
        PhonePush::Balance(_) => "Balance",
        PhonePush::Rejected(_) => "Rejected",
    }
}

fn name_of_atm_up(m: &AtmUp) -> &'static str {
    match m {
        AtmUp::CodePresented(_) => "CodePresented",
        AtmUp::DispenseReport(_) => "DispenseReport",
        AtmUp::OrderRefused(_) => "OrderRefused",
        AtmUp::SessionCancelled(_) => "SessionCancelled",
        AtmUp::Heartbeat(_) => "Heartbeat",
        AtmUp::Enrol(_) => "Enrol",
        AtmUp::RotateKey(_) => "RotateKey",
    }
}

fn name_of_atm_down(m: &AtmDown) -> &'static str {
    match m {
        AtmDown::AwaitConfirmation(_) => "AwaitConfirmation",
        AtmDown::DispenseOrder(_) => "DispenseOrder",
        AtmDown::Abort(_) => "Abort",
        AtmDown::Ack(_) => "Ack",
        AtmDown::Rejected(_) => "Rejected",
        AtmDown::Enrolled(_) => "Enrolled",
    }
}

fn assert_all_documented<T: DeserializeOwned>(
    info: &str,
    name: fn(&T) -> &'static str,
    expected: &[&str],
) {
    let seen: BTreeSet<&str> = blocks()
        .into_iter()
        .filter(|(i, _)| *i == format!("json {info}"))
        .map(|(_, body)| name(&serde_json::from_str::<T>(&body).unwrap()))
        .collect();
    let expected: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(seen, expected, "{info}: message types without an example");
}

#[test]
fn every_json_example_parses_and_round_trips() {
    let mut count = 0;
    for (info, body) in blocks() {
        match info.as_str() {
            "json PhoneUp" => check_example::<PhoneUp>(&body),
            "json PhonePush" => check_example::<PhonePush>(&body),
            "json AtmUp" => check_example::<AtmUp>(&body),
            "json AtmDown" => check_example::<AtmDown>(&body),
            _ => continue,
        }
        count += 1;
    }
    assert!(count >= 27, "only {count} message examples found");
}

#[test]
fn every_message_type_has_an_example() {
    assert_all_documented::<PhoneUp>(
        "PhoneUp",
        name_of_phone_up,
        &[
            "Login",
            "RegisterWithdrawal",
            "ConfirmWithdrawal",
            "DeclineWithdrawal",
            "Transfer",
            "Payment",
            "BankWithdrawal",
            "TopUp",
            "BalanceQuery",
            "AnswerNewDeviceAlert",
            "ChangePassword",
            "SignOutOtherDevices",
        ],
    );
    assert_all_documented::<PhonePush>(
        "PhonePush",
        name_of_phone_push,
        &[
            "LoginResult",
            "CodeIssued",
            "ConfirmRequest",
            "Receipt",
            "NewDeviceAlert",
            "AlertAnswered",
            "SessionsEnded",
            "Balance",
            "Rejected",
        ],
    );
    assert_all_documented::<AtmUp>(
        "AtmUp",
        name_of_atm_up,
        &[
            "CodePresented",
            "DispenseReport",
            "OrderRefused",
            "SessionCancelled",
            "Heartbeat",
            "Enrol",
            "RotateKey",
        ],
    );
    assert_all_documented::<AtmDown>(
        "AtmDown",
        name_of_atm_down,
        &[
            "AwaitConfirmation",
            "DispenseOrder",
            "Abort",
            "Ack",
            "Rejected",
            "Enrolled",
        ],
    );
}

fn rfc_key() -> qrcash_protocol::PrivateKey {
    let d: [u8; 32] = qrcash_protocol::jws::unb64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
        .unwrap()
        .try_into()
        .unwrap();
    qrcash_protocol::PrivateKey::from_bytes(d)
}

#[test]
fn the_worked_envelope_example_verifies_and_is_reproducible() {
    let jwk = PublicKey::from_jwk_json(&block("json jwk")).unwrap();
    let claims: Claims<PhoneUp> = serde_json::from_str(&block("json claims")).unwrap();
    let jws = block("text jws");
    let opened =
        envelope::open::<PhoneUp>(jws.as_bytes(), qrcash_protocol::MAX_UPLINK_BYTES, |kid| {
            (kid == jwk.kid()).then(|| jwk.clone())
        })
        .unwrap();
    assert_eq!(opened.claims, claims);
    // Deterministic signatures: the same key and claims give the same bytes.
    let signer = Signer::new("dev-hanako-1", rfc_key());
    assert_eq!(signer.seal(&claims), jws);
    assert_eq!(
        Sealed::parse(jws.as_bytes(), 16384).unwrap().kid().as_str(),
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    );
}

#[test]
fn the_token_example_verifies() {
    let token = block("text token");
    let t = CodeToken::verify(&token, &[rfc_key().public().clone()], 1_800_000_000).unwrap();
    assert_eq!(t.tx_id.to_string(), "3f6c2a9e8b7d4c1f0a5e6d7c8b9a0f1e");
    assert_eq!(t.expires_at, 1_800_000_600);
    assert_eq!(token.len(), qrcash_protocol::token::TEXT_LEN);
}

#[test]
fn the_rejection_table_names_only_real_reasons() {
    let table: Vec<&str> = SPEC
        .split("## 7. Rejection reasons")
        .nth(1)
        .unwrap()
        .split("## 8.")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    // One row per RejectReason variant.
    assert_eq!(table.len(), 37, "{table:?}");
    for code in &table {
        let fields = match *code {
            "limit_exceeded" => r#","limit":"daily","max":{"minor":1,"currency":"JPY"}"#,
            "wrong_state" => r#","state":"x""#,
            "transaction_mismatch" => r#","field":"x""#,
            "too_far_from_atm" => r#","distance_m":1,"allowed_m":1"#,
            "location_inaccurate" => r#","accuracy_m":1,"max_m":1"#,
            "pin_wrong" => r#","attempts_left":1"#,
            "pin_locked" | "restricted" | "login_throttled" => r#","until":1"#,
            _ => "",
        };
        let json = format!(r#"{{"code":"{code}"{fields}}}"#);
        serde_json::from_str::<qrcash_protocol::RejectReason>(&json)
            .unwrap_or_else(|e| panic!("table code {code} is not a RejectReason: {e}"));
    }
}

/// Every sealed secret in the examples is a real one (§6.5): sealed to the RFC 8037 key as
/// hub key, for `dev-hanako-1` signing with that same key, and its field.
#[test]
fn the_sealed_secrets_in_the_examples_open() {
    use qrcash_protocol::SecretField;
    let hub = rfc_key();
    let kid = hub.kid().as_str().to_owned();
    let open = |s: &qrcash_protocol::SealedSecret, field| {
        s.open(&hub, field, "dev-hanako-1", &kid)
            .unwrap_or_else(|e| panic!("{field:?}: {e}"))
            .expose()
            .to_owned()
    };
    let mut seen = 0;
    for (info, body) in blocks() {
        if info != "json PhoneUp" {
            continue;
        }
        match serde_json::from_str::<PhoneUp>(&body).unwrap() {
            PhoneUp::Login(l) => {
                assert_eq!(
                    open(&l.password, SecretField::Password),
                    "correct horse battery"
                );
                seen += 1;
            }
            PhoneUp::ConfirmWithdrawal(c) => {
                let pin = c.identity.pin.expect("the example has a PIN");
                assert_eq!(open(&pin, SecretField::Pin), "4321");
                seen += 1;
            }
            PhoneUp::ChangePassword(c) => {
                let current = open(&c.current_password, SecretField::CurrentPassword);
                assert_eq!(current, "correct horse battery");
                let new = open(&c.new_password, SecretField::NewPassword);
                assert_eq!(new, "staple battery horse");
                seen += 1;
            }
            _ => {}
        }
    }
    assert_eq!(seen, 3);
    let vector: qrcash_protocol::SealedSecret =
        serde_json::from_str(&block("json sealed-secret")).unwrap();
    assert_eq!(
        open(&vector, SecretField::Password),
        "correct horse battery"
    );
}
