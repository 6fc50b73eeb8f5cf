//! `qrcash-decode` on real image files: every pass on every file by default; `--live` plays
//! a folder as camera frames through the agent's live settings and prints decoded/total and
//! the per-frame percentiles.

use std::process::Command;

use qrcash_hardware::scan::corpus::{self, Distortion};

const SEED: u64 = 20_240_601;

fn save(frame: &qrcash_hardware::camera::LumaFrame, path: &std::path::Path) {
    image::GrayImage::from_raw(frame.width(), frame.height(), frame.data().to_vec())
        .unwrap()
        .save(path)
        .unwrap();
}

#[test]
fn live_mode_prints_what_the_agent_would_decode_and_the_per_frame_times() {
    let dir = tempfile::tempdir().unwrap();
    let mut payloads = Vec::new();
    for i in 0..2 {
        let img = corpus::generate(640, 480, Distortion::Clean, i, SEED);
        save(&img.frame, &dir.path().join(format!("code-{i}.png")));
        payloads.push(img.payload);
    }
    for i in 0..4 {
        save(
            &corpus::generate_empty(640, 480, i, SEED),
            &dir.path().join(format!("empty-{i}.png")),
        );
    }
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_qrcash-decode"))
            .args(args)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let live = run(&["--live", "--quiet"]);
    let summary = live.lines().last().unwrap();
    assert!(
        summary.starts_with("live: decoded 2/6 frames; per frame median "),
        "{live}"
    );
    assert_eq!(
        live.lines().count(),
        1,
        "--quiet prints the summary only: {live}"
    );
    for p in ["p90", "p99"] {
        assert!(summary.contains(p), "{summary}");
    }
    let every = run(&[]);
    assert_eq!(
        every.lines().count(),
        6,
        "one line per image, the text file skipped: {every}"
    );
    for p in &payloads {
        assert!(every.contains(p.as_str()), "{every}");
    }
    assert_eq!(every.matches("no code").count(), 4, "{every}");
}
