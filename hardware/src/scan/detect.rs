//! The two grid searches on a binary image, both ending in our symbol decoder
//! ([`super::symbol`]): the fast locator ([`super::locate`]) and rqrr's own, slower and more
//! forgiving, search. Grids and decode
//! results come out in the binary image's coordinates; nothing about frames, scales or
//! regions here.

use rqrr::{BitGrid, PreparedImage};

use super::locate::{self, Bitmap};
use super::symbol::{self, ModuleGrid};

/// A grid that was located, and whether it decoded.
#[derive(Debug)]
pub(crate) struct Found {
    /// Symbol corners (top-left, top-right, bottom-right, bottom-left of the symbol itself).
    pub bounds: [(i64, i64); 4],
    /// Modules per side.
    pub modules: usize,
    /// The payload, or why it did not decode.
    pub payload: Result<String, rqrr::DeQRError>,
}

/// Decode attempts the fast locator makes per image (a failed attempt costs a sampling and a
/// few microseconds of decoding; the bound is for images full of finder-like clutter).
const FAST_ATTEMPTS: usize = 6;

/// Locate codes with the fast locator and decode them with rqrr (`bits[y * width + x]` is 1
/// for black). With `first_only`, stop at the first payload.
pub(crate) fn detect_fast(bits: &[u8], width: u32, height: u32, first_only: bool) -> Vec<Found> {
    let bm = Bitmap {
        width: width as usize,
        height: height as usize,
        bits,
    };
    let finders = locate::find_finders(&bm);
    if finders.len() < 3 {
        return Vec::new();
    }
    let mut out: Vec<Found> = Vec::new();
    let mut used: Vec<(f64, f64)> = Vec::new();
    let mut attempts = 0;
    for corners in locate::triples(&finders) {
        let members = [corners.tl, corners.tr, corners.bl].map(|f| (f.x, f.y));
        if members.iter().any(|m| used.contains(m)) {
            continue;
        }
        for located in locate::locate(&bm, &corners) {
            if attempts == FAST_ATTEMPTS {
                return out;
            }
            attempts += 1;
            let payload = symbol::decode(&located.sample(&bm));
            let ok = payload.is_ok();
            out.push(Found {
                bounds: located.corners(),
                modules: located.size,
                payload,
            });
            if ok {
                used.extend(members);
                if first_only {
                    return out;
                }
                break;
            }
        }
    }
    out
}

/// Locate every grid with rqrr's own search and decode the modules it samples.
pub(crate) fn detect_rqrr(bits: Vec<u8>, width: u32, height: u32) -> Vec<Found> {
    let Some(img) = image::GrayImage::from_raw(width, height, bits) else {
        return Vec::new();
    };
    let mut prepared = PreparedImage::without_preparation(img);
    prepared
        .detect_grids()
        .into_iter()
        .map(|grid| {
            let n = grid.grid.size();
            let modules = ModuleGrid::from_fn(n, |x, y| grid.grid.bit(y, x));
            Found {
                bounds: grid.bounds.map(|p| (i64::from(p.x), i64::from(p.y))),
                modules: n,
                payload: symbol::decode(&modules),
            }
        })
        .collect()
}
