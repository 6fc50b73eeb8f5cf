//! The camera task (a thread): frames from the source through the [`Scanner`], decoded
//! withdrawal codes to the core. It decides nothing about them: the session verifies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qrcash_hardware::camera::{CameraError, FrameSource, LumaFrame};
use qrcash_hardware::scan::{PayloadFilter, ScanConfig, Scanner};
use qrcash_protocol::token;
use tokio::sync::mpsc;

/// The scanner settings of the live camera: [`ScanConfig::live`], keeping withdrawal codes
/// only. `qrcash-agent doctor` looks through the same ones.
pub fn live_scan_config() -> ScanConfig {
    ScanConfig::live(PayloadFilter::new(token::looks_like_token))
}

/// What the camera thread reports for `qrcash-agent status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(super) struct CameraHealth {
    /// Frames read.
    pub frames: u64,
    /// Frames that failed.
    pub errors: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// Scans frames until `stop`, the source runs out, or the core stops listening; at most one
/// frame per `min_interval`.
pub(super) fn camera_loop(
    mut frames: Box<dyn FrameSource>,
    scans: mpsc::Sender<String>,
    stop: Arc<AtomicBool>,
    min_interval: Duration,
    health: Arc<std::sync::Mutex<CameraHealth>>,
) {
    let mut scanner = Scanner::new(live_scan_config());
    let mut frame = LumaFrame::default();
    while !stop.load(Ordering::SeqCst) {
        let started = std::time::Instant::now();
        match frames.next_frame(&mut frame) {
            Ok(()) => {
                super::lock(&health).frames += 1;
                if let Some(d) = scanner.scan(&frame)
                    && scans.blocking_send(d.payload).is_err()
                {
                    return;
                }
            }
            Err(CameraError::Exhausted(n)) => {
                tracing::info!(frames = n, "camera source exhausted");
                return;
            }
            // A watched folder with nothing (new) in it: look again shortly, quietly.
            Err(CameraError::Empty(_)) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                tracing::warn!(error = %e, "camera frame failed");
                {
                    let mut h = super::lock(&health);
                    h.errors += 1;
                    h.last_error = Some(e.to_string());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if let Some(rest) = min_interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}
