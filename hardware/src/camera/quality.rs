//! How well a camera sees: exposure and sharpness figures of one frame, for a technician
//! aiming and focusing an ATM's camera (`qrcash-agent doctor`). Pure arithmetic on luma.
//!
//! Not a QR decoder's verdict: a frame can score well and hold no code, or score poorly and
//! still decode. The figures say whether the picture is too dark, too bright or blurred.

use super::LumaView;

/// A luma level at or below which a pixel counts as crushed black.
pub const DARK_LEVEL: u8 = 8;
/// A luma level at or above which a pixel counts as blown-out white.
pub const BRIGHT_LEVEL: u8 = 247;

/// Exposure and sharpness of one frame.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ViewQuality {
    /// Mean luma, 0–255 (mid-grey is about 128).
    pub mean: f64,
    /// Share of pixels at or below [`DARK_LEVEL`], 0–1.
    pub dark: f64,
    /// Share of pixels at or above [`BRIGHT_LEVEL`], 0–1.
    pub bright: f64,
    /// Variance of the Laplacian (4-neighbour) over the frame: 0 for a featureless or wholly
    /// blurred view, hundreds to thousands for sharp edges such as a QR code's modules.
    pub sharpness: f64,
}

/// Measures `view`. Every pixel counts for exposure; the Laplacian is taken at every
/// interior pixel. An empty view (or one too small for a Laplacian) scores zero sharpness.
pub fn view_quality(view: &LumaView<'_>) -> ViewQuality {
    let (w, h) = (view.width() as usize, view.height() as usize);
    let mut sum = 0u64;
    let mut dark = 0u64;
    let mut bright = 0u64;
    for y in 0..h {
        for &p in &view.row(y as u32)[..w] {
            sum += u64::from(p);
            dark += u64::from(p <= DARK_LEVEL);
            bright += u64::from(p >= BRIGHT_LEVEL);
        }
    }
    let pixels = (w * h) as f64;
    let (mut n, mut lap_sum, mut lap_sq) = (0f64, 0f64, 0f64);
    for y in 1..h.saturating_sub(1) {
        let (up, row, down) = (
            view.row(y as u32 - 1),
            view.row(y as u32),
            view.row(y as u32 + 1),
        );
        for x in 1..w.saturating_sub(1) {
            let lap = 4 * i32::from(row[x])
                - i32::from(row[x - 1])
                - i32::from(row[x + 1])
                - i32::from(up[x])
                - i32::from(down[x]);
            let lap = f64::from(lap);
            n += 1.0;
            lap_sum += lap;
            lap_sq += lap * lap;
        }
    }
    let sharpness = if n > 0.0 {
        let mean = lap_sum / n;
        (lap_sq / n - mean * mean).max(0.0)
    } else {
        0.0
    };
    if pixels == 0.0 {
        return ViewQuality {
            mean: 0.0,
            dark: 0.0,
            bright: 0.0,
            sharpness: 0.0,
        };
    }
    ViewQuality {
        mean: sum as f64 / pixels,
        dark: dark as f64 / pixels,
        bright: bright as f64 / pixels,
        sharpness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::LumaFrame;

    fn checkerboard(cell: u32) -> LumaFrame {
        let (w, h) = (64, 48);
        let data = (0..h)
            .flat_map(|y| {
                (0..w).map(move |x| {
                    if (x / cell + y / cell).is_multiple_of(2) {
                        20
                    } else {
                        230
                    }
                })
            })
            .collect();
        LumaFrame::from_pixels(w, h, data).unwrap()
    }

    /// A 3x3 box blur, applied `times` times.
    fn blurred(frame: &LumaFrame, times: usize) -> LumaFrame {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let mut data = frame.data().to_vec();
        for _ in 0..times {
            let src = data.clone();
            for y in 1..h - 1 {
                for x in 1..w - 1 {
                    let mut s = 0u32;
                    for dy in 0..3 {
                        for dx in 0..3 {
                            s += u32::from(src[(y + dy - 1) * w + x + dx - 1]);
                        }
                    }
                    data[y * w + x] = (s / 9) as u8;
                }
            }
        }
        LumaFrame::from_pixels(w as u32, h as u32, data).unwrap()
    }

    #[test]
    fn a_flat_view_has_no_sharpness_and_its_level_as_mean() {
        let q = view_quality(&LumaFrame::filled(32, 16, 128).view());
        assert_eq!(q.sharpness, 0.0);
        assert_eq!(q.mean, 128.0);
        assert_eq!((q.dark, q.bright), (0.0, 0.0));
        let black = view_quality(&LumaFrame::filled(32, 16, 0).view());
        assert_eq!(black.dark, 1.0);
        let white = view_quality(&LumaFrame::filled(32, 16, 255).view());
        assert_eq!(white.bright, 1.0);
    }

    #[test]
    fn blur_lowers_sharpness_and_fine_detail_raises_it() {
        let sharp = view_quality(&checkerboard(4).view()).sharpness;
        let soft = view_quality(&blurred(&checkerboard(4), 1).view()).sharpness;
        let softer = view_quality(&blurred(&checkerboard(4), 3).view()).sharpness;
        assert!(sharp > soft && soft > softer, "{sharp} {soft} {softer}");
        assert!(sharp > 1_000.0, "{sharp}");
        let coarse = view_quality(&checkerboard(16).view()).sharpness;
        assert!(
            sharp > coarse,
            "finer edges, more of them: {sharp} > {coarse}"
        );
        let exposure = view_quality(&checkerboard(4).view());
        assert!((exposure.mean - 125.0).abs() < 1.0, "{}", exposure.mean);
    }

    #[test]
    fn tiny_and_empty_views_do_not_panic() {
        for (w, h) in [(0, 0), (1, 1), (2, 5), (5, 2)] {
            let q = view_quality(&LumaFrame::filled(w, h, 9).view());
            assert_eq!(q.sharpness, 0.0, "{w}x{h}");
        }
    }
}
