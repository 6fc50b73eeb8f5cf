//! Replays every input kept in `fuzz/regressions/{jws_envelope,qr_token,sealed_secret}`
//! (seeds, and every crash a fuzzer ever found) through the very checks the fuzz targets run.

mod jws_envelope {
    include!("../../fuzz/checks/jws_envelope.rs");
}
mod qr_token {
    include!("../../fuzz/checks/qr_token.rs");
}
mod sealed_secret {
    include!("../../fuzz/checks/sealed_secret.rs");
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("replaying {}", path.display());
        check(&data);
        n += 1;
    }
    n
}

#[test]
fn jws_envelope_regressions() {
    assert!(replay("jws_envelope", jws_envelope::check) >= 2);
}

#[test]
fn qr_token_regressions() {
    assert!(replay("qr_token", qr_token::check) >= 2);
}

#[test]
fn sealed_secret_regressions() {
    assert!(replay("sealed_secret", sealed_secret::check) >= 3);
}
