//! `qrcash-agent run` as the packaged unit starts it: a configuration that does not load
//! exits with EX_CONFIG (78), which the unit does not restart (`RestartPreventExitStatus=78`),
//! instead of the general failure a restart might cure.

use std::process::Command;

#[test]
fn a_configuration_that_does_not_load_exits_with_ex_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    // The package's file before enrolment: no hub key yet.
    std::fs::write(
        &config,
        "atm_id = \"atm-1\"\nkey_file = \"/nonexistent/k\"\nhub_keys = []\ndatabase = \"/nonexistent/d\"\n[[cassettes]]\ndenomination = 1000\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qrcash-agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hub_keys"), "{err}");
    // A file that is not there at all: the same.
    let out = Command::new(env!("CARGO_BIN_EXE_qrcash-agent"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}
