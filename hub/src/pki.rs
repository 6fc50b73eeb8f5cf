//! `qrcash-hub pki`: the device CA that the broker trusts, kept in one folder: the CA
//! certificate and key (0600), the register of what it issued, and the revocation list.
//! Certificates are X.509 version 3 with the extensions Mosquitto and rustls expect (the
//! `openssl x509 -req` of earlier documentation made version-1 certificates, which rustls
//! refuses as `UnsupportedCertVersion`).
//!
//! Kinds: a **broker** certificate (server auth, its DNS names and addresses as SANs) and
//! **client** certificates whose CN is the MQTT identity the ACL matches (`hub`, an ATM id, a
//! phone device id, `bridge-edge`). A client may keep its key: [`Ca::issue`] signs a CSR.
//!
//! Not here: distributing files, or telling the broker (Mosquitto reads its `crlfile` at start
//! only: restart it after a revocation; see `docs/deployment.md` §3).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The broker's server certificate.
    Broker,
    /// A client: the hub, an ATM, a phone, the edge bridge (CN = its MQTT identity).
    Client,
}

/// One certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Serial number, hex.
    pub serial: String,
    /// What for.
    pub kind: Kind,
    /// Its CN.
    pub name: String,
    /// Valid until, Unix seconds.
    pub not_after: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// The register kept beside the CA.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Register {
    issued: Vec<IssuedCert>,
    crl_number: u64,
}

/// The CA could not do it.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request makes no sense (a name, a date, a CSR).
    #[error("{0}")]
    Invalid(String),
    /// rcgen refused.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `text` to a new file with `mode`, through a temporary file (a crash never leaves
/// half a key or a register).
fn write(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn at(unix: u64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .map_err(|e| PkiError::Invalid(format!("time {unix}: {e}")))
}

/// A fresh 16-byte serial (positive: top bit clear).
fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    qrcash_protocol::ids::random_bytes(&mut b);
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

/// The device CA in a folder.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    register: Register,
}

/// What [`Ca::issue`] made.
#[derive(Debug)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The new private key (PEM), unless the client sent a CSR and keeps its own.
    pub key_pem: Option<String>,
    /// Its register entry.
    pub entry: IssuedCert,
}

impl Ca {
    fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join("ca.pem"),
            dir.join("ca.key"),
            dir.join("issued.json"),
        )
    }

    /// Makes a new CA named `name`, valid `days`, in `dir` (created 0700); refuses to overwrite.
    pub fn init(dir: &Path, name: &str, days: u64, now: u64) -> Result<Ca, PkiError> {
        let (cert_path, key_path, register_path) = Self::paths(dir);
        if key_path.exists() {
            return Err(PkiError::Invalid(format!(
                "{} already holds a CA; a second one would orphan every certificate it issued",
                dir.display()
            )));
        }
        qrcash_io::files::private_dir(dir).map_err(io(dir))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = at(now.saturating_sub(60))?;
        params.not_after = at(now.saturating_add(days.saturating_mul(86_400)))?;
        params.serial_number = Some(serial());
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&key_path, &key.serialize_pem(), 0o600)?;
        write(&cert_path, &cert.pem(), 0o644)?;
        let ca = Ca {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            register: Register::default(),
        };
        ca.save()?;
        let _ = register_path;
        Ok(ca)
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca, PkiError> {
        let (cert_path, key_path, register_path) = Self::paths(dir);
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
        let key = KeyPair::from_pem(&read(&key_path)?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(&cert_path)?, key)?;
        let register = match std::fs::read_to_string(&register_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| PkiError::Invalid(format!("{}: {e}", register_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Register::default(),
            Err(e) => return Err(io(&register_path)(e)),
        };
        Ok(Ca {
            dir: dir.to_owned(),
            issuer,
            register,
        })
    }

    fn save(&self) -> Result<(), PkiError> {
        let text = serde_json::to_string_pretty(&self.register)
            .map_err(|e| PkiError::Invalid(e.to_string()))?;
        write(&self.dir.join("issued.json"), &text, 0o600)
    }

    /// The CA certificate file.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Everything issued, oldest first.
    pub fn issued(&self) -> &[IssuedCert] {
        &self.register.issued
    }

    /// Issues a certificate of `kind` for `name`, valid `days` from `now`. A broker names its
    /// DNS names and addresses in `sans` (at least one); a client's `name` is its MQTT
    /// identity. With `csr` (PEM) the client keeps its key: the CSR's public key is signed,
    /// its subject must be `name`, and nothing else it asks for is taken.
    pub fn issue(
        &mut self,
        kind: Kind,
        name: &str,
        sans: &[String],
        days: u64,
        csr: Option<&str>,
        now: u64,
    ) -> Result<Issued, PkiError> {
        let sans: Vec<SanType> = match kind {
            Kind::Broker => {
                if sans.is_empty() {
                    return Err(PkiError::Invalid(
                        "a broker certificate needs --san with the names and addresses clients dial".into(),
                    ));
                }
                sans.iter()
                    .map(|s| match s.parse::<IpAddr>() {
                        Ok(ip) => Ok(SanType::IpAddress(ip)),
                        Err(_) => s
                            .as_str()
                            .try_into()
                            .map(SanType::DnsName)
                            .map_err(|e| PkiError::Invalid(format!("SAN {s:?}: {e}"))),
                    })
                    .collect::<Result<_, _>>()?
            }
            Kind::Client => {
                qrcash_protocol::topics::validate_id(name)
                    .map_err(|e| PkiError::Invalid(format!("client name: {e}")))?;
                Vec::new()
            }
        };
        if days == 0 || days > 825 {
            return Err(PkiError::Invalid(
                "a certificate is valid 1 to 825 days; renew it before it expires".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![match kind {
            Kind::Broker => ExtendedKeyUsagePurpose::ServerAuth,
            Kind::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(now.saturating_sub(60))?;
        let not_after = now.saturating_add(days * 86_400);
        params.not_after = at(not_after)?;
        let serial = serial();
        params.serial_number = Some(serial.clone());
        let (cert, key_pem) = match csr {
            Some(pem) => {
                let request = CertificateSigningRequestParams::from_pem(pem)?;
                let asked = request
                    .params
                    .distinguished_name
                    .get(&DnType::CommonName)
                    .map(|v| match v {
                        rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
                        rcgen::DnValue::Utf8String(s) => s.clone(),
                        other => format!("{other:?}"),
                    });
                if asked.as_deref() != Some(name) {
                    return Err(PkiError::Invalid(format!(
                        "the CSR asks for CN {:?}, not {name:?}",
                        asked.unwrap_or_default()
                    )));
                }
                let signed = CertificateSigningRequestParams {
                    params,
                    public_key: request.public_key,
                }
                .signed_by(&self.issuer)?;
                (signed, None)
            }
            None => {
                let key = KeyPair::generate()?;
                let cert = params.signed_by(&key, &self.issuer)?;
                (cert, Some(key.serialize_pem()))
            }
        };
        let entry = IssuedCert {
            serial: data_encoding::HEXLOWER.encode(serial.as_ref()),
            kind,
            name: name.to_owned(),
            not_after,
            revoked_at: None,
        };
        self.register.issued.push(entry.clone());
        self.save()?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem,
            entry,
        })
    }

    /// Revokes the certificate with serial `which`, or every unrevoked one issued to the name
    /// `which`; returns what it revoked. The CRL must be written again ([`Ca::crl`]).
    pub fn revoke(&mut self, which: &str, now: u64) -> Result<Vec<IssuedCert>, PkiError> {
        let mut revoked = Vec::new();
        for c in &mut self.register.issued {
            if c.revoked_at.is_none() && (c.serial == which || c.name == which) {
                c.revoked_at = Some(now);
                revoked.push(c.clone());
            }
        }
        if revoked.is_empty() {
            return Err(PkiError::Invalid(format!(
                "no unrevoked certificate has the serial or name {which:?} (see `pki list`)"
            )));
        }
        self.save()?;
        Ok(revoked)
    }

    /// Writes `crl.pem`: every revoked certificate still within its validity, valid for
    /// `days` from `now`. Write it again before then: a broker holding an expired CRL
    /// refuses every client.
    pub fn crl(&mut self, days: u64, now: u64) -> Result<PathBuf, PkiError> {
        if days == 0 || days > 365 {
            return Err(PkiError::Invalid("a CRL is valid 1 to 365 days".into()));
        }
        self.register.crl_number += 1;
        let revoked_certs = self
            .register
            .issued
            .iter()
            .filter_map(|c| {
                let revoked = c.revoked_at?;
                (c.not_after > now).then_some((c, revoked))
            })
            .map(|(c, revoked)| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(
                        &data_encoding::HEXLOWER
                            .decode(c.serial.as_bytes())
                            .map_err(|e| PkiError::Invalid(format!("serial {}: {e}", c.serial)))?,
                    ),
                    revocation_time: at(revoked)?,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: at(now.saturating_sub(60))?,
            next_update: at(now.saturating_add(days * 86_400))?,
            crl_number: SerialNumber::from(self.register.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        let path = self.dir.join("crl.pem");
        write(&path, &crl.pem()?, 0o644)?;
        self.save()?;
        Ok(path)
    }
}
