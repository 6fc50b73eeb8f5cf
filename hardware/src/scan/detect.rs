//! The hand-off to rqrr: a binary image in, located grids and their decode results out, in
//! the binary image's coordinates. Nothing about frames, scales or regions here.

use rqrr::{BitGrid, PreparedImage};

/// A grid rqrr located, and whether it decoded.
#[derive(Debug)]
pub(crate) struct Found {
    /// Symbol corners (top-left, top-right, bottom-right, bottom-left of the symbol itself).
    pub bounds: [(i64, i64); 4],
    /// Modules per side.
    pub modules: usize,
    /// The payload, or why it did not decode.
    pub payload: Result<String, rqrr::DeQRError>,
}

/// Locate and decode every grid in a binary image (`bits[y * width + x]` is 1 for black).
pub(crate) fn detect(bits: Vec<u8>, width: u32, height: u32) -> Vec<Found> {
    let Some(img) = image::GrayImage::from_raw(width, height, bits) else {
        return Vec::new();
    };
    let mut prepared = PreparedImage::without_preparation(img);
    prepared
        .detect_grids()
        .into_iter()
        .map(|grid| Found {
            bounds: grid.bounds.map(|p| (i64::from(p.x), i64::from(p.y))),
            modules: grid.grid.size(),
            payload: grid.decode().map(|(_meta, content)| content),
        })
        .collect()
}
