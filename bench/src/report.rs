//! What the benchmark binaries share: the machine they ran on and rewriting their own
//! section of `docs/BENCHMARKS.md`.

use std::path::Path;

use anyhow::{Context, Result};

/// Replaces the section that starts with `heading` (up to the next `## `) or appends it.
pub fn update_section(path: &Path, heading: &str, body: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let mut out = String::new();
    let mut lines = old.lines().peekable();
    let mut done = false;
    while let Some(l) = lines.next() {
        if l.trim_end() == heading {
            out.push_str(body.trim_end());
            out.push_str("\n\n");
            while lines.peek().is_some_and(|n| !n.starts_with("## ")) {
                lines.next();
            }
            done = true;
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !done {
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(body.trim_end());
        out.push('\n');
    }
    std::fs::write(path, out.trim_end().to_owned() + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// The 1, 5 and 15 minute load averages, for the record of a benchmark run.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// What `cmd args` prints, trimmed (empty if it cannot run).
pub fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// CPU model, core count, kernel and compiler: the machine line of a benchmark report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, nproc {cores}, {}, {}",
        command_line("uname", &["-sr"]),
        command_line("rustc", &["--version"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_in_place_or_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BENCHMARKS.md");
        std::fs::write(&path, "# Benchmarks\n\n## A\n\nold a\n\n## B\n\nb\n").unwrap();
        update_section(&path, "## A", "## A\n\nnew a").unwrap();
        update_section(&path, "## C", "## C\n\nc").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# Benchmarks\n\n## A\n\nnew a\n\n## B\n\nb\n\n## C\n\nc\n"
        );
    }
}
