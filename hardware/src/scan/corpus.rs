//! A deterministic generator of hard QR images (blur, noise, rotation, perspective, low
//! contrast, glare, small codes, codes at the frame edge) for the scanner's tests and the
//! benchmark. Every image follows from `(seed, size, distortion, index)`, so a corpus needs no
//! stored files and the benchmark's numbers can be reproduced anywhere.

use qrcode::EcLevel;

use crate::camera::LumaFrame;
use crate::camera::render::{self, Placement, QrModules, SeededRng};

/// The kind of difficulty an image carries, on top of the mild optics blur and sensor noise
/// every image gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Distortion {
    /// Sharp, well lit, slightly tilted: the control group.
    Clean,
    /// Out of focus: Gaussian blur of 0.25–0.6 module.
    Blur,
    /// Sensor noise of 18–40 grey levels (σ).
    Noise,
    /// Any in-plane angle.
    Rotation,
    /// Phone held at 25–45° yaw and 10–35° pitch.
    Perspective,
    /// 18–35 grey levels between ink and paper, mid-grey.
    LowContrast,
    /// A saturating reflection over part of the symbol, plus uneven lighting.
    Glare,
    /// 1.5–2.5 pixels per module.
    Small,
    /// Symbol flush against a frame edge or corner, quiet zone cut off.
    Edge,
}

impl Distortion {
    /// Every class, in report order.
    pub const ALL: [Distortion; 9] = [
        Distortion::Clean,
        Distortion::Blur,
        Distortion::Noise,
        Distortion::Rotation,
        Distortion::Perspective,
        Distortion::LowContrast,
        Distortion::Glare,
        Distortion::Small,
        Distortion::Edge,
    ];

    /// Short lowercase name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Distortion::Clean => "clean",
            Distortion::Blur => "blur",
            Distortion::Noise => "noise",
            Distortion::Rotation => "rotation",
            Distortion::Perspective => "perspective",
            Distortion::LowContrast => "low-contrast",
            Distortion::Glare => "glare",
            Distortion::Small => "small",
            Distortion::Edge => "edge",
        }
    }
}

/// One generated image and what it should decode to.
#[derive(Debug, Clone)]
pub struct CorpusImage {
    /// The difficulty it carries.
    pub distortion: Distortion,
    /// Index within its class.
    pub index: usize,
    /// The payload the symbol holds (a 150–250 character base64url token, level M).
    pub payload: String,
    /// The image.
    pub frame: LumaFrame,
}

/// Generate image `index` of class `distortion` at `width × height` from `seed`.
pub fn generate(
    width: u32,
    height: u32,
    distortion: Distortion,
    index: usize,
    seed: u64,
) -> CorpusImage {
    let class = Distortion::ALL
        .iter()
        .position(|d| *d == distortion)
        .unwrap_or(0) as u64;
    let mut rng = SeededRng::new(
        seed ^ (u64::from(width) << 48) ^ (u64::from(height) << 32) ^ (class << 24) ^ index as u64,
    );
    // Burn a few outputs so that neighbouring seeds decorrelate.
    for _ in 0..4 {
        rng.next_u64();
    }
    let len = 150 + rng.below(101) as usize;
    let payload = render::random_token(&mut rng, len);
    let mut frame = background(width, height, &mut rng);
    // The payload alphabet always fits a QR code of level M at these lengths.
    let code = QrModules::encode(&payload, EcLevel::M).ok();
    if let Some(code) = &code {
        let placement = place(width, height, code.size() as f64, distortion, &mut rng);
        render::draw_qr(&mut frame, code, &placement);
        if distortion == Distortion::Glare {
            glare(&mut frame, &placement, &mut rng);
        }
    }
    let blur = match distortion {
        Distortion::Blur => {
            let module = code
                .as_ref()
                .map_or(4.0, |c| module_px(width, height, c.size()));
            module * rng.uniform(0.25, 0.6)
        }
        _ => rng.uniform(0.4, 0.7),
    };
    gaussian_blur(&mut frame, blur);
    let noise = match distortion {
        Distortion::Noise => rng.uniform(18.0, 40.0),
        _ => rng.uniform(2.0, 5.0),
    };
    render::add_noise(frame.data_mut(), noise, &mut rng);
    CorpusImage {
        distortion,
        index,
        payload,
        frame,
    }
}

/// A scene with the same clutter, blur and noise as the corpus but no code: what a camera
/// sees most of the time, for measuring the cost of an empty frame.
pub fn generate_empty(width: u32, height: u32, index: usize, seed: u64) -> LumaFrame {
    let mut rng = SeededRng::new(seed ^ 0xE3E3_0000_0000 ^ (u64::from(width) << 32) ^ index as u64);
    let mut frame = background(width, height, &mut rng);
    gaussian_blur(&mut frame, rng.uniform(0.4, 0.7));
    let noise = rng.uniform(2.0, 5.0);
    render::add_noise(frame.data_mut(), noise, &mut rng);
    frame
}

/// The whole corpus for one size: `per_class` images of every class.
pub fn generate_all(
    width: u32,
    height: u32,
    per_class: usize,
    seed: u64,
) -> impl Iterator<Item = CorpusImage> {
    Distortion::ALL
        .into_iter()
        .flat_map(move |d| (0..per_class).map(move |i| generate(width, height, d, i, seed)))
}

/// The module size the blur class was scaled to (nominal symbol: 0.5 of the short side).
fn module_px(width: u32, height: u32, modules: usize) -> f64 {
    0.5 * f64::from(width.min(height)) / modules as f64
}

/// A lit scene with a gradient and clutter (dark and light boxes, stripes like text).
fn background(width: u32, height: u32, rng: &mut SeededRng) -> LumaFrame {
    let (w, h) = (width as usize, height as usize);
    let base = rng.uniform(90.0, 190.0);
    let gx = rng.uniform(-40.0, 40.0) / w as f64;
    let gy = rng.uniform(-40.0, 40.0) / h as f64;
    let mut frame = LumaFrame::filled(width, height, 0);
    let data = frame.data_mut();
    for y in 0..h {
        for x in 0..w {
            data[y * w + x] = (base + gx * x as f64 + gy * y as f64).clamp(0.0, 255.0) as u8;
        }
    }
    let boxes = 6 + rng.below(10);
    for _ in 0..boxes {
        let bw = (rng.uniform(0.02, 0.2) * w as f64) as usize + 1;
        let bh = (rng.uniform(0.02, 0.2) * h as f64) as usize + 1;
        let x0 = rng.below(w as u64) as usize;
        let y0 = rng.below(h as u64) as usize;
        let level = rng.below(256) as u8;
        let striped = rng.below(3) == 0;
        let period = 2 + rng.below(6) as usize;
        for y in y0..(y0 + bh).min(h) {
            if striped && (y / period) % 2 == 1 {
                continue;
            }
            data[y * w + x0..y * w + (x0 + bw).min(w)].fill(level);
        }
    }
    frame
}

/// Where the symbol goes and how it looks, by class.
fn place(
    width: u32,
    height: u32,
    modules: f64,
    distortion: Distortion,
    rng: &mut SeededRng,
) -> Placement {
    let (w, h) = (f64::from(width), f64::from(height));
    let short = w.min(h);
    let side = match distortion {
        Distortion::Small => modules * rng.uniform(1.5, 2.5),
        Distortion::Blur => 0.5 * short,
        _ => short * rng.uniform(0.35, 0.7),
    };
    let angle = match distortion {
        Distortion::Rotation => rng.uniform(0.0, 360.0),
        Distortion::Edge => rng.uniform(-3.0, 3.0),
        _ => rng.uniform(-12.0, 12.0),
    }
    .to_radians();
    let (dark, light) = match distortion {
        Distortion::LowContrast => {
            let dark = rng.uniform(90.0, 130.0);
            (dark, dark + rng.uniform(18.0, 35.0))
        }
        _ => (rng.uniform(10.0, 50.0), rng.uniform(190.0, 245.0)),
    };
    let module = side / modules;
    let quiet = 4.0 * module;
    let corners = if distortion == Distortion::Perspective {
        tilted(w, h, side, angle, rng)
    } else {
        // Centre anywhere the symbol and its quiet zone fit.
        let half = side / 2.0 * (angle.sin().abs() + angle.cos().abs()) + quiet;
        let cx = rng.uniform(half.min(w / 2.0), (w - half).max(w / 2.0));
        let cy = rng.uniform(half.min(h / 2.0), (h - half).max(h / 2.0));
        let mut corners = render::square_corners((cx, cy), side, angle);
        if distortion == Distortion::Edge {
            // Push against one edge, or a corner, leaving 0–1 module of quiet zone.
            let which = rng.below(6);
            let min_x = corners.iter().map(|c| c.0).fold(f64::MAX, f64::min);
            let max_x = corners.iter().map(|c| c.0).fold(f64::MIN, f64::max);
            let min_y = corners.iter().map(|c| c.1).fold(f64::MAX, f64::min);
            let max_y = corners.iter().map(|c| c.1).fold(f64::MIN, f64::max);
            let mut gap = || rng.uniform(0.0, 1.0) * module;
            let dx = match which {
                0 | 4 => gap() - min_x,
                1 | 5 => w - gap() - max_x,
                _ => 0.0,
            };
            let dy = match which {
                2 | 4 | 5 => gap() - min_y,
                3 => h - gap() - max_y,
                _ => 0.0,
            };
            for c in &mut corners {
                c.0 += dx;
                c.1 += dy;
            }
        }
        corners
    };
    Placement {
        corners,
        quiet_zone: 4.0,
        dark: dark as u8,
        light: light as u8,
    }
}

/// The symbol on a plane turned by yaw and pitch, seen by a pinhole camera.
fn tilted(w: f64, h: f64, side: f64, angle: f64, rng: &mut SeededRng) -> [(f64, f64); 4] {
    let sign = |rng: &mut SeededRng| if rng.below(2) == 0 { -1.0 } else { 1.0 };
    let yaw = rng.uniform(25.0, 45.0).to_radians() * sign(rng);
    let pitch = rng.uniform(10.0, 35.0).to_radians() * sign(rng);
    let focal = w.max(h);
    let (sy, cy) = yaw.sin_cos();
    let (sp, cp) = pitch.sin_cos();
    let (sa, ca) = angle.sin_cos();
    let flat = render::square_corners((0.0, 0.0), side, 0.0);
    let projected = flat.map(|(x, y)| {
        // In-plane turn, then pitch about x, then yaw about y, then push to distance `focal`.
        let (x, y) = (x * ca - y * sa, x * sa + y * ca);
        let (y, z) = (y * cp, y * sp);
        let (x, z) = (x * cy + z * sy, -x * sy + z * cy);
        let z = z + focal;
        (focal * x / z, focal * y / z)
    });
    let min_x = projected.iter().map(|c| c.0).fold(f64::MAX, f64::min);
    let max_x = projected.iter().map(|c| c.0).fold(f64::MIN, f64::max);
    let min_y = projected.iter().map(|c| c.1).fold(f64::MAX, f64::min);
    let max_y = projected.iter().map(|c| c.1).fold(f64::MIN, f64::max);
    let margin = 0.1 * side;
    let cx = rng.uniform(
        (margin - min_x).min(w / 2.0),
        (w - margin - max_x).max(w / 2.0),
    );
    let cy = rng.uniform(
        (margin - min_y).min(h / 2.0),
        (h - margin - max_y).max(h / 2.0),
    );
    projected.map(|(x, y)| (x + cx, y + cy))
}

/// A bright, saturating reflection over part of the symbol and a lighting falloff across it.
fn glare(frame: &mut LumaFrame, placement: &Placement, rng: &mut SeededRng) {
    let c = placement.corners;
    let cx = c.iter().map(|p| p.0).sum::<f64>() / 4.0;
    let cy = c.iter().map(|p| p.1).sum::<f64>() / 4.0;
    let side = ((c[1].0 - c[0].0).powi(2) + (c[1].1 - c[0].1).powi(2)).sqrt();
    let bx = cx + rng.uniform(-0.3, 0.3) * side;
    let by = cy + rng.uniform(-0.3, 0.3) * side;
    let radius = rng.uniform(0.1, 0.2) * side;
    let amplitude = rng.uniform(120.0, 220.0);
    let falloff_dir = rng.uniform(0.0, std::f64::consts::TAU);
    let (fs, fc) = falloff_dir.sin_cos();
    let falloff = rng.uniform(0.25, 0.45);
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let data = frame.data_mut();
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f64 - bx, y as f64 - by);
            let blob = amplitude * (-(dx * dx + dy * dy) / (2.0 * radius * radius)).exp();
            // Lighting goes from 1 to 1 - falloff across the symbol's width.
            let along =
                (((x as f64 - cx) * fc + (y as f64 - cy) * fs) / side + 0.5).clamp(0.0, 1.0);
            let light = 1.0 - falloff * along;
            let v = f64::from(data[y * w + x]) * light + blob;
            data[y * w + x] = v.clamp(0.0, 255.0) as u8;
        }
    }
}

/// Separable Gaussian blur of standard deviation `sigma` pixels (edges clamped).
pub fn gaussian_blur(frame: &mut LumaFrame, sigma: f64) {
    if sigma < 0.2 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as usize;
    let kernel: Vec<f32> = {
        let raw: Vec<f64> = (0..=2 * radius)
            .map(|i| {
                let d = i as f64 - radius as f64;
                (-d * d / (2.0 * sigma * sigma)).exp()
            })
            .collect();
        let sum: f64 = raw.iter().sum();
        raw.iter().map(|k| (k / sum) as f32).collect()
    };
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    if w == 0 || h == 0 {
        return;
    }
    let r = radius as isize;
    let mut tmp = vec![0f32; w * h];
    let src = frame.data();
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0f32;
            for (k, kv) in kernel.iter().enumerate() {
                let xx = (x as isize + k as isize - r).clamp(0, w as isize - 1) as usize;
                acc += kv * f32::from(row[xx]);
            }
            tmp[y * w + x] = acc;
        }
    }
    let dst = frame.data_mut();
    let mut acc = vec![0f32; w];
    for y in 0..h {
        acc.fill(0.0);
        for (k, kv) in kernel.iter().enumerate() {
            let yy = (y as isize + k as isize - r).clamp(0, h as isize - 1) as usize;
            for (a, t) in acc.iter_mut().zip(&tmp[yy * w..(yy + 1) * w]) {
                *a += kv * t;
            }
        }
        for (d, a) in dst[y * w..(y + 1) * w].iter_mut().zip(&acc) {
            *d = a.round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic() {
        let a = generate(160, 120, Distortion::Noise, 3, 7);
        let b = generate(160, 120, Distortion::Noise, 3, 7);
        assert_eq!(a.payload, b.payload);
        assert_eq!(a.frame, b.frame);
        let c = generate(160, 120, Distortion::Noise, 4, 7);
        assert_ne!(a.payload, c.payload);
    }

    #[test]
    fn payloads_are_token_like() {
        for d in Distortion::ALL {
            let img = generate(64, 48, d, 0, 1);
            assert!((150..=250).contains(&img.payload.len()));
            assert!(
                img.payload
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            );
        }
    }

    #[test]
    fn blur_keeps_flat_areas_and_softens_edges() {
        let mut frame = LumaFrame::filled(20, 1, 0);
        frame.data_mut()[10..].fill(200);
        gaussian_blur(&mut frame, 1.5);
        assert_eq!(frame.data()[0], 0);
        assert_eq!(frame.data()[19], 200);
        assert!(
            (60..140).contains(&frame.data()[10]),
            "{}",
            frame.data()[10]
        );
    }
}
