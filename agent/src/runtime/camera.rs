//! The camera task (a thread): frames from the source through the [`Scanner`], decoded
//! withdrawal codes to the core. It decides nothing about them: the session verifies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qrcash_hardware::camera::{CameraError, FrameSource, LumaFrame};
use qrcash_hardware::scan::{PayloadFilter, ScanConfig, Scanner};
use qrcash_protocol::token;
use tokio::sync::mpsc;

/// Scans frames until `stop`, the source runs out, or the core stops listening; at most one
/// frame per `min_interval`.
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

pub(super) fn camera_loop(
    mut frames: Box<dyn FrameSource>,
    scans: mpsc::Sender<String>,
    stop: Arc<AtomicBool>,
    min_interval: Duration,
    health: Arc<std::sync::Mutex<CameraHealth>>,
) {
    let mut scanner = Scanner::new(ScanConfig {
        filter: PayloadFilter::new(token::looks_like_token),
        // The expensive passes (double resolution, rqrr's search: ~35 ms on an empty
        // 1280x720 frame, against ~1 ms for the fast ones) run on every 4th frame only: a
        // code held up to the camera stays for many frames, and a small board keeps its
        // frame rate while nobody is there.
        slow_search_every: 4,
        // A phone held up to an ATM's camera shows its code at several pixels per module;
        // the double-resolution pass for tiny codes would only cost memory (frame buffers
        // four times the frame) on a board where every megabyte counts.
        upsample_fallback: false,
        ..ScanConfig::default()
    });
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
