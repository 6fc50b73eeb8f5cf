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
    /// Whether it fsyncs (see [`Postgres::private_durable`]).
    durable: bool,
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
                durable: false,
            };
        }
        Self::private()
    }

    /// A private server of this test's own, which it may restart ([`Postgres::restart`]).
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn private() -> Postgres {
        Self::start_private(false)
    }

    /// A private server that fsyncs its commits and writes full pages, as production runs
    /// (the tests' servers do not: restarting the process loses nothing without it); for
    /// benchmarks.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn private_durable() -> Postgres {
        Self::start_private(true)
    }

    fn start_private(durable: bool) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("qrcash-pg.")
            .tempdir()
            .expect("a folder for PostgreSQL");
        let admin = postgres_sh("start", dir.path(), durable);
        Postgres {
            admin,
            private: Some(dir),
            durable,
        }
    }

    /// The folder of a private server (its data, socket and log), if this is one.
    pub fn dir(&self) -> Option<&Path> {
        self.private.as_ref().map(tempfile::TempDir::path)
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

impl Postgres {
    /// Stops the private server (fast shutdown: every connection is cut) and starts it again.
    ///
    /// # Panics
    /// On the server of `QRCASH_TEST_PG`, which other tests share, or when it fails to start.
    pub fn restart(&self) {
        let dir = self
            .private
            .as_ref()
            .expect("only a private server is restarted");
        postgres_sh("stop", dir.path(), self.durable);
        postgres_sh("start", dir.path(), self.durable);
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

/// Runs `scripts/postgres.sh ACTION DIR` (fsync on when `durable`); what it printed (the connection string, for
/// `start`).
///
/// # Panics
/// When it fails.
fn postgres_sh(action: &str, dir: &Path, durable: bool) -> String {
    let out = Command::new(script())
        .arg(action)
        .arg(dir)
        .env("QRCASH_PG_FSYNC", if durable { "on" } else { "off" })
        .output()
        .expect("scripts/postgres.sh runs");
    assert!(
        out.status.success(),
        "scripts/postgres.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}
