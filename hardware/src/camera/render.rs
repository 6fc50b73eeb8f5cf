//! Pure rendering of QR codes into luma frames: encode a payload (qrcode crate), place the
//! symbol anywhere in the frame through a homography (rotation, perspective), anti-aliased,
//! and add sensor noise from a seeded generator. Used by the synthetic camera and by the
//! scanner's generated test corpus; nothing here reads a device or a file.

use qrcode::{Color, EcLevel, QrCode};
use rand_xoshiro::SplitMix64;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};

use super::LumaFrame;

/// A QR symbol as a square of dark/light modules, without its quiet zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrModules {
    size: usize,
    dark: Vec<bool>,
}

/// A payload that cannot be put in a QR code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode a {len}-byte payload as a QR code: {reason}")]
pub struct RenderError {
    /// Payload length in bytes.
    pub len: usize,
    /// What the encoder said.
    pub reason: String,
}

impl QrModules {
    /// Encode `payload` at error-correction level `ec` in the smallest version that holds it.
    pub fn encode(payload: &str, ec: EcLevel) -> Result<Self, RenderError> {
        let code = QrCode::with_error_correction_level(payload.as_bytes(), ec).map_err(|e| {
            RenderError {
                len: payload.len(),
                reason: e.to_string(),
            }
        })?;
        let size = code.width();
        let dark = code
            .into_colors()
            .into_iter()
            .map(|c| c == Color::Dark)
            .collect();
        Ok(Self { size, dark })
    }

    /// Modules per side (21 for version 1, 4 more per version).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether module (`x`, `y`) is dark; outside the symbol is light.
    #[inline]
    pub fn is_dark(&self, x: i64, y: i64) -> bool {
        let n = self.size as i64;
        (0..n).contains(&x) && (0..n).contains(&y) && self.dark[(y * n + x) as usize]
    }
}

/// A 3×3 projective transform of the plane (row-major, `h[8]` normalised to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Homography([f64; 9]);

impl Homography {
    /// The map sending the unit square's corners (0,0), (1,0), (1,1), (0,1) to `quad` (in that
    /// order: top-left, top-right, bottom-right, bottom-left). Heckbert's closed form.
    pub fn unit_square_to(quad: [(f64, f64); 4]) -> Self {
        let [(x0, y0), (x1, y1), (x2, y2), (x3, y3)] = quad;
        let sx = x0 - x1 + x2 - x3;
        let sy = y0 - y1 + y2 - y3;
        let (g, h) = if sx.abs() < 1e-12 && sy.abs() < 1e-12 {
            (0.0, 0.0)
        } else {
            let (dx1, dx2) = (x1 - x2, x3 - x2);
            let (dy1, dy2) = (y1 - y2, y3 - y2);
            let den = dx1 * dy2 - dx2 * dy1;
            ((sx * dy2 - dx2 * sy) / den, (dx1 * sy - sx * dy1) / den)
        };
        Self([
            x1 - x0 + g * x1,
            x3 - x0 + h * x3,
            x0,
            y1 - y0 + g * y1,
            y3 - y0 + h * y3,
            y0,
            g,
            h,
            1.0,
        ])
    }

    /// The map sending the quadrilateral `from` onto `to` (corners in the same order).
    pub fn quad_to_quad(from: [(f64, f64); 4], to: [(f64, f64); 4]) -> Option<Self> {
        let src = Self::unit_square_to(from).inverse()?;
        Some(src.then(&Self::unit_square_to(to)))
    }

    /// `self` followed by `next`.
    pub fn then(&self, next: &Homography) -> Homography {
        let (a, b) = (&next.0, &self.0);
        let mut m = [0.0; 9];
        for r in 0..3 {
            for c in 0..3 {
                m[r * 3 + c] = (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum();
            }
        }
        Homography(m)
    }

    /// Apply to a point; `None` at the line sent to infinity.
    #[inline]
    pub fn apply(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let m = &self.0;
        let w = m[6] * x + m[7] * y + m[8];
        (w.abs() > 1e-12).then(|| {
            (
                (m[0] * x + m[1] * y + m[2]) / w,
                (m[3] * x + m[4] * y + m[5]) / w,
            )
        })
    }

    /// The inverse transform, `None` if singular.
    pub fn inverse(&self) -> Option<Self> {
        let m = &self.0;
        let c00 = m[4] * m[8] - m[5] * m[7];
        let c01 = m[5] * m[6] - m[3] * m[8];
        let c02 = m[3] * m[7] - m[4] * m[6];
        let det = m[0] * c00 + m[1] * c01 + m[2] * c02;
        if det.abs() < 1e-12 {
            return None;
        }
        let inv = [
            c00,
            m[2] * m[7] - m[1] * m[8],
            m[1] * m[5] - m[2] * m[4],
            c01,
            m[0] * m[8] - m[2] * m[6],
            m[2] * m[3] - m[0] * m[5],
            c02,
            m[1] * m[6] - m[0] * m[7],
            m[0] * m[4] - m[1] * m[3],
        ];
        Some(Self(inv.map(|v| v / det)))
    }
}

/// The corners (top-left, top-right, bottom-right, bottom-left) of a square of side `side`
/// centred on `center` and turned by `angle` radians.
pub fn square_corners(center: (f64, f64), side: f64, angle: f64) -> [(f64, f64); 4] {
    let (s, c) = angle.sin_cos();
    let h = side / 2.0;
    [(-h, -h), (h, -h), (h, h), (-h, h)]
        .map(|(x, y)| (center.0 + x * c - y * s, center.1 + x * s + y * c))
}

/// How a symbol is painted: its corners in the frame (of the symbol proper, quiet zone
/// excluded), the quiet zone in modules, and the ink and paper levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Symbol corners: top-left, top-right, bottom-right, bottom-left, in pixels.
    pub corners: [(f64, f64); 4],
    /// Light margin around the symbol, in modules (the standard asks for 4).
    pub quiet_zone: f64,
    /// Grey level of dark modules.
    pub dark: u8,
    /// Grey level of light modules and of the quiet zone.
    pub light: u8,
}

/// Paint `code` into `frame` at `placement`, anti-aliased with 3×3 samples per pixel; pixels
/// outside the symbol and its quiet zone keep their value.
pub fn draw_qr(frame: &mut LumaFrame, code: &QrModules, placement: &Placement) {
    let n = code.size() as f64;
    let q = placement.quiet_zone;
    let to_frame = Homography::unit_square_to(placement.corners);
    let Some(to_unit) = to_frame.inverse() else {
        return;
    };
    // Bounding box of symbol plus quiet zone.
    let outer = [(-q, -q), (n + q, -q), (n + q, n + q), (-q, n + q)]
        .map(|(u, v)| to_frame.apply(u / n, v / n).unwrap_or((0.0, 0.0)));
    let (w, h) = (frame.width() as i64, frame.height() as i64);
    let x0 = (outer.iter().map(|p| p.0).fold(f64::MAX, f64::min).floor() as i64).clamp(0, w);
    let x1 = (outer.iter().map(|p| p.0).fold(f64::MIN, f64::max).ceil() as i64 + 1).clamp(0, w);
    let y0 = (outer.iter().map(|p| p.1).fold(f64::MAX, f64::min).floor() as i64).clamp(0, h);
    let y1 = (outer.iter().map(|p| p.1).fold(f64::MIN, f64::max).ceil() as i64 + 1).clamp(0, h);
    const SUB: [f64; 3] = [1.0 / 6.0, 0.5, 5.0 / 6.0];
    let (dark, light) = (u32::from(placement.dark), u32::from(placement.light));
    let width = frame.width() as usize;
    let data = frame.data_mut();
    for y in y0..y1 {
        for x in x0..x1 {
            let idx = y as usize * width + x as usize;
            let mut sum = 0u32;
            for sy in SUB {
                for sx in SUB {
                    let level = match to_unit.apply(x as f64 + sx, y as f64 + sy) {
                        Some((u, v)) => {
                            let (u, v) = (u * n, v * n);
                            if u < -q || v < -q || u >= n + q || v >= n + q {
                                u32::from(data[idx])
                            } else if code.is_dark(u.floor() as i64, v.floor() as i64) {
                                dark
                            } else {
                                light
                            }
                        }
                        None => u32::from(data[idx]),
                    };
                    sum += level;
                }
            }
            data[idx] = ((sum + 4) / 9) as u8;
        }
    }
}

/// A seeded generator (`rand_xoshiro`'s SplitMix64) so that rendered scenes and corpora are
/// reproducible from their seed, with the samplers the renderer needs.
#[derive(Debug, Clone)]
pub struct SeededRng(SplitMix64);

impl SeededRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Standard normal sample (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = self.uniform(f64::MIN_POSITIVE, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Add zero-mean Gaussian noise of standard deviation `sigma` grey levels, clamped to 0..=255.
pub fn add_noise(pixels: &mut [u8], sigma: f64, rng: &mut SeededRng) {
    if sigma <= 0.0 {
        return;
    }
    for p in pixels {
        let v = f64::from(*p) + sigma * rng.gaussian();
        *p = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// A random token like the project's QR payloads: `len` base64url characters with a dot every
/// so often (compact JWS-like), at most `len` bytes.
pub fn random_token(rng: &mut SeededRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..len)
        .map(|i| {
            if i > 0 && i + 1 < len && i % 67 == 0 {
                '.'
            } else {
                ALPHABET[rng.below(64) as usize] as char
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homography_maps_the_corners_and_inverts() {
        let quad = [(10.0, 20.0), (110.0, 30.0), (120.0, 140.0), (5.0, 120.0)];
        let h = Homography::unit_square_to(quad);
        for (corner, unit) in quad
            .iter()
            .zip([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)])
        {
            let p = h.apply(unit.0, unit.1).expect("finite");
            assert!((p.0 - corner.0).abs() < 1e-9 && (p.1 - corner.1).abs() < 1e-9);
        }
        let inv = h.inverse().expect("invertible");
        let back = inv
            .apply(60.0, 70.0)
            .and_then(|(u, v)| h.apply(u, v))
            .expect("finite");
        assert!((back.0 - 60.0).abs() < 1e-9 && (back.1 - 70.0).abs() < 1e-9);
    }

    #[test]
    fn quad_to_quad_maps_corners() {
        let from = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)];
        let to = [(5.0, 5.0), (50.0, 8.0), (55.0, 60.0), (2.0, 40.0)];
        let h = Homography::quad_to_quad(from, to).expect("invertible");
        for (f, t) in from.iter().zip(&to) {
            let p = h.apply(f.0, f.1).expect("finite");
            assert!(
                (p.0 - t.0).abs() < 1e-9 && (p.1 - t.1).abs() < 1e-9,
                "{p:?} vs {t:?}"
            );
        }
    }

    #[test]
    fn encode_picks_a_version_for_token_sized_payloads() {
        let mut rng = SeededRng::new(1);
        let token = random_token(&mut rng, 200);
        assert_eq!(token.len(), 200);
        let code = QrModules::encode(&token, EcLevel::M).expect("fits");
        assert_eq!(code.size(), 57, "200 bytes at level M is version 10");
    }

    #[test]
    fn drawn_symbol_has_dark_finder_corner_and_light_quiet_zone() {
        let code = QrModules::encode("hello", EcLevel::M).expect("fits");
        let mut frame = LumaFrame::filled(100, 100, 128);
        let placement = Placement {
            corners: square_corners((50.0, 50.0), 42.0, 0.0),
            quiet_zone: 4.0,
            dark: 0,
            light: 255,
        };
        draw_qr(&mut frame, &code, &placement);
        let at = |x: usize, y: usize| frame.data()[y * 100 + x];
        assert_eq!(at(30, 30), 0, "finder pattern ring");
        assert_eq!(at(27, 27), 255, "quiet zone");
        assert_eq!(at(2, 2), 128, "background untouched");
    }

    #[test]
    fn rng_is_deterministic_and_noise_is_centred() {
        let mut a = SeededRng::new(42);
        let mut b = SeededRng::new(42);
        assert_eq!(a.next_u64(), b.next_u64());
        let mut pixels = vec![128u8; 10_000];
        add_noise(&mut pixels, 10.0, &mut a);
        let mean = pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / 10_000.0;
        assert!((mean - 128.0).abs() < 1.0, "mean {mean}");
        assert!(pixels.iter().any(|&p| p != 128));
    }
}
