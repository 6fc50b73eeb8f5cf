//! A throw-away certificate authority for TLS tests: broker and client certificates made
//! with `rcgen`, written as PEM files into a private folder.
//!
//! Client certificates carry the device id as CN, which Mosquitto's
//! `use_identity_as_username` turns into the username the ACL patterns match.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use qrcash_io::BrokerConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::broker::ListenerTls;

/// A test CA and the files it issued.
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    dir: tempfile::TempDir,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new("qrcash test CA")
    }
}

impl TestPki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestPki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            dir: tempfile::tempdir().expect("tempdir for PKI"),
        }
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        if !p.exists() {
            std::fs::write(&p, &self.ca_pem).expect("write CA file");
        }
        p
    }

    fn issue(&self, cn: &str, sans: Vec<String>, server: bool) -> (String, String) {
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Listener TLS for a broker on `localhost` requiring client certificates from this CA
    /// and mapping their CN to the username.
    pub fn broker_tls(&self) -> ListenerTls {
        let (cert_pem, key_pem) = self.issue(
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            true,
        );
        ListenerTls {
            ca_pem: self.ca_pem.clone(),
            cert_pem,
            key_pem,
            require_certificate: true,
            use_identity_as_username: true,
            crl_file: None,
        }
    }

    /// A client certificate with CN `cn` and its key, as PEM text.
    pub fn client_pem(&self, cn: &str) -> (String, String) {
        self.issue(cn, Vec::new(), false)
    }

    /// Writes a client certificate with CN `cn` and its 0600 key; returns (cert, key) paths.
    pub fn client_files(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(cn, Vec::new(), false);
        let cert_path = self.dir.path().join(format!("{cn}.pem"));
        let key_path = self.dir.path().join(format!("{cn}.key"));
        std::fs::write(&cert_path, cert).expect("write client certificate");
        write_private(&key_path, &key);
        (cert_path, key_path)
    }

    /// Broker settings for client `cn` on `url` (certificate from this CA).
    pub fn client_config(&self, url: &str, cn: &str) -> BrokerConfig {
        let (cert, key) = self.client_files(cn);
        BrokerConfig {
            url: url.to_owned(),
            ca_file: Some(self.ca_file()),
            cert_file: Some(cert),
            key_file: Some(key),
            ..BrokerConfig::default()
        }
    }

    /// Broker settings that trust the CA but present no client certificate.
    pub fn anonymous_config(&self, url: &str) -> BrokerConfig {
        BrokerConfig {
            url: url.to_owned(),
            ca_file: Some(self.ca_file()),
            ..BrokerConfig::default()
        }
    }

    /// A private Mosquitto as production runs it: TLS with client certificates from this
    /// CA (the CN is the username) and the production ACL.
    pub fn locked_down_broker(&self) -> crate::broker::Mosquitto {
        crate::broker::Mosquitto::start_with(crate::broker::MosquittoConfig {
            tls: Some(self.broker_tls()),
            acl: Some(PRODUCTION_ACL.to_owned()),
            ..crate::broker::MosquittoConfig::default()
        })
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write private key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The production ACL (`deploy/mosquitto/acl.conf`), which the security tests load verbatim.
pub const PRODUCTION_ACL: &str = include_str!("../../deploy/mosquitto/acl.conf");

/// The production broker configuration (`deploy/mosquitto/mosquitto.conf`), which the
/// security tests run with only its paths, port and log moved
/// ([`crate::broker::production_config`]).
pub const PRODUCTION_BROKER_CONF: &str = include_str!("../../deploy/mosquitto/mosquitto.conf");

/// The edge broker's configuration (`deploy/mosquitto/edge/mosquitto.conf`): phones, bridged
/// to the core broker.
pub const EDGE_BROKER_CONF: &str = include_str!("../../deploy/mosquitto/edge/mosquitto.conf");

/// The edge broker's ACL (`deploy/mosquitto/edge/acl.conf`).
pub const EDGE_ACL: &str = include_str!("../../deploy/mosquitto/edge/acl.conf");
