//! Hub instance processes (`qrcash-fault-campaign hub --config FILE`, which runs a hub as
//! `qrcash-hub run` does) that a suite starts, SIGKILLs and starts again, as a supervisor
//! with `Restart=always` would. Each instance writes its log to a file of its own; readiness
//! is read from it (`hub ready` once per start).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What an instance prints on standard error once it is connected and subscribed.
const READY: &str = "hub ready";
/// What an instance logs (at `info`) each time its link is up and subscribed again.
const SUBSCRIBED: &str = "connected to the broker and subscribed";
/// Longest wait for an instance to become ready.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// Several hub instances, numbered from 0.
#[derive(Debug)]
pub struct Instances {
    exe: PathBuf,
    dir: PathBuf,
    log_filter: String,
    procs: Vec<Option<Child>>,
    /// How often each was started.
    starts: Vec<usize>,
}

impl Instances {
    /// `n` instances, none started: `exe` is the `qrcash-fault-campaign` binary, `dir` holds
    /// their configurations ([`Instances::config`]) and logs, `log_filter` is their
    /// `RUST_LOG` (it must let `qrcash_hub::service` speak at `info`).
    pub fn new(exe: &Path, dir: &Path, n: usize, log_filter: &str) -> Instances {
        Instances {
            exe: exe.to_owned(),
            dir: dir.to_owned(),
            log_filter: log_filter.to_owned(),
            procs: (0..n).map(|_| None).collect(),
            starts: vec![0; n],
        }
    }

    /// How many instances.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Where instance `i` reads its configuration (the caller writes it).
    pub fn config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("hub-{i}.toml"))
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("hub-{i}.log"))
    }

    /// Everything instance `i` logged, over all its starts.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// How often each instance was started.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// Messages instance `i` handled, over all its starts (its `batch handled` lines, logged
    /// at `debug`).
    pub fn handled(&self, i: usize) -> usize {
        self.log(i)
            .lines()
            .filter(|l| l.contains("batch handled"))
            .filter_map(|l| l.rsplit("messages=").next()?.trim().parse::<usize>().ok())
            .sum()
    }

    /// How often instance `i` was connected and subscribed, over all its starts.
    pub fn subscriptions(&self, i: usize) -> usize {
        self.log(i).matches(SUBSCRIBED).count()
    }

    /// Starts instance `i`.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn(&mut self, i: usize) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(|e| format!("hub instance {i} log: {e}"))?;
        let child = Command::new(&self.exe)
            .arg("hub")
            .arg("--config")
            .arg(self.config(i))
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting hub instance {i}: {e}"))?;
        self.procs[i] = Some(child);
        self.starts[i] += 1;
        Ok(())
    }

    /// Whether instance `i` said it is ready since its latest start.
    pub fn ready(&self, i: usize) -> bool {
        self.log(i).matches(READY).count() >= self.starts[i]
    }

    /// Waits until every instance said it is ready since its latest start.
    ///
    /// # Errors
    /// When one did not within [`READY_WITHIN`] (with its log).
    pub async fn wait_all_ready(&self) -> Result<(), String> {
        for i in 0..self.len() {
            let deadline = Instant::now() + READY_WITHIN;
            while !self.ready(i) {
                if Instant::now() > deadline {
                    return Err(format!("hub instance {i} not ready:\n{}", self.log(i)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// SIGKILL, then started again at once (as systemd's `Restart=always` would).
    ///
    /// # Errors
    /// When it cannot be started again.
    pub fn kill_and_restart(&mut self, i: usize) -> Result<(), String> {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn(i)
    }

    /// Stops instance `i` as a supervisor would (SIGTERM: it finishes its batch and leaves).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Stops every instance (SIGTERM).
    pub fn stop_all(&mut self) {
        for i in 0..self.len() {
            self.stop(i);
        }
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
