//! The board's key at the hub: `qrcash-agent enrol` enrols it by a one-time code
//! (`qrcash_protocol::enrol`), learns the hub's keys from the answer, and writes them and the
//! broker the hub names into its configuration; `qrcash-agent rotate-key` ([`rotate`]) hands
//! over to a new key on a message signed with the current one.
//!
//! [`request`] and [`accept`] are the pure halves (the message to send, and what an answer
//! proves); [`run`] is the shell: code from the command line or the camera, key, the MQTT
//! exchange with resends, files. Nothing is written before the hub's proof holds, except a
//! key the board never had (it must exist to be enrolled; an old key is replaced only
//! after the hub enrolled the new one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qrcash_io::KeyFile;
use qrcash_protocol::enrol::{self, EnrolmentCode};
use qrcash_protocol::envelope::Sealed;
use qrcash_protocol::keyset::HubTrust;
use qrcash_protocol::messages::{AtmDown, AtmUp, Enrol, RotateKey};
use qrcash_protocol::{
    Clock, MAX_DOWNLINK_BYTES, PrivateKey, PublicKey, RejectReason, SystemClock, topics,
};
use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::AgentConfig;
use crate::store::Store;

/// Why an enrolment did not complete.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The hub refused it.
    #[error("the hub refused the enrolment: {message} ({reason:?})")]
    Refused {
        /// Why, machine-readable.
        reason: RejectReason,
        /// Why, for the technician.
        message: String,
    },
    /// An answer claimed to be the hub's but its proof or signature does not hold: not the
    /// hub that issued the code, or a damaged message.
    #[error("an answer to the enrolment is not the hub's: {0}")]
    Forged(String),
    /// No answer in time.
    #[error(
        "no answer from the hub within {0} s: check the broker URL, that the hub runs, and the hub_id in the configuration"
    )]
    Silent(u64),
    /// Something on the board (configuration, files, database, broker settings).
    #[error("{0}")]
    Board(String),
}

/// The `Enrol` message for `atm_id` with `key`, proving `code`.
pub fn request(atm_id: &str, key: &PrivateKey, code: &EnrolmentCode, nonce: &str) -> Enrol {
    let proof = enrol::request_proof(&enrol::proof_key(code), atm_id, key.kid().as_str(), nonce);
    Enrol {
        public_key: key.public().to_jwk(),
        nonce: nonce.to_owned(),
        proof,
    }
}

/// What a valid `Enrolled` answer teaches the board.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    /// The hub's id (`iss` of the answer).
    pub hub_id: String,
    /// The hub's keys, its signing key first.
    pub hub_keys: Vec<PublicKey>,
    /// Brokers to use, in order (empty: keep the current one).
    pub broker_urls: Vec<String>,
    /// The ATM's cassette denominations at the hub.
    pub denominations: Vec<u64>,
}

/// Reads one message on the board's down-link: `Ok(None)` when it is not an answer to the
/// request `jti` (another message, or unreadable); the answer's lesson, or the refusal, when
/// it is. An `Enrolled` must carry the proof over this board's `kid` and `nonce` and the
/// listed keys, and be signed by the first of them. A `Rejected` is believed as it stands:
/// it changes nothing, and the worst a forger achieves is a technician trying again.
pub fn accept(
    bytes: &[u8],
    atm_id: &str,
    kid: &str,
    nonce: &str,
    code: &EnrolmentCode,
    jti: &str,
) -> Result<Option<Learned>, EnrolError> {
    let Ok(sealed) = Sealed::parse(bytes, MAX_DOWNLINK_BYTES) else {
        return Ok(None);
    };
    let Ok(claims) = sealed.peek::<AtmDown>() else {
        return Ok(None);
    };
    if claims.re.as_deref() != Some(jti) || claims.aud != atm_id {
        return Ok(None);
    }
    let enrolled = match claims.msg {
        AtmDown::Enrolled(e) => e,
        AtmDown::Rejected(r) => {
            return Err(EnrolError::Refused {
                reason: r.reason,
                message: r.message,
            });
        }
        _ => return Ok(None),
    };
    let forged = |why: &str| EnrolError::Forged(why.to_owned());
    let keys = enrolled
        .hub_keys
        .iter()
        .map(PublicKey::from_jwk)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| forged(&format!("a listed key is not an Ed25519 JWK: {e}")))?;
    let first = keys.first().ok_or_else(|| forged("it lists no hub key"))?;
    let kids: Vec<&str> = keys.iter().map(|k| k.kid().as_str()).collect();
    if !enrol::verify_answer(
        &enrol::proof_key(code),
        atm_id,
        kid,
        nonce,
        &kids,
        &enrolled.proof,
    ) {
        return Err(forged(
            "its proof does not match the code (another hub, or a forged answer)",
        ));
    }
    let opened = sealed
        .open::<AtmDown>(first)
        .map_err(|e| forged(&format!("not signed by the hub key it lists first: {e}")))?;
    Ok(Some(Learned {
        hub_id: opened.iss,
        hub_keys: keys,
        broker_urls: enrolled.broker_urls,
        denominations: enrolled.denominations,
    }))
}

/// How `qrcash-agent enrol` was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The code as typed; `None`: read it from the camera.
    pub code: Option<String>,
    /// How long to look for the code's QR with the camera.
    pub scan_for: Duration,
    /// Make a new key even if the board has one.
    pub new_key: bool,
    /// How long to wait for the hub.
    pub timeout: Duration,
}

/// The resend interval of the request while no answer came.
const RESEND: Duration = Duration::from_secs(5);

/// What an enrolment did, for the technician.
#[derive(Debug)]
pub struct Outcome {
    /// The ATM id.
    pub atm_id: String,
    /// The enrolled key's id.
    pub kid: String,
    /// What the hub taught.
    pub learned: Learned,
    /// The hub key files written.
    pub hub_key_files: Vec<PathBuf>,
    /// Cassette denominations of the configuration that differ from the hub's, if they do.
    pub cassette_mismatch: Option<(Vec<u64>, Vec<u64>)>,
}

/// Enrols the board configured by `config_path`.
pub async fn run(config_path: &Path, options: &Options) -> Result<Outcome, EnrolError> {
    let board = |e: String| EnrolError::Board(e);
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| board(format!("{}: {e}", config_path.display())))?;
    let cfg = crate::config::with_enrolment(&text)
        .and_then(|text| AgentConfig::parse_unenrolled(&text))
        .map_err(|e| board(format!("{}: {e}", config_path.display())))?;
    let mut store = Store::open(&cfg.database, cfg.outbox.bounds())
        .map_err(|e| board(format!("{}: {e}", cfg.database.display())))?;
    let now = SystemClock.now();
    if store.agent_running(now).map_err(|e| board(e.to_string()))? {
        return Err(board(
            "the agent is running: stop it first (systemctl stop qrcash-agent)".into(),
        ));
    }
    let code = match &options.code {
        Some(text) => EnrolmentCode::parse(text).map_err(|e| board(e.to_string()))?,
        None => scan_code(&cfg, options.scan_for).await?,
    };

    // The key: the board's own if it has one (its queued messages stay valid), else new.
    let existing = cfg.key_file.exists();
    let (key, pending_path) = if existing && !options.new_key {
        let key = PrivateKey::load(&cfg.key_file).map_err(|e| board(e.to_string()))?;
        (key, None)
    } else {
        if existing {
            let waiting = store
                .outbox_stats()
                .map_err(|e| board(e.to_string()))?
                .messages;
            if waiting > 0 {
                return Err(board(format!(
                    "the outbox holds {waiting} messages signed by the current key, which the hub would refuse once it enrols a new one: run the agent until `qrcash-agent status` shows an empty outbox, or enrol without --new-key"
                )));
            }
        }
        // Saved before it is sent: a board the hub enrolled must hold its key. A new key
        // beside an old one replaces it only once the hub answered; one left there by an
        // interrupted run is used again (the hub may have enrolled it already).
        let path = if existing {
            cfg.key_file.with_extension("new")
        } else {
            cfg.key_file.clone()
        };
        let key = if existing && path.exists() {
            PrivateKey::load(&path).map_err(|e| board(e.to_string()))?
        } else {
            let key = PrivateKey::generate();
            key.save(&path).map_err(|e| board(e.to_string()))?;
            key
        };
        (key, existing.then_some(path))
    };
    let kid = key.kid().to_string();
    let nonce = qrcash_protocol::envelope::new_jti();
    let msg = request(&cfg.atm_id, &key, &code, &nonce);
    let seq = store
        .reserve_probe_seq(crate::doctor::probe::PROBE_SPAN)
        .map_err(|e| board(e.to_string()))?
        .ok_or_else(|| {
            board("the outbox holds messages the enrolment could overtake: run the agent until its outbox is empty".into())
        })?;
    let (jti, sealed) = crate::runtime::seal_direct(&cfg, &key, seq, now, AtmUp::Enrol(msg));
    let learned = exchange(&cfg, sealed.into_bytes(), options.timeout, |bytes| {
        accept(bytes, &cfg.atm_id, &kid, &nonce, &code, &jti)
    })
    .await?;

    // The hub enrolled the key: now the files.
    if let Some(path) = pending_path {
        std::fs::rename(&path, &cfg.key_file).map_err(|e| {
            board(format!("the hub enrolled the key in {} but it could not replace {}: {e}; move it there by hand", path.display(), cfg.key_file.display()))
        })?;
    }
    let dir = match &cfg.enrolment_file {
        Some(file) => file.parent(),
        None => cfg
            .hub_keys
            .first()
            .and_then(|p| p.parent())
            .or_else(|| config_path.parent()),
    }
    .filter(|d| !d.as_os_str().is_empty())
    .unwrap_or(Path::new("."))
    .to_owned();
    let mut hub_key_files = Vec::new();
    for k in &learned.hub_keys {
        let path = dir.join(format!("hub-{}.jwk", k.kid()));
        let jwk = serde_json::to_string_pretty(&k.to_jwk()).map_err(|e| board(e.to_string()))?;
        write_public(&path, &jwk).map_err(|e| board(format!("{}: {e}", path.display())))?;
        hub_key_files.push(path);
    }
    match &cfg.enrolment_file {
        Some(file) => {
            let before = match std::fs::read_to_string(file) {
                Ok(before) => before,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(board(format!("{}: {e}", file.display()))),
            };
            let updated = update_enrolment(&text, &before, &learned, &hub_key_files)
                .map_err(|e| board(format!("{}: {e}", file.display())))?;
            write_file(file, &updated, 0o640)
                .map_err(|e| board(format!("{}: {e}", file.display())))?;
        }
        None => {
            let updated = update_config(&text, &learned, &hub_key_files).map_err(board)?;
            replace_keeping_mode(config_path, &updated)
                .map_err(|e| board(format!("{}: {e}", config_path.display())))?;
        }
    }
    let configured = cfg.denominations();
    let cassette_mismatch = (!learned.denominations.is_empty()
        && learned.denominations != configured)
        .then(|| (configured, learned.denominations.clone()));
    Ok(Outcome {
        atm_id: cfg.atm_id,
        kid,
        learned,
        hub_key_files,
        cassette_mismatch,
    })
}

/// Replaces `path` with `text` through a synced temporary file that keeps the file's mode (a
/// crash leaves the old configuration or the new one, never half of one).
fn replace_keeping_mode(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    write_file(path, text, mode)
}

/// Writes `path` with `mode` through a synced temporary file beside it.
fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// A file only the owner reads (0600), written through a temporary file and synced.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    write_file(path, text, 0o600)
}

/// A public key file: 0644, written through a temporary file.
fn write_public(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// The configuration text with `hub_id`, `hub_keys` and, when the hub names brokers, the
/// broker URL set; comments and everything else kept as they were.
pub fn update_config(
    text: &str,
    learned: &Learned,
    hub_key_files: &[PathBuf],
) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|e| format!("configuration: {e}"))?;
    apply_learned(&mut doc, learned, hub_key_files);
    let out = doc.to_string();
    AgentConfig::parse(&out)
        .map_err(|e| format!("the updated configuration does not load: {e}"))?;
    Ok(out)
}

/// The enrolment file's new text (`enrolment_file`): `before` (its text, empty when there is
/// none) with what the hub taught set, checked by loading `config` over it.
pub fn update_enrolment(
    config: &str,
    before: &str,
    learned: &Learned,
    hub_key_files: &[PathBuf],
) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut =
        before.parse().map_err(|e| format!("enrolment file: {e}"))?;
    if before.trim().is_empty() {
        doc.decor_mut().set_prefix(
            "# Written by `qrcash-agent enrol`: what the hub taught this board. Read over the\n\
             # configuration that names it (`enrolment_file`); edit that file instead.\n",
        );
    }
    apply_learned(&mut doc, learned, hub_key_files);
    let out = doc.to_string();
    let mut overlaid: toml_edit::DocumentMut =
        config.parse().map_err(|e| format!("configuration: {e}"))?;
    apply_learned(&mut overlaid, learned, hub_key_files);
    for key in crate::config::ENROLMENT_BROKER_KEYS {
        if let Some(value) = doc.get("broker").and_then(|b| b.get(key)) {
            if !overlaid.contains_table("broker") {
                overlaid["broker"] = toml_edit::table();
            }
            overlaid["broker"][key] = value.clone();
        }
    }
    AgentConfig::parse(&overlaid.to_string())
        .map_err(|e| format!("the configuration does not load with it: {e}"))?;
    Ok(out)
}

/// Sets `hub_id`, `hub_keys` and, when the hub names brokers, the broker URL in `doc`.
fn apply_learned(doc: &mut toml_edit::DocumentMut, learned: &Learned, hub_key_files: &[PathBuf]) {
    doc["hub_id"] = toml_edit::value(learned.hub_id.as_str());
    let mut keys = toml_edit::Array::new();
    for f in hub_key_files {
        keys.push(f.display().to_string());
    }
    doc["hub_keys"] = toml_edit::value(keys);
    if let Some((url, failover)) = learned.broker_urls.split_first() {
        if !doc.contains_table("broker") {
            doc["broker"] = toml_edit::table();
        }
        doc["broker"]["url"] = toml_edit::value(url.as_str());
        // The rest of the hub's list: the other nodes of a clustered broker. A hub that
        // names one broker leaves the board's own failover list as it is.
        if !failover.is_empty() {
            let mut rest = toml_edit::Array::new();
            for u in failover {
                rest.push(u.as_str());
            }
            doc["broker"]["failover_urls"] = toml_edit::value(rest);
        }
    }
}

/// Reads one message on the board's down-link for the rotation `jti`: `Ok(None)` when it is
/// not the hub's answer to it; `Ok(Some(()))` for its `Ack`; the refusal. The answer must be
/// signed by a hub key the board trusts for messages.
pub fn accept_rotation(
    bytes: &[u8],
    trusted: &[PublicKey],
    jti: &str,
) -> Result<Option<()>, EnrolError> {
    let Ok(sealed) = Sealed::parse(bytes, MAX_DOWNLINK_BYTES) else {
        return Ok(None);
    };
    let Some(key) = trusted.iter().find(|k| k.kid() == sealed.kid()) else {
        return Ok(None);
    };
    let Ok(claims) = sealed.open::<AtmDown>(key) else {
        return Ok(None);
    };
    let ours = claims.re.as_deref() == Some(jti);
    match claims.msg {
        AtmDown::Ack(a) if ours || a.ids.iter().any(|i| i == jti) => Ok(Some(())),
        AtmDown::Rejected(r) if ours => Err(EnrolError::Refused {
            reason: r.reason,
            message: r.message,
        }),
        _ => Ok(None),
    }
}

/// What a key rotation did.
#[derive(Debug)]
pub struct Rotated {
    /// The key handed over from (accepted by the hub for the overlap).
    pub old_kid: String,
    /// The key now enrolled.
    pub new_kid: String,
}

/// `qrcash-agent rotate-key`: with the agent stopped, the board makes a new key, has the hub
/// enrol it by a `RotateKey` signed with the current key, and only then makes it its key.
/// Messages waiting in the outbox, signed by the current key, stay deliverable: the hub
/// accepts the old key for the ATM messages' maximum age. Refused while the outbox holds
/// messages of a key before the current one (a second rotation would strand them).
pub async fn rotate(config_path: &Path, timeout: Duration) -> Result<Rotated, EnrolError> {
    let board = |e: String| EnrolError::Board(e);
    let cfg = AgentConfig::load(config_path).map_err(|e| board(e.to_string()))?;
    let mut store = Store::open(&cfg.database, cfg.outbox.bounds())
        .map_err(|e| board(format!("{}: {e}", cfg.database.display())))?;
    let now = SystemClock.now();
    if store.agent_running(now).map_err(|e| board(e.to_string()))? {
        return Err(board(
            "the agent is running: stop it first (systemctl stop qrcash-agent)".into(),
        ));
    }
    let old = PrivateKey::load(&cfg.key_file).map_err(|e| board(e.to_string()))?;
    let foreign = store
        .outbox_signers()
        .map_err(|e| board(e.to_string()))?
        .into_iter()
        .filter(|k| k != old.kid().as_str())
        .count();
    if foreign > 0 {
        return Err(board(format!(
            "the outbox holds {foreign} messages signed by a key before the current one: run the agent until they are delivered, then rotate"
        )));
    }
    let trusted = HubTrust::new(
        cfg.load_hub_keys().map_err(|e| board(e.to_string()))?,
        store.hub_trust_state().map_err(|e| board(e.to_string()))?,
    )
    .message_keys();
    // The new key and the signed request are kept beside the current key before anything is
    // sent. A run that ends without the hub's answer (timeout, crash, lost Ack) leaves them,
    // and the next run sends the very same request again: if the hub applied it, it answers
    // the duplicate with its Ack (it still accepts the old key for the rotation message
    // itself), and the swap completes; the board never ends up with a key the hub dropped.
    let pending = cfg.key_file.with_extension("new");
    let pending_request = cfg.key_file.with_extension("new.request");
    let (new, sealed) = match (pending.exists(), std::fs::read_to_string(&pending_request)) {
        (true, Ok(sealed)) => (
            PrivateKey::load(&pending).map_err(|e| board(e.to_string()))?,
            sealed,
        ),
        _ => {
            let new = PrivateKey::generate();
            new.save(&pending).map_err(|e| board(e.to_string()))?;
            let msg = AtmUp::RotateKey(RotateKey {
                public_key: new.public().to_jwk(),
                proof: enrol::rotation_proof(&new, &cfg.atm_id, old.kid().as_str()),
            });
            let seq = store
                .reserve_probe_seq(crate::doctor::probe::PROBE_SPAN)
                .map_err(|e| board(e.to_string()))?
                .ok_or_else(|| {
                    board("the outbox holds messages the rotation could overtake: run the agent until its outbox is empty".into())
                })?;
            let (_, sealed) = crate::runtime::seal_direct(&cfg, &old, seq, now, msg);
            write_private(&pending_request, &sealed)
                .map_err(|e| board(format!("{}: {e}", pending_request.display())))?;
            (new, sealed)
        }
    };
    let jti = Sealed::parse(sealed.as_bytes(), usize::MAX)
        .and_then(|s| s.peek::<serde_json::Value>())
        .map_err(|e| board(format!("{}: {e}", pending_request.display())))?
        .jti;
    exchange(&cfg, sealed.into_bytes(), timeout, |bytes| {
        accept_rotation(bytes, &trusted, &jti)
    })
    .await?;
    std::fs::rename(&pending, &cfg.key_file).map_err(|e| {
        board(format!(
            "the hub enrolled the key in {} but it could not replace {}: {e}; move it there by hand",
            pending.display(),
            cfg.key_file.display()
        ))
    })?;
    let _ = std::fs::remove_file(&pending_request);
    let rotated = Rotated {
        old_kid: old.kid().to_string(),
        new_kid: new.kid().to_string(),
    };
    store
        .journal(
            SystemClock.now(),
            crate::store::JournalKind::KeyRotated,
            None,
            None,
            serde_json::json!({ "old_kid": rotated.old_kid, "new_kid": rotated.new_kid }),
        )
        .map_err(|e| board(e.to_string()))?;
    Ok(rotated)
}

/// Publishes the request (again every [`RESEND`] while unanswered) and waits for the answer.
async fn exchange<T>(
    cfg: &AgentConfig,
    request: Vec<u8>,
    timeout: Duration,
    mut answer: impl FnMut(&[u8]) -> Result<Option<T>, EnrolError>,
) -> Result<T, EnrolError> {
    let board = |e: String| EnrolError::Board(e);
    let client_id = format!("{}-enrol-{}", cfg.atm_id, std::process::id());
    let options = qrcash_io::broker::mqtt_options(&cfg.broker, &client_id)
        .map_err(|e| board(e.to_string()))?;
    let (client, mut events) = AsyncClient::new(options, 16);
    let down = topics::atm_down(&cfg.atm_id);
    let up = topics::atm_up(&cfg.atm_id);
    client
        .subscribe(down.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| board(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let mut next_send = Instant::now();
    let mut subscribed = false;
    let mut last_error = None;
    let result = loop {
        let now = Instant::now();
        if now >= deadline {
            break Err(match last_error {
                Some(e) => board(format!("the broker at {}: {e}", cfg.broker.url)),
                None => EnrolError::Silent(timeout.as_secs()),
            });
        }
        if subscribed && now >= next_send {
            client
                .publish(up.clone(), QoS::AtLeastOnce, false, request.clone())
                .await
                .map_err(|e| board(e.to_string()))?;
            next_send = now + RESEND;
        }
        let wait = deadline.min(next_send.max(now + Duration::from_millis(50))) - now;
        match tokio::time::timeout(wait, events.poll()).await {
            Err(_) => {}
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed = true,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == down => {
                if let Some(answered) = answer(&p.payload)? {
                    break Ok(answered);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                last_error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let _ = client.try_disconnect();
    result
}

/// Reads the enrolment QR code through the configured camera.
async fn scan_code(cfg: &AgentConfig, within: Duration) -> Result<EnrolmentCode, EnrolError> {
    let board = |e: String| EnrolError::Board(e);
    let camera = cfg.camera.clone().ok_or_else(|| {
        board("the configuration has no [camera] section to scan with: pass --code".into())
    })?;
    let atm_id = cfg.atm_id.clone();
    let found =
        tokio::task::spawn_blocking(move || -> Result<Option<(String, EnrolmentCode)>, String> {
            use qrcash_hardware::scan::{PayloadFilter, ScanConfig, Scanner};
            let mut source = qrcash_hardware::camera::open(&camera)
                .map_err(|e| format!("cannot open the camera: {e}"))?
                .source;
            let mut scanner = Scanner::new(ScanConfig::live(PayloadFilter::new(|p| {
                p.starts_with(enrol::QR_PREFIX)
            })));
            let mut frame = qrcash_hardware::camera::LumaFrame::default();
            let started = Instant::now();
            while started.elapsed() < within {
                match source.next_frame(&mut frame) {
                    Ok(()) => {
                        if let Some(d) = scanner.scan(&frame)
                            && let Some(found) = enrol::parse_qr(&d.payload)
                        {
                            return Ok(Some(found));
                        }
                    }
                    Err(qrcash_hardware::camera::CameraError::Exhausted(_)) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| board(format!("the camera task failed: {e}")))?
        .map_err(board)?;
    let Some((atm, code)) = found else {
        return Err(board(format!(
            "no enrolment QR code in view within {} s: hold the code the operator printed in front of the camera, or pass --code",
            within.as_secs()
        )));
    };
    if atm != atm_id {
        return Err(board(format!(
            "this code enrols ATM {atm}, but the configuration says atm_id = {atm_id:?}: use the code issued for this ATM, or fix atm_id"
        )));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::Signer;
    use qrcash_protocol::envelope::Claims;
    use qrcash_protocol::messages::{Enrolled, Rejected};

    const ATM: &str = "atm-7";

    fn answer(
        hub: &PrivateKey,
        listed: &[&PrivateKey],
        code: &EnrolmentCode,
        kid: &str,
        nonce: &str,
        re: &str,
    ) -> Vec<u8> {
        let kids: Vec<&str> = listed.iter().map(|k| k.kid().as_str()).collect();
        let proof = enrol::answer_proof(&enrol::proof_key(code), ATM, kid, nonce, &kids);
        let msg = AtmDown::Enrolled(Enrolled {
            hub_keys: listed.iter().map(|k| k.public().to_jwk()).collect(),
            broker_urls: vec!["mqtts://broker:8883".into()],
            denominations: vec![10_000, 1_000],
            proof,
        });
        let claims = Claims::new("hub", ATM, 1, 100, Duration::from_secs(300), msg).in_reply_to(re);
        Signer::new("hub", hub.clone()).seal(&claims).into_bytes()
    }

    #[test]
    fn only_the_code_holders_answer_to_this_request_teaches_keys() {
        let code = EnrolmentCode::generate();
        let board = PrivateKey::generate();
        let kid = board.kid().to_string();
        let (hub, old) = (PrivateKey::generate(), PrivateKey::generate());
        let good = answer(&hub, &[&hub, &old], &code, &kid, "n1", "j1");
        let learned = accept(&good, ATM, &kid, "n1", &code, "j1")
            .unwrap()
            .unwrap();
        assert_eq!(learned.hub_id, "hub");
        assert_eq!(learned.hub_keys.len(), 2);
        assert_eq!(learned.hub_keys[0].kid(), hub.kid());
        assert_eq!(learned.broker_urls, ["mqtts://broker:8883"]);

        // Not an answer to this request: ignored.
        assert!(
            accept(&good, ATM, &kid, "n1", &code, "j2")
                .unwrap()
                .is_none()
        );
        assert!(
            accept(b"garbage", ATM, &kid, "n1", &code, "j1")
                .unwrap()
                .is_none()
        );
        // Another nonce, another board key, another code: the proof fails.
        for (k, n, c) in [
            (kid.as_str(), "n2", code.clone()),
            ("other", "n1", code.clone()),
            (kid.as_str(), "n1", EnrolmentCode::generate()),
        ] {
            assert!(matches!(
                accept(&good, ATM, k, n, &c, "j1"),
                Err(EnrolError::Forged(_))
            ));
        }
        // A stranger who knows the request but not the code cannot list his own key.
        let mallory = PrivateKey::generate();
        let forged = answer(
            &mallory,
            &[&mallory],
            &EnrolmentCode::generate(),
            &kid,
            "n1",
            "j1",
        );
        assert!(matches!(
            accept(&forged, ATM, &kid, "n1", &code, "j1"),
            Err(EnrolError::Forged(_))
        ));
        // Listed keys and proof right, signed by another key.
        let resigned = {
            let claims: Claims<AtmDown> = Sealed::parse(&good, MAX_DOWNLINK_BYTES)
                .unwrap()
                .peek()
                .unwrap();
            Signer::new("hub", mallory.clone())
                .seal(&claims)
                .into_bytes()
        };
        assert!(matches!(
            accept(&resigned, ATM, &kid, "n1", &code, "j1"),
            Err(EnrolError::Forged(_))
        ));
        // A refusal is reported as it stands.
        let refusal = Signer::new("hub", hub.clone())
            .seal(
                &Claims::new(
                    "hub",
                    ATM,
                    2,
                    100,
                    Duration::from_secs(300),
                    AtmDown::Rejected(Rejected {
                        reason: RejectReason::EnrolmentRefused,
                        message: "the enrolment code expired".into(),
                    }),
                )
                .in_reply_to("j1"),
            )
            .into_bytes();
        let err = accept(&refusal, ATM, &kid, "n1", &code, "j1").unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn the_configuration_keeps_its_comments_and_learns_the_hub() {
        let text = "# the board\natm_id = \"atm-7\" # this one\nkey_file = \"/k\"\nhub_keys = []\ndatabase = \"/d\"\n\n[[cassettes]]\ndenomination = 10000\n\n[broker]\nurl = \"mqtt://old:1883\" # bootstrap\n";
        let learned = Learned {
            hub_id: "hub-tokyo".into(),
            hub_keys: vec![],
            broker_urls: vec!["mqtts://core:8883".into()],
            denominations: vec![10_000],
        };
        let out = update_config(text, &learned, &[PathBuf::from("/etc/qrcash/hub-K.jwk")]).unwrap();
        assert!(
            out.contains("# the board") && out.contains("# this one"),
            "{out}"
        );
        let cfg = AgentConfig::parse(&out).unwrap();
        assert_eq!(cfg.hub_id, "hub-tokyo");
        assert_eq!(cfg.hub_keys, [PathBuf::from("/etc/qrcash/hub-K.jwk")]);
        assert_eq!(cfg.broker.url, "mqtts://core:8883");
        // No broker named: the one in the file stays.
        let keep = Learned {
            broker_urls: vec![],
            ..learned
        };
        let out = update_config(text, &keep, &[PathBuf::from("/k2")]).unwrap();
        assert_eq!(
            AgentConfig::parse(&out).unwrap().broker.url,
            "mqtt://old:1883"
        );
    }

    /// A package's configuration is not the board's to rewrite: the enrolment goes to its own
    /// file, which the configuration loads over itself; the configuration stays as shipped.
    #[test]
    fn an_enrolment_file_carries_what_the_hub_taught_over_an_untouched_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("enrolment.toml");
        let config_path = dir.path().join("agent.toml");
        let config = format!(
            "atm_id = \"atm-7\"\nkey_file = \"/k\"\nhub_keys = []\ndatabase = \"/d\"\nenrolment_file = \"{}\"\n\n[[cassettes]]\ndenomination = 10000\n\n[broker]\nurl = \"mqtt://bootstrap:1883\"\nkeep_alive_s = 20\n",
            file.display()
        );
        std::fs::write(&config_path, &config).unwrap();
        // Not enrolled yet: the configuration alone (which lacks hub keys).
        assert!(AgentConfig::load(&config_path).is_err());

        let learned = Learned {
            hub_id: "hub-tokyo".into(),
            hub_keys: vec![],
            broker_urls: vec!["mqtts://core:8883".into(), "mqtts://core-b:8883".into()],
            denominations: vec![10_000],
        };
        let keys = [dir.path().join("hub-K.jwk")];
        let first = update_enrolment(&config, "", &learned, &keys).unwrap();
        assert!(
            first.starts_with("# Written by `qrcash-agent enrol`"),
            "{first}"
        );
        std::fs::write(&file, &first).unwrap();
        let cfg = AgentConfig::load(&config_path).unwrap();
        assert_eq!(cfg.hub_id, "hub-tokyo");
        assert_eq!(cfg.hub_keys, keys);
        assert_eq!(cfg.broker.url, "mqtts://core:8883");
        assert_eq!(
            cfg.broker.failover_urls,
            ["mqtts://core-b:8883"],
            "the cluster's other node"
        );
        assert_eq!(
            cfg.broker.keep_alive_s, 20,
            "the rest of [broker] is the configuration's"
        );
        assert_eq!(std::fs::read_to_string(&config_path).unwrap(), config);

        // Enrolled again by a hub that names no broker: the learned one stays.
        let again = Learned {
            broker_urls: vec![],
            ..learned
        };
        let second = update_enrolment(&config, &first, &again, &keys).unwrap();
        std::fs::write(&file, &second).unwrap();
        assert_eq!(
            AgentConfig::load(&config_path).unwrap().broker.url,
            "mqtts://core:8883"
        );

        // Anything but what an enrolment sets is refused, not quietly applied.
        std::fs::write(&file, format!("{second}database = \"/elsewhere\"\n")).unwrap();
        let err = AgentConfig::load(&config_path).unwrap_err().to_string();
        assert!(
            err.contains("database is not an enrolment setting"),
            "{err}"
        );
        std::fs::write(&file, "[broker]\nca_file = \"/tmp/ca.pem\"\n").unwrap();
        let err = AgentConfig::load(&config_path).unwrap_err().to_string();
        assert!(
            err.contains("[broker] ca_file is not an enrolment setting"),
            "{err}"
        );
    }
}
