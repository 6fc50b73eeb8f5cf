//! The `qrcash-phone` binary's own behaviour: paths stored as the user meant them, one command
//! per device at a time, and a confirmation that honours `--timeout` and says what it knows
//! when no receipt comes.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use qrcash_protocol::messages::{AtmInfo, AuthRequired, ConfirmRequest};
use qrcash_protocol::{Amount, Currency, Position, PrivateKey, TxId};
use qrcash_testsupport::broker::Mosquitto;

fn phone(cwd: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qrcash-phone"))
        .current_dir(cwd)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("qrcash-phone binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `init` in `cwd` with a hub key and TLS file names relative to it.
fn init(cwd: &Path, dir: &Path, broker: &str) -> Output {
    let hub = PrivateKey::generate();
    std::fs::write(
        cwd.join("hub.pub.jwk"),
        serde_json::to_string(&hub.public().to_jwk()).unwrap(),
    )
    .unwrap();
    phone(
        cwd,
        dir,
        &[
            "init",
            "--device-id",
            "dev-1",
            "--hub-key",
            "hub.pub.jwk",
            "--broker",
            broker,
            "--ca-file",
            "tls/ca.pem",
            "--cert-file",
            "tls/dev-1.pem",
            "--key-file",
            "tls/dev-1.key",
        ],
    )
}

#[test]
fn init_stores_every_file_path_absolute() {
    let cwd = tempfile::tempdir().unwrap();
    let out = init(cwd.path(), Path::new("state"), "mqtts://127.0.0.1:8883");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(cwd.path().join("state/phone.toml")).unwrap();
    let cfg: toml::Value = toml::from_str(&text).unwrap();
    let abs = |v: &toml::Value| Path::new(v.as_str().unwrap()).to_path_buf();
    assert_eq!(abs(&cfg["hub_key"]), cwd.path().join("hub.pub.jwk"));
    for (key, file) in [
        ("ca_file", "tls/ca.pem"),
        ("cert_file", "tls/dev-1.pem"),
        ("key_file", "tls/dev-1.key"),
    ] {
        assert_eq!(abs(&cfg["broker"][key]), cwd.path().join(file), "{text}");
    }
}

#[test]
fn a_second_command_for_the_same_device_says_one_is_running() {
    let cwd = tempfile::tempdir().unwrap();
    let state = cwd.path().join("state");
    assert!(
        init(cwd.path(), &state, "mqtt://127.0.0.1:1")
            .status
            .success()
    );
    // Another command holds the state directory.
    let held = std::fs::OpenOptions::new()
        .write(true)
        .open(state.join(".lock"))
        .unwrap();
    held.lock().unwrap();
    let started = Instant::now();
    let out = phone(cwd.path(), &state, &["balance"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another qrcash-phone command is running"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not wait"
    );
    drop(held);
}

/// `confirm --timeout 2` with a hub that never answers: it gives up after about the time
/// asked (not 120 s), and says that the confirmation went out and what it could learn (here:
/// the hub does not answer a balance query either), instead of a bare timeout.
#[test]
fn confirm_honours_the_timeout_and_says_what_is_known() {
    let broker = Mosquitto::start();
    let cwd = tempfile::tempdir().unwrap();
    let state = cwd.path().join("state");
    let out = init(cwd.path(), &state, &broker.url());
    assert!(out.status.success(), "{}", stderr(&out));
    // Plain MQTT for this broker: drop the TLS files `init` recorded.
    let text = std::fs::read_to_string(state.join("phone.toml")).unwrap();
    let mut cfg: toml::Value = toml::from_str(&text).unwrap();
    let broker_cfg = cfg["broker"].as_table_mut().unwrap();
    for key in ["ca_file", "cert_file", "key_file"] {
        broker_cfg.remove(key);
    }
    std::fs::write(state.join("phone.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    std::fs::write(state.join("session.json"), r#"{"account":"hanako"}"#).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let request = ConfirmRequest {
        tx_id: TxId::random(),
        amount: Amount::new(12_000, Currency::JPY),
        atm: AtmInfo {
            atm_id: "atm-1".into(),
            name: "Shibuya 1".into(),
            address: "Tokyo".into(),
            position: Position::new(35.66, 139.70, 0.0),
        },
        presented_at: now,
        confirm_by: now + 120,
        challenge: "c".repeat(22),
        warnings: vec![],
        auth: AuthRequired {
            pin: true,
            biometric: false,
            location: false,
        },
    };
    std::fs::write(
        state.join("confirm-request.json"),
        serde_json::to_string(&request).unwrap(),
    )
    .unwrap();

    let started = Instant::now();
    let out = phone(
        cwd.path(),
        &state,
        &["confirm", "--pin", "1234", "--timeout", "2"],
    );
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no receipt for {} within 2s", request.tx_id)),
        "{err}"
    );
    assert!(err.contains("after the confirmation was sent"), "{err}");
    assert!(err.contains("an operator settles it later"), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // The confirmation is still pending locally: nothing was lost.
    assert!(state.join("confirm-request.json").exists());
}
