//! `qrcash-agent doctor` against a real board set-up: the binary, a private Mosquitto, the
//! LCDM simulator on a pty, a folder camera and a stand-in hub that answers heartbeats.
//! A sound board is READY with every line explained; each fault a technician meets (a
//! world-readable key, a writable hub key, a wrong serial port, a dead broker, a silent
//! hub, a skewed clock, a full disk) is named on its own line and fails the run; with the
//! agent running, the camera and the dispenser are left to it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use qrcash_agent::store::Store;
use qrcash_protocol::{Clock, ManualClock, SystemClock, TxId};
use support::{Rig, ScriptedHub, cli, config_file, spawn_agent, wait_exit, write_png};

/// One doctor run: its exit code, its findings by check, and what it printed.
struct Run {
    code: i32,
    report: serde_json::Value,
}

impl Run {
    fn line(&self, check: &str) -> &serde_json::Value {
        self.report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no {check} line: {:#}", self.report))
    }

    fn verdict(&self, check: &str) -> &str {
        self.line(check)["verdict"].as_str().unwrap()
    }

    fn detail(&self, check: &str) -> &str {
        self.line(check)["detail"].as_str().unwrap()
    }

    fn fix(&self, check: &str) -> &str {
        self.line(check)["fix"].as_str().unwrap_or("")
    }

    /// Only `check` failed (and the checks that need it were skipped).
    fn fails_only(&self, check: &str) {
        assert_eq!(
            self.code, 1,
            "a failed check fails the run: {:#}",
            self.report
        );
        assert_eq!(self.verdict(check), "fail", "{:#}", self.report);
        for f in self.report["findings"].as_array().unwrap() {
            if f["check"] != check {
                assert_ne!(f["verdict"], "fail", "only {check} should fail: {f:#}");
            }
        }
    }
}

/// Runs `qrcash-agent doctor --json` with `config`; meanwhile `hub`, if given, answers the
/// heartbeats it receives.
async fn doctor(config: &Path, hub: Option<&mut ScriptedHub>) -> Run {
    let config = config.to_owned();
    let mut task = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_qrcash-agent"))
            .arg("--config")
            .arg(&config)
            .args([
                "doctor",
                "--json",
                "--camera-seconds",
                "1",
                "--hub-timeout",
                "5",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .expect("qrcash-agent binary")
    });
    let out = match hub {
        Some(hub) => loop {
            tokio::select! {
                out = &mut task => break out.unwrap(),
                _ = hub.next_up(Duration::from_millis(200)) => {}
            }
        },
        None => task.await.unwrap(),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Run {
        code: out.status.code().expect("exited"),
        report,
    }
}

/// A copy of the rig's configuration with `from` replaced by `to`.
fn variant(rig: &Rig, name: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(rig.path("agent.toml")).unwrap();
    assert!(text.contains(from), "{from} is not in the configuration");
    let path = rig.path(name);
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The rig with a withdrawal code in front of the camera.
fn board() -> (Rig, PathBuf) {
    let rig = Rig::new();
    let config = config_file(&rig);
    let code = rig.code(TxId::random(), SystemClock.now());
    write_png(&rig.path("code.png"), Some(&code));
    (rig, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sound_board_is_ready_and_every_line_says_why() {
    let (rig, config) = board();
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let run = doctor(&config, Some(&mut hub)).await;
    assert_eq!(run.code, 0, "{:#}", run.report);
    for check in [
        "configuration",
        "atm key",
        "hub keys",
        "database",
        "outbox",
        "orders",
        "broker",
        "hub",
        "clock",
        "camera",
        "dispenser",
    ] {
        assert_eq!(run.verdict(check), "ok", "{check}: {:#}", run.report);
    }
    // Plain MQTT works on a bench, but a production board uses TLS: a warning, not a failure.
    assert_eq!(run.verdict("broker tls"), "warn");
    assert!(run.fix("broker tls").contains("mqtts://"));
    // The test machine's free space is not ours to promise; a fail would be a real finding.
    assert_ne!(
        run.verdict("disk space"),
        "fail",
        "{}",
        run.detail("disk space")
    );
    assert!(run.detail("atm key").contains(rig.atm_key.kid().as_str()));
    assert!(run.detail("hub").contains("answered the heartbeat"));
    assert!(
        run.detail("camera").contains("qrcash code in view"),
        "{}",
        run.detail("camera")
    );
    assert!(
        run.detail("dispenser").contains("ROM"),
        "{}",
        run.detail("dispenser")
    );
    // The heartbeat's sequence number is spent in the agent's database: never reused.
    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    assert_eq!(store.last_seq().unwrap(), 1);
    drop(store);

    // The table: one line per check, each warning's fix under it, the verdict last.
    let mut runner = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || cli(&config, &["doctor", "--camera-seconds", "1"]))
    };
    let (ok, table, err) = loop {
        tokio::select! {
            out = &mut runner => break out.unwrap(),
            _ = hub.next_up(Duration::from_millis(200)) => {}
        }
    };
    assert!(ok, "{table}{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ok ") && lines[0].contains("configuration"),
        "{table}"
    );
    let tls = lines.iter().position(|l| l.contains("broker tls")).unwrap();
    assert!(lines[tls].starts_with("WARN"), "{table}");
    assert!(lines[tls + 1].contains("-> use mqtts://"), "{table}");
    assert!(lines.last().unwrap().starts_with("READY"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_is_named_on_its_line_and_fails_the_run() {
    let (rig, config) = board();
    let mut hub = ScriptedHub::connect(&rig, 0).await;

    // A signing key others can read.
    chmod(&rig.path("atm.jwk"), 0o644);
    let run = doctor(&config, Some(&mut hub)).await;
    run.fails_only("atm key");
    assert!(
        run.detail("atm key").contains("0644"),
        "{}",
        run.detail("atm key")
    );
    assert!(run.fix("atm key").contains("chmod 600"));
    assert_eq!(
        run.verdict("hub"),
        "skipped",
        "nothing is signed with an exposed key"
    );
    chmod(&rig.path("atm.jwk"), 0o600);

    // A hub key anyone may replace.
    chmod(&rig.path("hub.pub.jwk"), 0o666);
    let run = doctor(&config, Some(&mut hub)).await;
    run.fails_only("hub keys");
    assert!(run.detail("hub keys").contains("forge orders"));
    chmod(&rig.path("hub.pub.jwk"), 0o644);

    // The dispenser is on another port.
    let wrong_port = variant(
        &rig,
        "wrong-port.toml",
        rig.sim.port_path(),
        "/dev/ttyQRCASH9",
    );
    let run = doctor(&wrong_port, Some(&mut hub)).await;
    run.fails_only("dispenser");
    assert!(
        run.detail("dispenser").contains("/dev/ttyQRCASH9"),
        "{}",
        run.detail("dispenser")
    );
    assert!(run.fix("dispenser").contains("dialout"));

    // The broker is down (nothing listens on port 1, and only root could take it).
    let dead_broker = variant(
        &rig,
        "dead-broker.toml",
        &rig.broker.url(),
        "mqtt://127.0.0.1:1",
    );
    let run = doctor(&dead_broker, Some(&mut hub)).await;
    run.fails_only("broker");
    assert!(
        run.detail("broker").contains("cannot reach"),
        "{}",
        run.detail("broker")
    );
    assert_eq!(run.verdict("hub"), "skipped");
    assert_eq!(run.verdict("clock"), "skipped");

    // The broker works but nobody answers for the hub.
    let run = doctor(&config, None).await;
    run.fails_only("hub");
    assert!(
        run.detail("hub").contains("no answer"),
        "{}",
        run.detail("hub")
    );
    assert!(
        run.fix("hub").contains(rig.atm_key.kid().as_str()),
        "names the key to enrol"
    );
    assert_eq!(run.verdict("clock"), "skipped");

    // The hub's clock is two minutes ahead of the board's.
    let ahead = Arc::new(ManualClock::new(SystemClock.now() + 120));
    let mut skewed = ScriptedHub::connect(&rig, 1_000).await.with_clock(ahead);
    let run = doctor(&config, Some(&mut skewed)).await;
    run.fails_only("clock");
    let detail = run.detail("clock");
    assert!(detail.contains("behind the hub's clock"), "{detail}");
    let seconds: u64 = detail.split(' ').next().unwrap().parse().unwrap();
    assert!((118..=122).contains(&seconds), "{detail}");
    assert!(run.fix("clock").contains("NTP"));
}

/// A 1 MiB tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf) -> Option<Tmpfs> {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_named() {
    let (rig, _) = board();
    let Some(disk) = Tmpfs::mount(rig.path("small")) else {
        // Mounting needs root, which CI has; a developer's unprivileged run skips this one.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs for the full-disk test"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    // Fill it.
    let filler = disk.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let db = rig.path("agent.db").display().to_string();
    let full = variant(
        &rig,
        "full.toml",
        &db,
        &disk.0.join("agent.db").display().to_string(),
    );
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let run = doctor(&full, Some(&mut hub)).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.verdict("disk space"), "fail", "{:#}", run.report);
    assert!(
        run.detail("disk space").contains("0 MiB free"),
        "{}",
        run.detail("disk space")
    );
    // The database cannot be created on it, and what needs it is skipped, not guessed.
    assert_eq!(run.verdict("database"), "fail", "{:#}", run.report);
    assert_eq!(run.verdict("outbox"), "skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_agent_running_the_devices_are_left_to_it() {
    let rig = Rig::new();
    config_file(&rig);
    // Heartbeats every 2 s: should the start-up one's answer be missed, the next comes soon.
    let config = variant(
        &rig,
        "fast.toml",
        "min_frame_interval_ms = 50",
        "min_frame_interval_ms = 50\nheartbeat_s = 2",
    );
    write_png(&rig.path("code.png"), None);
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let mut agent = spawn_agent(&config, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let _ = hub.next_up(Duration::from_millis(300)).await;
        let (ok, out, _) = cli(&config, &["status"]);
        let s: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if ok && s["agent"]["running"] == true && s["hub"]["reachable"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never ran: {s:#}"
        );
    }
    let run = doctor(&config, Some(&mut hub)).await;
    // The agent kept its own connection and the hub (the doctor connects under another id).
    let (_, out, _) = cli(&config, &["status"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["agent"]["running"], true, "{status:#}");
    assert_eq!(status["link"]["value"], "up", "{status:#}");
    let _ = Command::new("kill")
        .args(["-INT", &agent.id().to_string()])
        .status();
    wait_exit(&mut agent, Duration::from_secs(30));
    assert_eq!(run.code, 0, "{:#}", run.report);
    for check in ["camera", "dispenser"] {
        assert_eq!(run.verdict(check), "skipped", "{:#}", run.report);
        assert!(
            run.detail(check).contains("running agent"),
            "{}",
            run.detail(check)
        );
    }
    assert!(
        run.detail("camera").contains("frames"),
        "the agent's own figures"
    );
    // The broker is the doctor's own connection; the hub is what the agent heard; the clock
    // is measured only with the agent stopped (two heartbeats would race).
    assert_eq!(run.verdict("broker"), "ok");
    assert_eq!(run.verdict("hub"), "ok", "{:#}", run.report);
    assert!(
        run.detail("hub").contains("the running agent heard"),
        "{}",
        run.detail("hub")
    );
    assert_eq!(run.verdict("clock"), "skipped");
}

/// Over TLS with the production ACL: the certificate files are read (its CN must be this
/// ATM's id, its key private), and the broker accepts the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_are_checked_and_the_certificate_must_name_this_atm() {
    use qrcash_testsupport::pki::TestPki;
    let pki = TestPki::default();
    let broker = pki.locked_down_broker();
    let url = broker.url();
    let rig = Rig::with_broker(
        broker,
        pki.client_config(&url, support::ATM),
        pki.client_config(&url, "hub"),
    );
    config_file(&rig);
    write_png(&rig.path("code.png"), None);
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let with_files = |name: &str, cn: &str| {
        let (cert, key) = pki.client_files(cn);
        let files = format!(
            "url = \"{url}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            pki.ca_file().display(),
            cert.display(),
            key.display()
        );
        (
            variant(&rig, name, &format!("url = \"{url}\""), &files),
            key,
        )
    };

    let (tls, _) = with_files("tls.toml", support::ATM);
    let run = doctor(&tls, Some(&mut hub)).await;
    assert_eq!(run.code, 0, "{:#}", run.report);
    assert_eq!(run.verdict("broker tls"), "ok", "{:#}", run.report);
    assert!(
        run.detail("broker tls").contains("CN atm-1, valid"),
        "{}",
        run.detail("broker tls")
    );
    assert!(run.detail("broker").contains("client certificate accepted"));
    assert_eq!(run.verdict("hub"), "ok", "{:#}", run.report);

    // Another ATM's certificate: the broker would grant it that ATM's rights.
    let (other, _) = with_files("other.toml", "atm-2");
    let run = doctor(&other, Some(&mut hub)).await;
    assert_eq!(run.verdict("broker tls"), "fail", "{:#}", run.report);
    assert!(
        run.detail("broker tls").contains("\"atm-2\""),
        "{}",
        run.detail("broker tls")
    );
    assert_eq!(run.code, 1);

    // A TLS key others can read.
    let (open, key) = with_files("open.toml", support::ATM);
    chmod(&key, 0o640);
    let run = doctor(&open, Some(&mut hub)).await;
    run.fails_only("broker tls");
    assert!(run.fix("broker tls").contains("chmod 600"));

    // The broker does not know the CA of this certificate.
    let stranger = TestPki::new("stranger");
    let (cert, key) = stranger.client_files(support::ATM);
    let files = format!(
        "url = \"{url}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        pki.ca_file().display(),
        cert.display(),
        key.display()
    );
    let foreign = variant(&rig, "foreign.toml", &format!("url = \"{url}\""), &files);
    let run = doctor(&foreign, Some(&mut hub)).await;
    run.fails_only("broker");
    assert_eq!(run.verdict("hub"), "skipped");
}
