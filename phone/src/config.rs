//! The CLI's configuration file (`phone.toml` in the state directory): who this device is,
//! which hub it trusts and how to reach the broker.

use std::path::{Path, PathBuf};

use qrcash_io::BrokerConfig;
use qrcash_protocol::PublicKey;
use serde::{Deserialize, Serialize};

use crate::client::PhoneSettings;
use crate::error::PhoneError;

/// File name of the configuration inside the state directory.
pub const CONFIG_FILE: &str = "phone.toml";

/// `phone.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneConfig {
    /// This device's id (topic id and `iss`).
    pub device_id: String,
    /// Human name of the device.
    pub name: String,
    /// The hub's sender id.
    #[serde(default = "default_hub_id")]
    pub hub_id: String,
    /// File with the hub's public key (a JWK, as the operator published it).
    pub hub_key: PathBuf,
    /// The broker.
    #[serde(default)]
    pub broker: BrokerConfig,
}

fn default_hub_id() -> String {
    "hub".into()
}

impl PhoneConfig {
    /// Reads `phone.toml` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PhoneError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| PhoneError::Store {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| PhoneError::StoreFormat {
            path,
            detail: e.to_string(),
        })
    }

    /// Writes `phone.toml` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PhoneError> {
        let text = toml::to_string_pretty(self).map_err(|e| PhoneError::Config(e.to_string()))?;
        crate::store::write_atomically(&dir.join(CONFIG_FILE), text.as_bytes())
    }

    /// Loads the hub's public key from [`PhoneConfig::hub_key`].
    pub fn load_hub_key(&self) -> Result<PublicKey, PhoneError> {
        load_public_key(&self.hub_key)
    }

    /// Client settings from this configuration (persistent broker session, so pushes sent
    /// between two CLI runs are not lost).
    pub fn settings(&self) -> PhoneSettings {
        PhoneSettings {
            device_name: self.name.clone(),
            hub_id: self.hub_id.clone(),
            persistent_session: true,
            ..PhoneSettings::new(self.device_id.clone(), self.broker.clone())
        }
    }
}

/// Reads a public key file: a JWK (`{"kty":"OKP","crv":"Ed25519","x":…}`); a private JWK is
/// accepted too and only its public half is used.
pub fn load_public_key(path: &Path) -> Result<PublicKey, PhoneError> {
    let text = std::fs::read_to_string(path).map_err(|source| PhoneError::Store {
        path: path.to_owned(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PhoneError::StoreFormat {
            path: path.to_owned(),
            detail: format!("not a JWK: {e}"),
        })?;
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let jwk = qrcash_protocol::PublicJwk {
        kty: field("kty").unwrap_or_default(),
        crv: field("crv").unwrap_or_default(),
        x: field("x").unwrap_or_default(),
        kid: field("kid"),
    };
    Ok(PublicKey::from_jwk(&jwk)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_io::KeyFile;
    use qrcash_protocol::PrivateKey;

    #[test]
    fn config_round_trips_and_hub_key_loads_from_public_or_private_jwk() {
        let dir = tempfile::tempdir().unwrap();
        let hub = PrivateKey::generate();
        let pub_path = dir.path().join("hub.pub.jwk");
        std::fs::write(
            &pub_path,
            serde_json::to_string(&hub.public().to_jwk()).unwrap(),
        )
        .unwrap();
        let priv_path = dir.path().join("hub.jwk");
        hub.save(&priv_path).unwrap();
        let cfg = PhoneConfig {
            device_id: "dev-1".into(),
            name: "Test phone".into(),
            hub_id: "hub".into(),
            hub_key: pub_path,
            broker: BrokerConfig::plain("mqtt://127.0.0.1:1999"),
        };
        cfg.save(dir.path()).unwrap();
        let loaded = PhoneConfig::load(dir.path()).unwrap();
        assert_eq!(loaded, cfg);
        assert_eq!(loaded.load_hub_key().unwrap().kid(), hub.kid());
        assert_eq!(load_public_key(&priv_path).unwrap().kid(), hub.kid());
        std::fs::write(dir.path().join("bad.jwk"), "{}").unwrap();
        assert!(load_public_key(&dir.path().join("bad.jwk")).is_err());
    }
}
