//! The independent implementations in `tests/python/`, run as child processes: the Python
//! environment comes from `scripts/install-deps.sh` (`target/pyvenv`, or `QRCASH_PYTHON`);
//! without it the interoperability suites fail and say how to get it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Runs `tests/python/<script>` with `args`, feeding `stdin`.
///
/// # Panics
/// When the interpreter cannot be started (the message names the fix).
pub fn run(script: &str, args: &[&str], stdin: &[u8]) -> Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let interpreter = std::env::var("QRCASH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/pyvenv/bin/python"));
    let mut child = Command::new(&interpreter)
        .arg(root.join("tests/python").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run scripts/install-deps.sh, which creates it",
                interpreter.display()
            )
        });
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .expect("python's stdin");
    child.wait_with_output().expect("python ran")
}

/// [`run`], expecting success: its standard output, trimmed.
///
/// # Panics
/// When the script fails (with its standard error).
pub fn ok(script: &str, args: &[&str], stdin: &[u8]) -> String {
    let out = run(script, args, stdin);
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
