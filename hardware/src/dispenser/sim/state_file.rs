//! The simulator's state file: the simulated machine as JSON, so that notes moved and notes
//! left in the path survive a "power loss" (a killed or restarted simulator).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::mechanism::{Faults, Mechanism};

/// Reads a state file; `Ok(None)` if it does not exist.
pub fn load(path: &Path) -> io::Result<Option<Mechanism>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a state file (temporary file then rename, so a kill never leaves half a file).
pub fn save(path: &Path, mechanism: &Mechanism) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(mechanism).map_err(io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, json)?;
    fs::rename(&tmp, path)
}

/// Reads a faults file (JSON `Faults`, missing fields default).
pub fn load_faults(path: &Path) -> io::Result<Faults> {
    let text = fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.json");
        assert_eq!(load(&path).unwrap(), None);
        let mut m = Mechanism::new(&[10, 20], 3);
        m.in_path = 2;
        m.powered = false;
        save(&path, &m).unwrap();
        assert_eq!(load(&path).unwrap(), Some(m));
        fs::write(&path, "not json").unwrap();
        assert_eq!(load(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn faults_file_accepts_partial_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults.json");
        fs::write(&path, r#"{"jam_after": 3, "nak_commands": 2}"#).unwrap();
        let f = load_faults(&path).unwrap();
        assert_eq!(f.jam_after, Some(3));
        assert_eq!(f.nak_commands, 2);
        assert!(!f.no_answer);
        fs::write(&path, r#"{"jam_afterr": 3}"#).unwrap();
        assert!(load_faults(&path).is_err(), "typos are caught");
    }
}
