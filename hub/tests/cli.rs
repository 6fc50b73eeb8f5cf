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
    // The same commands on PostgreSQL when the suite runs there.
    let postgres = std::env::var("QRCASH_TEST_BACKEND").as_deref() == Ok("postgres");
    if postgres {
        let url = qrcash_hub::store::Store::test_database().unwrap();
        let config = std::fs::read_to_string(d.join("hub.toml")).unwrap();
        let config = config.replace(
            "[storage]\n",
            &format!("[storage]\ndatabase_url = {url:?}\n"),
        );
        std::fs::write(d.join("hub.toml"), config).unwrap();
    }
    let migrated = ok(d, &["migrate"]);
    let version = if postgres { 3 } else { 8 };
    assert!(
        migrated.ends_with(&format!("schema version {version}\n")),
        "{migrated}"
    );
    assert_eq!(
        ok(d, &["migrate"]),
        migrated,
        "migrating again changes nothing"
    );

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
    let config = qrcash_hub::config::HubConfig::load(&d.join("hub.toml")).unwrap();
    let store = config.open_store().unwrap();
    store
        .db()
        .test_execute(
            "UPDATE ledger_accounts SET balance = balance + 1 WHERE id = 'cust:hanako:available'",
        )
        .unwrap();
    drop(store);
    let out = hub(d, &["ledger", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PROBLEM"));
}

/// The package's `postinst` runs `init --keep-config` on every install and upgrade: it makes
/// the key and the database the shipped configuration names, never rewrites the
/// configuration, and keeps the key it made the first time.
#[test]
fn init_keep_config_makes_what_the_configuration_names_and_keeps_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        !hub(d, &["init", "--keep-config"]).status.success(),
        "no configuration to keep"
    );
    let state = d.join("state");
    let config = format!(
        "# shipped\nhub_id = \"hub-x\"\ndatabase = \"{0}/hub.sqlite\"\nkey_file = \"{0}/hub-key.jwk\"\n",
        state.display()
    );
    std::fs::write(d.join("hub.toml"), &config).unwrap();
    let out = ok(d, &["init", "--keep-config"]);
    assert!(out.contains("hub key"), "{out}");
    assert_eq!(std::fs::read_to_string(d.join("hub.toml")).unwrap(), config);
    let key = std::fs::read(state.join("hub-key.jwk")).unwrap();
    assert!(state.join("hub.sqlite").exists());
    // Again (an upgrade): same key, the configuration still as shipped.
    ok(d, &["init", "--keep-config", "--existing-key"]);
    assert_eq!(std::fs::read(state.join("hub-key.jwk")).unwrap(), key);
    assert_eq!(std::fs::read_to_string(d.join("hub.toml")).unwrap(), config);
    ok(d, &["ledger", "check"]);
    assert!(
        !hub(d, &["init", "--keep-config", "--force"])
            .status
            .success(),
        "--force and --keep-config contradict each other"
    );
    // An upgrade that finds no key fails, and makes none.
    std::fs::remove_file(state.join("hub-key.jwk")).unwrap();
    let out = hub(d, &["init", "--keep-config", "--existing-key"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!state.join("hub-key.jwk").exists(), "no new key");
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

/// An in-doubt withdrawal made through the real handler on the CLI's own database, then
/// inspected, refused, resolved and corrected with the real commands.
#[test]
fn tx_show_resolve_and_correction_by_the_evidence() {
    use qrcash_hub::testkit::{Rig, TestDevice, report_message, test_config};
    use qrcash_protocol::messages::{AtmUp, CountSource, DispenseOutcome};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["init"]);
    let store = qrcash_hub::store::Store::open(&d.join("hub.sqlite")).unwrap();
    let mut rig = Rig::new(store, test_config(), 9);
    rig.account("hanako", 100_000);
    let mut atm = rig.atm("atm-1");
    let mut phone = TestDevice::new("phone-1");
    rig.login(&mut phone, "hanako");
    let code = rig.register(&mut phone, "hanako", 19_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    // The agent restarted before the command reached the dispenser.
    let mut msg = report_message(&order, DispenseOutcome::InDoubt, 0);
    if let AtmUp::DispenseReport(r) = &mut msg {
        r.max_dispensed = Some(order.amount);
        r.source = Some(CountSource::NoRecord);
    }
    rig.atm_send(&mut atm, msg);
    let tx = code.tx_id.to_string();

    let show = ok(d, &["tx", "show", &tx]);
    for want in [
        "phase        in_doubt  FLAGGED",
        "planned      1 × 10000 + 1 × 5000 + 4 × 1000",
        "counted      none",
        "bounds       0 ..= 19000 left the machine",
        "no device record of this order",
    ] {
        assert!(show.contains(want), "{want:?} missing from\n{show}");
    }

    // 500 yen cannot be paid in these notes; an operator and a reason are required.
    let out = hub(
        d,
        &[
            "tx",
            "resolve",
            &tx,
            "--dispensed",
            "500",
            "--operator",
            "ops-1",
            "--reason",
            "counted",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be paid in the order's notes"), "{err}");
    assert!(
        !hub(d, &["tx", "resolve", &tx, "--dispensed", "0"])
            .status
            .success()
    );
    let out = ok(
        d,
        &[
            "tx",
            "resolve",
            &tx,
            "--dispensed",
            "0",
            "--operator",
            "ops-1",
            "--reason",
            "cassettes counted: nothing missing",
        ],
    );
    assert!(out.contains("resolved: failed"), "{out}");
    assert!(ok(d, &["ledger", "check"]).contains("ledger OK"));

    // The ATM's journal upload later proves all 19,000 yen left: a correction is proposed,
    // and the books are known to be wrong until an operator decides.
    rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 19_000);
    let check = hub(d, &["ledger", "check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("CORRECTION WAITING"));
    let list = ok(d, &["tx", "correction", "list"]);
    assert!(list.contains("settled 0 -> 19000"), "{list}");
    let id = list.split_whitespace().next().unwrap().to_owned();
    let out = ok(
        d,
        &[
            "tx",
            "correction",
            "approve",
            &id,
            "--operator",
            "ops-2",
            "--reason",
            "journal checked",
        ],
    );
    assert!(out.contains("dispensed"), "{out}");
    assert!(ok(d, &["ledger", "check"]).contains("ledger OK"));
    let show = ok(d, &["tx", "show", &tx]);
    assert!(show.contains("resolution   0 by ops-1"), "{show}");
    assert!(show.contains("Approved: 0 -> 19000"), "{show}");
    assert_eq!(
        ok(d, &["tx", "correction", "list"]),
        "no corrections waiting\n"
    );
}

/// `atm enrol-code`: a code for a new ATM needs its place; the printed code and the PNG's QR
/// code (decoded with rqrr, as the agent's scanner reads it) carry the same code; an
/// enrolled ATM gets one without a place; a reserved id none.
#[test]
fn enrol_code_prints_the_code_and_a_qr_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["init"]);
    let out = hub(d, &["atm", "enrol-code", "atm-9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not enrolled yet"), "{err}");
    let png = d.join("atm-9.png");
    let out = ok(
        d,
        &[
            "atm",
            "enrol-code",
            "atm-9",
            "--name",
            "Shibuya 9",
            "--address",
            "Shibuya",
            "--lat",
            "35.6595",
            "--lon",
            "139.7005",
            "--denominations",
            "10000,1000",
            "--valid-hours",
            "2",
            "--png",
            png.to_str().unwrap(),
        ],
    );
    let printed = out
        .lines()
        .find_map(|l| l.strip_prefix("enrolment code for ATM atm-9: "))
        .unwrap_or_else(|| panic!("{out}"));
    let code = qrcash_protocol::enrol::EnrolmentCode::parse(printed).unwrap();
    assert!(out.contains("valid for 2 h"), "{out}");
    let img = image::open(&png).unwrap().to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, text) = grids[0].decode().unwrap();
    assert_eq!(
        qrcash_protocol::enrol::parse_qr(&text),
        Some(("atm-9".to_owned(), code))
    );
    // The hub kept a proof key, not the code.
    let needle = printed.replace('-', "");
    for file in ["hub.sqlite", "hub.sqlite-wal"] {
        let bytes = std::fs::read(d.join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{file}"
        );
    }
    assert!(!hub(d, &["atm", "enrol-code", "hub"]).status.success());
    assert!(
        !hub(d, &["atm", "enrol-code", "atm-9", "--valid-hours", "0"])
            .status
            .success()
    );
}
