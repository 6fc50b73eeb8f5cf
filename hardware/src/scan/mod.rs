//! Fast QR scanning for live video on a small board.
//!
//! Plain rqrr spends ~20 ms on a 1280×720 frame, mostly per code rather than per pixel: its
//! grid search refines each candidate's perspective by hill-climbing, twice (~12 ms for a
//! version-10 code), its Reed–Solomon decoder raises α to a power per syndrome term (~1.2 ms),
//! and its binarizer divides per pixel. [`Scanner`] has its own binarizer, grid locator and
//! symbol decoder, keeps rqrr's grid search as a last resort, and runs the cheapest pass
//! first, stopping at the first accepted payload:
//!
//! 1. **Tracked region**: right after a detection, the next frames look only around where the
//!    code was (at half or double resolution depending on its module size).
//! 2. **Half resolution**: the whole frame, 2×2 box-filtered (a quarter of the pixels, half the
//!    sensor noise), for frames whose short side is at least
//!    [`ScanConfig::downscale_min_side`].
//! 3. **Full-resolution region**: a grid found at half resolution that did not decode is
//!    retried on the full-resolution pixels around it.
//! 4. **Full resolution**: the whole frame (small or distant codes).
//! 5. **Double resolution**: the whole frame interpolated ×2, for codes of 1.5–2.5 px per
//!    module (see [`ScanConfig::upsample_fallback`]).
//! 6. **rqrr's own grid search** over the half- and full-resolution images.
//!
//! Passes 5 and 6 run only when the others decoded nothing, and only on the frames
//! [`ScanConfig::slow_search_every`] allows. Every pass binarizes with our local-mean
//! [`Binarizer`] and runs the fast locator (`locate`: finder patterns, version blocks,
//! alignment pattern, homography), whose sampled grid goes to `symbol` (format, Reed–Solomon,
//! segments). Payloads a caller-supplied [`PayloadFilter`] rejects (anything that is not a
//! withdrawal token) are dropped on the spot and never tracked.
//!
//! Not here: where frames come from ([`crate::camera`]), what a token means (the agent).

mod binarize;
#[cfg(any(test, feature = "corpus"))]
pub mod corpus;
mod detect;
mod downscale;
mod files;
mod locate;
mod symbol;

pub use binarize::Binarizer;
pub use downscale::{double, halve};
pub use files::{FileResult, decode_files, decode_live, percentiles};

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
    /// When the fast passes decode nothing, run the fallbacks (the double-resolution pass and
    /// rqrr's own grid search; together ~25 ms at 1280×720, most of an empty frame's cost) on
    /// one frame in this many; 1 = every frame, 0 = never. A board that cannot afford them at
    /// its frame rate sets 3–5: a code held in front of the camera stays for many frames.
    pub slow_search_every: u32,
    /// When the fast passes decoded nothing, scan the whole frame again at double resolution
    /// (linear interpolation) before rqrr's search, on the same frames as that search: codes
    /// of 1.5–2.5 px per module lose their one-module finder rings at the original scale.
    /// Costs about as much as rqrr's search on an empty frame.
    pub upsample_fallback: bool,
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
            upsample_fallback: true,
            filter: PayloadFilter::accept_all(),
        }
    }
}

impl ScanConfig {
    /// What the ATM agent runs on its live camera, with `filter` choosing the payloads:
    /// tuned for a board that must keep its frame rate while nobody is in front of it.
    pub fn live(filter: PayloadFilter) -> Self {
        Self {
            filter,
            // The expensive passes (double resolution, rqrr's search: ~35 ms on an empty
            // 1280x720 frame, against ~1 ms for the fast ones) run on every 4th frame only:
            // a code held up to the camera stays for many frames, and a small board keeps
            // its frame rate while nobody is there.
            slow_search_every: 4,
            // A phone held up to an ATM's camera shows its code at several pixels per
            // module; the double-resolution pass for tiny codes would only cost memory
            // (frame buffers four times the frame) on a board where every megabyte counts.
            upsample_fallback: false,
            ..ScanConfig::default()
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
    /// Whole frame at double resolution (small codes), see [`ScanConfig::upsample_fallback`].
    DoubleResolution,
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

/// The resolution a pass works at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    Half,
    Full,
    Double,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    rect: Rect,
    scale: Scale,
    frames_left: u32,
}

/// A stateful QR scanner: reuse one per camera so buffers and the tracked region carry over
/// between frames.
#[derive(Debug)]
pub struct Scanner {
    config: ScanConfig,
    binarizer: Binarizer,
    /// The halved or doubled image of the current pass.
    resampled: LumaFrame,
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
            resampled: LumaFrame::default(),
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
            let found = self.pass(view, tracked.rect, tracked.scale, Search::Fast, true);
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

    /// Passes 2–5 over the whole frame; with `first_only`, stop at the first accepted code.
    /// The fast locator runs first at half, then full resolution; with `slow`, the
    /// double-resolution pass and rqrr's own search follow when it decoded nothing.
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
        let done = |out: &Vec<Detection>| first_only && !out.is_empty();
        if halve {
            let found = self.pass(view, whole, Scale::Half, Search::Fast, first_only);
            self.collect(&found, Stage::HalfResolution, start, out);
            if done(out) {
                return;
            }
            for failed in found.iter().filter(|f| f.payload.is_err()) {
                let Some(rect) = region_around(failed, view) else {
                    continue;
                };
                let found = self.pass(view, rect, Scale::Full, Search::Fast, first_only);
                self.collect(&found, Stage::FullResolutionRegion, start, out);
                if done(out) {
                    return;
                }
            }
        }
        if full {
            let found = self.pass(view, whole, Scale::Full, Search::Fast, first_only);
            self.collect(&found, Stage::FullResolution, start, out);
            if done(out) {
                return;
            }
        }
        if !slow {
            return;
        }
        if self.config.upsample_fallback && (!first_only || out.is_empty()) {
            let found = self.pass(view, whole, Scale::Double, Search::Fast, first_only);
            self.collect(&found, Stage::DoubleResolution, start, out);
            if done(out) {
                return;
            }
        }
        if halve {
            let found = self.pass(view, whole, Scale::Half, Search::Rqrr, first_only);
            self.collect(&found, Stage::HalfResolution, start, out);
            if done(out) {
                return;
            }
        }
        if full {
            let found = self.pass(view, whole, Scale::Full, Search::Rqrr, first_only);
            self.collect(&found, Stage::FullResolution, start, out);
        }
    }

    /// Binarize `rect` of `view` at `scale`, locate and decode codes with `search`, and map
    /// what was found to frame coordinates.
    fn pass(
        &mut self,
        view: LumaView<'_>,
        rect: Rect,
        scale: Scale,
        search: Search,
        first_only: bool,
    ) -> Vec<Found> {
        let crop = view.crop(rect);
        let (w, h) = match scale {
            Scale::Half | Scale::Double => {
                if scale == Scale::Half {
                    downscale::halve(crop, &mut self.resampled);
                } else {
                    downscale::double(crop, &mut self.resampled);
                }
                self.binarizer
                    .binarize(self.resampled.view(), &mut self.bits);
                (self.resampled.width(), self.resampled.height())
            }
            Scale::Full => {
                self.binarizer.binarize(crop, &mut self.bits);
                (crop.width(), crop.height())
            }
        };
        let mut found = match search {
            Search::Fast => detect::detect_fast(&self.bits, w, h, first_only),
            // rqrr takes the bitmap; the next pass allocates a new one.
            Search::Rqrr => detect::detect_rqrr(std::mem::take(&mut self.bits), w, h),
        };
        let (ox, oy) = (i64::from(rect.x), i64::from(rect.y));
        let to_frame = |v: i64| match scale {
            Scale::Half => v * 2,
            Scale::Full => v,
            Scale::Double => v / 2,
        };
        for f in &mut found {
            f.bounds = f.bounds.map(|(x, y)| (to_frame(x) + ox, to_frame(y) + oy));
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
        // At ≥ 5 px per module a halved symbol still has 2.5 px modules, enough to locate;
        // below 2.5 px the finder rings need the doubled image.
        let module_px = side / found.modules.max(21) as f64;
        let scale = if module_px >= 5.0 {
            Scale::Half
        } else if module_px < 2.5 && self.config.upsample_fallback {
            Scale::Double
        } else {
            Scale::Full
        };
        self.tracked = Some(Tracked {
            rect,
            scale,
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
