//! `qrcash-hub pki` end to end: the CA, a broker certificate and client certificates made by
//! the real binary run a real Mosquitto with client certificates; they are X.509 version 3
//! with the right extensions (rustls, which refused the version-1 certificates of the old
//! `openssl x509 -req` steps, accepts the hub's own client certificate); a CSR keeps the
//! device's key on the device; a revoked ATM is refused once the broker reads the new CRL,
//! while another ATM still connects.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use qrcash_io::BrokerConfig;
use qrcash_testsupport::broker::{ListenerTls, Mosquitto, MosquittoConfig};
use qrcash_testsupport::mqtt::TestClient;

fn pki(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_qrcash-hub"))
        .arg("pki")
        .arg("--dir")
        .arg(dir.join("ca"))
        .args(args)
        .output()
        .expect("run qrcash-hub");
    assert!(
        out.status.success(),
        "pki {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn client(dir: &Path, url: &str, name: &str) -> BrokerConfig {
    BrokerConfig {
        url: url.to_owned(),
        ca_file: Some(dir.join("ca/ca.pem")),
        cert_file: Some(dir.join(format!("certs/{name}.pem"))),
        key_file: Some(dir.join(format!("certs/{name}.key"))),
        ..BrokerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_ca_runs_a_broker_and_a_revoked_atm_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = d.join("certs");
    let out_s = out.to_str().unwrap();
    pki(d, &["init"]);
    assert_eq!(mode(&d.join("ca/ca.key")), 0o600);
    assert_eq!(mode(&d.join("ca")), 0o700);
    pki(
        d,
        &[
            "issue",
            "broker",
            "localhost",
            "--san",
            "localhost,127.0.0.1",
            "--out",
            out_s,
        ],
    );
    for name in ["hub", "atm-1", "atm-2"] {
        pki(d, &["issue", "client", name, "--out", out_s]);
        assert_eq!(mode(&out.join(format!("{name}.key"))), 0o600);
    }
    // A device with its own key: a CSR made independently of our code, by openssl.
    let csr_key = d.join("atm-3.key");
    let csr = d.join("atm-3.csr");
    let made = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=atm-3", "-keyout"])
        .arg(&csr_key)
        .arg("-out")
        .arg(&csr)
        .status()
        .expect("openssl");
    assert!(made.success());
    let printed = pki(
        d,
        &[
            "issue",
            "client",
            "atm-3",
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            out_s,
        ],
    );
    assert!(
        !printed.contains("atm-3.key"),
        "no key made for a CSR: {printed}"
    );
    std::fs::copy(&csr_key, out.join("atm-3.key")).unwrap();
    // A CSR for another name is refused.
    let wrong = Command::new(env!("CARGO_BIN_EXE_qrcash-hub"))
        .args(["pki", "--dir"])
        .arg(d.join("ca"))
        .args([
            "issue",
            "client",
            "atm-4",
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            out_s,
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("CSR asks for CN"));

    // Version 3, the right key usage, the broker's names.
    for (name, server) in [("localhost", true), ("hub", false), ("atm-3", false)] {
        let pem = read(&out.join(format!("{name}.pem")));
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3, "{name}");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert_eq!(
            (eku.server_auth, eku.client_auth),
            (server, !server),
            "{name}"
        );
        if server {
            let san = cert.subject_alternative_name().unwrap().unwrap().value;
            assert_eq!(san.general_names.len(), 2);
        }
    }

    pki(d, &["crl"]);
    let mut broker = Mosquitto::start_with(MosquittoConfig {
        tls: Some(ListenerTls {
            ca_pem: read(&d.join("ca/ca.pem")),
            cert_pem: read(&out.join("localhost.pem")),
            key_pem: read(&out.join("localhost.key")),
            require_certificate: true,
            use_identity_as_username: true,
            crl_file: Some(d.join("ca/crl.pem")),
        }),
        ..MosquittoConfig::default()
    });
    let url = broker.url();
    for name in ["hub", "atm-1", "atm-2", "atm-3"] {
        TestClient::connect(&client(d, &url, name), name)
            .await
            .unwrap_or_else(|e| panic!("{name} refused: {e}"));
    }

    // atm-1 is revoked; the broker reads the new CRL when it starts again.
    let revoked = pki(d, &["revoke", "atm-1"]);
    assert!(revoked.contains("revoked"), "{revoked}");
    broker.start_again();
    let refused = TestClient::connect(&client(d, &url, "atm-1"), "atm-1").await;
    assert!(refused.is_err(), "a revoked certificate must be refused");
    TestClient::connect(&client(d, &url, "atm-2"), "atm-2")
        .await
        .expect("atm-2 still connects");

    let list = pki(d, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("atm-1") && l.contains("revoked")),
        "{list}"
    );
    // 90 days from issue, in whole days left: 90 within the second of issue, 89 after.
    assert!(
        list.lines()
            .any(|l| l.contains("atm-2")
                && (l.contains(" 90 days left") || l.contains(" 89 days left"))),
        "{list}"
    );
}
