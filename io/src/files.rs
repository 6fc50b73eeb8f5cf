//! Files that hold secrets or money records (keys, databases): readable by their owner only.
//!
//! Directories this creates get mode 0700; a database file is created 0600 before SQLite
//! opens it (SQLite gives its `-wal` and `-shm` files the mode of the database file), and an
//! existing one that group or others can read is tightened to 0600 with its `-wal` and
//! `-shm`, so an upgrade from a version that created them 0644 closes the hole too.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `dir` and its missing parents with mode 0700 (existing ones are left as they are:
/// they may be shared, like `/var/lib`).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Prepares the SQLite database at `path`: its directory (see [`private_dir`]), the file
/// itself created 0600 if missing, and the database with its `-wal` and `-shm` files
/// tightened to 0600 if group or others could read them. Returns the files it tightened.
pub fn private_database(path: &Path) -> io::Result<Vec<PathBuf>> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let mut tightened = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        let Ok(meta) = fs::metadata(&file) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600))?;
            tightened.push(file);
        }
    }
    Ok(tightened)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_database_and_its_directory_are_private() {
        let root = tempfile::tempdir().unwrap();
        let db = root.path().join("state/hub.sqlite");
        assert!(private_database(&db).unwrap().is_empty());
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&root.path().join("state")), 0o700);
    }

    #[test]
    fn an_existing_world_readable_database_is_tightened() {
        let root = tempfile::tempdir().unwrap();
        let db = root.path().join("hub.sqlite");
        for suffix in ["", "-wal", "-shm"] {
            let f = root.path().join(format!("hub.sqlite{suffix}"));
            fs::write(&f, b"").unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        }
        assert_eq!(private_database(&db).unwrap().len(), 3);
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(
                mode(&root.path().join(format!("hub.sqlite{suffix}"))),
                0o600
            );
        }
        assert!(private_database(&db).unwrap().is_empty(), "idempotent");
    }
}
