//! Private key files: a JWK written 0600 through a temporary file and a rename, so a crash
//! never leaves half a key; loading refuses a file that group or others can access and
//! tells the operator how to fix it.
//!
//! The JWK format itself is the protocol's ([`PrivateKey::to_private_jwk`]); this module
//! only does the file I/O around it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use qrcash_protocol::{KeyError, PrivateKey};

use crate::files::private_dir;

/// Keys kept in files.
pub trait KeyFile: Sized {
    /// Writes the key with mode 0600, atomically (temporary file, fsync, rename). Creates
    /// missing parent directories with mode 0700.
    fn save(&self, path: &Path) -> Result<(), KeyError>;

    /// Reads a key; refuses files that group or others can access.
    fn load(path: &Path) -> Result<Self, KeyError>;

    /// Loads the key at `path`, or generates and saves a new one if there is none.
    fn load_or_generate(path: &Path) -> Result<Self, KeyError>;
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl KeyFile for PrivateKey {
    fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = io_error(path);
        if let Some(dir) = path.parent() {
            private_dir(dir).map_err(&io)?;
        }
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(&io)?;
        file.write_all(self.to_private_jwk().as_bytes())
            .map_err(&io)?;
        file.write_all(b"\n").map_err(&io)?;
        file.sync_all().map_err(&io)?;
        std::fs::rename(&tmp, path).map_err(&io)?;
        Ok(())
    }

    fn load(path: &Path) -> Result<Self, KeyError> {
        let io = io_error(path);
        let mode = std::fs::metadata(path).map_err(&io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.display().to_string(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(&io)?;
        PrivateKey::from_private_jwk(&text).map_err(|e| match e {
            KeyError::InvalidJwk(why) => KeyError::InvalidJwk(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            Self::load(path)
        } else {
            let key = Self::generate();
            key.save(path)?;
            Ok(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/device.jwk");
        let key = PrivateKey::generate();
        key.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let loaded = PrivateKey::load(&path).unwrap();
        assert_eq!(loaded.kid(), key.kid());
        assert_eq!(
            PrivateKey::load_or_generate(&path).unwrap().kid(),
            key.kid()
        );
    }

    #[test]
    fn readable_private_key_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.jwk");
        PrivateKey::generate().save(&path).unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = PrivateKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::InsecurePermissions { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"));
        }
    }

    #[test]
    fn a_broken_key_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.jwk");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = PrivateKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::InvalidJwk(_)), "{err}");
        assert!(err.to_string().contains("k.jwk"), "{err}");
    }
}
