//! The driver's record of its last dispense, kept in a small JSON file so that a restarted
//! driver can say what happened and insist on recovery.
//!
//! The record always holds the outcome to report if the driver died at that instant: before
//! a batch is sent it says "in doubt, this batch in flight"; after the answer, the counts.
//! Writes are atomic (temporary file, fsync, rename). This is not the agent's transaction
//! journal, which remains the source of truth for orders.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DispenserError;
use super::outcome::DispenseOutcome;

/// The last dispense as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDispense {
    /// Its outcome (possibly in doubt).
    pub outcome: DispenseOutcome,
    /// Set once `recover_last` has left the machine clear after it.
    pub recovered: bool,
}

impl LastDispense {
    /// True when the next dispense must wait for `recover_last`.
    pub fn blocks_dispensing(&self) -> bool {
        !self.recovered && self.outcome.needs_recovery()
    }
}

/// The journal file.
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// A journal at `path` (created on first store).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Journal { path: path.into() }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the record; `None` if there is no file yet.
    ///
    /// A file that exists but cannot be parsed is an error, not "nothing happened": the
    /// last dispense might have been in doubt.
    pub fn load(&self) -> Result<Option<LastDispense>, DispenserError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| self.error(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    /// Replaces the record atomically.
    pub fn store(&self, record: &LastDispense) -> Result<(), DispenserError> {
        self.write_atomically(record).map_err(|e| self.error(e))
    }

    fn write_atomically(&self, record: &LastDispense) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable; best effort on filesystems that refuse.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn error(&self, source: io::Error) -> DispenserError {
        DispenserError::Journal {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispenser::outcome::{CassetteTally, DispenseResult, InDoubtReason};
    use crate::dispenser::request::{CassetteId, DispenseRequest};

    fn in_doubt() -> LastDispense {
        LastDispense {
            outcome: DispenseOutcome {
                requested: DispenseRequest::upper(30),
                cassettes: vec![CassetteTally::new(CassetteId::UPPER, 30)],
                result: DispenseResult::InDoubt {
                    in_flight: DispenseRequest::upper(20),
                    reason: InDoubtReason::Interrupted,
                },
            },
            recovered: false,
        }
    }

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("last.json"));
        assert_eq!(j.load().unwrap(), None);
        j.store(&in_doubt()).unwrap();
        assert_eq!(j.load().unwrap(), Some(in_doubt()));
        assert!(in_doubt().blocks_dispensing());
        let recovered = LastDispense {
            recovered: true,
            ..in_doubt()
        };
        j.store(&recovered).unwrap();
        assert_eq!(j.load().unwrap(), Some(recovered.clone()));
        assert!(!recovered.blocks_dispensing());
        assert!(!dir.path().join("last.json.tmp").exists());
    }

    #[test]
    fn corrupt_journal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.json");
        fs::write(&path, b"{ half a record").unwrap();
        let err = Journal::new(&path).load().unwrap_err();
        assert!(matches!(err, DispenserError::Journal { .. }), "{err}");
    }

    #[test]
    fn unwritable_location_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("no/such/dir/last.json"));
        assert!(matches!(
            j.store(&in_doubt()),
            Err(DispenserError::Journal { .. })
        ));
    }
}
