//! Enrolment by one-time code, end to end: the real hub service over Mosquitto, the
//! operator's `issue_enrolment_code` on the hub database (what `qrcash-hub atm enrol-code`
//! runs), and the agent's `enrol` (what `qrcash-agent enrol` runs) reading the QR code through
//! a folder camera or taking the typed code. A new board enrols and the hub then answers its
//! doctor's heartbeat; a used, a wrong (five times, then locked) or an expired code changes
//! nothing; a board re-keyed with `--new-key` replaces its key only once the hub enrolled
//! the new one, and never while its outbox holds messages signed by the old one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qrcash_agent::enrol::{self, EnrolError};
use qrcash_agent::{AgentConfig, store::Store as AgentStore};
use qrcash_hub::admin;
use qrcash_hub::store::Store as HubStore;
use qrcash_hub::store::registry::PendingAtm;
use qrcash_io::KeyFile;
use qrcash_protocol::enrol::{EnrolmentCode, qr_payload};
use qrcash_protocol::{Clock, Position, PrivateKey, RejectReason, SystemClock};
use qrcash_tests::broker::Mosquitto;

/// A board's files in `dir`: configuration (no hub key yet), camera folder.
fn board(dir: &Path, atm_id: &str, broker: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("camera")).unwrap();
    let text = format!(
        r#"# a fresh board
atm_id = "{atm_id}"
key_file = "{dir}/atm.jwk"
hub_keys = []
database = "{dir}/agent.db"

[[cassettes]]
denomination = 10000

[[cassettes]]
denomination = 1000

[broker]
url = "{broker}"

[camera]
kind = "files"
path = "{dir}/camera"
"#,
        dir = dir.display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn shibuya() -> PendingAtm {
    PendingAtm {
        name: "Shibuya 9".into(),
        address: "2-24-1 Shibuya".into(),
        position: Position::new(35.6595, 139.7005, 0.0),
        denominations: vec![10_000, 1_000],
    }
}

fn issue(
    hub_db: &Path,
    atm: &str,
    pending: Option<PendingAtm>,
    valid_s: u64,
    now: u64,
) -> EnrolmentCode {
    let mut store = HubStore::open(hub_db).unwrap();
    admin::issue_enrolment_code(&mut store, atm, pending, valid_s, now).unwrap()
}

async fn enrol_with(
    config: &Path,
    code: Option<&EnrolmentCode>,
    new_key: bool,
) -> Result<enrol::Outcome, EnrolError> {
    enrol::run(
        config,
        &enrol::Options {
            code: code.map(|c| c.grouped()),
            scan_for: Duration::from_secs(20),
            new_key,
            timeout: Duration::from_secs(20),
        },
    )
    .await
}

fn refused_with(result: Result<enrol::Outcome, EnrolError>, words: &str) {
    match result {
        Err(EnrolError::Refused { reason, message }) => {
            assert_eq!(reason, RejectReason::EnrolmentRefused);
            assert!(message.contains(words), "{message}");
        }
        other => panic!("expected a refusal saying {words:?}: {other:?}"),
    }
}

/// What the doctor says of the hub and the clock for this board.
async fn hub_line(config: &Path) -> String {
    let report = qrcash_agent::doctor::examine(
        config,
        &qrcash_agent::doctor::Options {
            camera_window: Duration::from_millis(100),
            hub_timeout: Duration::from_secs(10),
        },
    )
    .await;
    let hub = report.get("hub").unwrap();
    format!("{:?}: {}", hub.verdict, hub.detail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_enrols_by_code_and_a_spent_wrong_or_expired_code_changes_nothing() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = qrcash_tests::hub::start(dir.path(), &broker.url(), 7, "atm-1").await;
    hub.clock.set(SystemClock.now());
    let hub_db = dir.path().join("hub.sqlite");

    // A new ATM: the operator issues a code with its place; the board reads the QR code.
    let code = issue(&hub_db, "atm-9", Some(shibuya()), 3600, hub.clock.now());
    let a = dir.path().join("board-a");
    let config = board(&a, "atm-9", &broker.url());
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    qrcode::QrCode::new(qr_payload("atm-9", &code))
        .unwrap()
        .render::<image::Luma<u8>>()
        .module_dimensions(6, 6)
        .build()
        .save(a.join("camera/enrol.png"))
        .unwrap();
    let done = enrol_with(&config, None, false).await.expect("enrolled");
    assert_eq!(done.atm_id, "atm-9");
    assert_eq!(done.learned.hub_id, "hub");
    assert_eq!(done.learned.hub_keys, std::slice::from_ref(&hub.hub_key));
    assert_eq!(done.learned.denominations, [10_000, 1_000]);
    assert!(done.cassette_mismatch.is_none());
    let key = PrivateKey::load(&a.join("atm.jwk")).expect("the new key, 0600");
    assert_eq!(key.kid().as_str(), done.kid);
    let cfg = AgentConfig::load(&config).expect("the configuration now loads");
    assert_eq!(
        cfg.load_hub_keys().unwrap(),
        std::slice::from_ref(&hub.hub_key)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with("# a fresh board"), "comments kept: {text}");
    let config_mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(
        config_mode & 0o777,
        0o640,
        "the configuration keeps its mode"
    );
    let mode = std::fs::metadata(&done.hub_key_files[0])
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // The hub knows the key: it answers the board's signed heartbeat.
    let line = hub_line(&config).await;
    assert!(
        line.starts_with("Ok") && line.contains("answered the heartbeat"),
        "{line}"
    );

    // The same code again, by another board: spent.
    let b = dir.path().join("board-b");
    let other = board(&b, "atm-9", &broker.url());
    refused_with(enrol_with(&other, Some(&code), false).await, "already used");
    // The first board asking again (it lost the answer) is answered again, same key.
    let again = enrol_with(&config, Some(&code), false)
        .await
        .expect("answered again");
    assert_eq!(again.kid, done.kid);

    // Wrong codes count; the fifth locks the code even for the right one.
    let code = issue(&hub_db, "atm-10", Some(shibuya()), 3600, hub.clock.now());
    let c = dir.path().join("board-c");
    let third = board(&c, "atm-10", &broker.url());
    for left in (0..5).rev() {
        let wrong = EnrolmentCode::generate();
        refused_with(
            enrol_with(&third, Some(&wrong), false).await,
            &format!("{left} attempts left"),
        );
    }
    refused_with(enrol_with(&third, Some(&code), false).await, "locked");
    // A new code for the same ATM replaces the locked one; once expired, it too changes nothing.
    let code = issue(&hub_db, "atm-10", Some(shibuya()), 60, hub.clock.now());
    hub.clock.advance(Duration::from_secs(61));
    refused_with(enrol_with(&third, Some(&code), false).await, "expired");
    hub.clock.set(SystemClock.now());
    assert!(
        hub_line(&third).await.contains("Skipped"),
        "never enrolled: no hub keys to check an answer with"
    );
    let store = HubStore::open(&hub_db).unwrap();
    assert!(
        qrcash_hub::store::rows::atm(store.db(), "atm-10")
            .unwrap()
            .is_none(),
        "no wrong, locked or expired code enrolled anything at the hub"
    );
}

/// A stranger's enrolment that reuses the `jti` of one of the enrolled ATM's messages, and
/// fails an early check, is refused `enrolment_refused` (never a reason the ATM would take
/// as a refusal of its own message) and is not answered as that message's duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_enrolment_can_never_refuse_the_atms_own_messages() {
    use qrcash_protocol::{AtmDown, MAX_DOWNLINK_BYTES, Sealed, topics};
    let broker = Mosquitto::start();
    let url = broker.url();
    let dir = tempfile::tempdir().unwrap();
    let hub = qrcash_tests::hub::start(dir.path(), &url, 12, "atm-1").await;
    let now = SystemClock.now();
    hub.clock.set(now);
    // The real ATM's heartbeat, processed.
    let (jti, sealed) = heartbeat("atm-1", &hub.atm_key, 1, now);
    assert!(
        acked(
            &url,
            "atm-1",
            &jti,
            &sealed,
            &hub.hub_key,
            Duration::from_secs(10)
        )
        .await
    );
    let mut watcher = qrcash_tests::mqtt::TestClient::connect(
        &qrcash_io::BrokerConfig::plain(url.as_str()),
        "watcher",
    )
    .await
    .unwrap();
    watcher.subscribe(&topics::atm_down("atm-1")).await;
    // A stranger's Enrol under the same jti, addressed to another hub.
    let stranger = PrivateKey::generate();
    let code = EnrolmentCode::generate();
    let enrol = qrcash_protocol::AtmUp::Enrol(enrol::request("atm-1", &stranger, &code, "n"));
    let mut claims = qrcash_protocol::Claims::new(
        "atm-1",
        "other-hub",
        2,
        now,
        Duration::from_secs(300),
        enrol,
    );
    claims.jti = jti.clone();
    let forged = qrcash_protocol::Signer::new("atm-1", stranger).seal(&claims);
    watcher
        .publish(&topics::atm_up("atm-1"), forged.as_str())
        .await;
    let (_, bytes) = watcher
        .next_publish(Duration::from_secs(10))
        .await
        .expect("the stranger is answered");
    let answer = Sealed::parse(&bytes, MAX_DOWNLINK_BYTES)
        .unwrap()
        .open::<AtmDown>(&hub.hub_key)
        .unwrap();
    assert_eq!(answer.re.as_deref(), Some(jti.as_str()));
    match answer.msg {
        AtmDown::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::EnrolmentRefused);
            assert!(r.message.starts_with("wrong_address"), "{}", r.message);
        }
        other => panic!("not the heartbeat's Ack again, not another reason: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_keyed_board_keeps_its_old_key_until_the_hub_enrolled_the_new_one() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = qrcash_tests::hub::start(dir.path(), &broker.url(), 8, "atm-1").await;
    hub.clock.set(SystemClock.now());
    let hub_db = dir.path().join("hub.sqlite");
    // The board of the enrolled atm-1, with its key.
    let a = dir.path().join("atm-1");
    let config = board(&a, "atm-1", &broker.url());
    hub.atm_key.save(&a.join("atm.jwk")).unwrap();

    // A message waiting in the outbox, signed by the old key: no new key yet.
    {
        let mut store = AgentStore::open(&a.join("agent.db"), Default::default()).unwrap();
        store
            .enqueue(qrcash_agent::store::Priority::Critical, 1, |seq| {
                qrcash_agent::store::Outgoing {
                    jti: "waiting".into(),
                    kind: "DispenseReport",
                    sealed: format!("x.{seq}.y"),
                }
            })
            .unwrap();
    }
    let code = issue(&hub_db, "atm-1", None, 3600, hub.clock.now());
    match enrol_with(&config, Some(&code), true).await {
        Err(EnrolError::Board(m)) => assert!(m.contains("outbox holds 1"), "{m}"),
        other => panic!("a new key must wait for the outbox: {other:?}"),
    }
    assert_eq!(
        PrivateKey::load(&a.join("atm.jwk")).unwrap().kid(),
        hub.atm_key.kid(),
        "the old key is untouched"
    );
    {
        let mut store = AgentStore::open(&a.join("agent.db"), Default::default()).unwrap();
        store.ack(&["waiting".into()], 2).unwrap();
    }
    let done = enrol_with(&config, Some(&code), true)
        .await
        .expect("re-keyed");
    assert_ne!(done.kid, hub.atm_key.kid().as_str());
    assert_eq!(
        PrivateKey::load(&a.join("atm.jwk")).unwrap().kid().as_str(),
        done.kid
    );
    assert!(
        !a.join("atm.new").exists(),
        "the new key took the old one's place"
    );
    assert!(done.learned.denominations == [10_000, 1_000]);
    let line = hub_line(&config).await;
    assert!(
        line.starts_with("Ok"),
        "the hub answers the new key: {line}"
    );
}

/// A heartbeat signed by `key` for `atm`, dated `iat`.
fn heartbeat(atm: &str, key: &PrivateKey, seq: u64, iat: u64) -> (String, String) {
    let cfg = AgentConfig {
        atm_id: atm.into(),
        ..AgentConfig::parse_unenrolled(
            "atm_id = \"x\"\nkey_file = \"/k\"\nhub_keys = []\ndatabase = \"/d\"\n[[cassettes]]\ndenomination = 1000\n",
        )
        .unwrap()
    };
    qrcash_agent::runtime::seal_direct(
        &cfg,
        key,
        seq,
        iat,
        qrcash_protocol::AtmUp::Heartbeat(qrcash_protocol::messages::Heartbeat {
            state: qrcash_protocol::messages::AtmState::Idle,
            cassettes: vec![],
            outbox: 0,
            software: "test".into(),
        }),
    )
}

/// Whether the hub acknowledges `sealed` (published as `atm`) within `wait`.
async fn acked(
    broker: &str,
    atm: &str,
    jti: &str,
    sealed: &str,
    hub_key: &qrcash_protocol::PublicKey,
    wait: Duration,
) -> bool {
    use qrcash_protocol::{AtmDown, MAX_DOWNLINK_BYTES, Sealed, topics};
    let mut client = qrcash_tests::mqtt::TestClient::connect(
        &qrcash_io::BrokerConfig::plain(broker),
        &format!("{atm}-test"),
    )
    .await
    .unwrap();
    client.subscribe(&topics::atm_down(atm)).await;
    client.publish(&topics::atm_up(atm), sealed).await;
    let deadline = tokio::time::Instant::now() + wait;
    while let Some((_, bytes)) = client
        .next_publish(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        let Ok(claims) = Sealed::parse(&bytes, MAX_DOWNLINK_BYTES)
            .unwrap()
            .open::<AtmDown>(hub_key)
        else {
            continue;
        };
        if let AtmDown::Ack(a) = claims.msg
            && a.ids.iter().any(|i| i == jti)
        {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_takes_over_and_what_the_old_one_queued_still_arrives() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let dir = tempfile::tempdir().unwrap();
    let hub = qrcash_tests::hub::start(dir.path(), &url, 9, "atm-1").await;
    let now = SystemClock.now();
    hub.clock.set(now);
    // The board of atm-1 learns the hub's keys by a code, keeping its key.
    let a = dir.path().join("atm-1");
    let config = board(&a, "atm-1", &url);
    hub.atm_key.save(&a.join("atm.jwk")).unwrap();
    let code = issue(&dir.path().join("hub.sqlite"), "atm-1", None, 3600, now);
    let kept = enrol_with(&config, Some(&code), false).await.unwrap();
    assert_eq!(kept.kid, hub.atm_key.kid().as_str());

    // A message the old key queued (still in the outbox when the key changes).
    let old = hub.atm_key.clone();
    let queued = {
        let cfg = AgentConfig::load(&config).unwrap();
        let mut store = AgentStore::open(&cfg.database, Default::default()).unwrap();
        let out = store
            .enqueue(qrcash_agent::store::Priority::Normal, now, |seq| {
                let (jti, sealed) = qrcash_agent::runtime::seal_direct(
                    &cfg,
                    &old,
                    seq,
                    now,
                    qrcash_protocol::AtmUp::Heartbeat(qrcash_protocol::messages::Heartbeat {
                        state: qrcash_protocol::messages::AtmState::Idle,
                        cassettes: vec![],
                        outbox: 1,
                        software: "queued".into(),
                    }),
                );
                qrcash_agent::store::Outgoing {
                    jti,
                    kind: "Heartbeat",
                    sealed,
                }
            })
            .unwrap();
        (out.jti, out.sealed)
    };

    let rotated = enrol::rotate(&config, Duration::from_secs(20))
        .await
        .expect("rotated");
    assert_eq!(rotated.old_kid, old.kid().as_str());
    let new = PrivateKey::load(&a.join("atm.jwk")).unwrap();
    assert_eq!(new.kid().as_str(), rotated.new_kid);
    {
        let mut store = AgentStore::open(&a.join("agent.db"), Default::default()).unwrap();
        assert_eq!(
            store
                .journal_of_kind(qrcash_agent::store::JournalKind::KeyRotated)
                .unwrap()
                .len(),
            1
        );
    }
    // The queued message, signed by the old key, is still accepted.
    assert!(
        acked(
            &url,
            "atm-1",
            &queued.0,
            &queued.1,
            &hub.hub_key,
            Duration::from_secs(10)
        )
        .await
    );
    // A message the old key signs now (numbered after the rotation) is dropped unanswered,
    // as under any unknown key: the old key signs nothing new.
    let (jti, sealed) = heartbeat("atm-1", &old, 5_000, now);
    assert!(
        !acked(
            &url,
            "atm-1",
            &jti,
            &sealed,
            &hub.hub_key,
            Duration::from_secs(2)
        )
        .await
    );
    let audit =
        admin::audit_tail(&HubStore::open(&dir.path().join("hub.sqlite")).unwrap(), 5).unwrap();
    assert!(
        audit.iter().any(|r| r.entry.outcome == "rejected"
            && r.entry
                .detail
                .as_deref()
                .is_some_and(|d| d.contains(old.kid().as_str()))),
        "dropped as signed by an unknown key: {audit:?}"
    );
    // While it waits in the board's outbox, a second rotation is refused.
    match enrol::rotate(&config, Duration::from_secs(5)).await {
        Err(EnrolError::Board(m)) => assert!(m.contains("before the current one"), "{m}"),
        other => panic!("a second rotation must wait for the old key's messages: {other:?}"),
    }
    let line = hub_line(&config).await;
    assert!(
        line.starts_with("Ok"),
        "the hub answers the new key: {line}"
    );

    // After the overlap (the ATM messages' maximum age), the old key gets silence.
    let later = now + 7 * 86_400 + 10;
    hub.clock.set(later);
    let (jti, sealed) = heartbeat("atm-1", &old, 1_000, later);
    assert!(
        !acked(
            &url,
            "atm-1",
            &jti,
            &sealed,
            &hub.hub_key,
            Duration::from_secs(2)
        )
        .await
    );
    let (jti, sealed) = heartbeat("atm-1", &new, 1_001, later);
    assert!(
        acked(
            &url,
            "atm-1",
            &jti,
            &sealed,
            &hub.hub_key,
            Duration::from_secs(10)
        )
        .await
    );
}

/// A rotation whose answer never came (the hub applied it; the board timed out or died
/// before the swap): the board still holds only the old key file, the hub only the new key.
/// Running `rotate-key` again resends the very same request, which the hub answers as a
/// duplicate, and the swap completes; a doctor meanwhile says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_completes_when_run_again() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let dir = tempfile::tempdir().unwrap();
    let hub = qrcash_tests::hub::start(dir.path(), &url, 13, "atm-1").await;
    let now = SystemClock.now();
    hub.clock.set(now);
    let a = dir.path().join("atm-1");
    let config = board(&a, "atm-1", &url);
    hub.atm_key.save(&a.join("atm.jwk")).unwrap();
    let code = issue(&dir.path().join("hub.sqlite"), "atm-1", None, 3600, now);
    enrol_with(&config, Some(&code), false).await.unwrap();

    // What the first run left before the answer: the new key and the sealed request, sent.
    let cfg = AgentConfig::load(&config).unwrap();
    let new = PrivateKey::generate();
    new.save(&a.join("atm.new")).unwrap();
    let seq = AgentStore::open(&cfg.database, Default::default())
        .unwrap()
        .reserve_probe_seq(32)
        .unwrap()
        .unwrap();
    let rotate = qrcash_protocol::AtmUp::RotateKey(qrcash_protocol::messages::RotateKey {
        public_key: new.public().to_jwk(),
        proof: qrcash_protocol::enrol::rotation_proof(&new, "atm-1", hub.atm_key.kid().as_str()),
    });
    let (jti, sealed) = qrcash_agent::runtime::seal_direct(&cfg, &hub.atm_key, seq, now, rotate);
    std::fs::write(a.join("atm.new.request"), &sealed).unwrap();
    assert!(
        acked(
            &url,
            "atm-1",
            &jti,
            &sealed,
            &hub.hub_key,
            Duration::from_secs(10)
        )
        .await
    );
    // The hub now knows only the new key; the board signs with the old one.
    let line = hub_line(&config).await;
    assert!(!line.starts_with("Ok"), "{line}");
    let report = qrcash_agent::doctor::examine(
        &config,
        &qrcash_agent::doctor::Options {
            camera_window: Duration::from_millis(100),
            hub_timeout: Duration::from_secs(2),
        },
    )
    .await;
    let key_line = report.get("atm key").unwrap();
    assert!(
        key_line.detail.contains("interrupted key change"),
        "{key_line:?}"
    );

    let done = enrol::rotate(&config, Duration::from_secs(20))
        .await
        .expect("completed");
    assert_eq!(done.new_kid, new.kid().as_str());
    assert_eq!(
        PrivateKey::load(&a.join("atm.jwk")).unwrap().kid(),
        new.kid()
    );
    assert!(!a.join("atm.new").exists() && !a.join("atm.new.request").exists());
    let line = hub_line(&config).await;
    assert!(line.starts_with("Ok"), "{line}");
}

/// The package's layout: `/etc/qrcash/agent.toml` is a conffile the enrolment must not
/// rewrite, so it names an enrolment file in the state directory. The board enrols by the
/// typed code; what the hub taught lands there, the configuration stays byte for byte, and
/// the hub answers the doctor, which reads the two together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packaged_board_enrols_into_its_state_directory_and_keeps_its_configuration() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = qrcash_tests::hub::start(dir.path(), &broker.url(), 7, "atm-1").await;
    hub.clock.set(SystemClock.now());
    let code = issue(
        &dir.path().join("hub.sqlite"),
        "atm-11",
        Some(shibuya()),
        3600,
        hub.clock.now(),
    );
    let etc = dir.path().join("etc");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let config = board(&etc, "atm-11", &broker.url());
    let shipped = std::fs::read_to_string(&config).unwrap().replacen(
        "hub_keys = []\n",
        &format!(
            "hub_keys = []\nenrolment_file = \"{}\"\n",
            state.join("enrolment.toml").display()
        ),
        1,
    );
    std::fs::write(&config, &shipped).unwrap();

    let done = enrol_with(&config, Some(&code), false)
        .await
        .expect("enrolled");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        shipped,
        "the conffile is untouched"
    );
    assert_eq!(
        done.hub_key_files,
        [state.join(format!("hub-{}.jwk", hub.hub_key.kid()))],
        "the hub's key is written beside the enrolment file"
    );
    let learned = std::fs::read_to_string(state.join("enrolment.toml")).unwrap();
    assert!(learned.contains("hub_keys"), "{learned}");
    let cfg = AgentConfig::load(&config).expect("loads with the enrolment");
    assert_eq!(
        cfg.load_hub_keys().unwrap(),
        std::slice::from_ref(&hub.hub_key)
    );
    let line = hub_line(&config).await;
    assert!(
        line.starts_with("Ok") && line.contains("answered the heartbeat"),
        "{line}"
    );
}
