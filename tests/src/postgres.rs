//! PostgreSQL for the suites that run hub instances on it: the server `scripts/test.sh`
//! started (`QRCASH_TEST_PG`), or else a private one started here with the same script and
//! stopped when the last user is done, so `cargo test` alone runs these suites too.

use std::path::{Path, PathBuf};
use std::process::Command;

use qrcash_hub::store::Store;

/// A PostgreSQL server the tests may create databases on.
#[derive(Debug)]
pub struct Postgres {
    /// Its connection string, with an administrator's rights.
    admin: String,
    /// The private cluster this value started and stops (none for `QRCASH_TEST_PG`).
    private: Option<tempfile::TempDir>,
}

impl Postgres {
    /// The server of `QRCASH_TEST_PG`, or a private one started now.
    ///
    /// # Panics
    /// When no server can be started: a suite that needs one cannot run without it.
    pub fn get() -> Postgres {
        if let Ok(admin) = std::env::var("QRCASH_TEST_PG") {
            return Postgres {
                admin,
                private: None,
            };
        }
        let dir = tempfile::Builder::new()
            .prefix("qrcash-pg.")
            .tempdir()
            .expect("a folder for PostgreSQL");
        let out = Command::new(script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("scripts/postgres.sh runs");
        assert!(
            out.status.success(),
            "scripts/postgres.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Postgres {
            admin,
            private: Some(dir),
        }
    }

    /// A new, empty database on the server: its connection string. Callable from async
    /// tests too (see [`blocking`]).
    ///
    /// # Panics
    /// When the server refuses.
    pub fn database(&self) -> String {
        blocking(|| Store::create_test_database(&self.admin)).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(dir) = &self.private {
            let _ = Command::new(script()).arg("stop").arg(dir.path()).status();
        }
    }
}

/// Runs `f` on a thread of its own and waits for it: the PostgreSQL client blocks on a
/// runtime of its own, which panics on a thread that drives tokio tasks, so async tests use
/// a hub store through this.
///
/// # Panics
/// When `f` panics (its message is printed by that thread).
pub fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the blocking call panicked"))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}
