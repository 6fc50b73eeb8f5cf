//! The MQTT topic tree, defined here and nowhere else.
//!
//! ```text
//! qrcash/v1/atm/{atm_id}/up          ATM → hub     (AtmUp)
//! qrcash/v1/atm/{atm_id}/down        hub → ATM     (AtmDown)
//! qrcash/v1/atm/{atm_id}/presence    ATM last will, retained ("online"/"offline", unsigned)
//! qrcash/v1/phone/{device_id}/up     phone → hub   (PhoneUp)
//! qrcash/v1/phone/{device_id}/push   hub → phone   (PhonePush)
//! qrcash/v1/hub/keys                  hub → all     retained key set (keyset::HubKeys)
//! ```
//!
//! Each client's own id is one topic level, so a broker can confine it with a per-username
//! ACL pattern (`qrcash/v1/atm/%u/#`). Hub instances share the up-link load through the
//! shared subscription group `$share/hub/…`. All messages use QoS 1; correlation and
//! deduplication live inside the signed payload (`jti`, `re`, `seq`), so MQTT 3.1.1 is enough.

use std::fmt;

/// Root of every topic.
pub const ROOT: &str = "qrcash/v1";
/// MQTT shared-subscription group of the hub instances.
pub const HUB_GROUP: &str = "hub";
/// The hub's key set, retained (`crate::keyset`). Every device may read it; only the hub
/// may write it.
pub const HUB_KEYS: &str = "qrcash/v1/hub/keys";
/// Ids no ATM or phone may have: the broker ACL gives the certificate CNs `hub` and
/// `bridge-edge` the hub's and the edge bridge's rights (`deploy/mosquitto/acl.conf`). A
/// hub whose id is not `hub` reserves its own id too ([`is_reserved`]).
pub const RESERVED_IDS: [&str; 2] = ["hub", "bridge-edge"];

/// Whether `id` is reserved for the broker's own principals when the hub's id is `hub_id`.
pub fn is_reserved(id: &str, hub_id: &str) -> bool {
    id == hub_id || RESERVED_IDS.contains(&id)
}

/// Longest accepted client id.
pub const MAX_ID_LEN: usize = 64;

/// A parsed qrcash topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// ATM → hub.
    AtmUp(String),
    /// Hub → ATM.
    AtmDown(String),
    /// ATM presence (last will).
    AtmPresence(String),
    /// Phone → hub.
    PhoneUp(String),
    /// Hub → phone.
    PhonePush(String),
}

impl Topic {
    /// Parses a concrete topic name; `None` for anything outside the tree or with an
    /// invalid id.
    pub fn parse(topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (kind, id, leaf) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || validate_id(id).is_err() {
            return None;
        }
        let id = id.to_owned();
        Some(match (kind, leaf) {
            ("atm", "up") => Topic::AtmUp(id),
            ("atm", "down") => Topic::AtmDown(id),
            ("atm", "presence") => Topic::AtmPresence(id),
            ("phone", "up") => Topic::PhoneUp(id),
            ("phone", "push") => Topic::PhonePush(id),
            _ => return None,
        })
    }

    /// The client id in the topic.
    pub fn id(&self) -> &str {
        match self {
            Topic::AtmUp(id)
            | Topic::AtmDown(id)
            | Topic::AtmPresence(id)
            | Topic::PhoneUp(id)
            | Topic::PhonePush(id) => id,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, leaf) = match self {
            Topic::AtmUp(_) => ("atm", "up"),
            Topic::AtmDown(_) => ("atm", "down"),
            Topic::AtmPresence(_) => ("atm", "presence"),
            Topic::PhoneUp(_) => ("phone", "up"),
            Topic::PhonePush(_) => ("phone", "push"),
        };
        write!(f, "{ROOT}/{kind}/{}/{leaf}", self.id())
    }
}

/// `qrcash/v1/atm/{id}/up`.
pub fn atm_up(id: &str) -> String {
    Topic::AtmUp(id.to_owned()).to_string()
}
/// `qrcash/v1/atm/{id}/down`.
pub fn atm_down(id: &str) -> String {
    Topic::AtmDown(id.to_owned()).to_string()
}
/// `qrcash/v1/atm/{id}/presence`.
pub fn atm_presence(id: &str) -> String {
    Topic::AtmPresence(id.to_owned()).to_string()
}
/// `qrcash/v1/phone/{id}/up`.
pub fn phone_up(id: &str) -> String {
    Topic::PhoneUp(id.to_owned()).to_string()
}
/// `qrcash/v1/phone/{id}/push`.
pub fn phone_push(id: &str) -> String {
    Topic::PhonePush(id.to_owned()).to_string()
}

/// The hub's subscriptions. With `shared`, up-links go through the `$share/hub/` group so
/// several hub instances split the load; presence is seen by every instance.
pub fn hub_subscriptions(shared: bool) -> Vec<String> {
    let prefix = if shared {
        format!("$share/{HUB_GROUP}/")
    } else {
        String::new()
    };
    vec![
        format!("{prefix}{ROOT}/atm/+/up"),
        format!("{prefix}{ROOT}/phone/+/up"),
        format!("{ROOT}/atm/+/presence"),
    ]
}

/// Checks an account, device or ATM id: 1–64 characters of `A–Z a–z 0–9 - _ .`, which keeps
/// MQTT wildcards and level separators out of topic names.
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(ok_char) || id == "." || id == ".."
    {
        return Err(format!(
            "id {id:?} must be 1 to {MAX_ID_LEN} characters of letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for t in [
            Topic::AtmUp("atm-1".into()),
            Topic::AtmDown("atm-1".into()),
            Topic::AtmPresence("atm-1".into()),
            Topic::PhoneUp("dev_9".into()),
            Topic::PhonePush("dev_9".into()),
        ] {
            assert_eq!(Topic::parse(&t.to_string()), Some(t));
        }
        assert_eq!(atm_up("a"), "qrcash/v1/atm/a/up");
        assert_eq!(phone_push("p"), "qrcash/v1/phone/p/push");
    }

    #[test]
    fn foreign_and_wildcard_topics_are_refused() {
        for t in [
            "qrcash/v1/atm/+/up",
            "qrcash/v1/atm/#",
            "qrcash/v1/atm/a/up/x",
            "qrcash/v2/atm/a/up",
            "qrcash/v1/bank/a/up",
            "qrcash/v1/atm//up",
            "qrcash/v1/phone/a/down",
        ] {
            assert_eq!(Topic::parse(t), None, "{t}");
        }
        assert!(validate_id(&"a".repeat(65)).is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("..").is_err());
    }

    #[test]
    fn hub_subscribes_through_the_shared_group() {
        let subs = hub_subscriptions(true);
        assert!(subs.contains(&"$share/hub/qrcash/v1/atm/+/up".to_string()));
        assert!(subs.contains(&"$share/hub/qrcash/v1/phone/+/up".to_string()));
        assert!(hub_subscriptions(false)[0].starts_with("qrcash/"));
    }
}
