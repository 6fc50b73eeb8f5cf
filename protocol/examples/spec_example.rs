//! Prints the worked example of `docs/protocol.md` (signed with the RFC 8037 example key).
//! `cargo run -p qrcash-protocol --example spec_example`
use qrcash_protocol::messages::{PhoneUp, RegisterWithdrawal};
use qrcash_protocol::{Amount, Claims, Currency, PrivateKey, Signer, TxId, token::CodeToken};

fn main() {
    let d: [u8; 32] = qrcash_protocol::jws::unb64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
        .expect("base64")
        .try_into()
        .expect("32 bytes");
    let key = PrivateKey::from_bytes(d);
    let signer = Signer::new("dev-hanako-1", key.clone());
    let claims = Claims {
        iss: "dev-hanako-1".into(),
        aud: "hub".into(),
        iat: 1_800_000_000,
        exp: 1_800_000_060,
        jti: "8Qd3b1rXq2WcYl0mT5nH6A".into(),
        seq: 42,
        re: None,
        msg: PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: Amount::new(30_000, Currency::JPY),
        }),
    };
    println!("{}", serde_json::to_string(&claims).expect("json"));
    println!("{}", signer.seal(&claims));
    println!(
        "{}",
        serde_json::to_string(&key.public().to_jwk()).expect("json")
    );
    let tx: TxId = "3f6c2a9e8b7d4c1f0a5e6d7c8b9a0f1e".parse().expect("tx");
    println!("{}", CodeToken::issue(&key, tx, 1_800_000_600));
}
