//! The driver's record of its last dispense, kept in a small JSON file so that a restarted
//! driver can say what happened and insist on recovery.
//!
//! The record always holds the outcome to report if the driver died at that instant: before
//! a batch is sent it says "in doubt, this batch in flight"; once the command frame is on the
//! serial line it also says when; after the answer, the counts. It names the dispense by the
//! caller's reference (the agent's order id): a restarted caller attributes the counts to an
//! order only when the reference is that order's, never because the requested notes look the
//! same. Writes are atomic (temporary file, fsync, rename). This is not the agent's
//! transaction journal, which remains the source of truth for orders.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DispenserError;
use super::outcome::DispenseOutcome;

/// The last dispense as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDispense {
    /// Whose dispense this is: the reference the caller gave to `Dispenser::dispense`.
    /// Records written before references existed have none and are attributed to nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Its outcome (possibly in doubt).
    pub outcome: DispenseOutcome,
    /// While a batch is in flight: when its command frame was handed to the serial line
    /// (Unix milliseconds). `None` while the record only announces the batch (the driver
    /// may have stopped before writing it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_at_ms: Option<u64>,
    /// When the record was written (Unix milliseconds).
    #[serde(default)]
    pub written_at_ms: u64,
    /// Set once `recover_last` has left the machine clear after it.
    pub recovered: bool,
}

impl LastDispense {
    /// A fresh record of `outcome` for the dispense named `reference`, written now.
    pub fn new(reference: Option<String>, outcome: DispenseOutcome) -> Self {
        LastDispense {
            reference,
            outcome,
            handed_at_ms: None,
            written_at_ms: unix_ms(),
            recovered: false,
        }
    }

    /// True when this record belongs to the dispense named `reference`.
    pub fn is_for(&self, reference: &str) -> bool {
        self.reference.as_deref() == Some(reference)
    }

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

/// The wall clock in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispenser::outcome::{CassetteTally, DispenseResult, InDoubtReason};
    use crate::dispenser::request::{CassetteId, DispenseRequest};

    fn in_doubt() -> LastDispense {
        LastDispense {
            reference: Some("order-1".into()),
            handed_at_ms: Some(1_800_000_000_000),
            written_at_ms: 1_800_000_000_000,
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
        assert!(recovered.is_for("order-1") && !recovered.is_for("order-2"));
    }

    #[test]
    fn records_without_a_reference_belong_to_nobody() {
        // The shape written before references existed still loads, and names no order.
        let old = r#"{"outcome":{"requested":{"notes":[3]},"cassettes":[],"result":{"result":"completed"}},"recovered":true}"#;
        let record: LastDispense = serde_json::from_str(old).unwrap();
        assert_eq!(record.reference, None);
        assert!(!record.is_for(""));
        assert_eq!(record.handed_at_ms, None);
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
