//! The agent's TOML configuration: identity and keys, database, broker, camera, dispenser,
//! cassette layout, outbox bounds and timings. See `docs/agent.md` for an example file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qrcash_hardware::camera::CameraConfig;
use qrcash_hardware::dispenser::lcdm::LcdmConfig;
use qrcash_io::BrokerConfig;
use qrcash_protocol::{Currency, PublicKey};
use serde::Deserialize;

use crate::error::AgentError;
use crate::store::OutboxBounds;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This ATM's id (its topic id, `iss` and MQTT client id).
    pub atm_id: String,
    /// The hub's sender id.
    #[serde(default = "default_hub_id")]
    pub hub_id: String,
    /// The ATM's private signing key (JWK, mode 0600; `qrcash-agent keygen` makes it).
    pub key_file: PathBuf,
    /// The hub's public keys (JWK files); more than one during a key rotation.
    pub hub_keys: Vec<PathBuf>,
    /// Where `qrcash-agent enrol` keeps what it learned from the hub (`hub_id`, `hub_keys`,
    /// the broker URL) when this file is not the board's to rewrite, as with the package's
    /// `/etc/qrcash/agent.toml`. Read over this file when it exists; the hub key files are
    /// written beside it. Without it, `enrol` rewrites this file.
    #[serde(default)]
    pub enrolment_file: Option<PathBuf>,
    /// The SQLite database (journal, orders, outbox).
    pub database: PathBuf,
    /// ISO 4217 currency of the cassettes.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Cassettes in position order (first = cassette 1, the upper one).
    pub cassettes: Vec<CassetteConfig>,
    /// The broker.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// The camera (from the hardware crate); `None` when a frame source is passed in.
    #[serde(default)]
    pub camera: Option<CameraConfig>,
    /// The LCDM dispenser (from the hardware crate); `None` when a dispenser is passed in.
    #[serde(default)]
    pub dispenser: Option<LcdmConfig>,
    /// Outbox bounds and resend timing.
    #[serde(default)]
    pub outbox: OutboxSettings,
    /// Session timings.
    #[serde(default)]
    pub timing: Timing,
}

/// One cassette.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassetteConfig {
    /// Face value of its notes in minor units.
    pub denomination: u64,
    /// Notes loaded (reported in heartbeats).
    #[serde(default)]
    pub notes: u32,
}

/// Outbox bounds and resend timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// Most messages queued before new sessions are refused (reports are always kept).
    pub max_messages: u64,
    /// Most bytes queued before new sessions are refused.
    pub max_bytes: u64,
    /// First resend delay of unacknowledged messages, ms.
    pub resend_initial_ms: u64,
    /// Longest resend delay, ms.
    pub resend_max_ms: u64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        let b = OutboxBounds::default();
        OutboxSettings {
            max_messages: b.max_messages,
            max_bytes: b.max_bytes,
            resend_initial_ms: 3_000,
            resend_max_ms: 60_000,
        }
    }
}

impl OutboxSettings {
    /// The bounds part.
    pub fn bounds(&self) -> OutboxBounds {
        OutboxBounds {
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
        }
    }
}

/// Session and housekeeping timings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Heartbeat period.
    pub heartbeat_s: u64,
    /// Wait for the hub's answer to a presented code before giving up.
    pub present_timeout_s: u64,
    /// Wait after the confirmation deadline for the order before giving up.
    pub confirm_grace_s: u64,
    /// The same code seen again within this time counts as the same presentation.
    pub rescan_quiet_s: u64,
    /// Shortest time between two camera frames, ms (keeps an unpaced source from
    /// spinning a core).
    pub min_frame_interval_ms: u64,
    /// How often the dispenser's status is read while no customer is being served: a
    /// device that stops answering takes the ATM out of service with an alarm, and one that
    /// answers again is recovered and put back in service.
    pub device_check_s: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_s: 30,
            present_timeout_s: 30,
            confirm_grace_s: 10,
            rescan_quiet_s: 10,
            min_frame_interval_ms: 50,
            device_check_s: 10,
        }
    }
}

impl Timing {
    /// Heartbeat period as a duration (at least 1 s).
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s.max(1))
    }

    /// Dispenser check period as a duration (at least 1 s).
    pub fn device_check(&self) -> Duration {
        Duration::from_secs(self.device_check_s.max(1))
    }
}

/// The keys an enrolment file may set, each replacing the configuration's.
const ENROLMENT_KEYS: [&str; 2] = ["hub_id", "hub_keys"];
/// The `[broker]` keys an enrolment file may set: the brokers the hub named.
pub const ENROLMENT_BROKER_KEYS: [&str; 2] = ["url", "failover_urls"];

/// The configuration text with its enrolment file (`enrolment_file`), when that exists, read
/// over it: its `hub_id`, `hub_keys` and `[broker] url` and `failover_urls` replace the
/// configuration's. Any other
/// key there is refused, so a stray setting cannot hide in the state directory.
pub fn with_enrolment(text: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let Some(path) = doc.get("enrolment_file").and_then(|v| v.as_str()) else {
        return Ok(text.to_owned());
    };
    let path = PathBuf::from(path);
    let learned = match std::fs::read_to_string(&path) {
        Ok(learned) => learned,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(text.to_owned()),
        Err(e) => return Err(format!("enrolment file {}: {e}", path.display())),
    };
    let learned: toml_edit::DocumentMut = learned
        .parse()
        .map_err(|e| format!("enrolment file {}: {e}", path.display()))?;
    for (key, item) in learned.iter() {
        match key {
            k if ENROLMENT_KEYS.contains(&k) => doc[k] = item.clone(),
            "broker" => {
                for (bkey, bitem) in item.as_table_like().into_iter().flat_map(|t| t.iter()) {
                    if !ENROLMENT_BROKER_KEYS.contains(&bkey) {
                        return Err(format!(
                            "enrolment file {}: [broker] {bkey} is not an enrolment setting",
                            path.display()
                        ));
                    }
                    if !doc.contains_table("broker") {
                        doc["broker"] = toml_edit::table();
                    }
                    doc["broker"][bkey] = bitem.clone();
                }
            }
            other => {
                return Err(format!(
                    "enrolment file {}: {other} is not an enrolment setting",
                    path.display()
                ));
            }
        }
    }
    Ok(doc.to_string())
}

fn default_hub_id() -> String {
    "hub".into()
}

fn default_currency() -> String {
    "JPY".into()
}

impl AgentConfig {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let config_error = |e: String| AgentError::Config(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let text = with_enrolment(&text).map_err(config_error)?;
        Self::parse(&text).map_err(config_error)
    }

    /// Reads and checks the file of a board that may not be enrolled yet: as
    /// [`AgentConfig::load`], but `hub_keys` may be empty (`keygen`, `enrol`).
    pub fn load_unenrolled(path: &Path) -> Result<Self, AgentError> {
        let config_error = |e: String| AgentError::Config(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let text = with_enrolment(&text).map_err(config_error)?;
        Self::parse_unenrolled(&text).map_err(config_error)
    }

    /// Parses and checks TOML text of a board not enrolled yet: as [`AgentConfig::parse`],
    /// but `hub_keys` may be empty (`qrcash-agent enrol` fills it).
    pub fn parse_unenrolled(text: &str) -> Result<Self, String> {
        let mut cfg: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let keys = std::mem::take(&mut cfg.hub_keys);
        cfg.hub_keys = vec![PathBuf::new()];
        cfg.validate()?;
        cfg.hub_keys = keys;
        Ok(cfg)
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        qrcash_protocol::topics::validate_id(&self.atm_id)?;
        self.currency()?;
        if self.cassettes.is_empty() {
            return Err("at least one cassette must be configured".into());
        }
        if self.cassettes.iter().any(|c| c.denomination == 0) {
            return Err("a cassette denomination must be above zero".into());
        }
        if self.hub_keys.is_empty() {
            return Err("hub_keys must name at least one hub public key file".into());
        }
        Ok(())
    }

    /// The currency.
    pub fn currency(&self) -> Result<Currency, String> {
        Currency::new(&self.currency)
    }

    /// Cassette denominations in position order.
    pub fn denominations(&self) -> Vec<u64> {
        self.cassettes.iter().map(|c| c.denomination).collect()
    }

    /// Loads the hub public keys.
    pub fn load_hub_keys(&self) -> Result<Vec<PublicKey>, AgentError> {
        self.hub_keys.iter().map(|p| load_public_key(p)).collect()
    }
}

/// Reads a public key file: a JWK; a private JWK is accepted and only its public half used.
pub fn load_public_key(path: &Path) -> Result<PublicKey, AgentError> {
    let err = |detail: String| AgentError::KeyFile {
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not a JWK: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let jwk = qrcash_protocol::PublicJwk {
        kty: field("kty").unwrap_or_default(),
        crv: field("crv").unwrap_or_default(),
        x: field("x").unwrap_or_default(),
        kid: field("kid"),
    };
    PublicKey::from_jwk(&jwk).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
atm_id = "atm-shibuya-1"
key_file = "/var/lib/qrcash/atm.jwk"
hub_keys = ["/etc/qrcash/hub.pub.jwk"]
database = "/var/lib/qrcash/agent.db"

[[cassettes]]
denomination = 10000
notes = 2000

[[cassettes]]
denomination = 1000
notes = 1000

[broker]
url = "mqtts://broker.example:8883"
ca_file = "/etc/qrcash/ca.pem"
cert_file = "/etc/qrcash/atm.pem"
key_file = "/etc/qrcash/atm.key"

[camera]
kind = "v4l"
device = "/dev/video0"

[dispenser]
port = "/dev/ttyUSB0"
model = "lcdm-2000"

[outbox]
max_messages = 5000

[timing]
heartbeat_s = 60
"#;

    #[test]
    fn example_config_parses_with_defaults() {
        let c = AgentConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.hub_id, "hub");
        assert_eq!(c.denominations(), vec![10_000, 1_000]);
        assert_eq!(c.outbox.max_messages, 5000);
        assert_eq!(c.outbox.resend_initial_ms, 3_000);
        assert_eq!(c.timing.heartbeat_s, 60);
        assert_eq!(c.timing.present_timeout_s, 30);
        assert!(c.dispenser.is_some() && c.camera.is_some());
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let no_cassettes = EXAMPLE.replace("[[cassettes]]", "[[unknown]]");
        assert!(AgentConfig::parse(&no_cassettes).is_err());
        let bad_id = EXAMPLE.replace("atm-shibuya-1", "atm/1");
        assert!(AgentConfig::parse(&bad_id).unwrap_err().contains("atm/1"));
        let typo = format!("{EXAMPLE}\n[timing]\nheartbeats = 1\n");
        assert!(AgentConfig::parse(&typo).is_err());
    }
}
