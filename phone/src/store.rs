//! The device's durable state: signing key, `seq` counter, the hub's replay window, the
//! outbox of messages not answered yet, and small JSON records (session, last confirmation
//! request) in one directory.
//!
//! Every write goes through a temporary file, `fsync` and a rename, so a crash leaves either
//! the old or the new value, never half of one. The `seq` counter is written *before* the
//! number is used: after a crash a number may be skipped, never repeated, which is all the
//! hub's replay window needs. Not here: what the records mean (`client`, `main`).

use std::io::Write;
use std::path::{Path, PathBuf};

use qrcash_io::KeyFile;
use qrcash_protocol::PrivateKey;
use qrcash_protocol::replay::SenderWindow;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::PhoneError;

/// File name of the device's private key (mode 0600).
pub const KEY_FILE: &str = "device.jwk";
const SEQ_FILE: &str = "seq";
const WINDOW_FILE: &str = "hub-window.json";
/// The outbox: messages sent and not answered yet (0600: they are signed by the device).
pub const OUTBOX_FILE: &str = "outbox.json";

/// A message sent and not answered yet. It is published again until the hub's answer comes
/// or its `exp` passes, also by the next run of the app after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Its `jti`: the hub's answer names it in `re`.
    pub jti: String,
    /// The sealed message exactly as published (JWS compact).
    pub message: String,
    /// Its `exp`: the hub refuses it afterwards, so it is not sent again.
    pub exp: u64,
    /// The withdrawal a confirmation or a decline is about: its receipt answers it too.
    pub tx_id: Option<String>,
}

#[derive(Debug, Clone)]
enum Backing {
    Dir(PathBuf),
    Memory,
}

/// The state of one phone installation.
#[derive(Debug, Clone)]
pub struct DeviceStore {
    backing: Backing,
    seq: u64,
    window: SenderWindow,
    outbox: Vec<Pending>,
}

impl DeviceStore {
    /// Opens (creating if needed, mode 0700) the state directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, PhoneError> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        let mut store = DeviceStore {
            backing: Backing::Dir(dir),
            seq: 0,
            window: SenderWindow::default(),
            outbox: Vec::new(),
        };
        if let Some(text) = store.read_text(SEQ_FILE)? {
            store.seq = text.trim().parse().map_err(|_| PhoneError::StoreFormat {
                path: store.path(SEQ_FILE).unwrap_or_default(),
                detail: format!("expected a number, found {:?}", text.trim()),
            })?;
        }
        if let Some(w) = store.load_json::<SenderWindow>(WINDOW_FILE)? {
            store.window = w;
        }
        match store.load_json::<Vec<Pending>>(OUTBOX_FILE) {
            Ok(outbox) => store.outbox = outbox.unwrap_or_default(),
            // A damaged outbox must not keep the app from starting: its messages are lost
            // (the hub never acts on half of one), and the file is kept for a look.
            Err(PhoneError::StoreFormat { path, detail }) => {
                let aside = path.with_extension("json.damaged");
                tracing::warn!(file = %path.display(), %detail, aside = %aside.display(), "the outbox does not parse: set aside, its messages are not sent again");
                std::fs::rename(&path, &aside)
                    .map_err(|source| PhoneError::Store { path, source })?;
            }
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// A store that keeps everything in memory (tests, demos); nothing survives the process.
    pub fn in_memory() -> Self {
        DeviceStore {
            backing: Backing::Memory,
            seq: 0,
            window: SenderWindow::default(),
            outbox: Vec::new(),
        }
    }

    /// The directory, when the store is on disk.
    pub fn dir(&self) -> Option<&Path> {
        match &self.backing {
            Backing::Dir(d) => Some(d),
            Backing::Memory => None,
        }
    }

    /// Path of a file in the state directory.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.dir().map(|d| d.join(name))
    }

    /// The device key, generated and saved (0600) on first use. In memory: a fresh key.
    pub fn device_key(&self) -> Result<PrivateKey, PhoneError> {
        match self.path(KEY_FILE) {
            Some(p) => Ok(PrivateKey::load_or_generate(&p)?),
            None => Ok(PrivateKey::generate()),
        }
    }

    /// The last `seq` used.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Reserves and durably records the next `seq` (strictly increasing, starts at 1).
    pub fn next_seq(&mut self) -> Result<u64, PhoneError> {
        let next = self.seq + 1;
        self.write_text(SEQ_FILE, &next.to_string())?;
        self.seq = next;
        Ok(next)
    }

    /// The hub's replay window as last saved.
    pub fn hub_window(&self) -> SenderWindow {
        self.window
    }

    /// Saves the hub's replay window after a push was accepted.
    pub fn save_hub_window(&mut self, window: SenderWindow) -> Result<(), PhoneError> {
        self.save_json(WINDOW_FILE, &window)?;
        self.window = window;
        Ok(())
    }

    /// The messages sent and not answered yet, oldest first.
    pub fn pending(&self) -> &[Pending] {
        &self.outbox
    }

    /// Records a message before it is published (so a crash right after cannot lose it).
    pub fn add_pending(&mut self, pending: Pending) -> Result<(), PhoneError> {
        let mut outbox = self.outbox.clone();
        outbox.push(pending);
        self.save_outbox(outbox)
    }

    /// Forgets the pending messages `done` says were answered or expired; `true` when any
    /// was.
    pub fn settle_pending(
        &mut self,
        mut done: impl FnMut(&Pending) -> bool,
    ) -> Result<bool, PhoneError> {
        let outbox: Vec<Pending> = self.outbox.iter().filter(|p| !done(p)).cloned().collect();
        if outbox.len() == self.outbox.len() {
            return Ok(false);
        }
        self.save_outbox(outbox)?;
        Ok(true)
    }

    fn save_outbox(&mut self, outbox: Vec<Pending>) -> Result<(), PhoneError> {
        if outbox.is_empty() {
            self.remove(OUTBOX_FILE)?;
        } else {
            self.save_json(OUTBOX_FILE, &outbox)?;
        }
        self.outbox = outbox;
        Ok(())
    }

    /// Writes `value` as pretty JSON to `name` (atomically). No-op in memory.
    pub fn save_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), PhoneError> {
        let text = serde_json::to_string_pretty(value).map_err(|e| PhoneError::StoreFormat {
            path: self.path(name).unwrap_or_default(),
            detail: e.to_string(),
        })?;
        self.write_text(name, &text)
    }

    /// Reads JSON from `name`; `None` if the file does not exist (or in memory).
    pub fn load_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, PhoneError> {
        let Some(text) = self.read_text(name)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| PhoneError::StoreFormat {
                path: self.path(name).unwrap_or_default(),
                detail: e.to_string(),
            })
    }

    /// Removes `name` if it exists.
    pub fn remove(&self, name: &str) -> Result<(), PhoneError> {
        let Some(path) = self.path(name) else {
            return Ok(());
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PhoneError::Store { path, source }),
        }
    }

    fn read_text(&self, name: &str) -> Result<Option<String>, PhoneError> {
        let Some(path) = self.path(name) else {
            return Ok(None);
        };
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PhoneError::Store { path, source }),
        }
    }

    fn write_text(&self, name: &str, text: &str) -> Result<(), PhoneError> {
        match self.path(name) {
            Some(path) => write_atomically(&path, text.as_bytes()),
            None => Ok(()),
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), PhoneError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PhoneError::Store {
            path: dir.to_owned(),
            source,
        })
}

/// Temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PhoneError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PhoneError::Store {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; failure here only weakens crash safety.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_outbox_survives_reopen_and_a_damaged_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DeviceStore::open(dir.path()).unwrap();
        let p = |jti: &str| Pending {
            jti: jti.into(),
            message: format!("sealed-{jti}"),
            exp: 100,
            tx_id: None,
        };
        s.add_pending(p("a")).unwrap();
        s.add_pending(p("b")).unwrap();
        let mode = std::fs::metadata(s.path(OUTBOX_FILE).unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "signed messages: the owner's only");
        drop(s);
        let mut s = DeviceStore::open(dir.path()).unwrap();
        assert_eq!(s.pending(), [p("a"), p("b")]);
        assert!(s.settle_pending(|x| x.jti == "a").unwrap());
        assert!(
            !s.settle_pending(|x| x.jti == "a").unwrap(),
            "nothing left to settle"
        );
        assert!(s.settle_pending(|_| true).unwrap());
        assert!(!s.path(OUTBOX_FILE).unwrap().exists(), "empty: no file");

        std::fs::write(s.path(OUTBOX_FILE).unwrap(), "[{\"jti\": ").unwrap();
        let s = DeviceStore::open(dir.path()).expect("a damaged outbox does not stop the app");
        assert!(s.pending().is_empty());
        assert!(dir.path().join("outbox.json.damaged").exists());
    }

    #[test]
    fn seq_strictly_increases_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DeviceStore::open(dir.path()).unwrap();
        assert_eq!(s.next_seq().unwrap(), 1);
        assert_eq!(s.next_seq().unwrap(), 2);
        drop(s);
        let mut s = DeviceStore::open(dir.path()).unwrap();
        assert_eq!(s.last_seq(), 2);
        assert_eq!(s.next_seq().unwrap(), 3);
    }

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeviceStore::open(dir.path().join("phone")).unwrap();
        let k1 = s.device_key().unwrap();
        let k2 = s.device_key().unwrap();
        assert_eq!(k1.kid(), k2.kid());
        let mode = std::fs::metadata(s.path(KEY_FILE).unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(s.dir().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn hub_window_survives_reopen_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DeviceStore::open(dir.path()).unwrap();
        let w = SenderWindow::default().record(5);
        s.save_hub_window(w).unwrap();
        assert_eq!(DeviceStore::open(dir.path()).unwrap().hub_window(), w);
        std::fs::write(dir.path().join(SEQ_FILE), "twelve").unwrap();
        let err = DeviceStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, PhoneError::StoreFormat { .. }), "{err}");
    }

    #[test]
    fn memory_store_counts_but_writes_nothing() {
        let mut s = DeviceStore::in_memory();
        assert_eq!(s.next_seq().unwrap(), 1);
        assert_eq!(s.next_seq().unwrap(), 2);
        s.save_json("x.json", &1).unwrap();
        assert_eq!(s.load_json::<u32>("x.json").unwrap(), None);
    }
}
