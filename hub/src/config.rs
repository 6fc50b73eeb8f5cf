//! The hub's TOML configuration: every tunable with its documented default.
//!
//! Durations are whole seconds in the file (`*_s` keys) and [`Duration`] in code. Money
//! limits are integer minor units of the account's currency. `docs/hub.md` lists every key;
//! [`DEFAULT_CONFIG_TOML`] is the commented file `qrcash-hub init` writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The commented default configuration written by `qrcash-hub init`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../data/hub.default.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// The hub's sender id (`iss` of everything it sends, `aud` of everything it accepts).
    pub hub_id: String,
    /// The SQLite database file (relative paths are relative to the config file).
    pub database: PathBuf,
    /// The hub's Ed25519 private key (JWK, mode 0600).
    pub key_file: PathBuf,
    /// Keys the hub signed with before a rotation (JWK, mode 0600), still accepted and never
    /// used to sign: they verify QR codes issued before the rotation, open passwords and PINs
    /// sealed to them, and endorse the key set that teaches devices the new key. Keep each
    /// until every code it signed has expired and every phone has learned the new key
    /// (`docs/deployment.md` §4).
    pub previous_key_files: Vec<PathBuf>,
    /// How the hub reaches the MQTT broker.
    pub broker: BrokerSection,
    /// What the ATM network pays out.
    pub network: NetworkSection,
    /// Cash withdrawal rules.
    pub withdrawal: WithdrawalSection,
    /// Transfers, merchant payments, bank payouts and top-ups.
    pub payments: PaymentsSection,
    /// Authentication of confirmations.
    pub auth: AuthSection,
    /// Fraud warnings shown with a confirmation request.
    pub warnings: WarningsSection,
    /// Anti-replay rules.
    pub replay: ReplaySection,
    /// Storage and background work.
    pub storage: StorageSection,
    /// The new-device restriction policy (`docs/restriction.md`).
    pub restriction: crate::restriction::RestrictionPolicy,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            hub_id: "hub".into(),
            database: PathBuf::from("hub.sqlite"),
            key_file: PathBuf::from("hub-key.jwk"),
            previous_key_files: Vec::new(),
            broker: BrokerSection::default(),
            network: NetworkSection::default(),
            withdrawal: WithdrawalSection::default(),
            payments: PaymentsSection::default(),
            auth: AuthSection::default(),
            warnings: WarningsSection::default(),
            replay: ReplaySection::default(),
            storage: StorageSection::default(),
            restriction: crate::restriction::RestrictionPolicy::default(),
        }
    }
}

/// `[broker]`: the MQTT connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSection {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Further brokers of the same cluster, tried in order when the one in use fails.
    pub failover_urls: Vec<String>,
    /// CA certificate (PEM) that signed the broker's certificate, for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), when the broker wants one.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// MQTT client id of this hub instance.
    pub client_id: String,
    /// Subscribe through the `$share/hub/` group so several hub instances split the load.
    pub shared_subscription: bool,
    /// MQTT keep-alive in seconds.
    pub keep_alive_s: u64,
    /// Port of the embedded broker (`serve --embedded-broker`).
    pub embedded_port: u16,
    /// The broker addresses handed to an ATM when it enrols (`Enrolled.broker_urls`), in
    /// order of preference; empty: it keeps the one it enrolled through.
    pub atm_urls: Vec<String>,
}

impl BrokerSection {
    /// The connection settings for [`qrcash_protocol::link`].
    pub fn link_config(&self) -> qrcash_io::BrokerConfig {
        qrcash_io::BrokerConfig {
            url: self.url.clone(),
            failover_urls: self.failover_urls.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            keep_alive_s: self.keep_alive_s,
        }
    }
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            url: "mqtt://127.0.0.1:1883".into(),
            failover_urls: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            client_id: "qrcash-hub".into(),
            shared_subscription: false,
            keep_alive_s: 15,
            embedded_port: 1883,
            atm_urls: Vec::new(),
        }
    }
}

/// `[network]`: currency, notes and local time of the ATM network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    /// ISO 4217 code of the currency the ATMs pay out.
    pub currency: String,
    /// Note denominations (minor units) the network's ATMs carry; an amount must be payable
    /// in them.
    pub denominations: Vec<u64>,
    /// Local time offset from UTC in minutes (540 for Japan), for "late hours" and daily
    /// limits.
    pub utc_offset_minutes: i32,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            currency: "JPY".into(),
            denominations: vec![10_000, 5_000, 2_000, 1_000],
            utc_offset_minutes: 540,
        }
    }
}

/// `[withdrawal]`: life cycle timings and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WithdrawalSection {
    /// How long an issued code stays valid.
    pub code_ttl_s: u64,
    /// How long the customer has to confirm after the code is presented.
    pub confirm_timeout_s: u64,
    /// How long a dispense order may still be started.
    pub order_ttl_s: u64,
    /// How long after an order's expiry without a report the transaction is flagged for
    /// reconciliation (the hold stays).
    pub report_grace_s: u64,
    /// Largest single withdrawal (minor units).
    pub per_transaction: u64,
    /// Largest total of withdrawals per local day (minor units).
    pub daily: u64,
    /// Send PNG and SVG renderings of the code with `CodeIssued` (about 30 KB); phones that
    /// draw the token themselves can do without (the fields are then empty).
    pub qr_images: bool,
}

impl Default for WithdrawalSection {
    fn default() -> Self {
        WithdrawalSection {
            code_ttl_s: 600,
            confirm_timeout_s: 120,
            order_ttl_s: 120,
            report_grace_s: 3600,
            per_transaction: 200_000,
            daily: 500_000,
            qr_images: true,
        }
    }
}

impl WithdrawalSection {
    /// [`WithdrawalSection::code_ttl_s`] as a duration.
    pub fn code_ttl(&self) -> Duration {
        Duration::from_secs(self.code_ttl_s)
    }
    /// [`WithdrawalSection::confirm_timeout_s`] as a duration.
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_secs(self.confirm_timeout_s)
    }
    /// [`WithdrawalSection::order_ttl_s`] as a duration.
    pub fn order_ttl(&self) -> Duration {
        Duration::from_secs(self.order_ttl_s)
    }
    /// [`WithdrawalSection::report_grace_s`] as a duration.
    pub fn report_grace(&self) -> Duration {
        Duration::from_secs(self.report_grace_s)
    }
}

/// `[payments]`: limits of the other asset-decreasing operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsSection {
    /// Largest single transfer, payment or bank withdrawal (minor units).
    pub per_transaction: u64,
    /// Largest total of transfers, payments and bank withdrawals per local day.
    pub daily: u64,
    /// Largest single top-up.
    pub topup_per_transaction: u64,
    /// Largest total of top-ups per local day.
    pub topup_daily: u64,
}

impl Default for PaymentsSection {
    fn default() -> Self {
        PaymentsSection {
            per_transaction: 1_000_000,
            daily: 2_000_000,
            topup_per_transaction: 1_000_000,
            topup_daily: 1_000_000,
        }
    }
}

/// Which identity evidence a confirmation must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityRule {
    /// The account PIN.
    Pin,
    /// A device biometric attestation.
    Biometric,
    /// Either one.
    PinOrBiometric,
    /// Both.
    PinAndBiometric,
}

/// `[auth]`: how a withdrawal confirmation is authenticated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Identity evidence required.
    pub identity: IdentityRule,
    /// Wrong PINs in a row before the PIN locks.
    pub pin_max_failures: u32,
    /// How long a locked PIN stays locked.
    pub pin_lockout_s: u64,
    /// How old a biometric attestation may be.
    pub biometric_max_age_s: u64,
    /// Whether the phone must send its position with a confirmation.
    pub location_required: bool,
    /// How far (metres, after both accuracy circles) the phone may be from the ATM.
    pub radius_m: f64,
    /// The worst position accuracy (metres) accepted.
    pub max_accuracy_m: f64,
    /// How long a login session lasts.
    pub session_ttl_s: u64,
    /// Argon2id memory cost (KiB) for new password and PIN hashes.
    pub argon2_memory_kib: u32,
    /// Argon2id iterations for new hashes.
    pub argon2_iterations: u32,
    /// Wrong passwords in a row a device id or an account name gets for free
    /// (`crate::throttle`).
    pub login_free_failures: u32,
    /// The first login lock after the free failures, seconds; it doubles with each further
    /// failure.
    pub login_lock_base_s: u64,
    /// The longest login lock, seconds; also how long the failure count of a device id, or
    /// of an account name nothing exists under, is kept once quiet.
    pub login_lock_max_s: u64,
    /// How long the failure count of an existing account is kept once quiet, so that waiting
    /// an hour does not reset a guesser's doubling lock, seconds.
    pub login_failure_memory_s: u64,
    /// Successful logins one device id may make per minute; more are refused
    /// `login_throttled` before any argon2 runs (wrong ones are bounded by the failure
    /// counts).
    pub logins_per_device_per_minute: u32,
    /// How long refusals of self-signed logins (phones with no enrolled device) are kept in
    /// `login_refusals`, seconds.
    pub login_refusal_retention_s: u64,
    /// Threads that check passwords and PINs (argon2) before a message reaches the single
    /// writer, so that guessing costs the writer nothing; 0 checks them on the writer.
    pub secret_workers: usize,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            identity: IdentityRule::Pin,
            pin_max_failures: 3,
            pin_lockout_s: 1800,
            biometric_max_age_s: 120,
            location_required: true,
            radius_m: 200.0,
            max_accuracy_m: 100.0,
            session_ttl_s: 30 * 24 * 3600,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            login_free_failures: 5,
            login_lock_base_s: 30,
            login_lock_max_s: 3_600,
            login_failure_memory_s: 30 * 86_400,
            logins_per_device_per_minute: 10,
            login_refusal_retention_s: 7 * 86_400,
            secret_workers: 1,
        }
    }
}

impl AuthSection {
    /// The login throttling figures.
    pub fn throttle(&self) -> crate::throttle::ThrottlePolicy {
        crate::throttle::ThrottlePolicy {
            free_failures: self.login_free_failures,
            base_lock_s: self.login_lock_base_s,
            max_lock_s: self.login_lock_max_s,
        }
    }

    /// The cost of new password and PIN hashes.
    pub fn hash_cost(&self) -> crate::identity::HashCost {
        crate::identity::HashCost {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
        }
    }

    /// [`AuthSection::pin_lockout_s`] as a duration.
    pub fn pin_lockout(&self) -> Duration {
        Duration::from_secs(self.pin_lockout_s)
    }
}

/// `[warnings]`: fraud warnings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarningsSection {
    /// A warnings file replacing the built-in `hub/data/warnings.toml`.
    pub file: Option<PathBuf>,
    /// Languages to send, in order.
    pub languages: Vec<String>,
    /// Amounts at or above this (minor units) get the large-amount warning.
    pub large_amount: u64,
    /// Local hour (0–23) at which late hours start.
    pub late_start_hour: u8,
    /// Local hour (0–23) at which late hours end.
    pub late_end_hour: u8,
    /// A new device or password change within this many days gets the recent-change warning.
    pub recent_change_days: u64,
}

impl Default for WarningsSection {
    fn default() -> Self {
        WarningsSection {
            file: None,
            languages: vec!["ja".into(), "en".into()],
            large_amount: 100_000,
            late_start_hour: 21,
            late_end_hour: 6,
            recent_change_days: 14,
        }
    }
}

/// `[replay]`: anti-replay rules per sender class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplaySection {
    /// Sequence window (≤ 128).
    pub seq_window: u64,
    /// Tolerated clock difference.
    pub max_skew_s: u64,
    /// Oldest ATM message accepted (outboxes deliver after long offline periods).
    pub atm_max_age_s: u64,
    /// Oldest phone message accepted.
    pub phone_max_age_s: u64,
    /// Lifetime of messages the hub sends.
    pub downlink_ttl_s: u64,
}

impl Default for ReplaySection {
    fn default() -> Self {
        ReplaySection {
            seq_window: 64,
            max_skew_s: 30,
            atm_max_age_s: 7 * 24 * 3600,
            phone_max_age_s: 300,
            downlink_ttl_s: 300,
        }
    }
}

impl ReplaySection {
    /// The rules for ATM messages.
    pub fn atm(&self) -> qrcash_protocol::ReplayConfig {
        qrcash_protocol::ReplayConfig {
            seq_window: self.seq_window,
            max_skew: Duration::from_secs(self.max_skew_s),
            max_age: Duration::from_secs(self.atm_max_age_s),
        }
    }
    /// The rules for phone messages.
    pub fn phone(&self) -> qrcash_protocol::ReplayConfig {
        qrcash_protocol::ReplayConfig {
            seq_window: self.seq_window,
            max_skew: Duration::from_secs(self.max_skew_s),
            max_age: Duration::from_secs(self.phone_max_age_s),
        }
    }
}

/// `[storage]`: database and background work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// PostgreSQL instead of the SQLite file `database`: a connection string
    /// (`postgres://qrcash@db1/qrcash` or `host=/run/postgresql dbname=qrcash`). Several hub
    /// instances may share it (docs/deployment.md, "Several hub instances on PostgreSQL").
    /// TLS from libpq's `sslmode` and `sslrootcert`, required over TCP to another machine
    /// (docs/deployment.md). `PGPASSFILE` is not read: use peer authentication, or keep the
    /// password in this file, which the package makes 0640.
    pub database_url: Option<String>,
    /// Most messages committed in one transaction (group commit).
    pub group_commit_max: usize,
    /// How often the expiry sweeper runs.
    pub sweep_interval_s: u64,
    /// How long the hub remembers processed message ids (to answer duplicates).
    pub processed_retention_s: u64,
    /// An answer not confirmed published this long after its commit (its instance died, or
    /// the broker was unreachable) is published again by the sweeper of any instance, and
    /// again every as long until confirmed or expired.
    pub outbox_retry_s: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            database_url: None,
            group_commit_max: 64,
            sweep_interval_s: 5,
            processed_retention_s: 8 * 24 * 3600,
            outbox_retry_s: 10,
        }
    }
}

impl HubConfig {
    /// Opens (and migrates) the configured database: PostgreSQL when
    /// `[storage] database_url` is set, else the SQLite file `database`.
    pub fn open_store(&self) -> Result<crate::store::Store, crate::store::StoreError> {
        match &self.storage.database_url {
            Some(url) => crate::store::Store::open_postgres(url),
            None => crate::store::Store::open(&self.database),
        }
    }

    /// The configured database for messages and logs, a password in it masked.
    pub fn database_name(&self) -> String {
        match &self.storage.database_url {
            Some(url) => redact_password(url),
            None => self.database.display().to_string(),
        }
    }

    /// Parses a configuration text and checks it.
    pub fn from_toml(text: &str) -> Result<HubConfig, ConfigError> {
        let config: HubConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration file; relative paths inside it are taken relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.database);
        fix(&mut self.key_file);
        self.previous_key_files.iter_mut().for_each(fix);
        for p in [
            &mut self.broker.ca_file,
            &mut self.broker.cert_file,
            &mut self.broker.key_file,
            &mut self.warnings.file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// Checks values that would make the hub misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if let Err(e) = qrcash_protocol::topics::validate_id(&self.hub_id) {
            return bad("hub_id", &e);
        }
        if let Err(e) = qrcash_protocol::Currency::new(&self.network.currency) {
            return bad("network.currency", &e);
        }
        if self.network.denominations.is_empty() || self.network.denominations.contains(&0) {
            return bad(
                "network.denominations",
                "list at least one denomination, none of them zero",
            );
        }
        if self.network.utc_offset_minutes.abs() > 14 * 60 {
            return bad("network.utc_offset_minutes", "must be within ±840");
        }
        if self.replay.seq_window == 0 || self.replay.seq_window > 128 {
            return bad("replay.seq_window", "must be 1 to 128");
        }
        if self.auth.pin_max_failures == 0 {
            return bad("auth.pin_max_failures", "must be at least 1");
        }
        if !(self.auth.radius_m.is_finite() && self.auth.radius_m >= 0.0) {
            return bad("auth.radius_m", "must be a non-negative number of metres");
        }
        if !(self.auth.max_accuracy_m.is_finite() && self.auth.max_accuracy_m >= 0.0) {
            return bad(
                "auth.max_accuracy_m",
                "must be a non-negative number of metres",
            );
        }
        if self.warnings.late_start_hour > 23 || self.warnings.late_end_hour > 23 {
            return bad("warnings.late_*_hour", "hours are 0 to 23");
        }
        if self.withdrawal.code_ttl_s == 0 || self.withdrawal.confirm_timeout_s == 0 {
            return bad(
                "withdrawal.code_ttl_s / confirm_timeout_s",
                "must be positive",
            );
        }
        self.restriction
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.storage.group_commit_max == 0 {
            return bad("storage.group_commit_max", "must be at least 1");
        }
        // An answer is confirmed published `CONFIRM_AFTER` after its publish, at the
        // publisher's next tick (1 s), and forgotten at the writer's next turn (a message or
        // the next sweep): a shorter retry publishes every answer twice.
        let confirmed_within =
            crate::service::CONFIRM_AFTER.as_secs() + 1 + self.storage.sweep_interval_s.max(1);
        if self.storage.outbox_retry_s <= confirmed_within {
            return Err(ConfigError::Invalid(format!(
                "storage.outbox_retry_s: must be more than {confirmed_within} s (an answer is \
                 confirmed published up to 3 s plus storage.sweep_interval_s after its \
                 publish; a shorter retry publishes answers twice)"
            )));
        }
        Ok(())
    }

    /// The network currency (validated).
    pub fn currency(&self) -> qrcash_protocol::Currency {
        qrcash_protocol::Currency::new(&self.network.currency)
            .unwrap_or(qrcash_protocol::Currency::JPY)
    }
}

/// A connection string with its password replaced by `***`, in either form:
/// `postgres://user:secret@host/db` or `host=h password=secret dbname=d`.
pub fn redact_password(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let mut shown = match rest.find('@') {
            Some(at) => {
                let (userinfo, host) = rest.split_at(at);
                match userinfo.find(':') {
                    Some(colon) => format!("{scheme}{}:***{host}", &userinfo[..colon]),
                    None => url.to_owned(),
                }
            }
            None => url.to_owned(),
        };
        // `?password=…` among the query parameters.
        if let Some(q) = shown.find('?') {
            let (base, query) = shown.split_at(q + 1);
            let query = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            shown = format!("{base}{query}");
        }
        return shown;
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_in_database_urls_are_masked() {
        for (url, shown) in [
            (
                "postgres://hub:s3cret@db1:5432/qrcash",
                "postgres://hub:***@db1:5432/qrcash",
            ),
            ("postgresql://hub@db1/qrcash", "postgresql://hub@db1/qrcash"),
            (
                "postgres://db1/qrcash?user=hub&password=s3cret",
                "postgres://db1/qrcash?user=hub&password=***",
            ),
            (
                "host=db1 password=s3cret dbname=qrcash",
                "host=db1 password=*** dbname=qrcash",
            ),
            (
                "host=/run/postgresql dbname=qrcash",
                "host=/run/postgresql dbname=qrcash",
            ),
        ] {
            assert_eq!(super::redact_password(url), shown);
        }
        let c = HubConfig::from_toml("[storage]\ndatabase_url = \"postgres://a:b@h/d\"").unwrap();
        assert_eq!(c.database_name(), "postgres://a:***@h/d");
    }

    use super::*;

    #[test]
    fn the_default_file_parses_to_the_defaults() {
        let parsed = HubConfig::from_toml(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, HubConfig::default());
    }

    /// The package's `/etc/qrcash/hub.toml` is the default file with the key and the
    /// database in the state directory: nothing else may drift.
    #[test]
    fn the_packaged_file_is_the_default_but_for_the_state_paths() {
        let mut packaged = HubConfig::from_toml(include_str!("../debian/hub.toml")).unwrap();
        assert_eq!(
            packaged.database,
            Path::new("/var/lib/qrcash-hub/hub.sqlite")
        );
        assert_eq!(
            packaged.key_file,
            Path::new("/var/lib/qrcash-hub/hub-key.jwk")
        );
        let default = HubConfig::default();
        packaged.database = default.database.clone();
        packaged.key_file = default.key_file.clone();
        assert_eq!(packaged, default);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(matches!(
            HubConfig::from_toml("hub_idd = \"x\""),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            HubConfig::from_toml("[network]\ndenominations = []"),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            HubConfig::from_toml("[network]\ncurrency = \"yen\""),
            Err(ConfigError::Invalid(_))
        ));
        // A resend sooner than an answer can be confirmed would publish every answer twice.
        assert!(matches!(
            HubConfig::from_toml("[storage]\nsweep_interval_s = 1\noutbox_retry_s = 4"),
            Err(ConfigError::Invalid(e)) if e.contains("outbox_retry_s")
        ));
        HubConfig::from_toml("[storage]\nsweep_interval_s = 1\noutbox_retry_s = 5").unwrap();
        let c = HubConfig::from_toml("[withdrawal]\ncode_ttl_s = 60").unwrap();
        assert_eq!(c.withdrawal.code_ttl(), Duration::from_secs(60));
        assert_eq!(c.withdrawal.confirm_timeout_s, 120);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(
            &path,
            "database = \"db/hub.sqlite\"\nprevious_key_files = [\"old/hub-key.jwk\", \"/etc/k.jwk\"]",
        )
        .unwrap();
        let c = HubConfig::load(&path).unwrap();
        assert_eq!(c.database, dir.path().join("db/hub.sqlite"));
        assert_eq!(c.key_file, dir.path().join("hub-key.jwk"));
        assert_eq!(
            c.previous_key_files,
            vec![dir.path().join("old/hub-key.jwk"), "/etc/k.jwk".into()]
        );
    }
}
