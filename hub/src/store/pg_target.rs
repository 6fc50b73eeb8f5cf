//! Where the PostgreSQL database is and how to reach it: the connection string parsed, and
//! TLS decided from it. Pure except for reading the CA file.
//!
//! The string is libpq's (`postgres://…` or `key=value …`), with libpq's TLS parameters:
//! `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert`
//! (a PEM file of the CAs to trust; the system's roots without it). Whenever TLS is used the
//! server's certificate is verified against those CAs and its name against the host named
//! (what libpq calls `verify-full`, whatever mode was written). Over TCP to any address but
//! this machine's loopback (the `hostaddr` dialled when there is one, else the `host`) the
//! connection is TLS unless the string says `sslmode=disable` itself: the default `prefer`
//! would fall back to plain text when the server (or a man in the middle) says it has no
//! TLS. On the loopback and over a Unix socket nothing leaves the machine: `prefer` means
//! plain text there, and TLS only when the string asks for it (`sslmode=require` or
//! `verify-…`, or a CA named with `sslrootcert`); a socket never uses TLS (PostgreSQL offers
//! none there).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use postgres::config::{Host, SslMode};

use super::StoreError;

/// How the hub reaches its database.
#[derive(Clone)]
pub struct PgTarget {
    /// The parsed connection string (without `sslrootcert`, which the driver does not know).
    pub config: postgres::Config,
    /// The TLS client, when TLS may or must be used.
    pub tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// The TLS decision for a connection string, before any file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    /// The driver's mode: `Disable` (plain), `Prefer` (TLS if offered) or `Require`.
    pub mode: SslMode,
    /// The CA file named by `sslrootcert`, if any.
    pub root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("hosts", &self.config.get_hosts())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

fn invalid(detail: impl std::fmt::Display) -> StoreError {
    StoreError::Migration(format!("database url: {detail}"))
}

/// Splits `sslrootcert` and the libpq-only modes `verify-ca`/`verify-full` out of `url`:
/// the rest for the driver, the CA file, and whether a verifying mode was asked for.
fn libpq_extras(url: &str) -> Result<(String, Option<PathBuf>, bool), StoreError> {
    let mut root = None;
    let mut verify = false;
    let mut keep = |key: &str, value: &str| -> bool {
        match (key, value) {
            ("sslrootcert", v) => {
                root = Some(PathBuf::from(v));
                false
            }
            ("sslmode", "verify-ca" | "verify-full") => {
                verify = true;
                false
            }
            _ => true,
        }
    };
    let rest = if let Some((base, query)) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .and_then(|_| url.split_once('?'))
    {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                keep(k, v)
            })
            .collect();
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if url.contains("://") {
        url.to_owned()
    } else {
        // key=value form; values with spaces (quoted) are left to the driver's parser.
        url.split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                keep(k.trim(), v.trim().trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if root.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(invalid("sslrootcert names no file"));
    }
    Ok((rest, root, verify))
}

/// Where the driver dials, one entry per host: `Some(loopback)` for TCP (to the
/// `hostaddr` when there is one, which the driver dials instead of the `host` name), `None`
/// for a Unix socket.
fn dialled(config: &postgres::Config) -> Vec<Option<bool>> {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    (0..hosts.len().max(addrs.len()))
        .map(|i| match (addrs.get(i), hosts.get(i)) {
            (Some(addr), _) => Some(addr.is_loopback()),
            (None, Some(Host::Unix(_))) => None,
            (None, Some(Host::Tcp(name))) => Some(
                name == "localhost"
                    || name
                        .trim_matches(['[', ']'])
                        .parse::<IpAddr>()
                        .is_ok_and(|a| a.is_loopback()),
            ),
            (None, None) => None,
        })
        .collect()
}

/// Parses `url` and decides TLS (see the module's documentation); reads no file.
pub fn plan(url: &str) -> Result<(postgres::Config, TlsPlan), StoreError> {
    let (rest, root_cert, verify) = libpq_extras(url)?;
    let mut config: postgres::Config = rest.parse().map_err(invalid)?;
    let targets = dialled(&config);
    let mode = if targets.iter().all(Option::is_none) {
        SslMode::Disable
    } else if verify || root_cert.is_some() {
        SslMode::Require
    } else {
        match config.get_ssl_mode() {
            SslMode::Prefer if targets.iter().all(|t| t.unwrap_or(true)) => SslMode::Disable,
            SslMode::Prefer => SslMode::Require,
            other => other,
        }
    };
    config.ssl_mode(mode);
    Ok((config, TlsPlan { mode, root_cert }))
}

/// Parses `url`, decides TLS and, when TLS may be used, makes its client: the CAs of
/// `sslrootcert`, or the system's.
pub fn target(url: &str) -> Result<PgTarget, StoreError> {
    let (config, plan) = plan(url)?;
    if plan.mode == SslMode::Disable {
        return Ok(PgTarget { config, tls: None });
    }
    let roots = match &plan.root_cert {
        Some(path) => {
            qrcash_io::broker::ca_roots(path).map_err(|e| invalid(format!("sslrootcert: {e}")))?
        }
        None => system_roots()?,
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(invalid)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(PgTarget {
        config,
        tls: Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls)),
    })
}

fn system_roots() -> Result<rustls::RootCertStore, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(invalid(
            "TLS needs the server's CA: name it with sslrootcert (the system has no CA \
             certificates)",
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn mode(url: &str) -> SslMode {
        plan(url).unwrap().1.mode
    }

    #[test]
    fn remote_hosts_get_tls_unless_the_string_itself_refuses_it() {
        assert_eq!(mode("host=db1.bank.example dbname=q"), SslMode::Require);
        assert_eq!(mode("postgres://q@10.0.0.5/q"), SslMode::Require);
        assert_eq!(
            mode("host=db1.bank.example sslmode=prefer dbname=q"),
            SslMode::Require
        );
        assert_eq!(
            mode("host=db1.bank.example sslmode=disable dbname=q"),
            SslMode::Disable
        );
        // This machine: plain text unless TLS is asked for.
        assert_eq!(mode("host=localhost dbname=q"), SslMode::Disable);
        assert_eq!(mode("postgres://q@127.0.0.1:5433/q"), SslMode::Disable);
        assert_eq!(mode("postgres://q@[::1]/q"), SslMode::Disable);
        assert_eq!(
            mode("host=localhost sslmode=require dbname=q"),
            SslMode::Require
        );
        assert_eq!(
            mode("host=localhost sslrootcert=/ca.pem dbname=q"),
            SslMode::Require
        );
        // The address dialled decides, not the name beside it.
        assert_eq!(mode("hostaddr=203.0.113.7 dbname=q"), SslMode::Require);
        assert_eq!(
            mode("postgres://hub@/q?hostaddr=203.0.113.7"),
            SslMode::Require
        );
        assert_eq!(
            mode("host=/run/postgresql hostaddr=203.0.113.7 dbname=q"),
            SslMode::Require
        );
        assert_eq!(
            mode("host=localhost hostaddr=203.0.113.7 dbname=q"),
            SslMode::Require
        );
        assert_eq!(
            mode("host=db1.bank.example hostaddr=127.0.0.1 dbname=q"),
            SslMode::Disable
        );
        // A socket: never TLS.
        assert_eq!(
            mode("host=/run/postgresql sslmode=require dbname=q"),
            SslMode::Disable
        );
        // One remote host among several is enough to require it.
        assert_eq!(
            mode("host=localhost,db2.bank.example dbname=q"),
            SslMode::Require
        );
    }

    #[test]
    fn libpq_tls_parameters_are_understood_in_both_forms() {
        let (c, p) =
            plan("host=localhost sslmode=verify-full sslrootcert=/etc/ca.pem dbname=q").unwrap();
        assert_eq!(p.mode, SslMode::Require);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.get_dbname(), Some("q"));
        let (c, p) = plan("postgres://q@db1.bank.example/q?sslrootcert=/etc/ca.pem&sslmode=verify-ca&application_name=hub")
            .unwrap();
        assert_eq!(p.mode, SslMode::Require);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.get_application_name(), Some("hub"));
        assert!(plan("host=db sslmode=sometimes").is_err());
        assert!(plan("host=db sslrootcert=").is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let url = format!(
            "host=db1.bank.example sslrootcert={} dbname=q",
            empty.display()
        );
        let e = target(&url).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
        let missing = format!(
            "host=db1.bank.example sslrootcert={}/none.pem",
            dir.path().display()
        );
        assert!(target(&missing).is_err());
    }
}
