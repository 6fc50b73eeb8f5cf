//! Halving a luma image with a 2×2 box filter: a quarter of the pixels for the detector, and
//! the averaging halves sensor noise. Pure; writes into a reusable frame.

use crate::camera::{LumaFrame, LumaView};

/// Write `src` halved in both directions (odd last row/column dropped) into `dst`.
pub fn halve(src: LumaView<'_>, dst: &mut LumaFrame) {
    let (w, h) = (src.width() / 2, src.height() / 2);
    let out = dst.reset(w, h);
    let w = w as usize;
    if w == 0 {
        return;
    }
    for (y, row_out) in out.chunks_exact_mut(w).enumerate() {
        let a = src.row(2 * y as u32);
        let b = src.row(2 * y as u32 + 1);
        halve_rows(a, b, row_out);
    }
}

/// Average 2×2 blocks of the row pair (`a`, `b`) into `out`, rounding half up. Eight source
/// pixels per row at a time in a `u64` (four 16-bit lanes of pair sums, SWAR): portable, a
/// third of the instructions of the pixel loop, and the same results.
fn halve_rows(a: &[u8], b: &[u8], out: &mut [u8]) {
    const LOW_BYTES: u64 = 0x00FF_00FF_00FF_00FF;
    const ROUNDING: u64 = 0x0002_0002_0002_0002;
    let lanes = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        let v = u64::from_le_bytes(word);
        (v & LOW_BYTES) + ((v >> 8) & LOW_BYTES)
    };
    let chunks = out
        .chunks_exact_mut(4)
        .zip(a.chunks_exact(8))
        .zip(b.chunks_exact(8));
    let mut done = 0;
    for ((o, a), b) in chunks {
        // Each lane holds at most 4 × 255 + 2; after the shift only its low byte is kept.
        let q = ((lanes(a) + lanes(b) + ROUNDING) >> 2) & LOW_BYTES;
        let p = (q | (q >> 8)) & 0x0000_FFFF_0000_FFFF;
        o.copy_from_slice(&((p | (p >> 16)) as u32).to_le_bytes());
        done += 4;
    }
    for (x, o) in out.iter_mut().enumerate().skip(done) {
        let s = u16::from(a[2 * x])
            + u16::from(a[2 * x + 1])
            + u16::from(b[2 * x])
            + u16::from(b[2 * x + 1]);
        *o = ((s + 2) >> 2) as u8;
    }
}

/// Write `src` doubled in both directions into `dst`, by linear interpolation at the
/// quarter-pixel positions of the new pixel centres: for codes with 1.5–2.5 px modules,
/// whose one-module rings a binarizer at the original scale loses.
pub fn double(src: LumaView<'_>, dst: &mut LumaFrame) {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let out = dst.reset(2 * w as u32, 2 * h as u32);
    if w == 0 || h == 0 {
        return;
    }
    let w2 = 2 * w;
    // Output pixel 2i sits at source i - 1/4, 2i + 1 at i + 1/4: weights 1:3 and 3:1.
    for y in 0..h {
        let here = src.row(y as u32);
        let up = src.row(y.saturating_sub(1) as u32);
        let down = src.row((y + 1).min(h - 1) as u32);
        let (top, bottom) = out[2 * y * w2..(2 * y + 2) * w2].split_at_mut(w2);
        for (neighbour, dst) in [(up, top), (down, bottom)] {
            let column = |x: usize| 3 * u16::from(here[x]) + u16::from(neighbour[x]);
            let (mut prev, mut cur) = (column(0), column(0));
            for x in 0..w {
                let next = if x + 1 < w { column(x + 1) } else { cur };
                dst[2 * x] = ((3 * cur + prev + 8) >> 4) as u8;
                dst[2 * x + 1] = ((3 * cur + next + 8) >> 4) as u8;
                (prev, cur) = (cur, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_two_by_two_blocks() {
        let src = LumaFrame::from_pixels(
            5,
            3,
            vec![
                0, 4, 100, 100, 9, //
                8, 4, 100, 104, 9, //
                1, 1, 1, 1, 1,
            ],
        )
        .expect("size");
        let mut dst = LumaFrame::default();
        halve(src.view(), &mut dst);
        assert_eq!((dst.width(), dst.height()), (2, 1));
        assert_eq!(dst.data(), &[4, 101]);
    }

    #[test]
    fn word_at_a_time_halving_matches_the_pixel_formula() {
        let (w, h) = (37u32, 6u32);
        let data: Vec<u8> = (0..w * h).map(|i| (i * 97 + i / 7 * 31) as u8).collect();
        let src = LumaFrame::from_pixels(w, h, data.clone()).expect("size");
        let mut dst = LumaFrame::default();
        halve(src.view(), &mut dst);
        let (w, hw) = (w as usize, w as usize / 2);
        for y in 0..h as usize / 2 {
            for x in 0..hw {
                let at = |dx: usize, dy: usize| u16::from(data[(2 * y + dy) * w + 2 * x + dx]);
                let expected = ((at(0, 0) + at(1, 0) + at(0, 1) + at(1, 1) + 2) >> 2) as u8;
                assert_eq!(dst.data()[y * hw + x], expected, "({x}, {y})");
            }
        }
    }

    #[test]
    fn doubling_interpolates_between_pixels() {
        let src = LumaFrame::from_pixels(2, 1, vec![0, 160]).expect("size");
        let mut dst = LumaFrame::default();
        double(src.view(), &mut dst);
        assert_eq!((dst.width(), dst.height()), (4, 2));
        // Centres at -1/4, 1/4, 3/4, 5/4 of the source pixel pitch, edges clamped.
        assert_eq!(&dst.data()[..4], &[0, 40, 120, 160]);
        assert_eq!(&dst.data()[4..], &[0, 40, 120, 160]);
        let flat = LumaFrame::filled(5, 3, 77);
        double(flat.view(), &mut dst);
        assert!(dst.data().iter().all(|&p| p == 77));
    }
}
