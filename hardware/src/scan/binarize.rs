//! Local-mean binarization for the detector, in the spirit of ZXing's hybrid binarizer: the
//! image is cut into 8×8 blocks, each block gets a black point from its mean (or, if it is
//! flat, from its darker neighbours), and a pixel is black when it is at or below the average
//! black point of the 5×5 blocks around it. One pass for the block statistics, one for the
//! output; adapts to glare and shadows, and flat areas come out white instead of as noise.

use crate::camera::LumaView;

const BLOCK: usize = 8;
/// Blocks whose darkest and lightest pixels differ by no more than a threshold are treated as
/// flat. The threshold follows the image's noise: 1.5 × the range of the quietest quarter of
/// blocks (sensor noise in flat areas), within these bounds. A fixed 24 (ZXing's) loses
/// low-contrast codes; a fixed 12 turns a noisy quiet zone into speckle.
const MIN_DYNAMIC_RANGE: (u8, u8) = (8, 40);

/// Reusable buffers for [`Binarizer::binarize`].
#[derive(Debug, Default, Clone)]
pub struct Binarizer {
    black_points: Vec<u8>,
    sum: Vec<u32>,
    min: Vec<u8>,
    max: Vec<u8>,
    column_sum: Vec<u16>,
    column_min: Vec<u8>,
    column_max: Vec<u8>,
    thresholds: Vec<u8>,
    stats: Vec<(u32, u8, u8)>,
}

impl Binarizer {
    /// Binarize `src` into `out` (resized to `width * height`): 1 for black, 0 for white.
    pub fn binarize(&mut self, src: LumaView<'_>, out: &mut Vec<u8>) {
        let (w, h) = (src.width() as usize, src.height() as usize);
        // Every pixel is written below; only growth needs filling.
        out.resize(w * h, 0);
        if w < BLOCK || h < BLOCK {
            global_threshold(src, out);
            return;
        }
        let bw = w.div_ceil(BLOCK);
        let bh = h.div_ceil(BLOCK);
        let full = w / BLOCK;
        // The last block of a row/column is shifted inward so that every block is full.
        let block_y = |by: usize| (by * BLOCK).min(h - BLOCK);
        self.black_points.clear();
        self.black_points.resize(bw * bh, 0);
        self.stats.clear();
        let mut histogram = [0u32; 256];
        for by in 0..bh {
            self.block_stats(src, block_y(by), bw, full);
            for bx in 0..bw {
                let stat = (self.sum[bx], self.min[bx], self.max[bx]);
                histogram[usize::from(stat.2 - stat.1)] += 1;
                self.stats.push(stat);
            }
        }
        let flat = flat_range(&histogram, bw * bh);
        let bp = &mut self.black_points;
        for by in 0..bh {
            for bx in 0..bw {
                let (sum, min, max) = self.stats[by * bw + bx];
                let mut point = (sum / (BLOCK * BLOCK) as u32) as u8;
                if max - min <= flat {
                    // Flat block: assume it is background (white) unless its neighbours say
                    // it lies inside a dark area.
                    point = min / 2;
                    if bx > 0 && by > 0 {
                        let up = u32::from(bp[(by - 1) * bw + bx]);
                        let left = u32::from(bp[by * bw + bx - 1]);
                        let diag = u32::from(bp[(by - 1) * bw + bx - 1]);
                        let neighbours = ((up + 2 * left + diag) / 4) as u8;
                        if min < neighbours {
                            point = neighbours;
                        }
                    }
                }
                bp[by * bw + bx] = point;
            }
        }
        self.thresholds.resize(bw, 0);
        for by in 0..bh {
            let (ya, yb) = (by.saturating_sub(2), (by + 2).min(bh - 1));
            for bx in 0..bw {
                let (xa, xb) = (bx.saturating_sub(2), (bx + 2).min(bw - 1));
                let mut sum = 0u32;
                for row in self.black_points[ya * bw..(yb + 1) * bw].chunks_exact(bw) {
                    sum += row[xa..=xb].iter().map(|&v| u32::from(v)).sum::<u32>();
                }
                let count = ((yb - ya + 1) * (xb - xa + 1)) as u32;
                self.thresholds[bx] = (sum / count) as u8;
            }
            let y0 = block_y(by);
            for y in y0..y0 + BLOCK {
                let row = src.row(y as u32);
                let dst = &mut out[y * w..(y + 1) * w];
                let cells = dst
                    .chunks_exact_mut(BLOCK)
                    .zip(row.chunks_exact(BLOCK))
                    .zip(&self.thresholds);
                for ((d, p), &t) in cells {
                    for (d, &p) in d.iter_mut().zip(p) {
                        *d = u8::from(p <= t);
                    }
                }
                if full < bw {
                    let t = self.thresholds[bw - 1];
                    for (d, &p) in dst[full * BLOCK..].iter_mut().zip(&row[full * BLOCK..]) {
                        *d = u8::from(p <= t);
                    }
                }
            }
        }
    }

    /// Sum, minimum and maximum of each 8×8 block in the block row starting at `y0`: first
    /// down the 8 rows per column (straight loops over whole rows, which the compiler turns
    /// into SIMD), then across each block's 8 columns.
    fn block_stats(&mut self, src: LumaView<'_>, y0: usize, bw: usize, full: usize) {
        let w = src.width() as usize;
        let first = src.row(y0 as u32);
        self.column_sum.clear();
        self.column_sum.extend(first.iter().map(|&p| u16::from(p)));
        self.column_min.clear();
        self.column_min.extend_from_slice(first);
        self.column_max.clear();
        self.column_max.extend_from_slice(first);
        for y in y0 + 1..y0 + BLOCK {
            let row = src.row(y as u32);
            for (s, &p) in self.column_sum.iter_mut().zip(row) {
                *s += u16::from(p);
            }
            for (m, &p) in self.column_min.iter_mut().zip(row) {
                *m = (*m).min(p);
            }
            for (m, &p) in self.column_max.iter_mut().zip(row) {
                *m = (*m).max(p);
            }
        }
        self.sum.clear();
        self.min.clear();
        self.max.clear();
        // Full blocks, then (if the width is not a multiple of 8) the shifted last block: the
        // row's last 8 columns.
        let starts = (0..full)
            .map(|bx| bx * BLOCK)
            .chain((full < bw).then_some(w - BLOCK));
        for x in starts {
            let columns = x..x + BLOCK;
            let sum: u32 = self.column_sum[columns.clone()]
                .iter()
                .map(|&s| u32::from(s))
                .sum();
            self.sum.push(sum);
            self.min.push(
                self.column_min[columns.clone()]
                    .iter()
                    .fold(u8::MAX, |a, &p| a.min(p)),
            );
            self.max
                .push(self.column_max[columns].iter().fold(0, |a, &p| a.max(p)));
        }
    }
}

/// The flatness threshold from the histogram of block ranges (see [`MIN_DYNAMIC_RANGE`]).
fn flat_range(histogram: &[u32; 256], blocks: usize) -> u8 {
    let quarter = (blocks / 4).max(1) as u32;
    let mut seen = 0;
    let mut p25 = 0usize;
    for (range, &n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= quarter {
            p25 = range;
            break;
        }
    }
    let (lo, hi) = MIN_DYNAMIC_RANGE;
    (p25 as u8).clamp(lo, hi)
}

fn global_threshold(src: LumaView<'_>, out: &mut [u8]) {
    let (w, h) = (src.width() as usize, src.height() as usize);
    if w == 0 || h == 0 {
        return;
    }
    let sum: u64 = (0..h as u32)
        .map(|y| src.row(y).iter().map(|&p| u64::from(p)).sum::<u64>())
        .sum();
    let mean = (sum / (w * h) as u64) as u8;
    for y in 0..h {
        for (d, &p) in out[y * w..(y + 1) * w].iter_mut().zip(src.row(y as u32)) {
            *d = u8::from(p < mean);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::LumaFrame;

    #[test]
    fn dark_square_on_light_ground() {
        let mut frame = LumaFrame::filled(64, 64, 200);
        for y in 20..40 {
            frame.data_mut()[y * 64 + 20..y * 64 + 40].fill(30);
        }
        let mut out = Vec::new();
        Binarizer::default().binarize(frame.view(), &mut out);
        assert_eq!(out[30 * 64 + 30], 1, "inside the square");
        assert_eq!(out[5 * 64 + 5], 0, "background");
        assert_eq!(out.iter().filter(|&&b| b == 1).count(), 400);
    }

    #[test]
    fn follows_an_illumination_gradient() {
        // A checkerboard of 4-px cells whose brightness falls from left to right by more than
        // the cell contrast: a global threshold would lose one side.
        let (w, h) = (128usize, 32usize);
        let mut data = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let light = 250.0 - 1.5 * x as f64;
                let v = if (x / 4 + y / 4) % 2 == 0 {
                    light
                } else {
                    light - 60.0
                };
                data[y * w + x] = v as u8;
            }
        }
        let frame = LumaFrame::from_pixels(w as u32, h as u32, data).expect("size");
        let mut out = Vec::new();
        Binarizer::default().binarize(frame.view(), &mut out);
        for (x, y) in [(1, 1), (121, 1), (5, 1), (125, 1)] {
            let dark = (x / 4 + y / 4) % 2 == 1;
            assert_eq!(out[y * w + x] == 1, dark, "pixel ({x}, {y})");
        }
    }

    #[test]
    fn block_statistics_match_a_direct_computation() {
        // 21 px wide: two full blocks and a shifted last one over columns 13..21.
        let (w, h) = (21usize, 16usize);
        let data: Vec<u8> = (0..w * h).map(|i| (i * 37 % 251) as u8).collect();
        let frame = LumaFrame::from_pixels(w as u32, h as u32, data.clone()).expect("size");
        let mut b = Binarizer::default();
        b.block_stats(frame.view(), 8, 3, 2);
        for (bx, x0) in [0usize, 8, 13].into_iter().enumerate() {
            let px: Vec<u8> = (8..16)
                .flat_map(|y| data[y * w + x0..y * w + x0 + 8].to_vec())
                .collect();
            assert_eq!(b.sum[bx], px.iter().map(|&p| u32::from(p)).sum::<u32>());
            assert_eq!(b.min[bx], *px.iter().min().expect("pixels"));
            assert_eq!(b.max[bx], *px.iter().max().expect("pixels"));
        }
    }

    #[test]
    fn tiny_images_use_a_global_threshold() {
        let frame = LumaFrame::from_pixels(2, 2, vec![10, 200, 200, 10]).expect("size");
        let mut out = Vec::new();
        Binarizer::default().binarize(frame.view(), &mut out);
        assert_eq!(out, vec![1, 0, 0, 1]);
    }
}
