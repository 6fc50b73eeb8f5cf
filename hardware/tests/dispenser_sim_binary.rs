//! The `qrcash-dispenser-sim` binary: pty link, state file across a kill (power loss) and
//! restart, faults file, driven by the real driver.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qrcash_hardware::dispenser::lcdm::{LcdmConfig, LcdmDispenser, LcdmModel};
use qrcash_hardware::dispenser::sim::{Mechanism, state_file};
use qrcash_hardware::dispenser::{
    DeviceError, DispenseRequest, DispenseResult, Dispenser, StopReason,
};

/// The simulator process, killed on drop.
struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(link: &Path, extra: &[&str]) -> SimProcess {
    let _ = std::fs::remove_file(link);
    let child = Command::new(env!("CARGO_BIN_EXE_qrcash-dispenser-sim"))
        .arg("--pty-link")
        .arg(link)
        .args(["--note-interval-ms", "2"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("simulator binary starts");
    let process = SimProcess(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(link).is_err() {
        assert!(
            Instant::now() < deadline,
            "the simulator never created {link:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    process
}

fn driver(link: &Path, journal: &Path) -> LcdmDispenser {
    LcdmDispenser::open(LcdmConfig {
        ack_timeout_ms: 100,
        dispense_timeout_ms: 1_000,
        batch_pause_ms: 5,
        journal: Some(journal.to_path_buf()),
        ..LcdmConfig::new(link.to_string_lossy(), LcdmModel::Lcdm2000)
    })
    .expect("driver opens the link")
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("lcdm"),
        dir.join("sim-state.json"),
        dir.join("journal.json"),
    )
}

#[test]
fn kill_during_power_loss_then_restart_from_state_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (link, state, journal) = paths(dir.path());
    let state_arg = state.to_str().unwrap();
    let common = [
        "--cassettes",
        "2",
        "--notes",
        "100,80",
        "--state",
        state_arg,
    ];

    let sim = start(&link, &[&common[..], &["--power-loss-after", "3"]].concat());
    let mut d = driver(&link, &journal);
    assert!(d.status().unwrap().is_ready());
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(5, 5))
        .unwrap();
    assert!(o.is_in_doubt(), "{o:?}");
    drop(d);
    drop(sim);

    let saved: Mechanism = state_file::load(&state).unwrap().unwrap();
    assert_eq!((saved.delivered(), saved.in_path), (3, 1));
    assert_eq!(
        saved.cassettes.iter().map(|c| c.notes).collect::<Vec<_>>(),
        vec![96, 80]
    );

    let _sim = start(&link, &common);
    let mut d = driver(&link, &journal);
    let r = d.recover_last().unwrap();
    assert_eq!(r.last, Some(o));
    assert!(
        r.status_before.notes_in_path && r.purged && r.machine_clear(),
        "{r:?}"
    );
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(2, 3))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    let saved = state_file::load(&state).unwrap().unwrap();
    assert_eq!(
        (saved.delivered(), saved.in_path, saved.reject_tray),
        (8, 0, 1)
    );
}

#[test]
fn faults_file_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (link, _, journal) = paths(dir.path());
    let faults = dir.path().join("faults.json");
    std::fs::write(&faults, r#"{"jam_after": 1, "line_noise": true}"#).unwrap();
    let _sim = start(
        &link,
        &["--cassettes", "2", "--faults", faults.to_str().unwrap()],
    );
    let mut d = driver(&link, &journal);
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(4, 0))
        .unwrap();
    assert_eq!(
        o.result,
        DispenseResult::Stopped {
            reason: StopReason::Device {
                error: DeviceError::JamAtChk
            }
        }
    );
    assert_eq!(o.delivered_total(), 1);
}

#[test]
fn refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("not-a-link");
    std::fs::write(&link, "keep me").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_qrcash-dispenser-sim"))
        .arg("--pty-link")
        .arg(&link)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "keep me");
}
