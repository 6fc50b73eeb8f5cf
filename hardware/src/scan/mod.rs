//! Fast QR scanning on top of rqrr, for live video on a small board.
//!
//! Plain rqrr spends ~20 ms on a 1280×720 frame, mostly per code rather than per pixel: its
//! grid search refines each candidate's perspective by hill-climbing, twice (~12 ms for a
//! version-10 code), and its binarizer divides per pixel. [`Scanner`] keeps rqrr's decoder
//! and does the rest itself, cheapest pass first, stopping at the first accepted payload:
//!
//! 1. **Tracked region**: right after a detection, the next frames look only around where the
//!    code was (at half resolution when its modules are big enough).
//! 2. **Half resolution**: the whole frame, 2×2 box-filtered (a quarter of the pixels, half the
//!    sensor noise), for frames whose short side is at least
//!    [`ScanConfig::downscale_min_side`].
//! 3. **Full-resolution region**: a grid found at half resolution that did not decode is
//!    retried on the full-resolution pixels around it.
//! 4. **Full resolution**: the whole frame (small or distant codes).
//! 5. **rqrr's own grid search** over the same images when ours decoded nothing (see
//!    [`ScanConfig::slow_search_every`]).
//!
//! Every pass binarizes with our local-mean [`Binarizer`] and runs the fast locator
//! (`locate`: finder patterns, version blocks, alignment pattern, homography) whose sampled
//! grid goes to rqrr's decoder. Payloads a caller-supplied [`PayloadFilter`] rejects (anything
//! that is not a withdrawal token) are dropped on the spot and never tracked.
//!
//! Not here: where frames come from ([`crate::camera`]), what a token means (the agent).

mod binarize;
pub mod corpus;
mod detect;
mod downscale;
mod files;
mod locate;

pub use binarize::Binarizer;
pub use downscale::halve;
pub use files::{FileResult, decode_files};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::camera::{LumaFrame, LumaView, Rect};
use detect::Found;

/// Decides which decoded payloads are worth returning (e.g. "looks like a withdrawal token").
#[derive(Clone)]
pub struct PayloadFilter(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl PayloadFilter {
    /// A filter from a predicate: `true` keeps the payload.
    pub fn new(accept: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(accept))
    }

    /// Keep every payload.
    pub fn accept_all() -> Self {
        Self::new(|_| true)
    }

    /// Whether `payload` is kept.
    pub fn accepts(&self, payload: &str) -> bool {
        (self.0)(payload)
    }
}

impl Default for PayloadFilter {
    fn default() -> Self {
        Self::accept_all()
    }
}

impl std::fmt::Debug for PayloadFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadFilter(..)")
    }
}

/// Scanner tuning. The defaults suit 1280×720 video of a phone held 10–30 cm away.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Frames whose shorter side has at least this many pixels are first scanned at half
    /// resolution. Below it codes are usually too few pixels per module to survive halving.
    pub downscale_min_side: u32,
    /// After a detection, look first around the code for this many frames (0 disables).
    pub track_frames: u32,
    /// Scan the whole frame at full resolution when the half-resolution pass found nothing
    /// (small or distant codes).
    pub full_res_fallback: bool,
    /// When the fast locator decodes nothing, also run rqrr's own grid search (slow: ~10 ms
    /// per pass at 1280×720, most of an empty frame's cost) on one frame in this many; 1 =
    /// every frame, 0 = never. A board that cannot afford it at its frame rate sets 3–5: a code
    /// held in front of the camera stays for many frames.
    pub slow_search_every: u32,
    /// Which payloads to return.
    pub filter: PayloadFilter,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            downscale_min_side: 600,
            track_frames: 10,
            full_res_fallback: true,
            slow_search_every: 1,
            filter: PayloadFilter::accept_all(),
        }
    }
}

/// Which pass of the pipeline produced a detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Around the previous detection.
    Tracked,
    /// Whole frame at half resolution.
    HalfResolution,
    /// Full-resolution pixels around a grid the half-resolution pass could not decode.
    FullResolutionRegion,
    /// Whole frame at full resolution.
    FullResolution,
}

/// A decoded QR code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The decoded text.
    pub payload: String,
    /// Symbol corners in frame pixels: top-left, top-right, bottom-right, bottom-left as the
    /// symbol is oriented (so a code held upside down has its top-left at the bottom right).
    pub corners: [(u32, u32); 4],
    /// Time from the start of the scan call to this detection.
    pub elapsed: Duration,
    /// The pass that found it.
    pub stage: Stage,
}

/// Which grid search a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// Our locator ([`locate`]): finder patterns, version, alignment, homography.
    Fast,
    /// rqrr's `detect_grids`: slower, finds some codes ours misses.
    Rqrr,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    rect: Rect,
    halve: bool,
    frames_left: u32,
}

/// A stateful QR scanner: reuse one per camera so buffers and the tracked region carry over
/// between frames.
#[derive(Debug)]
pub struct Scanner {
    config: ScanConfig,
    binarizer: Binarizer,
    half: LumaFrame,
    bits: Vec<u8>,
    tracked: Option<Tracked>,
    rejected: u64,
    frames: u64,
}

impl Scanner {
    /// A scanner with the given configuration.
    pub fn new(config: ScanConfig) -> Self {
        Self {
            config,
            binarizer: Binarizer::default(),
            half: LumaFrame::default(),
            bits: Vec::new(),
            tracked: None,
            rejected: 0,
            frames: 0,
        }
    }

    /// How many decoded payloads the filter has rejected so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Forget the tracked region (e.g. after the camera moved or a session ended).
    pub fn reset_tracking(&mut self) {
        self.tracked = None;
    }

    /// Find the first accepted QR code in `frame`, as fast as possible.
    pub fn scan<'a>(&mut self, frame: impl Into<LumaView<'a>>) -> Option<Detection> {
        let view = frame.into();
        let start = Instant::now();
        if let Some(tracked) = self.tracked.take() {
            let found = self.pass(view, tracked.rect, tracked.halve, Search::Fast, true);
            if let Some(d) = self.first_accepted(&found, Stage::Tracked, start) {
                return Some(d);
            }
            if tracked.frames_left > 1 {
                self.tracked = Some(Tracked {
                    frames_left: tracked.frames_left - 1,
                    ..tracked
                });
            }
        }
        let every = u64::from(self.config.slow_search_every);
        let slow = every != 0 && self.frames.is_multiple_of(every);
        self.frames += 1;
        let mut out = Vec::new();
        self.scan_frame(view, start, true, slow, &mut out);
        out.pop()
    }

    /// Find every accepted QR code in `frame`, running every pass (for stills, not video).
    pub fn scan_all<'a>(&mut self, frame: impl Into<LumaView<'a>>) -> Vec<Detection> {
        let view = frame.into();
        let start = Instant::now();
        let mut out = Vec::new();
        self.scan_frame(view, start, false, true, &mut out);
        out
    }

    /// Passes 2–4 over the whole frame; with `first_only`, stop at the first accepted code.
    /// All passes run with the fast locator first; with `slow`, rqrr's own search then goes
    /// over the same images.
    fn scan_frame(
        &mut self,
        view: LumaView<'_>,
        start: Instant,
        first_only: bool,
        slow: bool,
        out: &mut Vec<Detection>,
    ) {
        let whole = Rect {
            x: 0,
            y: 0,
            width: view.width(),
            height: view.height(),
        };
        let halve = view.width().min(view.height()) >= self.config.downscale_min_side;
        let full = !halve || self.config.full_res_fallback;
        let searches: &[Search] = if slow {
            &[Search::Fast, Search::Rqrr]
        } else {
            &[Search::Fast]
        };
        for &search in searches {
            if halve {
                let found = self.pass(view, whole, true, search, first_only);
                self.collect(&found, Stage::HalfResolution, start, out);
                if first_only && !out.is_empty() {
                    return;
                }
                for failed in found.iter().filter(|f| f.payload.is_err()) {
                    let Some(rect) = region_around(failed, view) else {
                        continue;
                    };
                    let found = self.pass(view, rect, false, Search::Fast, first_only);
                    self.collect(&found, Stage::FullResolutionRegion, start, out);
                    if first_only && !out.is_empty() {
                        return;
                    }
                }
            }
            if full && (!first_only || out.is_empty()) {
                let found = self.pass(view, whole, false, search, first_only);
                self.collect(&found, Stage::FullResolution, start, out);
                if first_only && !out.is_empty() {
                    return;
                }
            }
        }
    }

    /// Binarize `rect` of `view` (halved or not), locate and decode codes with `search`, and
    /// map what was found to frame coordinates.
    fn pass(
        &mut self,
        view: LumaView<'_>,
        rect: Rect,
        halve: bool,
        search: Search,
        first_only: bool,
    ) -> Vec<Found> {
        let crop = view.crop(rect);
        let (w, h, scale) = if halve {
            downscale::halve(crop, &mut self.half);
            self.binarizer.binarize(self.half.view(), &mut self.bits);
            (self.half.width(), self.half.height(), 2)
        } else {
            self.binarizer.binarize(crop, &mut self.bits);
            (crop.width(), crop.height(), 1)
        };
        let mut found = match search {
            Search::Fast => detect::detect_fast(&self.bits, w, h, first_only),
            // rqrr takes the bitmap; the next pass allocates a new one.
            Search::Rqrr => detect::detect_rqrr(std::mem::take(&mut self.bits), w, h),
        };
        let (ox, oy) = (i64::from(rect.x), i64::from(rect.y));
        for f in &mut found {
            f.bounds = f.bounds.map(|(x, y)| (x * scale + ox, y * scale + oy));
        }
        found
    }

    fn first_accepted(
        &mut self,
        found: &[Found],
        stage: Stage,
        start: Instant,
    ) -> Option<Detection> {
        let mut out = Vec::new();
        self.collect(found, stage, start, &mut out);
        out.into_iter().next()
    }

    /// Turn decoded, accepted, not yet reported grids into detections; track the first one.
    fn collect(&mut self, found: &[Found], stage: Stage, start: Instant, out: &mut Vec<Detection>) {
        let (width, height) = (i64::from(u32::MAX), i64::from(u32::MAX));
        for f in found {
            let Ok(payload) = &f.payload else { continue };
            if out.iter().any(|d| &d.payload == payload) {
                continue;
            }
            if !self.config.filter.accepts(payload) {
                self.rejected += 1;
                tracing::debug!(len = payload.len(), ?stage, "QR payload rejected by filter");
                continue;
            }
            let corners = f
                .bounds
                .map(|(x, y)| (x.clamp(0, width) as u32, y.clamp(0, height) as u32));
            let detection = Detection {
                payload: payload.clone(),
                corners,
                elapsed: start.elapsed(),
                stage,
            };
            tracing::debug!(
                len = payload.len(),
                ?stage,
                us = detection.elapsed.as_micros() as u64,
                "QR code decoded"
            );
            if out.is_empty() {
                self.track(f);
            }
            out.push(detection);
        }
    }

    fn track(&mut self, found: &Found) {
        if self.config.track_frames == 0 {
            return;
        }
        let side = symbol_side(found);
        let margin = (side * 0.3) as i64 + 8;
        let Some(rect) = Rect::around(&found.bounds, margin, u32::MAX, u32::MAX) else {
            return;
        };
        // At ≥ 5 px per module a halved symbol still has 2.5 px modules, enough for rqrr.
        let module_px = side / found.modules.max(21) as f64;
        self.tracked = Some(Tracked {
            rect,
            halve: module_px >= 5.0,
            frames_left: self.config.track_frames,
        });
    }
}

/// The longest side of a found symbol's quadrilateral, in pixels.
fn symbol_side(found: &Found) -> f64 {
    let b = &found.bounds;
    (0..4)
        .map(|i| {
            let (a, c) = (b[i], b[(i + 1) % 4]);
            (((a.0 - c.0).pow(2) + (a.1 - c.1).pow(2)) as f64).sqrt()
        })
        .fold(0.0, f64::max)
}

/// The full-resolution region to retry a grid in: its bounds plus a fifth of its size.
fn region_around(found: &Found, view: LumaView<'_>) -> Option<Rect> {
    let margin = (symbol_side(found) * 0.2) as i64 + 8;
    Rect::around(&found.bounds, margin, view.width(), view.height())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::{FrameSource, SyntheticCamera, SyntheticScene};

    fn frame_with(payload: &str, w: u32, h: u32, scene: SyntheticScene) -> LumaFrame {
        let mut cam = SyntheticCamera::with_scene(w, h, scene);
        cam.show(payload).expect("renders");
        let mut frame = LumaFrame::default();
        cam.next_frame(&mut frame).expect("frame");
        frame
    }

    #[test]
    fn decodes_a_synthetic_frame_at_half_resolution() {
        let frame = frame_with("hello qrcash", 1280, 720, SyntheticScene::default());
        let d = Scanner::new(ScanConfig::default())
            .scan(&frame)
            .expect("decodes");
        assert_eq!(d.payload, "hello qrcash");
        assert_eq!(d.stage, Stage::HalfResolution);
    }

    #[test]
    fn tracked_region_is_tried_first_on_the_next_frame() {
        let frame = frame_with("tracked", 1280, 720, SyntheticScene::default());
        let mut scanner = Scanner::new(ScanConfig::default());
        assert_eq!(
            scanner.scan(&frame).map(|d| d.stage),
            Some(Stage::HalfResolution)
        );
        assert_eq!(scanner.scan(&frame).map(|d| d.stage), Some(Stage::Tracked));
        scanner.reset_tracking();
        assert_eq!(
            scanner.scan(&frame).map(|d| d.stage),
            Some(Stage::HalfResolution)
        );
    }

    #[test]
    fn tracking_expires_after_misses() {
        let frame = frame_with("tracked", 640, 480, SyntheticScene::default());
        let empty = LumaFrame::filled(640, 480, 128);
        let mut scanner = Scanner::new(ScanConfig {
            track_frames: 2,
            ..ScanConfig::default()
        });
        assert!(scanner.scan(&frame).is_some());
        assert!(scanner.scan(&empty).is_none());
        assert!(scanner.tracked.is_some());
        assert!(scanner.scan(&empty).is_none());
        assert!(scanner.tracked.is_none());
    }

    #[test]
    fn filter_rejects_payloads_and_they_are_not_tracked() {
        let frame = frame_with("forged", 640, 480, SyntheticScene::default());
        let mut scanner = Scanner::new(ScanConfig {
            filter: PayloadFilter::new(|p| p.starts_with("ok.")),
            ..ScanConfig::default()
        });
        assert_eq!(scanner.scan(&frame), None);
        assert!(scanner.rejected() >= 1);
        assert!(scanner.tracked.is_none());
    }

    #[test]
    fn empty_frame_has_no_code() {
        let frame = LumaFrame::filled(320, 240, 90);
        assert_eq!(Scanner::new(ScanConfig::default()).scan(&frame), None);
        assert!(
            Scanner::new(ScanConfig::default())
                .scan_all(&frame)
                .is_empty()
        );
    }
}
