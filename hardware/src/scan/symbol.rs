//! Reading a sampled QR symbol (ISO/IEC 18004): format information, codewords, Reed–Solomon
//! correction and data segments, from a grid of dark/light modules to the payload text.
//!
//! This replaces rqrr's decoder on every path of the scanner. rqrr computes each syndrome
//! term with a 64-step `pow` (~1.2 ms for a version-10 code, twice when it retries the code
//! mirrored); with log/antilog tables the whole decode is a few microseconds, so the locator
//! can afford more candidate grids per frame. It also de-interleaves blocks of unequal
//! length as the standard says (rqrr, like quirc, reads the last data codeword of every
//! longer block from the wrong place and leaves Reed–Solomon to repair it, which costs one
//! correctable error per block on versions 8–11 at level M, the project's tokens).
//!
//! Not here: finding or sampling the grid ([`super::locate`]).

use rqrr::DeQRError;

/// A square grid of modules, `true` = dark, row-major.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ModuleGrid {
    size: usize,
    dark: Vec<bool>,
}

impl ModuleGrid {
    /// A light grid of `size × size` modules.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            dark: vec![false; size * size],
        }
    }

    /// A grid whose module (`x`, `y`) is `dark(x, y)`.
    pub fn from_fn(size: usize, mut dark: impl FnMut(usize, usize) -> bool) -> Self {
        let mut grid = Self::new(size);
        for y in 0..size {
            for x in 0..size {
                grid.dark[y * size + x] = dark(x, y);
            }
        }
        grid
    }

    /// Modules per side.
    #[cfg(test)]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Set module (`x`, `y`).
    #[cfg(test)]
    pub fn set(&mut self, x: usize, y: usize, dark: bool) {
        self.dark[y * self.size + x] = dark;
    }

    #[inline]
    fn get(&self, x: usize, y: usize) -> bool {
        self.dark[y * self.size + x]
    }
}

/// Decode `grid`; if that fails, try it mirrored (some phone apps render codes transposed).
pub(crate) fn decode(grid: &ModuleGrid) -> Result<String, DeQRError> {
    decode_oriented(grid, false).or_else(|e| decode_oriented(grid, true).map_err(|_| e))
}

/// Block structure of one version: total codewords, alignment pattern centres, and per
/// error-correction level (in format-bit order M, L, H, Q) the shorter blocks' size, data
/// codewords and count; the remaining codewords form blocks one data codeword longer.
struct VersionInfo {
    codewords: usize,
    align: [usize; 7],
    blocks: [(usize, usize, usize); 4],
}

#[rustfmt::skip]
const VERSIONS: [VersionInfo; 40] = [
    VersionInfo { codewords: 26, align: [0, 0, 0, 0, 0, 0, 0], blocks: [(26, 16, 1), (26, 19, 1), (26, 9, 1), (26, 13, 1)] }, // 1
    VersionInfo { codewords: 44, align: [6, 18, 0, 0, 0, 0, 0], blocks: [(44, 28, 1), (44, 34, 1), (44, 16, 1), (44, 22, 1)] }, // 2
    VersionInfo { codewords: 70, align: [6, 22, 0, 0, 0, 0, 0], blocks: [(70, 44, 1), (70, 55, 1), (35, 13, 2), (35, 17, 2)] }, // 3
    VersionInfo { codewords: 100, align: [6, 26, 0, 0, 0, 0, 0], blocks: [(50, 32, 2), (100, 80, 1), (25, 9, 4), (50, 24, 2)] }, // 4
    VersionInfo { codewords: 134, align: [6, 30, 0, 0, 0, 0, 0], blocks: [(67, 43, 2), (134, 108, 1), (33, 11, 2), (33, 15, 2)] }, // 5
    VersionInfo { codewords: 172, align: [6, 34, 0, 0, 0, 0, 0], blocks: [(43, 27, 4), (86, 68, 2), (43, 15, 4), (43, 19, 4)] }, // 6
    VersionInfo { codewords: 196, align: [6, 22, 38, 0, 0, 0, 0], blocks: [(49, 31, 4), (98, 78, 2), (39, 13, 4), (32, 14, 2)] }, // 7
    VersionInfo { codewords: 242, align: [6, 24, 42, 0, 0, 0, 0], blocks: [(60, 38, 2), (121, 97, 2), (40, 14, 4), (40, 18, 4)] }, // 8
    VersionInfo { codewords: 292, align: [6, 26, 46, 0, 0, 0, 0], blocks: [(58, 36, 3), (146, 116, 2), (36, 12, 4), (36, 16, 4)] }, // 9
    VersionInfo { codewords: 346, align: [6, 28, 50, 0, 0, 0, 0], blocks: [(69, 43, 4), (86, 68, 2), (43, 15, 6), (43, 19, 6)] }, // 10
    VersionInfo { codewords: 404, align: [6, 30, 54, 0, 0, 0, 0], blocks: [(80, 50, 1), (101, 81, 4), (36, 12, 3), (50, 22, 4)] }, // 11
    VersionInfo { codewords: 466, align: [6, 32, 58, 0, 0, 0, 0], blocks: [(58, 36, 6), (116, 92, 2), (42, 14, 7), (46, 20, 4)] }, // 12
    VersionInfo { codewords: 532, align: [6, 34, 62, 0, 0, 0, 0], blocks: [(59, 37, 8), (133, 107, 4), (33, 11, 12), (44, 20, 8)] }, // 13
    VersionInfo { codewords: 581, align: [6, 26, 46, 66, 0, 0, 0], blocks: [(64, 40, 4), (145, 115, 3), (36, 12, 11), (36, 16, 11)] }, // 14
    VersionInfo { codewords: 655, align: [6, 26, 48, 70, 0, 0, 0], blocks: [(65, 41, 5), (109, 87, 5), (36, 12, 11), (54, 24, 5)] }, // 15
    VersionInfo { codewords: 733, align: [6, 26, 50, 74, 0, 0, 0], blocks: [(73, 45, 7), (122, 98, 5), (45, 15, 3), (43, 19, 15)] }, // 16
    VersionInfo { codewords: 815, align: [6, 30, 54, 78, 0, 0, 0], blocks: [(74, 46, 10), (135, 107, 1), (42, 14, 2), (50, 22, 1)] }, // 17
    VersionInfo { codewords: 901, align: [6, 30, 56, 82, 0, 0, 0], blocks: [(69, 43, 9), (150, 120, 5), (42, 14, 2), (50, 22, 17)] }, // 18
    VersionInfo { codewords: 991, align: [6, 30, 58, 86, 0, 0, 0], blocks: [(70, 44, 3), (141, 113, 3), (39, 13, 9), (47, 21, 17)] }, // 19
    VersionInfo { codewords: 1085, align: [6, 34, 62, 90, 0, 0, 0], blocks: [(67, 41, 3), (135, 107, 3), (43, 15, 15), (54, 24, 15)] }, // 20
    VersionInfo { codewords: 1156, align: [6, 28, 50, 72, 92, 0, 0], blocks: [(68, 42, 17), (144, 116, 4), (46, 16, 19), (50, 22, 17)] }, // 21
    VersionInfo { codewords: 1258, align: [6, 26, 50, 74, 98, 0, 0], blocks: [(74, 46, 17), (139, 111, 2), (37, 13, 34), (54, 24, 7)] }, // 22
    VersionInfo { codewords: 1364, align: [6, 30, 54, 78, 102, 0, 0], blocks: [(75, 47, 4), (151, 121, 4), (45, 15, 16), (54, 24, 11)] }, // 23
    VersionInfo { codewords: 1474, align: [6, 28, 54, 80, 106, 0, 0], blocks: [(73, 45, 6), (147, 117, 6), (46, 16, 30), (54, 24, 11)] }, // 24
    VersionInfo { codewords: 1588, align: [6, 32, 58, 84, 110, 0, 0], blocks: [(75, 47, 8), (132, 106, 8), (45, 15, 22), (54, 24, 7)] }, // 25
    VersionInfo { codewords: 1706, align: [6, 30, 58, 86, 114, 0, 0], blocks: [(74, 46, 19), (142, 114, 10), (46, 16, 33), (50, 22, 28)] }, // 26
    VersionInfo { codewords: 1828, align: [6, 34, 62, 90, 118, 0, 0], blocks: [(73, 45, 22), (152, 122, 8), (45, 15, 12), (53, 23, 8)] }, // 27
    VersionInfo { codewords: 1921, align: [6, 26, 50, 74, 98, 122, 0], blocks: [(73, 45, 3), (147, 117, 3), (45, 15, 11), (54, 24, 4)] }, // 28
    VersionInfo { codewords: 2051, align: [6, 30, 54, 78, 102, 126, 0], blocks: [(73, 45, 21), (146, 116, 7), (45, 15, 19), (53, 23, 1)] }, // 29
    VersionInfo { codewords: 2185, align: [6, 26, 52, 78, 104, 130, 0], blocks: [(75, 47, 19), (145, 115, 5), (45, 15, 23), (54, 24, 15)] }, // 30
    VersionInfo { codewords: 2323, align: [6, 30, 56, 82, 108, 134, 0], blocks: [(74, 46, 2), (145, 115, 13), (45, 15, 23), (54, 24, 42)] }, // 31
    VersionInfo { codewords: 2465, align: [6, 34, 60, 86, 112, 138, 0], blocks: [(74, 46, 10), (145, 115, 17), (45, 15, 19), (54, 24, 10)] }, // 32
    VersionInfo { codewords: 2611, align: [6, 30, 58, 86, 114, 142, 0], blocks: [(74, 46, 14), (145, 115, 17), (45, 15, 11), (54, 24, 29)] }, // 33
    VersionInfo { codewords: 2761, align: [6, 34, 62, 90, 118, 146, 0], blocks: [(74, 46, 14), (145, 115, 13), (46, 16, 59), (54, 24, 44)] }, // 34
    VersionInfo { codewords: 2876, align: [6, 30, 54, 78, 102, 126, 150], blocks: [(75, 47, 12), (151, 121, 12), (45, 15, 22), (54, 24, 39)] }, // 35
    VersionInfo { codewords: 3034, align: [6, 24, 50, 76, 102, 128, 154], blocks: [(75, 47, 6), (151, 121, 6), (45, 15, 2), (54, 24, 46)] }, // 36
    VersionInfo { codewords: 3196, align: [6, 28, 54, 80, 106, 132, 158], blocks: [(74, 46, 29), (152, 122, 17), (45, 15, 24), (54, 24, 49)] }, // 37
    VersionInfo { codewords: 3362, align: [6, 32, 58, 84, 110, 136, 162], blocks: [(74, 46, 13), (152, 122, 4), (45, 15, 42), (54, 24, 48)] }, // 38
    VersionInfo { codewords: 3532, align: [6, 26, 54, 82, 110, 138, 166], blocks: [(75, 47, 40), (147, 117, 20), (45, 15, 10), (54, 24, 43)] }, // 39
    VersionInfo { codewords: 3706, align: [6, 30, 58, 86, 114, 142, 170], blocks: [(75, 47, 18), (148, 118, 19), (45, 15, 20), (54, 24, 34)] }, // 40
];

fn decode_oriented(grid: &ModuleGrid, transposed: bool) -> Result<String, DeQRError> {
    let n = grid.size;
    if !(21..=177).contains(&n) || !(n - 17).is_multiple_of(4) {
        return Err(DeQRError::InvalidGridSize);
    }
    let version = (n - 17) / 4;
    let info = &VERSIONS[version - 1];
    let module = |x: usize, y: usize| {
        if transposed {
            grid.get(y, x)
        } else {
            grid.get(x, y)
        }
    };
    let (level, mask) = read_format(&module, n)?;
    let mut raw = vec![0u8; info.codewords];
    read_codewords(&module, n, info, mask, &mut raw);
    let data = correct(&raw, info.blocks[level], info.codewords)?;
    let mut out = Vec::with_capacity(data.len());
    read_segments(&data, version, &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// The 15-bit format word for 5 data bits (level, mask): BCH(15,5), XOR-masked.
const fn format_word(data: u16) -> u16 {
    let mut rem = data << 10;
    let mut i = 14;
    while i >= 10 {
        if rem & (1 << i) != 0 {
            rem ^= 0x537 << (i - 10);
        }
        i -= 1;
    }
    ((data << 10) | rem) ^ 0x5412
}

/// Level index (format-bit order) and mask from either format copy, within 3 bit errors.
fn read_format(
    module: &impl Fn(usize, usize) -> bool,
    n: usize,
) -> Result<(usize, u16), DeQRError> {
    // Bit i of the first copy is at (X1[i], Y1[i]), around the top-left finder.
    const X1: [usize; 15] = [8, 8, 8, 8, 8, 8, 8, 8, 7, 5, 4, 3, 2, 1, 0];
    const Y1: [usize; 15] = [0, 1, 2, 3, 4, 5, 7, 8, 8, 8, 8, 8, 8, 8, 8];
    let mut first = 0u16;
    let mut second = 0u16;
    for i in 0..15 {
        first |= u16::from(module(X1[i], Y1[i])) << i;
        // The second copy: bits 0–7 along row 8 at the right, 8–14 up column 8 at the bottom.
        let (x, y) = if i < 8 {
            (n - 1 - i, 8)
        } else {
            (8, n - 15 + i)
        };
        second |= u16::from(module(x, y)) << i;
    }
    let (data, distance) = (0..32u16)
        .map(|d| {
            let w = format_word(d);
            let dist = (w ^ first).count_ones().min((w ^ second).count_ones());
            (d, dist)
        })
        .min_by_key(|&(_, dist)| dist)
        .unwrap_or((0, u32::MAX));
    if distance > 3 {
        return Err(DeQRError::FormatEcc);
    }
    Ok((usize::from(data >> 3), data & 7))
}

/// Whether module (`x`, `y`) belongs to a function pattern (finders with separators and
/// format areas, timing, alignment, version information) rather than to the data.
fn function_map(n: usize, version: usize, info: &VersionInfo) -> Vec<bool> {
    let mut map = vec![false; n * n];
    let mut fill = |x0: usize, y0: usize, w: usize, h: usize| {
        for y in y0..y0 + h {
            map[y * n + x0..y * n + x0 + w].fill(true);
        }
    };
    fill(0, 0, 9, 9);
    fill(n - 8, 0, 8, 9);
    fill(0, n - 8, 9, 8);
    fill(6, 0, 1, n);
    fill(0, 6, n, 1);
    if version >= 7 {
        fill(n - 11, 0, 3, 6);
        fill(0, n - 11, 6, 3);
    }
    let centres: Vec<usize> = info.align.iter().copied().filter(|&c| c != 0).collect();
    if let (Some(&first), Some(&last)) = (centres.first(), centres.last()) {
        for &cy in &centres {
            for &cx in &centres {
                // The three corners with finder patterns have no alignment pattern.
                let corner = |c: usize| c == first || c == last;
                let on_finder = corner(cx) && corner(cy) && (cx == first || cy == first);
                if !on_finder {
                    fill(cx - 2, cy - 2, 5, 5);
                }
            }
        }
    }
    map
}

fn mask_bit(mask: u16, x: usize, y: usize) -> bool {
    let (i, j) = (y, x);
    match mask {
        0 => (i + j) % 2 == 0,
        1 => i % 2 == 0,
        2 => j % 3 == 0,
        3 => (i + j) % 3 == 0,
        4 => (i / 2 + j / 3) % 2 == 0,
        5 => (i * j) % 2 + (i * j) % 3 == 0,
        6 => ((i * j) % 2 + (i * j) % 3) % 2 == 0,
        _ => ((i + j) % 2 + (i * j) % 3) % 2 == 0,
    }
}

/// Read the codewords in the standard's two-column zigzag, unmasked, into `raw`
/// (remainder bits are dropped).
fn read_codewords(
    module: &impl Fn(usize, usize) -> bool,
    n: usize,
    info: &VersionInfo,
    mask: u16,
    raw: &mut [u8],
) {
    let reserved = function_map(n, (n - 17) / 4, info);
    let total_bits = raw.len() * 8;
    let mut bit = 0usize;
    let mut x = n - 1;
    let mut upward = true;
    loop {
        if x == 6 {
            x = 5;
        }
        for i in 0..n {
            let y = if upward { n - 1 - i } else { i };
            for xx in [x, x - 1] {
                if reserved[y * n + xx] || bit == total_bits {
                    continue;
                }
                if module(xx, y) != mask_bit(mask, xx, y) {
                    raw[bit / 8] |= 0x80 >> (bit % 8);
                }
                bit += 1;
            }
        }
        if x < 2 {
            break;
        }
        x -= 2;
        upward = !upward;
    }
}

/// De-interleave the blocks, correct each, and return the data codewords in order.
fn correct(
    raw: &[u8],
    (short_len, short_data, short_count): (usize, usize, usize),
    total: usize,
) -> Result<Vec<u8>, DeQRError> {
    let long_count = (total - short_len * short_count) / (short_len + 1);
    let blocks = short_count + long_count;
    let ec = short_len - short_data;
    let data_total = short_count * short_data + long_count * (short_data + 1);
    debug_assert_eq!(data_total + blocks * ec, total);
    let mut out = Vec::with_capacity(data_total);
    let mut block = [0u8; 256];
    for b in 0..blocks {
        let long = b >= short_count;
        let data_len = short_data + usize::from(long);
        for j in 0..short_data {
            block[j] = raw[j * blocks + b];
        }
        if long {
            // Past the shorter blocks' end only the longer blocks contribute.
            block[short_data] = raw[short_data * blocks + (b - short_count)];
        }
        for j in 0..ec {
            block[data_len + j] = raw[data_total + j * blocks + b];
        }
        let block = &mut block[..data_len + ec];
        rs::correct(block, ec).ok_or(DeQRError::DataEcc)?;
        out.extend_from_slice(&block[..data_len]);
    }
    Ok(out)
}

/// MSB-first reader over the corrected data codewords.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() * 8 - self.pos
    }

    fn take(&mut self, bits: usize) -> Result<usize, DeQRError> {
        if bits > self.remaining() {
            return Err(DeQRError::DataUnderflow);
        }
        let mut v = 0usize;
        for _ in 0..bits {
            let b = (self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | usize::from(b);
            self.pos += 1;
        }
        Ok(v)
    }
}

/// Decode the data segments (numeric, alphanumeric, byte, kanji as Shift JIS bytes; ECI
/// designators, structured-append headers and FNC1 markers skipped) into `out`.
fn read_segments(data: &[u8], version: usize, out: &mut Vec<u8>) -> Result<(), DeQRError> {
    const ALPHANUMERIC: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
    let class = match version {
        1..=9 => 0,
        10..=26 => 1,
        _ => 2,
    };
    let mut bits = BitReader { data, pos: 0 };
    while bits.remaining() >= 4 {
        match bits.take(4)? {
            0 => break,
            1 => {
                let mut count = bits.take([10, 12, 14][class])?;
                while count > 0 {
                    let digits = count.min(3);
                    let mut v = bits.take([0, 4, 7, 10][digits])?;
                    for i in (0..digits).rev() {
                        let p = 10usize.pow(i as u32);
                        out.push(b'0' + (v / p % 10) as u8);
                        v %= p;
                    }
                    count -= digits;
                }
            }
            2 => {
                let mut count = bits.take([9, 11, 13][class])?;
                while count >= 2 {
                    let v = bits.take(11)?;
                    out.push(ALPHANUMERIC[v / 45 % 45]);
                    out.push(ALPHANUMERIC[v % 45]);
                    count -= 2;
                }
                if count == 1 {
                    out.push(ALPHANUMERIC[bits.take(6)? % 45]);
                }
            }
            4 => {
                let count = bits.take([8, 16, 16][class])?;
                if bits.remaining() < count * 8 {
                    return Err(DeQRError::DataUnderflow);
                }
                for _ in 0..count {
                    out.push(bits.take(8)? as u8);
                }
            }
            8 => {
                let count = bits.take([8, 10, 12][class])?;
                for _ in 0..count {
                    let v = bits.take(13)?;
                    let sjis = ((v / 0xC0) << 8) | (v % 0xC0);
                    let sjis = if sjis + 0x8140 <= 0x9FFC {
                        sjis + 0x8140
                    } else {
                        sjis + 0xC140
                    };
                    out.extend_from_slice(&[(sjis >> 8) as u8, sjis as u8]);
                }
            }
            7 => {
                let first = bits.take(8)?;
                if first & 0xC0 == 0x80 {
                    bits.take(8)?;
                } else if first & 0xE0 == 0xC0 {
                    bits.take(16)?;
                }
            }
            3 => {
                bits.take(16)?;
            }
            5 => {}
            9 => {
                bits.take(8)?;
            }
            _ => return Err(DeQRError::UnknownDataType),
        }
    }
    Ok(())
}

/// Reed–Solomon decoding over GF(256) with the QR polynomial x⁸ + x⁴ + x³ + x² + 1 and
/// generator roots α⁰ … α^(npar − 1): syndromes, Berlekamp–Massey, Chien search, Forney.
mod rs {
    const fn tables() -> ([u8; 512], [u8; 256]) {
        let mut exp = [0u8; 512];
        let mut log = [0u8; 256];
        let mut x = 1u16;
        let mut i = 0;
        while i < 255 {
            exp[i] = x as u8;
            exp[i + 255] = x as u8;
            log[x as usize] = i as u8;
            x <<= 1;
            if x & 0x100 != 0 {
                x ^= 0x11D;
            }
            i += 1;
        }
        exp[510] = exp[0];
        exp[511] = exp[1];
        (exp, log)
    }

    const TABLES: ([u8; 512], [u8; 256]) = tables();
    const EXP: [u8; 512] = TABLES.0;
    const LOG: [u8; 256] = TABLES.1;

    #[inline]
    fn mul(a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            0
        } else {
            EXP[usize::from(LOG[usize::from(a)]) + usize::from(LOG[usize::from(b)])]
        }
    }

    #[inline]
    fn div(a: u8, b: u8) -> u8 {
        debug_assert!(b != 0);
        if a == 0 {
            0
        } else {
            EXP[usize::from(LOG[usize::from(a)]) + 255 - usize::from(LOG[usize::from(b)])]
        }
    }

    /// α^e for any e ≥ 0.
    #[inline]
    fn pow_alpha(e: usize) -> u8 {
        EXP[e % 255]
    }

    fn eval(poly: &[u8], x: u8) -> u8 {
        // poly[i] is the coefficient of x^i.
        poly.iter().rev().fold(0, |acc, &c| mul(acc, x) ^ c)
    }

    /// Correct `block` (data then `npar` parity codewords, first codeword = highest power) in
    /// place; the number of corrected codewords, or `None` if it cannot be corrected.
    pub(super) fn correct(block: &mut [u8], npar: usize) -> Option<usize> {
        let mut syndromes = [0u8; 68];
        let s = &mut syndromes[..npar];
        let mut nonzero = false;
        for (i, s) in s.iter_mut().enumerate() {
            let mut acc = 0u8;
            for &c in block.iter() {
                acc = if acc == 0 {
                    c
                } else {
                    EXP[usize::from(LOG[usize::from(acc)]) + i] ^ c
                };
            }
            *s = acc;
            nonzero |= acc != 0;
        }
        if !nonzero {
            return Some(0);
        }
        let s = &syndromes[..npar];
        // Berlekamp–Massey: the error locator Λ(x) = Π (1 − X_k x).
        let mut lambda = [0u8; 68];
        let mut prev = [0u8; 68];
        lambda[0] = 1;
        prev[0] = 1;
        let (mut l, mut m, mut b) = (0usize, 1usize, 1u8);
        for k in 0..npar {
            let mut d = s[k];
            for i in 1..=l {
                d ^= mul(lambda[i], s[k - i]);
            }
            if d == 0 {
                m += 1;
                continue;
            }
            let coef = div(d, b);
            let saved = lambda;
            for i in 0..npar + 1 - m {
                lambda[i + m] ^= mul(coef, prev[i]);
            }
            if 2 * l <= k {
                l = k + 1 - l;
                prev = saved;
                b = d;
                m = 1;
            } else {
                m += 1;
            }
        }
        if 2 * l > npar {
            return None;
        }
        let lambda = &lambda[..=l];
        // Error evaluator Ω(x) = S(x) Λ(x) mod x^npar.
        let mut omega = [0u8; 68];
        for (i, &li) in lambda.iter().enumerate() {
            for (j, &sj) in s.iter().enumerate().take(npar - i) {
                omega[i + j] ^= mul(li, sj);
            }
        }
        let omega = &omega[..npar];
        // Λ'(x): in characteristic 2 only the odd terms survive.
        let mut deriv = [0u8; 68];
        for i in (1..lambda.len()).step_by(2) {
            deriv[i - 1] = lambda[i];
        }
        let deriv = &deriv[..lambda.len().max(1)];
        let len = block.len();
        let mut found = 0;
        for p in 0..len {
            let x_inv = pow_alpha(255 - p % 255);
            if eval(lambda, x_inv) != 0 {
                continue;
            }
            let denominator = eval(deriv, x_inv);
            if denominator == 0 {
                return None;
            }
            // Forney with first root α⁰: Y = X · Ω(X⁻¹) / Λ'(X⁻¹).
            let magnitude = mul(pow_alpha(p), div(eval(omega, x_inv), denominator));
            block[len - 1 - p] ^= magnitude;
            found += 1;
        }
        if found != l {
            return None;
        }
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcode::{EcLevel, QrCode, Version};

    fn grid_of(code: &QrCode) -> ModuleGrid {
        let n = code.width();
        let colors = code.to_colors();
        ModuleGrid::from_fn(n, |x, y| colors[y * n + x] == qrcode::Color::Dark)
    }

    fn encode(payload: &[u8], version: i16, level: EcLevel) -> ModuleGrid {
        grid_of(&QrCode::with_version(payload, Version::Normal(version), level).expect("fits"))
    }

    #[test]
    fn format_words_match_the_standard() {
        // ISO/IEC 18004 Annex C: level M (00), mask 101 → 100000011001110.
        assert_eq!(format_word(0b00101), 0b100_0000_1100_1110);
        assert_eq!(format_word(0), 0x5412);
    }

    #[test]
    fn decodes_every_version_and_level() {
        let levels = [EcLevel::L, EcLevel::M, EcLevel::Q, EcLevel::H];
        for version in 1..=40i16 {
            for (k, &level) in levels.iter().enumerate() {
                let payload = format!("v{version}-{k}:{}", "qrcash/".repeat(version as usize / 2));
                let grid = encode(payload.as_bytes(), version, level);
                assert_eq!(
                    decode(&grid).as_deref(),
                    Ok(payload.as_str()),
                    "v{version} {level:?}"
                );
            }
        }
    }

    #[test]
    fn clean_codes_need_no_correction() {
        // A wrong de-interleaving of unequal blocks would show up as parity errors here.
        for version in [5i16, 8, 9, 10, 11, 20] {
            let grid = encode(&[b'x'; 40], version, EcLevel::M);
            let info = &VERSIONS[version as usize - 1];
            let (level, mask) = read_format(&|x, y| grid.get(x, y), grid.size()).expect("format");
            let mut raw = vec![0u8; info.codewords];
            read_codewords(&|x, y| grid.get(x, y), grid.size(), info, mask, &mut raw);
            let (len, data, count) = info.blocks[level];
            let long = (info.codewords - len * count) / (len + 1);
            let blocks = count + long;
            let data_total = count * data + long * (data + 1);
            for b in 0..blocks {
                let dl = data + usize::from(b >= count);
                let mut block: Vec<u8> = (0..data).map(|j| raw[j * blocks + b]).collect();
                if b >= count {
                    block.push(raw[data * blocks + b - count]);
                }
                block.extend((0..len - data).map(|j| raw[data_total + j * blocks + b]));
                assert_eq!(block.len(), dl + len - data);
                assert_eq!(
                    rs::correct(&mut block, len - data),
                    Some(0),
                    "v{version} block {b}"
                );
            }
        }
    }

    #[test]
    fn numeric_alphanumeric_and_byte_segments() {
        for payload in ["0123456789012", "HELLO QRCASH $%*+-./:", "mixed 123 ABC é"] {
            let code = QrCode::with_error_correction_level(payload, EcLevel::M).expect("fits");
            assert_eq!(decode(&grid_of(&code)).as_deref(), Ok(payload));
        }
    }

    #[test]
    fn corrects_up_to_half_the_parity_per_block() {
        // Version 10-M: 26 parity codewords per block, so 13 codeword errors each.
        let payload = "t".repeat(200);
        let clean = encode(payload.as_bytes(), 10, EcLevel::M);
        let n = clean.size();
        let info = &VERSIONS[9];
        let reserved = function_map(n, 10, info);
        // Flip whole 2×4 codeword-sized patches of data modules: a burst of 12 flipped
        // modules in the bottom-right corner touches a handful of codewords.
        let mut damaged = clean.clone();
        let mut flipped = 0;
        for y in (n - 9..n).rev() {
            for x in (n - 4..n).rev() {
                if !reserved[y * n + x] {
                    damaged.set(x, y, !damaged.get(x, y));
                    flipped += 1;
                }
            }
        }
        assert!(flipped >= 30);
        assert_eq!(decode(&damaged).as_deref(), Ok(payload.as_str()));
        // Destroying a large part of the symbol is detected, not mis-decoded.
        let mut ruined = clean;
        for y in 20..n {
            for x in 20..n {
                ruined.set(x, y, (x * 7 + y * 3) % 5 < 2);
            }
        }
        assert!(decode(&ruined).is_err());
    }

    /// Systematic RS encoding (test only): data followed by `npar` parity codewords.
    fn rs_encode(data: &[u8], npar: usize) -> Vec<u8> {
        // Generator Π (x − αⁱ), coefficients highest power first.
        let mut generator = vec![1u8];
        for i in 0..npar {
            let root = rs_test::alpha(i);
            let mut next = vec![0u8; generator.len() + 1];
            for (j, &g) in generator.iter().enumerate() {
                next[j] ^= g;
                next[j + 1] ^= rs_test::mul(g, root);
            }
            generator = next;
        }
        let mut rem = data.to_vec();
        rem.resize(data.len() + npar, 0);
        for i in 0..data.len() {
            let c = rem[i];
            if c != 0 {
                for (j, &g) in generator.iter().enumerate() {
                    rem[i + j] ^= rs_test::mul(g, c);
                }
            }
        }
        let mut block = data.to_vec();
        block.extend_from_slice(&rem[data.len()..]);
        block
    }

    mod rs_test {
        pub fn mul(a: u8, b: u8) -> u8 {
            let (mut a, mut b, mut p) = (u16::from(a), b, 0u16);
            while b != 0 {
                if b & 1 != 0 {
                    p ^= a;
                }
                a <<= 1;
                if a & 0x100 != 0 {
                    a ^= 0x11D;
                }
                b >>= 1;
            }
            p as u8
        }

        pub fn alpha(e: usize) -> u8 {
            (0..e).fold(1u8, |x, _| mul(x, 2))
        }
    }

    #[test]
    fn reed_solomon_corrects_up_to_half_the_parity() {
        let mut seed = 0x1234_5678u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for npar in [7usize, 10, 18, 26, 30] {
            let data: Vec<u8> = (0..43).map(|_| next() as u8).collect();
            let clean = rs_encode(&data, npar);
            let mut block = clean.clone();
            assert_eq!(rs::correct(&mut block, npar), Some(0));
            for errors in 1..=npar / 2 {
                let mut block = clean.clone();
                let mut positions = Vec::new();
                while positions.len() < errors {
                    let p = next() as usize % block.len();
                    if !positions.contains(&p) {
                        positions.push(p);
                        block[p] ^= 1 + (next() % 255) as u8;
                    }
                }
                assert_eq!(rs::correct(&mut block, npar), Some(errors), "npar {npar}");
                assert_eq!(block, clean, "npar {npar}, {errors} errors");
            }
        }
    }

    #[test]
    fn format_survives_three_bit_errors_and_mirrored_codes_decode() {
        let payload = "mirror me";
        let clean = encode(payload.as_bytes(), 2, EcLevel::M);
        let n = clean.size();
        let mut damaged = clean.clone();
        for (x, y) in [(8, 0), (8, 1), (0, 8)] {
            damaged.set(x, y, !damaged.get(x, y));
        }
        assert_eq!(decode(&damaged).as_deref(), Ok(payload));
        let mirrored = ModuleGrid::from_fn(n, |x, y| clean.get(y, x));
        assert_eq!(decode(&mirrored).as_deref(), Ok(payload));
    }

    #[test]
    fn agrees_with_rqrr() {
        let code =
            QrCode::with_error_correction_level("agree with rqrr 42", EcLevel::Q).expect("fits");
        let grid = grid_of(&code);
        let n = grid.size();
        let simple = rqrr::SimpleGrid::from_func(n, |x, y| grid.get(x, y));
        let (_, expected) = rqrr::Grid::new(simple).decode().expect("rqrr decodes");
        assert_eq!(decode(&grid), Ok(expected));
    }

    #[test]
    fn random_grids_are_rejected_without_panicking() {
        let mut seed = 0x9E37_79B9u32;
        for size in [21usize, 45, 57, 101, 177] {
            for _ in 0..20 {
                let grid = ModuleGrid::from_fn(size, |_, _| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed & 1 == 1
                });
                assert!(decode(&grid).is_err(), "noise decoded at size {size}");
            }
        }
    }

    #[test]
    fn rejects_impossible_sizes_and_blank_grids() {
        assert_eq!(
            decode(&ModuleGrid::new(22)),
            Err(DeQRError::InvalidGridSize)
        );
        assert!(decode(&ModuleGrid::new(25)).is_err());
    }
}
