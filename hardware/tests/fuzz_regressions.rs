//! Replays every input kept in `fuzz/regressions/lcdm_frame` (seeds, and every crash a
//! fuzzer ever found) through the very check the `lcdm_frame` fuzz target runs.

mod lcdm_frame {
    include!("../../fuzz/checks/lcdm_frame.rs");
}

#[test]
fn lcdm_frame_regressions() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/lcdm_frame");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        lcdm_frame::check(&data);
        n += 1;
    }
    assert!(n >= 2);
}
