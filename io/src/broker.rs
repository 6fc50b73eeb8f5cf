//! Broker settings: a broker URL and TLS files turned into `rumqttc` options (rustls with the
//! `ring` provider, optional client certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

/// Where and how to reach the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `mqtt://host:port` (plain TCP) or `mqtts://host:port` (TLS).
    pub url: String,
    /// Further brokers of the same cluster, in order of preference after `url`: when the
    /// broker in use fails, the link moves on to the next one (after the last, back to
    /// `url`). The same TLS files serve every one of them.
    pub failover_urls: Vec<String>,
    /// PEM file of the CA that signed the broker's certificate (TLS only).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require client certificates.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate (0600).
    pub key_file: Option<PathBuf>,
    /// MQTT keep-alive in seconds.
    pub keep_alive_s: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            failover_urls: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive_s: 15,
        }
    }
}

impl BrokerConfig {
    /// Every broker address in order of preference: `url`, then `failover_urls`.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.url.as_str()).chain(self.failover_urls.iter().map(String::as_str))
    }

    /// A plain-TCP configuration for `url`.
    pub fn plain(url: impl Into<String>) -> Self {
        BrokerConfig {
            url: url.into(),
            ..Default::default()
        }
    }
}

/// The broker settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The URL is not `mqtt://host:port` or `mqtts://host:port`.
    #[error("broker URL {0:?} must look like mqtt://host:port or mqtts://host:port")]
    BadUrl(String),
    /// A TLS file could not be read or parsed.
    #[error("TLS file {path}: {detail}")]
    TlsFile {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A subscription is not a valid MQTT topic filter.
    #[error("{0:?} is not a valid MQTT topic filter")]
    BadFilter(String),
}

/// Splits `mqtt://host:port` into (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), LinkError> {
    let bad = || LinkError::BadUrl(url.to_owned());
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok((tls, host.trim_matches(['[', ']']).to_owned(), port))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, LinkError> {
    std::fs::read(path).map_err(|e| LinkError::TlsFile {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// The CA certificates of the PEM file `path`, to verify a server with (the broker's here,
/// the hub's database in `qrcash-hub`); refuses a file without one.
pub fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, LinkError> {
    let bad = |detail: String| LinkError::TlsFile {
        path: path.display().to_string(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut read_pem(path)?.as_slice()) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in file".into()));
    }
    Ok(roots)
}

fn tls_config(cfg: &BrokerConfig) -> Result<rustls::ClientConfig, LinkError> {
    let file_err = |path: &Path, detail: String| LinkError::TlsFile {
        path: path.display().to_string(),
        detail,
    };
    let ca = cfg
        .ca_file
        .as_deref()
        .ok_or_else(|| LinkError::Tls("mqtts:// needs ca_file (the broker's CA)".into()))?;
    let roots = ca_roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| LinkError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain = rustls_pemfile::certs(&mut read_pem(cert)?.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(cert, e.to_string()))?;
            let key_der = rustls_pemfile::private_key(&mut read_pem(key)?.as_slice())
                .map_err(|e| file_err(key, e.to_string()))?
                .ok_or_else(|| file_err(key, "no private key in file".into()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| LinkError::Tls(e.to_string()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(LinkError::Tls(
            "cert_file and key_file must be given together".into(),
        )),
    }
}

/// `rumqttc` options for `client_id`: clean session (subscriptions are renewed on every
/// ConnAck and durability lives in our own stores), QoS-1 friendly limits, TLS when the URL
/// says `mqtts://`.
pub fn mqtt_options(cfg: &BrokerConfig, client_id: &str) -> Result<MqttOptions, LinkError> {
    mqtt_options_at(cfg, &cfg.url, client_id)
}

/// [`mqtt_options`] for one of the configuration's brokers, `url`.
pub fn mqtt_options_at(
    cfg: &BrokerConfig,
    url: &str,
    client_id: &str,
) -> Result<MqttOptions, LinkError> {
    let (tls, host, port) = parse_url(url)?;
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)))
        .set_clean_session(true)
        .set_max_packet_size(
            qrcash_protocol::MAX_DOWNLINK_BYTES + 1024,
            qrcash_protocol::MAX_DOWNLINK_BYTES + 1024,
        );
    if tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(cfg)?),
        )));
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            (false, "127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_url("mqtts://broker.example").unwrap(),
            (true, "broker.example".into(), 8883)
        );
        for bad in ["tcp://x:1", "mqtt://", "mqtt://h:notaport", "h:1883"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_needs_a_ca_and_both_client_files() {
        let cfg = BrokerConfig::plain("mqtts://h:8883");
        assert!(matches!(mqtt_options(&cfg, "c"), Err(LinkError::Tls(_))));
        let cfg = BrokerConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..BrokerConfig::plain("mqtts://h:8883")
        };
        assert!(matches!(
            mqtt_options(&cfg, "c"),
            Err(LinkError::TlsFile { .. })
        ));
        assert!(mqtt_options(&BrokerConfig::default(), "c").is_ok());
    }
}
