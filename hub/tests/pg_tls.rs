//! TLS to PostgreSQL, against a real server: a private one (`scripts/postgres.sh`) listening
//! on 127.0.0.1 with TLS on and a certificate for `localhost` from a CA made here. The hub
//! connects with the CA named by `sslrootcert`, and refuses a server whose certificate
//! another CA signed, or that is not for the host it dialled. Runs in the PostgreSQL pass of
//! the hub's suites (`QRCASH_TEST_BACKEND=postgres`, `scripts/test.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use qrcash_hub::store::Store;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A private server with TLS; stopped when dropped.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", &self.dir.path().to_string_lossy()])
            .status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}

/// A CA (its certificate written to `path`) and the issuer to sign with.
fn ca(name: &str, path: &Path) -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    std::fs::write(path, params.self_signed(&key).unwrap().pem()).unwrap();
    Issuer::new(params, key)
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (ca_path, other_ca) = (certs.path().join("ca.pem"), certs.path().join("other.pem"));
    let issuer = ca("qrcash test database CA", &ca_path);
    ca("someone else's CA", &other_ca);
    let server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (
        certs.path().join("server.crt"),
        certs.path().join("server.key"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(script())
        .args(["start", &dir.path().to_string_lossy()])
        .env("QRCASH_PG_TCP_PORT", port.to_string())
        .env("QRCASH_PG_TLS_CERT", &cert_path)
        .env("QRCASH_PG_TLS_KEY", &key_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "postgres.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The CA files outlive `certs` in the server's folder.
    let (ca, other) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::copy(&ca_path, &ca).unwrap();
    std::fs::copy(&other_ca, &other).unwrap();
    Server {
        dir,
        port,
        ca,
        other_ca: other,
    }
}

fn over_tls(store: &Store) -> i64 {
    store
        .db()
        .read_i64(
            "SELECT CASE WHEN ssl THEN 1 ELSE 0 END FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .unwrap()
}

#[test]
fn the_hub_reaches_postgresql_over_verified_tls_and_refuses_an_impostor() {
    if std::env::var("QRCASH_TEST_BACKEND").as_deref() != Ok("postgres") {
        return;
    }
    let s = start();
    let url = |host: &str, extra: &str| {
        format!(
            "host={host} port={} user=postgres dbname=postgres {extra}",
            s.port
        )
    };

    // The CA that signed the server's certificate, the name on it: TLS, and it works.
    let store = Store::open_postgres(&url(
        "localhost",
        &format!("sslmode=verify-full sslrootcert={}", s.ca.display()),
    ))
    .expect("TLS with the right CA");
    assert_eq!(over_tls(&store), 1, "the session is encrypted");
    drop(store);

    // Another CA: the server is not trusted, and nothing falls back to plain text.
    let e = Store::open_postgres(&url(
        "localhost",
        &format!("sslrootcert={}", s.other_ca.display()),
    ))
    .expect_err("a certificate of another CA");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // The right CA, but dialled as 127.0.0.1, a name the certificate does not carry.
    let e = Store::open_postgres(&url(
        "127.0.0.1",
        &format!("sslmode=require sslrootcert={}", s.ca.display()),
    ))
    .expect_err("a certificate for another name");
    assert!(e.to_string().contains("not valid for name"), "{e}");

    // Over the loopback, plain text unless TLS is asked for (nothing leaves the machine).
    let store = Store::open_postgres(&url("localhost", "")).unwrap();
    assert_eq!(over_tls(&store), 0);
}
