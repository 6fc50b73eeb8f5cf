//! Replays every input kept in `fuzz/regressions/hub_handler` (seeds, and every crash a
//! fuzzer ever found) through the very check the `hub_handler` fuzz target runs.

mod hub_handler {
    include!("../../fuzz/checks/hub_handler.rs");
}

#[test]
fn hub_handler_regressions() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/hub_handler");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        hub_handler::check(&data);
        n += 1;
    }
    assert!(n >= 4);
}
