//! The README's main job, `cargo demo`, run as a newcomer would: it must exit 0 and show
//! every step of both rounds.

use std::process::Command;

#[test]
fn the_demo_runs_every_step_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qrcash-demo"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run qrcash-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "[12]",
        "simulator: 3 notes physically delivered",
        "Withdrawal Completed",
        "problems: 0",
        "code refused",
        "hub refused",
        "no cash, nothing held",
        "hub refused a transfer",
        "revoked, and the account's payments are frozen",
        "balance untouched",
        "every step happened",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // The files a person can look at afterwards.
    assert!(dir.path().join("withdrawal-qr.png").exists());
    assert!(dir.path().join("hub.sqlite").exists());
    // A non-empty folder is refused rather than mixed with an old run.
    let again = Command::new(env!("CARGO_BIN_EXE_qrcash-demo"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
}
