//! `qrcash-agent doctor`: one command that checks an ATM board's set-up and explains each
//! finding, for the technician who installs it.
//!
//! This module is the pure half: the findings, the thresholds that turn measurements into
//! verdicts, and the table. [`probe`] measures (files, database, broker, hub, camera,
//! dispenser) and calls the judgements here; nothing here does I/O.
//!
//! Not here: repairs. The doctor changes nothing on the board except what the agent would do
//! itself at start (the database is opened, created or migrated, and its files tightened to
//! 0600, as the agent opens it; only as the user that owns it) and one sequence number, spent
//! on the heartbeat that measures the hub's reachability and clock (only with no agent
//! running, and only when it cannot overtake messages waiting in the outbox).

pub mod probe;

use std::fmt::Write as _;
use std::time::Duration;

use qrcash_hardware::camera::quality::ViewQuality;
use serde::Serialize;

pub use probe::{Options, examine};

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// As it should be.
    Ok,
    /// Works, but deserves attention.
    Warn,
    /// Wrong: the ATM will not work, or not safely, until it is fixed.
    Fail,
    /// Not checked: something it needs failed, or the running agent holds the device.
    Skipped,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// What was checked (`configuration`, `atm key`, `clock`, …).
    pub check: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found, with the figures.
    pub detail: String,
    /// What to do about it (for warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    /// A check that passed.
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            check,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A check that deserves attention, and what to do.
    pub fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            verdict: Verdict::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check that failed, and what to do.
    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check not run, and why.
    pub fn skipped(check: &'static str, why: impl Into<String>) -> Self {
        Finding {
            check,
            verdict: Verdict::Skipped,
            detail: why.into(),
            fix: None,
        }
    }
}

/// Every finding, in the order checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Adds a finding.
    pub fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    /// The finding of `check`, if it was made.
    pub fn get(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    /// No check failed (warnings and skipped checks allowed). The command exits 1 otherwise.
    pub fn healthy(&self) -> bool {
        self.findings.iter().all(|f| f.verdict != Verdict::Fail)
    }

    /// The verdict line under the table.
    pub fn summary(&self) -> String {
        let count = |v| self.findings.iter().filter(|f| f.verdict == v).count();
        let (fails, warns, skipped) = (
            count(Verdict::Fail),
            count(Verdict::Warn),
            count(Verdict::Skipped),
        );
        let mut s = if fails > 0 {
            format!("NOT READY: {fails} failed")
        } else {
            "READY".to_owned()
        };
        if warns > 0 {
            let _ = write!(s, ", {warns} warning{}", if warns == 1 { "" } else { "s" });
        }
        if skipped > 0 {
            let _ = write!(s, ", {skipped} skipped");
        }
        s
    }

    /// The report as a table: one line per check (verdict, check, what was found), each
    /// warning's or failure's fix on the line below it, then the summary.
    pub fn table(&self) -> String {
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for f in &self.findings {
            let _ = writeln!(
                out,
                "{:<7}  {:<width$}  {}",
                f.verdict.label(),
                f.check,
                one_line(&f.detail)
            );
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "{:<7}  {:<width$}  -> {}", "", "", one_line(fix));
            }
        }
        let _ = writeln!(out, "\n{}", self.summary());
        out
    }
}

/// Keeps a table row on one line whatever an error message holds (a hostile file name
/// cannot forge another row).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            // Bidirectional overrides could make a row read in another order.
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi { ' ' } else { c }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Judgements: measurements in, a finding out.
// ---------------------------------------------------------------------------------------

/// A clock within this many seconds of the hub's is right (the offset is measured in whole
/// seconds, so ±1 is rounding).
pub const CLOCK_OK_S: u64 = 2;

/// The ATM clock's offset from the hub's, in seconds (positive: the ATM is ahead), against
/// the hub's tolerance `max_skew` (future-dated messages beyond it are refused, and every
/// code and order is judged by this clock).
pub fn judge_clock(offset_s: i64, max_skew: Duration) -> Finding {
    const CHECK: &str = "clock";
    let skew = max_skew.as_secs();
    let off = offset_s.unsigned_abs();
    let side = if offset_s > 0 { "ahead of" } else { "behind" };
    let detail = format!("{off} s {side} the hub's clock");
    let fix =
        "enable time synchronisation (systemd-timesyncd or chrony) against the bank's NTP servers";
    if off <= CLOCK_OK_S {
        Finding::ok(CHECK, format!("within {CLOCK_OK_S} s of the hub's clock"))
    } else if off <= skew {
        Finding::warn(CHECK, format!("{detail}; the hub tolerates {skew} s"), fix)
    } else {
        Finding::fail(
            CHECK,
            format!(
                "{detail}, beyond the {skew} s the hub tolerates: its messages and codes will be refused as expired or future-dated"
            ),
            fix,
        )
    }
}

/// Below this much free space on the database's file system the ATM cannot be trusted to
/// record its next dispense: fail.
pub const DISK_FAIL_BYTES: u64 = 64 << 20;
/// Below this much, warn.
pub const DISK_WARN_BYTES: u64 = 512 << 20;

/// Free space (available to the agent's user) on the file system of the database at `path`.
pub fn judge_disk(path: &str, available: u64, total: u64) -> Finding {
    const CHECK: &str = "disk space";
    let detail = format!(
        "{} free of {} on the file system of {path}",
        mib(available),
        mib(total)
    );
    let fix = "free space there (old logs, core dumps) or move `database` to a larger file system: the journal must always be writable";
    if available < DISK_FAIL_BYTES {
        Finding::fail(
            CHECK,
            format!("{detail}; at least {} are needed", mib(DISK_FAIL_BYTES)),
            fix,
        )
    } else if available < DISK_WARN_BYTES {
        Finding::warn(CHECK, detail, fix)
    } else {
        Finding::ok(CHECK, detail)
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// A message waiting longer than this means the hub is not taking the ATM's messages.
pub const OUTBOX_STALE_S: u64 = 300;

/// The outbox: how many messages wait and since when, whether the bound is reached, and the
/// dead letters.
pub fn judge_outbox(
    messages: u64,
    bytes: u64,
    oldest_created_at: Option<u64>,
    full: bool,
    dead_letters: u64,
    now: u64,
) -> Finding {
    const CHECK: &str = "outbox";
    let age = oldest_created_at.map(|t| now.saturating_sub(t));
    let mut detail = format!("{messages} waiting ({bytes} bytes)");
    if let Some(age) = age {
        let _ = write!(detail, ", the oldest for {age} s");
    }
    let _ = write!(detail, "; {dead_letters} dead letters");
    if full {
        return Finding::fail(
            CHECK,
            format!("{detail}; the bound is reached, so new customers are refused"),
            "restore the link to the hub (see the broker and hub lines); the outbox drains by itself",
        );
    }
    if age.is_some_and(|a| a > OUTBOX_STALE_S) {
        return Finding::warn(
            CHECK,
            detail,
            "the hub has not taken these messages: check the broker and hub lines",
        );
    }
    if dead_letters > 0 {
        return Finding::warn(
            CHECK,
            detail,
            "the hub refused messages for good: inspect them with `qrcash-agent dead-letters` and clear each once dealt with",
        );
    }
    Finding::ok(CHECK, detail)
}

/// A view darker than this on average is too dark to read codes reliably.
pub const DARK_MEAN: f64 = 40.0;
/// A view brighter than this on average is overexposed.
pub const BRIGHT_MEAN: f64 = 215.0;
/// More than this share of blown-out pixels hides a phone screen's glare.
pub const BLOWN_OUT: f64 = 0.25;
/// Below this sharpness (variance of the Laplacian) the view is blurred or empty.
pub const BLURRED: f64 = 30.0;
/// Fewer frames a second than this and customers wait for the camera.
pub const MIN_FPS: f64 = 5.0;

/// What the camera delivered: `frames` frames in `window` of waiting for them (and the
/// quality of the last one), `errors` failed reads, and the code in view, if any.
pub fn judge_camera(
    frames: u64,
    errors: u64,
    window: Duration,
    last_error: Option<&str>,
    quality: Option<ViewQuality>,
    code_in_view: Option<&str>,
) -> Finding {
    const CHECK: &str = "camera";
    let Some(q) = quality.filter(|_| frames > 0) else {
        return Finding::fail(
            CHECK,
            format!(
                "no frame in {:.1} s ({errors} failed reads{})",
                window.as_secs_f64(),
                last_error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
            "check the [camera] section, the cable, and that the agent's user is in the `video` group",
        );
    };
    let fps = frames as f64 / window.as_secs_f64().max(0.001);
    let mut detail = format!(
        "{fps:.1} frames/s, brightness {:.0}/255 ({:.0} % blown out), sharpness {:.0}",
        q.mean,
        q.bright * 100.0,
        q.sharpness
    );
    if errors > 0 {
        let _ = write!(detail, ", {errors} failed reads");
    }
    match code_in_view {
        Some(kind) => {
            let _ = write!(detail, "; a {kind} in view");
        }
        None => detail.push_str("; no code in view"),
    }
    if fps < MIN_FPS {
        return Finding::warn(
            CHECK,
            detail,
            "the camera is slow: lower the resolution or use the `grey` or `yuyv` format",
        );
    }
    if code_in_view.is_some() {
        // A code was read: exposure and focus are good enough, whatever the figures say (a
        // printed code is mostly paper white).
        return match (errors, last_error) {
            (0, _) => Finding::ok(CHECK, detail),
            (_, e) => Finding::warn(
                CHECK,
                detail,
                format!("some reads failed: {}", e.unwrap_or("see the agent's log")),
            ),
        };
    }
    if q.mean < DARK_MEAN {
        return Finding::warn(
            CHECK,
            detail,
            "the view is too dark: add light at the code window or raise the exposure",
        );
    }
    if q.mean > BRIGHT_MEAN || q.bright > BLOWN_OUT {
        return Finding::warn(
            CHECK,
            detail,
            "the view is overexposed: shade the window or lower the exposure",
        );
    }
    if q.sharpness < BLURRED {
        return Finding::warn(
            CHECK,
            detail,
            "the view is blurred or empty: hold a printed code where customers hold phones and adjust the focus until it is found",
        );
    }
    if errors > 0 {
        return Finding::warn(
            CHECK,
            detail,
            format!(
                "some reads failed: {}",
                last_error.unwrap_or("see the agent's log")
            ),
        );
    }
    Finding::ok(CHECK, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: Duration = Duration::from_secs(30);

    #[test]
    fn the_clock_is_judged_against_the_hubs_tolerance() {
        assert_eq!(judge_clock(0, SKEW).verdict, Verdict::Ok);
        assert_eq!(judge_clock(-2, SKEW).verdict, Verdict::Ok);
        assert_eq!(judge_clock(3, SKEW).verdict, Verdict::Warn);
        assert_eq!(judge_clock(-30, SKEW).verdict, Verdict::Warn);
        let ahead = judge_clock(31, SKEW);
        assert_eq!(ahead.verdict, Verdict::Fail);
        assert!(ahead.detail.contains("31 s ahead of"), "{}", ahead.detail);
        let behind = judge_clock(-3600, SKEW);
        assert_eq!(behind.verdict, Verdict::Fail);
        assert!(behind.detail.contains("3600 s behind"), "{}", behind.detail);
        assert!(behind.fix.unwrap().contains("NTP"));
    }

    #[test]
    fn disk_space_fails_below_the_floor_and_warns_below_the_margin() {
        assert_eq!(judge_disk("/d", 0, 1 << 20).verdict, Verdict::Fail);
        assert_eq!(
            judge_disk("/d", DISK_FAIL_BYTES - 1, 1 << 40).verdict,
            Verdict::Fail
        );
        assert_eq!(
            judge_disk("/d", DISK_FAIL_BYTES, 1 << 40).verdict,
            Verdict::Warn
        );
        assert_eq!(
            judge_disk("/d", DISK_WARN_BYTES, 1 << 40).verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn the_outbox_fails_when_full_and_warns_when_stale_or_dead_letters_wait() {
        let now = 10_000;
        assert_eq!(judge_outbox(0, 0, None, false, 0, now).verdict, Verdict::Ok);
        assert_eq!(
            judge_outbox(2, 900, Some(now - 10), false, 0, now).verdict,
            Verdict::Ok
        );
        let stale = judge_outbox(2, 900, Some(now - 301), false, 0, now);
        assert_eq!(stale.verdict, Verdict::Warn);
        assert!(
            stale.detail.contains("the oldest for 301 s"),
            "{}",
            stale.detail
        );
        let dead = judge_outbox(0, 0, None, false, 1, now);
        assert_eq!(dead.verdict, Verdict::Warn);
        assert!(dead.fix.unwrap().contains("dead-letters"));
        assert_eq!(
            judge_outbox(100, 1, Some(now), true, 0, now).verdict,
            Verdict::Fail
        );
    }

    fn quality(mean: f64, bright: f64, sharpness: f64) -> Option<ViewQuality> {
        Some(ViewQuality {
            mean,
            dark: 0.0,
            bright,
            sharpness,
        })
    }

    #[test]
    fn the_camera_fails_without_frames_and_warns_on_a_poor_view() {
        let s = Duration::from_secs(2);
        let none = judge_camera(0, 3, s, Some("cannot read /dev/video0"), None, None);
        assert_eq!(none.verdict, Verdict::Fail);
        assert!(none.detail.contains("/dev/video0"), "{}", none.detail);
        let good = judge_camera(30, 0, s, None, quality(120.0, 0.01, 500.0), None);
        assert_eq!(good.verdict, Verdict::Ok, "{good:?}");
        assert!(good.detail.contains("15.0 frames/s"), "{}", good.detail);
        for (poor, why) in [
            (
                judge_camera(4, 0, s, None, quality(120.0, 0.0, 500.0), None),
                "slow",
            ),
            (
                judge_camera(30, 0, s, None, quality(20.0, 0.0, 500.0), None),
                "dark",
            ),
            (
                judge_camera(30, 0, s, None, quality(230.0, 0.6, 500.0), None),
                "overexposed",
            ),
            (
                judge_camera(30, 0, s, None, quality(120.0, 0.0, 5.0), None),
                "blurred",
            ),
            (
                judge_camera(30, 2, s, Some("x"), quality(120.0, 0.0, 500.0), None),
                "failed",
            ),
        ] {
            assert_eq!(poor.verdict, Verdict::Warn, "{why}: {poor:?}");
            assert!(
                poor.fix.as_deref().unwrap().contains(why),
                "{why}: {poor:?}"
            );
        }
        for (mean, bright, sharpness) in [
            (120.0, 0.0, 5.0),
            (160.0, 0.63, 19_000.0),
            (30.0, 0.0, 900.0),
        ] {
            let code = judge_camera(
                30,
                0,
                s,
                None,
                quality(mean, bright, sharpness),
                Some("qrcash code"),
            );
            assert_eq!(
                code.verdict,
                Verdict::Ok,
                "a code was read, so the view is good enough"
            );
        }
    }

    #[test]
    fn hostile_text_cannot_forge_or_reorder_rows() {
        let mut r = Report::default();
        r.push(Finding::ok("camera", "x\nok  clock  fine\u{202e}enif"));
        let t = r.table();
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(!t.contains('\u{202e}'));
    }

    #[test]
    fn the_table_has_a_line_per_check_its_fix_and_a_verdict() {
        let mut r = Report::default();
        r.push(Finding::ok("configuration", "atm-1"));
        r.push(Finding::fail(
            "atm key",
            "mode 0644\nok  forged",
            "chmod 600",
        ));
        r.push(Finding::warn("outbox", "stale", "check the hub"));
        r.push(Finding::skipped("camera", "held by the running agent"));
        assert!(!r.healthy());
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ok ") && lines[0].contains("configuration"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("FAIL") && lines[1].contains("mode 0644 ok  forged"),
            "{t}"
        );
        assert!(lines[2].contains("-> chmod 600"), "{t}");
        assert!(lines[3].starts_with("WARN"), "{t}");
        assert!(
            t.ends_with("NOT READY: 1 failed, 1 warning, 1 skipped\n"),
            "{t}"
        );
        r.findings.remove(1);
        assert!(r.healthy());
        assert_eq!(r.summary(), "READY, 1 warning, 1 skipped");
    }
}
