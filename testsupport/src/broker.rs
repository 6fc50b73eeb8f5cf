//! A private Mosquitto per test: generated configuration, free loopback port, killed on drop.
//!
//! Tests never use a broker that happens to run on the machine: each one starts its own,
//! so suites run in parallel and pass on any machine where `scripts/test.sh` installed
//! Mosquitto. [`Mosquitto::stop`] and [`Mosquitto::start_again`] keep the port, which is what
//! broker-restart tests need.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to put in the broker's configuration beyond a plain listener.
#[derive(Debug, Clone, Default)]
pub struct MosquittoConfig {
    /// TLS on the listener; `None` for plain TCP.
    pub tls: Option<ListenerTls>,
    /// An ACL file (`acl_file`); `None` for no ACL.
    pub acl: Option<String>,
    /// Further configuration lines, appended verbatim.
    pub extra: Vec<String>,
    /// A whole configuration file to run instead of the generated one (the production file
    /// of `deploy/mosquitto/`), with its paths, listener and log destination moved into the
    /// broker's private folder: see [`production_config`]. `tls` and `acl` then only
    /// provide the files it names.
    pub verbatim: Option<String>,
    /// Further files (name, content) written into the broker's private folder, for a
    /// verbatim configuration that names them (a bridge's certificates).
    pub files: Vec<(String, String)>,
    /// Text replaced in every line of a verbatim configuration before it runs (a bridge's
    /// `address`).
    pub rewrite: Vec<(String, String)>,
}

/// TLS files of the listener, as PEM text (written into the broker's private folder).
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// The CA that signs client certificates (and the broker's).
    pub ca_pem: String,
    /// The broker's certificate.
    pub cert_pem: String,
    /// The broker's private key.
    pub key_pem: String,
    /// Refuse clients without a certificate signed by the CA.
    pub require_certificate: bool,
    /// Use the client certificate's CN as the MQTT username (for ACL patterns `%u`).
    pub use_identity_as_username: bool,
    /// A certificate revocation list (PEM file) the broker reads at start (`crlfile`).
    pub crl_file: Option<PathBuf>,
}

/// A running (or stopped) private Mosquitto.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    tls: bool,
    dir: tempfile::TempDir,
}

/// The Mosquitto executable: `$MOSQUITTO`, then the usual places, then `$PATH`.
pub fn mosquitto_binary() -> PathBuf {
    find_program(
        "MOSQUITTO",
        &[
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
            "/usr/bin/mosquitto",
        ],
        "mosquitto",
    )
}

/// An executable: the path in `$env`, then the first of `places` that exists, then `name`
/// looked up in `$PATH`.
pub fn find_program(env: &str, places: &[&str], name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    places
        .iter()
        .find(|p| Path::new(p).exists())
        .map_or_else(|| name.into(), PathBuf::from)
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral loopback port")
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Mosquitto {
    /// A plain-TCP broker allowing anonymous clients.
    pub fn start() -> Mosquitto {
        Self::start_with(MosquittoConfig::default())
    }

    /// A broker with the given configuration.
    ///
    /// # Panics
    /// If Mosquitto is not installed or does not come up: the message says how to fix it.
    pub fn start_with(config: MosquittoConfig) -> Mosquitto {
        let mut dir = tempfile::tempdir().expect("tempdir for mosquitto");
        let mut last_err = String::new();
        // The free port can be taken between our probe and the broker's bind: retry.
        for _ in 0..5 {
            let port = free_port();
            write_config(dir.path(), port, &config);
            let mut m = Mosquitto {
                child: None,
                port,
                tls: config.tls.is_some(),
                dir,
            };
            match m.spawn() {
                Ok(()) => return m,
                Err(e) => {
                    last_err = e;
                    dir = m.into_dir();
                }
            }
        }
        panic!("mosquitto did not start: {last_err}");
    }

    fn into_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::tempdir().expect("tempdir for mosquitto");
        std::mem::replace(&mut self.dir, dir)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = mosquitto_binary();
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e}; install it with `apt-get install -y mosquitto` (scripts/test.sh does)",
                    bin.display()
                )
            })?;
        self.child = Some(child);
        if wait_for_port(self.port, Duration::from_secs(10)) {
            // Another test's broker may hold the same port (two probes of `free_port` can
            // name one port): then the port answers, but ours failed to bind and exits, and
            // the other one disappears with its test. Ours must still be running.
            std::thread::sleep(Duration::from_millis(100));
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                self.kill();
                return Err(format!(
                    "exited after start (port {} taken?): {}",
                    self.port,
                    self.log()
                ));
            }
            Ok(())
        } else {
            self.kill();
            Err(format!(
                "not listening on port {}: {}",
                self.port,
                self.log()
            ))
        }
    }

    /// `mqtt://127.0.0.1:PORT` (or `mqtts://localhost:PORT` with TLS, matching the test
    /// certificate's name).
    pub fn url(&self) -> String {
        if self.tls {
            format!("mqtts://localhost:{}", self.port)
        } else {
            format!("mqtt://127.0.0.1:{}", self.port)
        }
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's private folder (configuration, TLS files, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the broker (as a crash would: no clean disconnects).
    pub fn stop(&mut self) {
        self.kill();
        // Wait until the port is really closed so a client sees the outage.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same port with the same configuration.
    ///
    /// # Panics
    /// If it does not come up (e.g. the port was taken meanwhile).
    pub fn start_again(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("mosquitto did not restart: {e}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The production configuration `text` (`deploy/mosquitto/mosquitto.conf`) made runnable in
/// the private folder `dir` on `port`: its `/etc/mosquitto/qrcash/` files and persistence
/// location move into `dir`, its listener to `127.0.0.1:port`, its log to stderr, and it
/// stays root when run as root (the private folder is not the `mosquitto` user's). Every
/// other line runs as shipped.
pub fn production_config(text: &str, dir: &Path, port: u16) -> String {
    let folder = format!("{}/", dir.display());
    let mut out = String::from("user root\n");
    for line in text.lines() {
        let line = line
            .replace("/etc/mosquitto/qrcash/", &folder)
            .replace("/var/lib/mosquitto/", &folder);
        let replaced = if line.starts_with("listener ") {
            format!("listener {port} 127.0.0.1")
        } else if line.starts_with("log_dest ") {
            "log_dest stderr".to_owned()
        } else {
            line
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    out.push_str("log_type notice\n");
    out
}

fn write_config(dir: &Path, port: u16, config: &MosquittoConfig) {
    if let Some(text) = &config.verbatim {
        if let Some(tls) = &config.tls {
            for (name, content) in [
                ("device-ca.pem", &tls.ca_pem),
                ("broker.pem", &tls.cert_pem),
                ("broker.key", &tls.key_pem),
            ] {
                std::fs::write(dir.join(name), content).expect("write TLS file");
            }
        }
        if let Some(acl) = &config.acl {
            std::fs::write(dir.join("acl.conf"), acl).expect("write ACL file");
        }
        for (name, content) in &config.files {
            std::fs::write(dir.join(name), content).expect("write broker file");
        }
        let text = config
            .rewrite
            .iter()
            .fold(text.clone(), |t, (from, to)| t.replace(from, to));
        std::fs::write(
            dir.join("mosquitto.conf"),
            production_config(&text, dir, port),
        )
        .expect("write mosquitto.conf");
        return;
    }
    let mut conf = String::new();
    // As root Mosquitto would switch to the `mosquitto` user, which cannot read our private
    // folder; as any other user the line has no effect.
    conf.push_str("user root\n");
    conf.push_str("persistence false\n");
    conf.push_str("log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n");
    conf.push_str("max_queued_messages 100000\nmax_inflight_messages 100\n");
    conf.push_str("per_listener_settings false\n");
    conf.push_str(&format!("listener {port} 127.0.0.1\n"));
    match &config.tls {
        Some(tls) => {
            let put = |name: &str, text: &str| {
                let p = dir.join(name);
                let mut f = std::fs::File::create(&p).expect("write TLS file");
                f.write_all(text.as_bytes()).expect("write TLS file");
                p.display().to_string()
            };
            conf.push_str(&format!("cafile {}\n", put("ca.pem", &tls.ca_pem)));
            conf.push_str(&format!("certfile {}\n", put("server.pem", &tls.cert_pem)));
            conf.push_str(&format!("keyfile {}\n", put("server.key", &tls.key_pem)));
            if let Some(crl) = &tls.crl_file {
                conf.push_str(&format!("crlfile {}\n", crl.display()));
            }
            conf.push_str(&format!(
                "require_certificate {}\nuse_identity_as_username {}\n",
                tls.require_certificate, tls.use_identity_as_username
            ));
            conf.push_str(if tls.require_certificate {
                "allow_anonymous false\n"
            } else {
                "allow_anonymous true\n"
            });
        }
        None => conf.push_str("allow_anonymous true\n"),
    }
    if let Some(acl) = &config.acl {
        let p = dir.join("acl");
        std::fs::write(&p, acl).expect("write ACL file");
        conf.push_str(&format!("acl_file {}\n", p.display()));
    }
    for line in &config.extra {
        conf.push_str(line);
        conf.push('\n');
    }
    std::fs::write(dir.join("mosquitto.conf"), conf).expect("write mosquitto.conf");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_and_restarts_on_the_same_port() {
        let mut m = Mosquitto::start();
        let port = m.port();
        assert!(m.is_running());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        m.stop();
        assert!(!m.is_running());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        m.start_again();
        assert_eq!(m.port(), port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert_eq!(m.url(), format!("mqtt://127.0.0.1:{port}"));
    }
}
