//! Decoding QR codes in image files: the logic behind `qrcash-decode` and `qrcash-agent
//! decode`. Loads each file as luma and runs every scanner pass on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Detection, ScanConfig, Scanner};
use crate::camera::{CameraError, LumaFrame, load_luma_into};

/// What one file held.
#[derive(Debug)]
pub struct FileResult {
    /// The file.
    pub path: PathBuf,
    /// The codes found (empty: no code), or why the file could not be read.
    pub outcome: Result<Vec<Detection>, CameraError>,
    /// Time spent decoding (loading the file excluded).
    pub decode_time: Duration,
}

/// Decode every QR code in each of `paths`, in order. A file that cannot be read gives an
/// error for that file only.
pub fn decode_files<P: AsRef<Path>>(paths: &[P], config: ScanConfig) -> Vec<FileResult> {
    let mut scanner = Scanner::new(config);
    let mut frame = LumaFrame::default();
    paths
        .iter()
        .map(|path| {
            let path = path.as_ref().to_path_buf();
            if let Err(e) = load_luma_into(&path, &mut frame) {
                return FileResult {
                    path,
                    outcome: Err(e),
                    decode_time: Duration::ZERO,
                };
            }
            let start = Instant::now();
            let found = scanner.scan_all(&frame);
            FileResult {
                path,
                outcome: Ok(found),
                decode_time: start.elapsed(),
            }
        })
        .collect()
}
