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
        let pairs = row_out
            .iter_mut()
            .zip(a.chunks_exact(2))
            .zip(b.chunks_exact(2));
        for ((o, a), b) in pairs {
            let s = u16::from(a[0]) + u16::from(a[1]) + u16::from(b[0]) + u16::from(b[1]);
            *o = ((s + 2) >> 2) as u8;
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
}
