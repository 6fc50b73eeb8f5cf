//! The doctor's measurements: the I/O half of [`super`]. Each check reads what it needs
//! (files, the database, the broker, the hub, the camera, the dispenser) and hands the
//! figures to a judgement or builds its finding from the error, with what to do about it.
//!
//! What a running agent holds (the camera and the serial port) is left alone: those checks
//! report the figures the agent recorded instead.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qrcash_hardware::camera::quality::view_quality;
use qrcash_hardware::camera::{CameraConfig, CameraError, LumaFrame};
use qrcash_hardware::dispenser::lcdm::{LcdmConfig, LcdmDispenser};
use qrcash_hardware::dispenser::{CassetteState as DeviceCassette, DispenserError};
use qrcash_hardware::scan::Scanner;
use qrcash_io::KeyFile;
use qrcash_protocol::envelope::Sealed;
use qrcash_protocol::keyset::HubTrust;
use qrcash_protocol::messages::{AtmDown, AtmState, AtmUp, Heartbeat};
use qrcash_protocol::replay::ReplayConfig;
use qrcash_protocol::{Clock, MAX_DOWNLINK_BYTES, PrivateKey, RejectReason, SystemClock, topics};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, Packet, QoS};

use super::{Finding, Report, judge_camera, judge_clock, judge_disk, judge_outbox};
use crate::AgentConfig;
use crate::config::load_public_key;
use crate::store::Store;

/// How long the doctor looks and waits.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long to watch the camera.
    pub camera_window: Duration,
    /// How long to wait for the broker's and then the hub's answer.
    pub hub_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            camera_window: Duration::from_secs(2),
            hub_timeout: Duration::from_secs(10),
        }
    }
}

/// The checks after the configuration, in the order of the table.
const LATER: [&str; 12] = [
    "atm key",
    "hub keys",
    "broker tls",
    "database",
    "disk space",
    "outbox",
    "orders",
    "broker",
    "hub",
    "clock",
    "camera",
    "dispenser",
];

/// Runs every check on the board configured by `config_path`.
pub async fn examine(config_path: &Path, options: &Options) -> Report {
    let mut report = Report::default();
    let cfg = match AgentConfig::load(config_path) {
        Ok(cfg) => cfg,
        Err(e) => {
            report.push(Finding::fail(
                "configuration",
                format!("{}: {e}", config_path.display()),
                "fix the file (docs/agent.md describes every setting)",
            ));
            for check in LATER {
                report.push(Finding::skipped(check, "needs a valid configuration"));
            }
            return report;
        }
    };
    report.push(Finding::ok(
        "configuration",
        format!(
            "{}: ATM {}, hub {}, broker {}",
            config_path.display(),
            cfg.atm_id,
            cfg.hub_id,
            cfg.broker.url
        ),
    ));
    let now = SystemClock.now();
    let atm_key = check_atm_key(&cfg.key_file, &mut report);
    let (database, mut store) = open_database(&cfg);
    let trust = check_hub_keys(&cfg, store.as_mut(), &mut report);
    report.push(check_broker_tls(&cfg));
    report.push(database);
    report.push(check_disk(&cfg.database));
    match store.as_mut() {
        Some(store) => {
            report.push(check_outbox(store, now));
            report.push(check_orders(store));
        }
        None => {
            report.push(Finding::skipped("outbox", "needs the database"));
            report.push(Finding::skipped("orders", "needs the database"));
        }
    }
    let probe = HubProbe {
        cfg: &cfg,
        key: atm_key,
        trust,
        store: store.as_mut(),
        timeout: options.hub_timeout,
    };
    for finding in probe.run().await {
        report.push(finding);
    }
    // Asked again just before each device: an agent started meanwhile owns it.
    let camera = match devices_free(store.as_mut(), "camera") {
        Ok(()) => check_camera(&cfg, options.camera_window).await,
        Err(skipped) => skipped,
    };
    report.push(camera);
    let dispenser = match devices_free(store.as_mut(), "dispenser") {
        Ok(()) => check_dispenser(&cfg).await,
        Err(skipped) => skipped,
    };
    report.push(dispenser);
    report
}

/// Whether the doctor may open the camera and the serial port: only when it knows that no
/// agent runs on this board. Otherwise the skipped line, with the agent's own figures.
fn devices_free(store: Option<&mut Store>, check: &'static str) -> Result<(), Finding> {
    let Some(store) = store else {
        return Err(Finding::skipped(
            check,
            "cannot tell whether the agent runs (the database did not open): stop the agent, fix the database line, and run the doctor again",
        ));
    };
    if !agent_running(store, SystemClock.now()) {
        return Ok(());
    }
    let mut why =
        "the running agent holds it; stop the agent (systemctl stop qrcash-agent) to test it"
            .to_owned();
    if check == "camera" {
        let recorded = store
            .status_value("camera")
            .ok()
            .flatten()
            .unwrap_or_else(|| "nothing recorded".into());
        why.push_str(&format!("; the agent recorded {recorded}"));
    }
    Err(Finding::skipped(check, why))
}

/// Orders whose dispense has no recorded outcome: money in doubt until the agent's start-up
/// recovery settles them.
fn check_orders(store: &mut Store) -> Finding {
    const CHECK: &str = "orders";
    match store.unfinished_orders() {
        Ok(o) if o.is_empty() => Finding::ok(CHECK, "no dispense without a recorded outcome"),
        Ok(o) => {
            let ids: Vec<String> = o.iter().map(|r| r.order.order_id.to_string()).collect();
            Finding::warn(
                CHECK,
                format!(
                    "{} dispense(s) without a recorded outcome: {}",
                    ids.len(),
                    ids.join(", ")
                ),
                "start the agent: its start-up recovery settles them with the dispenser and reports them to the hub",
            )
        }
        Err(e) => Finding::fail(CHECK, e.to_string(), "see the database line"),
    }
}

/// Whether an agent runs on this database: it records that it is alive every 5 s.
fn agent_running(store: &mut Store, now: u64) -> bool {
    store.agent_running(now).unwrap_or(false)
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

fn check_atm_key(path: &Path, report: &mut Report) -> Option<PrivateKey> {
    const CHECK: &str = "atm key";
    // `rotate-key` and `enrol --new-key` keep the new key here until the hub answered.
    let pending = path.with_extension("new");
    if pending.exists() {
        report.push(Finding::fail(
            CHECK,
            format!(
                "{} is left from an interrupted key change: the hub may already know only that key",
                pending.display()
            ),
            "run the same command again (`qrcash-agent rotate-key`, or `enrol --new-key` with the code): it resends the same request and completes the change",
        ));
        return PrivateKey::load(path).ok();
    }
    match PrivateKey::load(path) {
        Ok(key) => {
            report.push(Finding::ok(
                CHECK,
                format!(
                    "{}: kid {}, mode {:04o}",
                    path.display(),
                    key.kid(),
                    mode_of(path).unwrap_or(0)
                ),
            ));
            Some(key)
        }
        Err(qrcash_protocol::KeyError::InsecurePermissions { mode, .. }) => {
            report.push(Finding::fail(
                CHECK,
                format!(
                    "{} is mode {mode:04o}: others on the board can read the ATM's signing key",
                    path.display()
                ),
                format!(
                    "chmod 600 {}; since it was readable, treat it as exposed: make a new key (`qrcash-agent keygen --force`) and have the hub enrol it",
                    path.display()
                ),
            ));
            None
        }
        Err(qrcash_protocol::KeyError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            report.push(Finding::fail(
                CHECK,
                format!("{} does not exist", path.display()),
                "make it with `qrcash-agent keygen` and have the hub operator enrol the printed public key",
            ));
            None
        }
        Err(qrcash_protocol::KeyError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            report.push(Finding::fail(
                CHECK,
                format!("{}: the doctor's user cannot read it ({source})", path.display()),
                "run the doctor as the agent's user (e.g. `sudo -u qrcash qrcash-agent doctor`); if the agent's user cannot read it either, `chown` it to that user (keep mode 0600)",
            ));
            None
        }
        Err(e) => {
            report.push(Finding::fail(
                CHECK,
                e.to_string(),
                "the file is damaged: make a new key with `qrcash-agent keygen --force` and have the hub enrol it",
            ));
            None
        }
    }
}

fn check_hub_keys(
    cfg: &AgentConfig,
    store: Option<&mut Store>,
    report: &mut Report,
) -> Option<HubTrust> {
    const CHECK: &str = "hub keys";
    if cfg.hub_keys.is_empty() {
        let fix = match &cfg.enrolment_file {
            Some(file) => format!(
                "enrol the board (qrcash-agent enrol), which writes them to {}",
                file.display()
            ),
            None => "enrol the board (qrcash-agent enrol), or copy the hub's public key file to the board and list it in hub_keys".to_owned(),
        };
        report.push(Finding::fail(
            CHECK,
            "hub_keys lists no key: no order from the hub can be verified",
            fix,
        ));
        return None;
    }
    let mut roots = Vec::new();
    for path in &cfg.hub_keys {
        // A public key is no secret, but whoever can replace it can make the ATM obey a
        // forged hub.
        if let Some(mode) = mode_of(path).filter(|m| m & 0o022 != 0) {
            report.push(Finding::fail(
                CHECK,
                format!(
                    "{} is mode {mode:04o}: others can replace the hub's key and forge orders",
                    path.display()
                ),
                format!("chmod 644 {} and let root own it", path.display()),
            ));
            return None;
        }
        match load_public_key(path) {
            Ok(key) => roots.push(key),
            Err(e) => {
                report.push(Finding::fail(
                    CHECK,
                    e.to_string(),
                    "copy the hub's public key (a JWK) again from the hub operator",
                ));
                return None;
            }
        }
    }
    let saved = store.and_then(|s| s.hub_trust_state().ok().flatten());
    let trust = HubTrust::new(roots, saved);
    let kids: Vec<String> = trust.roots().iter().map(|k| k.kid().to_string()).collect();
    let learned = trust.code_keys().len().saturating_sub(trust.roots().len());
    report.push(Finding::ok(
        CHECK,
        format!(
            "{} configured ({}), {learned} learned from the hub's key set",
            kids.len(),
            kids.join(", ")
        ),
    ));
    Some(trust)
}

fn check_broker_tls(cfg: &AgentConfig) -> Finding {
    const CHECK: &str = "broker tls";
    let broker = &cfg.broker;
    match qrcash_io::broker::parse_url(&broker.url) {
        Err(e) => return Finding::fail(CHECK, e.to_string(), "fix broker.url"),
        Ok((false, _, _)) => {
            return Finding::warn(
                CHECK,
                format!(
                    "{} is plain MQTT: the link is not encrypted and the broker cannot tell this ATM by its certificate",
                    broker.url
                ),
                "use mqtts:// with ca_file, cert_file and key_file (docs/deployment.md)",
            );
        }
        Ok(_) => {}
    }
    let Some(ca) = &broker.ca_file else {
        return Finding::fail(
            CHECK,
            "mqtts:// without ca_file",
            "set broker.ca_file to the CA that signed the broker's certificate",
        );
    };
    if let Err(e) = read_certificates(ca) {
        return Finding::fail(CHECK, e, "copy the broker CA's certificate (PEM) again");
    }
    let (Some(cert), Some(key)) = (&broker.cert_file, &broker.key_file) else {
        return Finding::warn(
            CHECK,
            "no client certificate: the broker cannot tell this ATM from any other client",
            "set broker.cert_file and broker.key_file to the ATM's certificate (CN = atm_id) and key",
        );
    };
    match mode_of(key) {
        None => {
            return Finding::fail(
                CHECK,
                format!("{} cannot be read", key.display()),
                "copy the ATM's TLS key again",
            );
        }
        Some(mode) if mode & 0o077 != 0 => {
            return Finding::fail(
                CHECK,
                format!(
                    "{} is mode {mode:04o}: others can read the ATM's TLS key",
                    key.display()
                ),
                format!(
                    "chmod 600 {}; treat the key as exposed and have its certificate revoked and reissued",
                    key.display()
                ),
            );
        }
        Some(_) => {}
    }
    let certs = match read_certificates(cert) {
        Ok(c) => c,
        Err(e) => return Finding::fail(CHECK, e, "copy the ATM's certificate (PEM) again"),
    };
    let Some(leaf) = certs.first() else {
        return Finding::fail(
            CHECK,
            format!("{}: no certificate", cert.display()),
            "copy the ATM's certificate (PEM) again",
        );
    };
    let now = SystemClock.now() as i64;
    let renew =
        "have a new certificate issued for this ATM (docs/deployment.md §3) before it expires";
    if leaf.cn.as_deref() != Some(cfg.atm_id.as_str()) {
        return Finding::fail(
            CHECK,
            format!(
                "{} is issued to CN {:?}, not to this ATM ({}): the broker grants a certificate the rights of its CN",
                cert.display(),
                leaf.cn.as_deref().unwrap_or(""),
                cfg.atm_id
            ),
            "use the certificate issued for this atm_id",
        );
    }
    if leaf.not_after < now {
        return Finding::fail(
            CHECK,
            format!(
                "{} expired {} days ago",
                cert.display(),
                (now - leaf.not_after) / 86_400
            ),
            renew,
        );
    }
    if leaf.not_before > now {
        return Finding::fail(
            CHECK,
            format!(
                "{} is not valid before {} (in {} s)",
                cert.display(),
                leaf.not_before,
                leaf.not_before - now
            ),
            "check the board's clock, or the certificate's dates",
        );
    }
    let days = (leaf.not_after - now) / 86_400;
    let detail = format!(
        "client certificate CN {}, valid {days} more days; key mode 0600",
        cfg.atm_id
    );
    if days < 30 {
        return Finding::warn(CHECK, detail, renew);
    }
    Finding::ok(CHECK, detail)
}

/// What the doctor reads of a certificate.
struct CertInfo {
    cn: Option<String>,
    not_before: i64,
    not_after: i64,
}

fn read_certificates(path: &Path) -> Result<Vec<CertInfo>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
        out.push(CertInfo {
            cn: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        });
    }
    if out.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(out)
}

/// Opens the database as the agent would, after checking who may read it and that the
/// doctor runs as its owner (a file SQLite creates for another user would lock the agent
/// out); then its integrity.
fn open_database(cfg: &AgentConfig) -> (Finding, Option<Store>) {
    const CHECK: &str = "database";
    let path = &cfg.database;
    let euid = rustix::process::geteuid().as_raw();
    let existing = std::fs::metadata(path).ok();
    // The agent's user owns its database; before there is one, its key; before that, the
    // nearest existing folder the database would be made in. Files the doctor made for
    // another user would lock the agent out.
    let owner_of = existing
        .as_ref()
        .map(|m| (m.uid(), path.clone()))
        .or_else(|| {
            std::fs::metadata(&cfg.key_file)
                .ok()
                .map(|m| (m.uid(), cfg.key_file.clone()))
        })
        .or_else(|| {
            path.ancestors().skip(1).find_map(|dir| {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::metadata(dir)
                    .ok()
                    .map(|m| (m.uid(), dir.to_owned()))
            })
        });
    if let Some((owner, file)) = owner_of
        && owner != euid
    {
        return (
            Finding::fail(
                CHECK,
                format!(
                    "{} belongs to uid {owner}, the doctor runs as uid {euid}",
                    file.display()
                ),
                format!(
                    "run the doctor as the agent's user (e.g. `sudo -u qrcash qrcash-agent doctor`): files it made for uid {euid} would lock the agent out"
                ),
            ),
            None,
        );
    }
    let wide = existing
        .as_ref()
        .map(|m| m.permissions().mode() & 0o7777)
        .filter(|m| m & 0o077 != 0);
    let mut store = match Store::open(path, cfg.outbox.bounds()) {
        Ok(s) => s,
        Err(e) => {
            return (
                Finding::fail(
                    CHECK,
                    format!("{}: {e}", path.display()),
                    "check the file system (see disk space) and the file's owner and mode; if it is damaged, keep it for the bank and call support: a restored copy must not run as is (its seq counter would lag the hub's window)",
                ),
                None,
            );
        }
    };
    let created = if existing.is_none() {
        ", created now (the agent would at start)"
    } else {
        ""
    };
    let finding = match store.integrity_problems() {
        Err(e) => Finding::fail(
            CHECK,
            format!("{}: integrity check failed: {e}", path.display()),
            "check the file system; keep the file for the bank and call support",
        ),
        Ok(problems) if !problems.is_empty() => Finding::fail(
            CHECK,
            format!("{}: damaged: {}", path.display(), problems.join("; ")),
            "stop the agent, keep a copy of the file for the bank, and call support: a restored copy must not run as is (its seq counter would lag the hub's window)",
        ),
        Ok(_) => match wide {
            Some(mode) => Finding::warn(
                CHECK,
                format!(
                    "{} was mode {mode:04o}, readable by others: tightened to 0600 now",
                    path.display()
                ),
                "the journal and outbox may have been read: tell the bank's security team",
            ),
            None => Finding::ok(
                CHECK,
                format!(
                    "{}: integrity ok, mode {:04o}{created}",
                    path.display(),
                    mode_of(path).unwrap_or(0)
                ),
            ),
        },
    };
    (finding, Some(store))
}

fn check_disk(database: &Path) -> Finding {
    // The file system the database lives on: the file's, or its directory's before it exists.
    let mut at: PathBuf = database.to_owned();
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p.to_owned(),
            _ => {
                at = PathBuf::from(".");
                break;
            }
        }
    }
    match rustix::fs::statvfs(&at) {
        Ok(s) => judge_disk(
            &database.display().to_string(),
            s.f_bavail.saturating_mul(s.f_frsize),
            s.f_blocks.saturating_mul(s.f_frsize),
        ),
        Err(e) => Finding::fail(
            "disk space",
            format!("{}: {e}", at.display()),
            "check the file system",
        ),
    }
}

fn check_outbox(store: &mut Store, now: u64) -> Finding {
    match store.outbox_stats() {
        Ok(s) => judge_outbox(
            s.messages,
            s.bytes,
            s.oldest_created_at,
            s.full,
            s.dead_letters,
            now,
        ),
        Err(e) => Finding::fail("outbox", e.to_string(), "check the database line"),
    }
}

/// The broker, the hub and the clock, from one signed heartbeat: the broker must take the
/// connection with this ATM's certificate, the hub must answer with a key this ATM trusts,
/// and the answer's date gives the hub's clock.
struct HubProbe<'a> {
    cfg: &'a AgentConfig,
    key: Option<PrivateKey>,
    trust: Option<HubTrust>,
    store: Option<&'a mut Store>,
    timeout: Duration,
}

/// What came back for the heartbeat.
enum Answer {
    Ack,
    Rejected(RejectReason, String),
}

impl HubProbe<'_> {
    async fn run(self) -> [Finding; 3] {
        let (broker, mut link) = match self.connect().await {
            Ok((finding, client, events)) => (finding, (client, events)),
            Err(finding) => {
                return [
                    finding,
                    Finding::skipped("hub", "needs the broker"),
                    Finding::skipped("clock", "needs the hub's answer"),
                ];
            }
        };
        let (hub, clock) = self.ask_hub(&link.0, &mut link.1).await;
        let _ = link.0.try_disconnect();
        [broker, hub, clock]
    }

    /// Connects as `<atm_id>-doctor-<pid>` (the agent's own connection, if it runs, stays
    /// up): the broker line, and the connection when it holds.
    async fn connect(&self) -> Result<(Finding, AsyncClient, rumqttc::EventLoop), Finding> {
        const CHECK: &str = "broker";
        let url = &self.cfg.broker.url;
        let client_id = format!("{}-doctor-{}", self.cfg.atm_id, std::process::id());
        let options =
            qrcash_io::broker::mqtt_options(&self.cfg.broker, &client_id).map_err(|e| {
                Finding::fail(
                    CHECK,
                    e.to_string(),
                    "fix the [broker] section (see the broker tls line)",
                )
            })?;
        let (client, mut events) = AsyncClient::new(options, 16);
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                let how = match (url.starts_with("mqtts://"), &self.cfg.broker.cert_file) {
                    (true, Some(_)) => "TLS, client certificate accepted",
                    (true, None) => "TLS",
                    (false, _) => "plain",
                };
                let finding = Finding::ok(
                    CHECK,
                    format!(
                        "connected to {url} in {} ms ({how})",
                        started.elapsed().as_millis()
                    ),
                );
                Ok((finding, client, events))
            }
            Ok(Err(e)) => Err(broker_failure(url, &e)),
            Err(_) => Err(Finding::fail(
                CHECK,
                format!("{url} did not answer within {} s", self.timeout.as_secs()),
                "check the address and port, and that no firewall drops the traffic",
            )),
        }
    }

    async fn ask_hub(
        self,
        client: &AsyncClient,
        events: &mut rumqttc::EventLoop,
    ) -> (Finding, Finding) {
        let skip_clock = |why: &str| Finding::skipped("clock", why.to_owned());
        let (Some(key), Some(trust), Some(store)) = (self.key, self.trust, self.store) else {
            return (
                Finding::skipped("hub", "needs the ATM key, the hub keys and the database"),
                skip_clock("needs the hub's answer"),
            );
        };
        let cfg = self.cfg;
        if agent_running(store, SystemClock.now()) {
            return (
                running_agent_hub(cfg, store),
                skip_clock(
                    "measured with the agent stopped: the doctor's heartbeat would race the agent's",
                ),
            );
        }
        let (seq, heartbeat) = match probe_heartbeat(cfg, store) {
            Ok(Some(h)) => h,
            Ok(None) => {
                return (
                    Finding::skipped(
                        "hub",
                        format!(
                            "the outbox holds messages {PROBE_SPAN} or more sequence numbers back: a heartbeat now could overtake them and push them out of the hub's replay window; start the agent so it delivers them, then run the doctor again"
                        ),
                    ),
                    skip_clock("needs the hub's answer"),
                );
            }
            Err(e) => {
                return (
                    Finding::fail(
                        "hub",
                        format!("cannot reserve a sequence number: {e}"),
                        "see the database and disk space lines",
                    ),
                    skip_clock("needs the hub's answer"),
                );
            }
        };
        let now = SystemClock.now();
        let (jti, sealed) =
            crate::runtime::seal_direct(cfg, &key, seq, now, AtmUp::Heartbeat(heartbeat));
        let down = topics::atm_down(&cfg.atm_id);
        let sent = async {
            client.subscribe(down.clone(), QoS::AtLeastOnce).await?;
            client
                .publish(
                    topics::atm_up(&cfg.atm_id),
                    QoS::AtLeastOnce,
                    false,
                    sealed.into_bytes(),
                )
                .await
        };
        if let Err(e) = sent.await {
            return (
                Finding::fail(
                    "hub",
                    format!("cannot send the heartbeat: {e}"),
                    "see the broker line",
                ),
                skip_clock("needs the hub's answer"),
            );
        }
        let keys = trust.message_keys();
        let mut untrusted: Option<String> = None;
        let mut subscribed = true;
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, async {
            loop {
                let publish = match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        subscribed = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
                        continue;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == down => p,
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                };
                let received_at = SystemClock.now();
                let Ok(sealed) = Sealed::parse(&publish.payload, MAX_DOWNLINK_BYTES) else {
                    continue;
                };
                let Some(hub_key) = keys.iter().find(|k| k.kid() == sealed.kid()) else {
                    untrusted = Some(sealed.kid().to_string());
                    continue;
                };
                // The signature, not the dates: a skewed clock is what this measures.
                let Ok(claims) = sealed.open::<AtmDown>(hub_key) else {
                    continue;
                };
                if claims.iss != cfg.hub_id {
                    continue;
                }
                // Answers to the heartbeat name it in `re`; an `Ack` also lists it. Anything
                // else is the running agent's traffic.
                let ours = claims.re.as_deref() == Some(jti.as_str());
                // The hub dated its answer between our sending and our receiving it: only a
                // date outside that interval is an offset. Positive: this board is ahead.
                let offset = if claims.iat < now {
                    (now - claims.iat) as i64
                } else if claims.iat > received_at {
                    -((claims.iat - received_at) as i64)
                } else {
                    0
                };
                match claims.msg {
                    AtmDown::Ack(a) if ours || a.ids.contains(&jti) => {
                        return Ok((Answer::Ack, offset));
                    }
                    AtmDown::Rejected(r) if ours => {
                        return Ok((Answer::Rejected(r.reason, r.message), offset));
                    }
                    _ => continue,
                }
            }
        })
        .await;
        let waited = started.elapsed().as_millis();
        // The hub's own setting is not known here; the protocol's default is what the
        // reference hub ships with.
        let max_skew = ReplayConfig::default().max_skew;
        match answer {
            Ok(Ok((Answer::Ack, offset))) => (
                Finding::ok(
                    "hub",
                    format!(
                        "{} answered the heartbeat in {waited} ms, signed with a trusted key",
                        cfg.hub_id
                    ),
                ),
                judge_clock(offset, max_skew),
            ),
            Ok(Ok((Answer::Rejected(reason, message), offset))) => {
                let clock = judge_clock(offset, max_skew);
                let (detail, fix) =
                    if reason == RejectReason::Replayed && clock.verdict != super::Verdict::Ok {
                        (
                            format!(
                                "{} answered but refused the heartbeat: {message}",
                                cfg.hub_id
                            ),
                            "see the clock line",
                        )
                    } else {
                        (
                            format!(
                                "{} refused the heartbeat: {reason:?}: {message}",
                                cfg.hub_id
                            ),
                            "check atm_id and hub_id against the hub operator's enrolment",
                        )
                    };
                (Finding::fail("hub", detail, fix), clock)
            }
            Ok(Err(e)) => (
                Finding::fail(
                    "hub",
                    format!("the broker connection ended while waiting: {e}"),
                    "see the broker line",
                ),
                skip_clock("needs the hub's answer"),
            ),
            Err(_) => {
                let (detail, fix) = if !subscribed {
                    (
                        format!("the broker refused this ATM its down-link {down}"),
                        "the broker's ACL must let the certificate's CN read qrcash/v1/atm/<CN>/down".to_owned(),
                    )
                } else if let Some(kid) = untrusted {
                    (
                        format!("the hub answered with key {kid}, which this ATM does not trust"),
                        "put the hub's current public key in hub_keys (see `qrcash-agent hub-keys`)".to_owned(),
                    )
                } else {
                    (
                        format!(
                            "no answer from {} within {} s",
                            cfg.hub_id,
                            self.timeout.as_secs()
                        ),
                        format!(
                            "check that the hub runs, and that it enrolled this ATM with key {}: the hub does not answer unknown keys",
                            key.kid()
                        ),
                    )
                };
                (
                    Finding::fail("hub", detail, fix),
                    skip_clock("needs the hub's answer"),
                )
            }
        }
    }
}

fn broker_failure(url: &str, e: &ConnectionError) -> Finding {
    const CHECK: &str = "broker";
    let (detail, fix) = match e {
        ConnectionError::ConnectionRefused(code) => (
            format!("{url} refused the connection: {code:?}"),
            match code {
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => {
                    "the broker does not accept this ATM's certificate: check it was issued by the device CA and is not revoked"
                }
                _ => "see the broker's log",
            },
        ),
        ConnectionError::Tls(e) => (
            format!("TLS with {url} failed: {e}"),
            "ca_file must be the CA that signed the broker's certificate, whose name must match the URL's host; the broker must accept this client certificate",
        ),
        ConnectionError::Io(e) => (
            format!("cannot reach {url}: {e}"),
            "start the broker, or fix broker.url; check that no firewall blocks the port",
        ),
        other => (format!("{url}: {other}"), "see the broker's log"),
    };
    Finding::fail(CHECK, detail, fix)
}

/// How far the probe's `seq` may run ahead of the oldest message waiting in the outbox: well
/// inside the hub's replay window (at least 64, `docs/protocol.md` §4), so that the probe
/// can never push a waiting message out of it.
pub const PROBE_SPAN: u64 = 32;

/// The doctor's heartbeat: the ATM's true state (out of service: no agent runs), its
/// cassettes as the agent reports them, and a sequence number reserved in the agent's
/// database (so never reused) unless that would overtake waiting messages (`None`).
fn probe_heartbeat(
    cfg: &AgentConfig,
    store: &mut Store,
) -> Result<Option<(u64, Heartbeat)>, crate::error::StoreError> {
    let kept = store.cassette_counts()?;
    let configured: Vec<u64> = cfg.cassettes.iter().map(|c| c.denomination).collect();
    let outbox = store.outbox_stats()?.messages;
    let Some(seq) = store.reserve_probe_seq(PROBE_SPAN)? else {
        return Ok(None);
    };
    Ok(Some((
        seq,
        Heartbeat {
            state: AtmState::OutOfService,
            cassettes: crate::runtime::heartbeat_cassettes(&configured, &kept),
            outbox: u32::try_from(outbox).unwrap_or(u32::MAX),
            software: format!("qrcash-agent {} (doctor)", env!("CARGO_PKG_VERSION")),
        },
    )))
}

/// With the agent running, the hub line comes from what the agent heard: a verified message
/// from the hub within two heartbeats.
fn running_agent_hub(cfg: &AgentConfig, store: &mut Store) -> Finding {
    let now = SystemClock.now();
    let heard = store.status_time("hub_heard_at").ok().flatten();
    let window = cfg.timing.heartbeat_s.saturating_mul(2).saturating_add(10);
    match heard {
        Some(at) if now.saturating_sub(at) <= window => Finding::ok(
            "hub",
            format!(
                "the running agent heard {} {} s ago (a verified message)",
                cfg.hub_id,
                now.saturating_sub(at)
            ),
        ),
        heard => Finding::fail(
            "hub",
            match heard {
                Some(at) => format!(
                    "the running agent last heard {} {} s ago",
                    cfg.hub_id,
                    now.saturating_sub(at)
                ),
                None => format!("the running agent never heard {}", cfg.hub_id),
            },
            "see the broker line; check that the hub runs and enrolled this ATM's key; `qrcash-agent status` and the agent's log say more",
        ),
    }
}

async fn check_camera(cfg: &AgentConfig, window: Duration) -> Finding {
    const CHECK: &str = "camera";
    let Some(camera) = cfg.camera.clone() else {
        return Finding::fail(
            CHECK,
            "the configuration has no [camera] section",
            "add one (docs/agent.md)",
        );
    };
    let watch = tokio::task::spawn_blocking(move || watch_camera(&camera, window));
    // A camera that hangs inside a read must not hang the doctor.
    match tokio::time::timeout(window.saturating_add(Duration::from_secs(5)), watch).await {
        Ok(Ok(Err(e))) => Finding::fail(
            CHECK,
            format!("cannot open the camera: {e}"),
            "check the [camera] section, that the device exists, and that the agent's user is in the `video` group; a V4L camera needs the ATM package (built with V4L)",
        ),
        Ok(Ok(Ok(w))) => judge_camera(
            w.frames,
            w.errors,
            if w.frames > 0 {
                w.capture.max(Duration::from_millis(1))
            } else {
                window
            },
            w.last_error.as_deref(),
            w.quality,
            w.code.then_some("qrcash code"),
        ),
        Ok(Err(e)) => Finding::fail(
            CHECK,
            format!("the camera check panicked: {e}"),
            "report this",
        ),
        Err(_) => Finding::fail(
            CHECK,
            format!(
                "a frame read did not return within {} s",
                window.as_secs() + 5
            ),
            "the camera hangs: replug it, or check its driver (dmesg)",
        ),
    }
}

/// What the camera delivered while watched.
struct Watched {
    frames: u64,
    /// Time spent waiting for the camera (scanning excluded).
    capture: Duration,
    errors: u64,
    last_error: Option<String>,
    quality: Option<qrcash_hardware::camera::quality::ViewQuality>,
    code: bool,
}

fn watch_camera(config: &CameraConfig, window: Duration) -> Result<Watched, CameraError> {
    let mut w = Watched {
        frames: 0,
        capture: Duration::ZERO,
        errors: 0,
        last_error: None,
        quality: None,
        code: false,
    };
    let mut source = qrcash_hardware::camera::open(config)?.source;
    let mut scanner = Scanner::new(crate::runtime::live_scan_config());
    let mut frame = LumaFrame::default();
    let started = Instant::now();
    let mut captured = LumaFrame::default();
    while started.elapsed() < window {
        let asked = Instant::now();
        let read = source.next_frame(&mut frame);
        // The camera's rate, not the scanner's: only the time spent waiting for frames.
        w.capture += asked.elapsed();
        match read {
            Ok(()) => {
                w.frames += 1;
                w.code |= scanner.scan(&frame).is_some();
                std::mem::swap(&mut frame, &mut captured);
            }
            Err(CameraError::Exhausted(_)) => break,
            Err(e) => {
                w.errors += 1;
                w.last_error = Some(e.to_string());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    if w.frames > 0 {
        w.quality = Some(view_quality(&captured.view()));
    }
    Ok(w)
}

/// The longest a dispenser check may take: opening, status and ROM version take about 2 s on
/// a silent line.
const DISPENSER_TIMEOUT: Duration = Duration::from_secs(30);

async fn check_dispenser(cfg: &AgentConfig) -> Finding {
    const CHECK: &str = "dispenser";
    let Some(config) = cfg.dispenser.clone() else {
        return Finding::fail(
            CHECK,
            "the configuration has no [dispenser] section",
            "add one (docs/agent.md)",
        );
    };
    let port = config.port.clone();
    let ask = tokio::task::spawn_blocking(move || ask_dispenser(config));
    match tokio::time::timeout(DISPENSER_TIMEOUT, ask).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => Finding::fail(
            CHECK,
            format!("the dispenser check panicked: {e}"),
            "report this",
        ),
        Err(_) => Finding::fail(
            CHECK,
            format!(
                "{port} did not let the check finish within {} s",
                DISPENSER_TIMEOUT.as_secs()
            ),
            "the serial adapter hangs: replug it, or check its driver (dmesg)",
        ),
    }
}

fn ask_dispenser(config: LcdmConfig) -> Finding {
    const CHECK: &str = "dispenser";
    let port = config.port.clone();
    let model = format!("{:?}", config.model);
    let mut driver = match LcdmDispenser::open(config) {
        Ok(d) => d,
        Err(e @ DispenserError::Open { .. }) => {
            return Finding::fail(
                CHECK,
                e.to_string(),
                "check dispenser.port (prefer a /dev/serial/by-id/ link), the cable, and that the agent's user is in the dialout group",
            );
        }
        Err(e) => return Finding::fail(CHECK, e.to_string(), "fix the [dispenser] section"),
    };
    if driver
        .last_dispense()
        .is_some_and(|l| l.blocks_dispensing())
    {
        return Finding::warn(
            CHECK,
            format!(
                "the last dispense on {port} awaits recovery, so the doctor sends nothing (the device's late answer must be read first)"
            ),
            "start the agent: it recovers the dispense at start and reports it to the hub",
        );
    }
    let identity = match driver.identify() {
        Ok(i) => i,
        Err(e) => {
            return Finding::fail(
                CHECK,
                e.to_string(),
                format!(
                    "check that an {model} is on {port}, powered and at the configured baud rate"
                ),
            );
        }
    };
    let status = identity.status;
    let cassettes: Vec<String> = status
        .cassettes
        .iter()
        .map(|c| format!("{} {:?}", c.cassette, c.state).to_lowercase())
        .collect();
    let detail = format!(
        "{model} on {port}, ROM {}; {}",
        identity.rom_version,
        cassettes.join(", ")
    );
    if status.is_ready() {
        let low = status
            .cassettes
            .iter()
            .any(|c| matches!(c.state, DeviceCassette::NearEnd));
        if low {
            return Finding::warn(
                CHECK,
                detail,
                "a cassette is nearly empty: replenish it and set its count (`qrcash-agent cassettes set`)",
            );
        }
        return Finding::ok(CHECK, detail);
    }
    let mut problems = Vec::new();
    if let Some(e) = &status.error {
        problems.push(format!("device error {e}"));
    }
    if status.notes_in_path {
        problems.push("notes in the note path".to_owned());
    }
    if !status.reject_tray_present {
        problems.push("reject tray missing".to_owned());
    }
    for c in &status.cassettes {
        if matches!(c.state, DeviceCassette::Missing | DeviceCassette::Empty) {
            problems.push(format!("{} {:?}", c.cassette, c.state).to_lowercase());
        }
    }
    Finding::fail(
        CHECK,
        format!("{detail}: {}", problems.join(", ")),
        "clear the device (seat the cassettes and the reject tray, remove stuck notes); the agent purges the note path at start",
    )
}
