//! The `qrcash-hub` command line, run as a real process against a fresh hub directory.

use std::path::Path;
use std::process::{Command, Output};

fn hub(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qrcash-hub"))
        .arg("--config")
        .arg(dir.join("hub.toml"))
        .args(args)
        .env("QRCASH_PASSWORD", "correct horse battery")
        .env("QRCASH_PIN", "4321")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run qrcash-hub")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = hub(dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn init_account_atm_ledger_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(d, &["init"]);
    assert!(out.contains("hub key"), "{out}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.join("hub-key.jwk"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // init refuses to overwrite.
    assert!(!hub(d, &["init"]).status.success());

    ok(d, &["account", "create", "hanako", "--opening", "100000"]);
    let show = ok(d, &["account", "show", "hanako"]);
    assert!(show.contains("available 100000"), "{show}");
    assert!(!hub(d, &["account", "create", "hanako"]).status.success());

    let atm_key = qrcash_protocol::PrivateKey::generate();
    let jwk = serde_json::to_string(&atm_key.public().to_jwk()).unwrap();
    std::fs::write(d.join("atm.jwk"), jwk).unwrap();
    let key_file = d.join("atm.jwk");
    let out = ok(
        d,
        &[
            "atm",
            "enroll",
            "atm-1",
            "--key-file",
            key_file.to_str().unwrap(),
            "--name",
            "Shibuya",
            "--address",
            "2-24-1 Shibuya",
            "--lat",
            "35.6595",
            "--lon",
            "139.7005",
        ],
    );
    assert!(out.contains(atm_key.kid().as_str()), "{out}");
    ok(
        d,
        &[
            "merchant", "add", "cafe", "--name", "Cafe", "--lat", "35.6", "--lon", "139.7",
        ],
    );
    ok(
        d,
        &[
            "account", "bank-add", "hanako", "--id", "bank-1", "--bank", "Mizuho", "--number",
            "123", "--holder", "HANAKO",
        ],
    );
    let check = ok(d, &["ledger", "check"]);
    assert!(check.contains("ledger OK"), "{check}");
    let audit = ok(d, &["audit", "tail", "-n", "10"]);
    for cmd in [
        "account create",
        "atm enroll",
        "merchant add",
        "account bank-add",
    ] {
        assert!(audit.contains(cmd), "{cmd} missing from\n{audit}");
    }
    assert!(
        !audit.contains("correct horse"),
        "a secret reached the audit log"
    );
    assert_eq!(ok(d, &["tx", "list"]), "");
    ok(d, &["device", "list"]);
    ok(d, &["restriction", "list"]);

    // A tampered balance makes `ledger check` fail with status 1.
    let db = rusqlite::Connection::open(d.join("hub.sqlite")).unwrap();
    db.execute(
        "UPDATE ledger_accounts SET balance = balance + 1 WHERE id = 'cust:hanako:available'",
        [],
    )
    .unwrap();
    let out = hub(d, &["ledger", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PROBLEM"));
}

#[test]
fn errors_are_one_readable_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = hub(dir.path(), &["ledger", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qrcash-hub init"), "{err}");
    std::fs::write(
        dir.path().join("hub.toml"),
        "[network]\ndenominations = []\n",
    )
    .unwrap();
    let out = hub(dir.path(), &["ledger", "check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("network.denominations"), "{err}");
}
