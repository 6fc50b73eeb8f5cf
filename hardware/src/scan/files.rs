//! Decoding QR codes in image files: the logic behind `qrcash-decode` and `qrcash-agent
//! decode`. Loads each file as luma and runs every scanner pass on it ([`decode_files`]), or
//! plays the files as a camera stream through the agent's live settings ([`decode_live`]).

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

/// Plays `paths` in order as the frames of a camera through `config` as the live agent runs
/// it: the first code of each frame only, the slow fallbacks on their per-frame schedule
/// (`slow_search_every`), and no tracking (the files are not one scene), so the time of
/// each frame is what a customer in front of the ATM would wait on that frame.
pub fn decode_live<P: AsRef<Path>>(paths: &[P], config: ScanConfig) -> Vec<FileResult> {
    let config = ScanConfig {
        track_frames: 0,
        ..config
    };
    decode_each(paths, config, |scanner, frame| {
        scanner.scan(frame).into_iter().collect()
    })
}

/// Median, 90th and 99th percentile of `times` (nearest rank); zeros for none.
pub fn percentiles(times: &[Duration]) -> [Duration; 3] {
    let mut sorted = times.to_vec();
    sorted.sort();
    let rank = |p: f64| -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    };
    [rank(0.5), rank(0.9), rank(0.99)]
}

/// Decode every QR code in each of `paths`, in order. A file that cannot be read gives an
/// error for that file only.
pub fn decode_files<P: AsRef<Path>>(paths: &[P], config: ScanConfig) -> Vec<FileResult> {
    decode_each(paths, config, |scanner, frame| scanner.scan_all(frame))
}

/// Loads each file into one reused frame and times `scan` on it (loading excluded).
fn decode_each<P: AsRef<Path>>(
    paths: &[P],
    config: ScanConfig,
    mut scan: impl FnMut(&mut Scanner, &LumaFrame) -> Vec<Detection>,
) -> Vec<FileResult> {
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
            let found = scan(&mut scanner, &frame);
            FileResult {
                path,
                outcome: Ok(found),
                decode_time: start.elapsed(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let times: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentiles(&times), [ms(50), ms(90), ms(99)]);
        assert_eq!(percentiles(&[ms(7)]), [ms(7); 3]);
        assert_eq!(percentiles(&[]), [Duration::ZERO; 3]);
        assert_eq!(percentiles(&[ms(1), ms(9)]), [ms(1), ms(9), ms(9)]);
    }
}
