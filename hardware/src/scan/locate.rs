//! Fast grid location on a binary image: finder patterns by run-length scanning with
//! cross-checks (as ZXing does), the three that form a code, its version (from the version
//! information blocks, or the timing pattern for small codes), the bottom-right alignment
//! pattern, and a homography from module to pixel coordinates. Its output is a sampled module
//! grid for [`super::symbol`].
//!
//! This replaces rqrr's own grid search on the fast path: rqrr refines every candidate's
//! perspective by hill-climbing ("jiggle", ~280 000 point mappings, done twice per code),
//! which costs ~12 ms for a version-10 code however small the image. Anything this locator
//! misses still goes to rqrr's full search ([`super::detect`]).

use super::symbol::ModuleGrid;
use crate::camera::render::Homography;

/// A binary image: `bits[y * width + x]` is 1 for black.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bitmap<'a> {
    pub width: usize,
    pub height: usize,
    pub bits: &'a [u8],
}

impl Bitmap<'_> {
    #[inline]
    fn black(&self, x: i64, y: i64) -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < self.width
            && (y as usize) < self.height
            && self.bits[y as usize * self.width + x as usize] != 0
    }

    #[inline]
    fn black_at(&self, p: (f64, f64)) -> bool {
        // Truncation is floor for the non-negative coordinates that can be inside the image
        // (and `f64::floor` is a libm call without SSE4.1).
        p.0 >= 0.0 && p.1 >= 0.0 && self.black(p.0 as i64, p.1 as i64)
    }
}

/// A finder pattern candidate: centre and module size in pixels, and how many scan rows
/// confirmed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Finder {
    pub x: f64,
    pub y: f64,
    pub module: f64,
    pub count: u32,
}

/// Whether five runs look like the 1:1:3:1:1 finder cross-section (50 % tolerance).
fn ratio_ok(c: &[usize; 5]) -> bool {
    ratio_within(c, 0.5)
}

/// Whether five runs look like the 1:1:3:1:1 finder cross-section within `tolerance` of a
/// module per run. The row scan uses 50 %; the cross-checks through a candidate's centre
/// allow 75 % (as ZXing's diagonal check does), because below ~3 px per module blur and
/// thresholding thin one light ring to half a module.
fn ratio_within(c: &[usize; 5], tolerance: f64) -> bool {
    let total: usize = c.iter().sum();
    if total < 7 || c.contains(&0) {
        return false;
    }
    let module = total as f64 / 7.0;
    let var = module * tolerance;
    (module - c[0] as f64).abs() < var
        && (module - c[1] as f64).abs() < var
        && (3.0 * module - c[2] as f64).abs() < 3.0 * var
        && (module - c[3] as f64).abs() < var
        && (module - c[4] as f64).abs() < var
}

/// Walk from (`x`, `y`) along (`dx`, `dy`) through the finder's centre, ring and outer ring
/// in both directions; the centre offset along the walk if the runs have finder ratios.
fn cross_check(
    bm: &Bitmap<'_>,
    x: i64,
    y: i64,
    dx: i64,
    dy: i64,
    max: usize,
) -> Option<(f64, usize)> {
    let mut c = [0usize; 5];
    let mut i = 0i64;
    while bm.black(x - i * dx, y - i * dy) {
        c[2] += 1;
        i += 1;
        if c[2] > 4 * max {
            return None;
        }
    }
    let backward_centre = c[2];
    while !bm.black(x - i * dx, y - i * dy) && c[1] <= max {
        if !in_bounds(bm, x - i * dx, y - i * dy) {
            return None;
        }
        c[1] += 1;
        i += 1;
    }
    while bm.black(x - i * dx, y - i * dy) && c[0] <= max {
        c[0] += 1;
        i += 1;
    }
    let mut i = 1i64;
    while bm.black(x + i * dx, y + i * dy) {
        c[2] += 1;
        i += 1;
        if c[2] > 4 * max {
            return None;
        }
    }
    while !bm.black(x + i * dx, y + i * dy) && c[3] <= max {
        if !in_bounds(bm, x + i * dx, y + i * dy) {
            return None;
        }
        c[3] += 1;
        i += 1;
    }
    while bm.black(x + i * dx, y + i * dy) && c[4] <= max {
        c[4] += 1;
        i += 1;
    }
    // An outer ring that runs on into dark data modules (the one-module light separator
    // blurred away, common below ~3 px per module) is taken as one ring width: the light ring
    // inside it still has to be there, and the triple and the decoder weed out look-alikes.
    for outer in [0, 4] {
        if c[outer] > max {
            c[outer] = (c[1] + c[3]).div_ceil(2);
        }
    }
    if c[1] > max || c[3] > max || !ratio_within(&c, 0.75) {
        return None;
    }
    // The centre run covers pixels -(kb - 1) ..= mf around the start pixel; its middle in
    // continuous coordinates (pixel p spans [p, p + 1)) relative to the start pixel's edge:
    let (kb, mf) = (backward_centre as f64, (c[2] - backward_centre) as f64);
    Some(((mf - kb + 2.0) / 2.0, c.iter().sum()))
}

fn in_bounds(bm: &Bitmap<'_>, x: i64, y: i64) -> bool {
    x >= 0 && y >= 0 && (x as usize) < bm.width && (y as usize) < bm.height
}

/// Scan every row for finder cross-sections, confirm each vertically, horizontally and
/// diagonally, and merge repeated sightings.
pub(crate) fn find_finders(bm: &Bitmap<'_>) -> Vec<Finder> {
    let mut found: Vec<Finder> = Vec::new();
    // A finder's centre is at least 3 modules ≥ 4 pixels tall in any image worth decoding:
    // every other row finds it, and cross-checks then measure it exactly.
    let step = if bm.height >= 300 { 2 } else { 1 };
    for y in (0..bm.height).step_by(step) {
        let row = &bm.bits[y * bm.width..(y + 1) * bm.width];
        let mut c = [0usize; 5];
        let mut state = 0usize;
        for x in 0..=bm.width {
            let black = row.get(x).is_some_and(|&b| b != 0);
            if black {
                if state & 1 == 1 {
                    state += 1;
                }
                c[state] += 1;
            } else if state & 1 == 0 {
                if state == 4 {
                    if ratio_ok(&c) {
                        consider(bm, &c, x, y, &mut found);
                    }
                    c = [c[2], c[3], c[4], 1, 0];
                    state = 3;
                } else {
                    state += 1;
                    c[state] += 1;
                }
            } else {
                c[state] += 1;
            }
        }
    }
    found
}

fn consider(bm: &Bitmap<'_>, c: &[usize; 5], end: usize, y: usize, found: &mut Vec<Finder>) {
    let total: usize = c.iter().sum();
    let cx = end as f64 - c[4] as f64 - c[3] as f64 - c[2] as f64 / 2.0;
    let max = c[2];
    let (x0, y0) = (cx as i64, y as i64);
    let Some((dy, vtotal)) = cross_check(bm, x0, y0, 0, 1, max) else {
        return;
    };
    if 5 * vtotal.abs_diff(total) >= 2 * total {
        return;
    }
    let cy = y as f64 + dy;
    let Some((dx, htotal)) = cross_check(bm, x0, cy as i64, 1, 0, max) else {
        return;
    };
    let cx = x0 as f64 + dx;
    if cross_check(bm, cx as i64, cy as i64, 1, 1, max).is_none() {
        return;
    }
    let module = (htotal + vtotal) as f64 / 14.0;
    if let Some(f) = found.iter_mut().find(|f| {
        (f.x - cx).abs() <= f.module.max(module) && (f.y - cy).abs() <= f.module.max(module)
    }) {
        let n = f64::from(f.count);
        f.x = (f.x * n + cx) / (n + 1.0);
        f.y = (f.y * n + cy) / (n + 1.0);
        f.module = (f.module * n + module) / (n + 1.0);
        f.count += 1;
    } else {
        found.push(Finder {
            x: cx,
            y: cy,
            module,
            count: 1,
        });
    }
}

fn dist(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// Three finders in code order: top-left, top-right, bottom-left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Corners {
    pub tl: Finder,
    pub tr: Finder,
    pub bl: Finder,
}

/// Plausible finder triples, best first.
pub(crate) fn triples(finders: &[Finder]) -> Vec<Corners> {
    let mut pool: Vec<Finder> = finders.to_vec();
    pool.sort_by_key(|f| std::cmp::Reverse(f.count));
    if pool.iter().filter(|f| f.count >= 2).count() >= 3 {
        pool.retain(|f| f.count >= 2);
    }
    pool.truncate(12);
    let mut scored = Vec::new();
    for i in 0..pool.len() {
        for j in i + 1..pool.len() {
            for k in j + 1..pool.len() {
                if let Some(t) = score_triple([pool[i], pool[j], pool[k]]) {
                    scored.push(t);
                }
            }
        }
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    scored.into_iter().map(|(_, c)| c).collect()
}

fn score_triple(f: [Finder; 3]) -> Option<(f64, Corners)> {
    let (mmin, mmax) = f.iter().fold((f64::MAX, 0f64), |(lo, hi), x| {
        (lo.min(x.module), hi.max(x.module))
    });
    if mmax > 2.0 * mmin {
        return None;
    }
    let p = f.map(|x| (x.x, x.y));
    let d = [dist(p[1], p[2]), dist(p[0], p[2]), dist(p[0], p[1])];
    // The corner opposite the longest side is the top-left.
    let tl = (0..3).max_by(|&a, &b| d[a].total_cmp(&d[b]))?;
    let (a, b) = ((tl + 1) % 3, (tl + 2) % 3);
    let (la, lb, hyp) = (dist(p[tl], p[a]), dist(p[tl], p[b]), d[tl]);
    let legs = la * la + lb * lb;
    let ratio = la.max(lb) / la.min(lb).max(1e-9);
    let angle_err = (hyp * hyp - legs).abs() / legs;
    if ratio > 2.0 || angle_err > 0.6 {
        return None;
    }
    let module = (f[0].module + f[1].module + f[2].module) / 3.0;
    let modules = (la + lb) / 2.0 / module + 7.0;
    if !(17.0..=185.0).contains(&modules) {
        return None;
    }
    // Order so that (tr - tl) × (bl - tl) > 0: clockwise in image coordinates.
    let cross = (p[a].0 - p[tl].0) * (p[b].1 - p[tl].1) - (p[a].1 - p[tl].1) * (p[b].0 - p[tl].0);
    let (tr, bl) = if cross > 0.0 { (a, b) } else { (b, a) };
    let score = (ratio - 1.0) + angle_err + (mmax / mmin - 1.0);
    Some((
        score,
        Corners {
            tl: f[tl],
            tr: f[tr],
            bl: f[bl],
        },
    ))
}

/// A located code: its module→pixel map and size, ready to sample.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub to_image: Homography,
    pub size: usize,
}

impl Located {
    /// Sample module centres.
    pub fn sample(&self, bm: &Bitmap<'_>) -> ModuleGrid {
        ModuleGrid::from_fn(self.size, |x, y| {
            self.to_image
                .apply(x as f64 + 0.5, y as f64 + 0.5)
                .is_some_and(|p| bm.black_at(p))
        })
    }

    /// Symbol corners in image pixels: top-left, top-right, bottom-right, bottom-left.
    pub fn corners(&self) -> [(i64, i64); 4] {
        let n = self.size as f64;
        [(0.0, 0.0), (n, 0.0), (n, n), (0.0, n)].map(|(u, v)| {
            self.to_image
                .apply(u, v)
                .map_or((0, 0), |(x, y)| (x.round() as i64, y.round() as i64))
        })
    }
}

/// Module→pixel map from the three finder centres and a fourth point: the bottom-right
/// alignment pattern's centre, or (without one) the parallelogram's fourth corner.
fn homography(c: &Corners, size: usize, fourth: (f64, f64), aligned: bool) -> Option<Homography> {
    let n = size as f64;
    let (u4, v4) = if aligned {
        (n - 6.5, n - 6.5)
    } else {
        (n - 3.5, n - 3.5)
    };
    Homography::quad_to_quad(
        [(3.5, 3.5), (n - 3.5, 3.5), (u4, v4), (3.5, n - 3.5)],
        [(c.tl.x, c.tl.y), (c.tr.x, c.tr.y), fourth, (c.bl.x, c.bl.y)],
    )
}

/// Locate the code the three finders belong to.
pub(crate) fn locate(bm: &Bitmap<'_>, c: &Corners) -> Vec<Located> {
    let tl = (c.tl.x, c.tl.y);
    let tr = (c.tr.x, c.tr.y);
    let bl = (c.bl.x, c.bl.y);
    // Runs were measured along rows and columns: across a code turned by θ they are longer by
    // 1 / max(|cos θ|, |sin θ|) than along its axes.
    let (ax, ay) = unit((tr.0 - tl.0, tr.1 - tl.1)).unwrap_or((1.0, 0.0));
    let module = (c.tl.module + c.tr.module + c.bl.module) / 3.0 * ax.abs().max(ay.abs());
    let estimate = ((dist(tl, tr) + dist(tl, bl)) / 2.0 / module + 7.0).round() as usize;
    let mut sizes = vec![snap(estimate)];
    if let Some(t) = timing_size(bm, c)
        && t.abs_diff(sizes[0]) <= 8
        && t != sizes[0]
    {
        sizes.insert(0, t);
    }
    for alt in [sizes[0] + 4, sizes[0].saturating_sub(4)] {
        if (21..=177).contains(&alt) && !sizes.contains(&alt) {
            sizes.push(alt);
        }
    }
    let mut out = Vec::new();
    for size in sizes {
        if !(21..=177).contains(&size) {
            continue;
        }
        let parallelogram = (tr.0 + bl.0 - tl.0, tr.1 + bl.1 - tl.1);
        let Some(affine) = homography(c, size, parallelogram, false) else {
            continue;
        };
        let located = with_alignment(
            bm,
            c,
            Located {
                to_image: affine,
                size,
            },
            module,
        );
        if size >= 45 {
            // Version 7+: the version blocks say the size outright, within what the geometry
            // allows: misregistered samples decode to some version one time in eight.
            match read_version(bm, &located) {
                Some(v) if 17 + 4 * v == size => return vec![located],
                Some(v) => {
                    let other = 17 + 4 * v;
                    if let Some(h) = homography(c, other, parallelogram, false) {
                        let l = Located {
                            to_image: h,
                            size: other,
                        };
                        return vec![with_alignment(bm, c, l, module)];
                    }
                }
                None => {}
            }
        }
        out.push(located);
    }
    out.truncate(3);
    out
}

/// Replace the parallelogram guess for the fourth corner by the alignment pattern, if found
/// (version 2 and up): this is what makes perspective come out right.
fn with_alignment(bm: &Bitmap<'_>, c: &Corners, mut l: Located, module: f64) -> Located {
    if l.size > 21
        && let Some(centre) = find_alignment(bm, &l, module)
        && let Some(h) = homography(c, l.size, centre, true)
    {
        l.to_image = h;
    }
    l
}

fn snap(size: usize) -> usize {
    // Sizes are 17 + 4v: round to the nearest.
    let v = ((size as f64 - 17.0) / 4.0).round().max(1.0) as usize;
    17 + 4 * v
}

/// Count the light/dark transitions along the timing row between the top finders: the size
/// is the count plus 13 (rounded to a valid size). Immune to perspective, unlike distances.
fn timing_size(bm: &Bitmap<'_>, c: &Corners) -> Option<usize> {
    let right = unit((c.tr.x - c.tl.x, c.tr.y - c.tl.y))?;
    let module = (c.tl.module + c.tr.module) / 2.0 * right.0.abs().max(right.1.abs());
    let down = unit((c.bl.x - c.tl.x, c.bl.y - c.tl.y))?;
    let step = |p: (f64, f64), a: f64, b: f64| {
        (
            p.0 + (right.0 * a + down.0 * b) * module,
            p.1 + (right.1 * a + down.1 * b) * module,
        )
    };
    let start = step((c.tl.x, c.tl.y), 3.0, 3.0);
    let end = step((c.tr.x, c.tr.y), -3.0, 3.0);
    let len = dist(start, end);
    let steps = (len * 2.0).ceil() as usize;
    if steps < 8 {
        return None;
    }
    let mut transitions = 0;
    let mut prev = bm.black_at(start);
    let mut run = 0.0;
    for i in 1..=steps {
        let t = i as f64 / steps as f64;
        let p = (
            start.0 + (end.0 - start.0) * t,
            start.1 + (end.1 - start.1) * t,
        );
        let b = bm.black_at(p);
        run += 0.5;
        // Ignore specks much thinner than a module.
        if b != prev && run >= module * 0.35 {
            transitions += 1;
            prev = b;
            run = 0.0;
        }
    }
    Some(snap(transitions + 13))
}

fn unit(v: (f64, f64)) -> Option<(f64, f64)> {
    let n = (v.0 * v.0 + v.1 * v.1).sqrt();
    (n > 1e-9).then(|| (v.0 / n, v.1 / n))
}

/// Search around the predicted bottom-right alignment pattern (1 module dark centre, light
/// ring, dark ring) and return its centre in pixels.
fn find_alignment(bm: &Bitmap<'_>, l: &Located, module: f64) -> Option<(f64, f64)> {
    let n = l.size as f64;
    let c = n - 6.5;
    let centre = l.to_image.apply(c, c)?;
    // Local axes: one module along u and along v, from the current map.
    let pu = l.to_image.apply(c + 1.0, c)?;
    let pv = l.to_image.apply(c, c + 1.0)?;
    let du = (pu.0 - centre.0, pu.1 - centre.1);
    let dv = (pv.0 - centre.0, pv.1 - centre.1);
    // The 5×5 module pattern as whole-pixel offsets from a candidate pixel's centre
    // (x + 0.5 + o floors to x + floor(0.5 + o)), so the inner loop is integer lookups.
    let mut offsets = [(0i64, 0i64, false); 25];
    for (k, o) in offsets.iter_mut().enumerate() {
        let (i, j) = (k as i32 % 5 - 2, k as i32 / 5 - 2);
        let ring = i.abs().max(j.abs());
        *o = (
            (0.5 + du.0 * f64::from(i) + dv.0 * f64::from(j)).floor() as i64,
            (0.5 + du.1 * f64::from(i) + dv.1 * f64::from(j)).floor() as i64,
            ring != 1,
        );
    }
    for reach in [4.0, 8.0] {
        let r = (reach * module).ceil() as i64;
        let (cx, cy) = (centre.0.round() as i64, centre.1.round() as i64);
        let mut best = 0usize;
        let mut sum = (0.0, 0.0, 0.0);
        for y in cy - r..=cy + r {
            for x in cx - r..=cx + r {
                if !bm.black(x, y) {
                    continue;
                }
                // Count matches, giving up once this pixel cannot reach the best score.
                let mut score = 0;
                let mut misses = 0;
                for &(ox, oy, dark) in &offsets {
                    if bm.black(x + ox, y + oy) == dark {
                        score += 1;
                    } else {
                        misses += 1;
                        if misses > offsets.len() - best {
                            break;
                        }
                    }
                }
                if score < best {
                    continue;
                }
                // Prefer the best score; among equals, average (the pattern's pixels).
                let d2 = ((x - cx).pow(2) + (y - cy).pow(2)) as f64;
                let weight = 1.0 / (1.0 + d2 / (module * module * 4.0));
                if score > best {
                    best = score;
                    sum = (x as f64 * weight, y as f64 * weight, weight);
                } else if score == best {
                    sum = (
                        sum.0 + x as f64 * weight,
                        sum.1 + y as f64 * weight,
                        sum.2 + weight,
                    );
                }
            }
        }
        if best >= 22 && sum.2 > 0.0 {
            return Some((sum.0 / sum.2 + 0.5, sum.1 / sum.2 + 0.5));
        }
    }
    None
}

/// The version from either version-information block (v7+), if one decodes within 3 errors.
fn read_version(bm: &Bitmap<'_>, l: &Located) -> Option<usize> {
    let n = l.size;
    let module = |x: usize, y: usize| {
        l.to_image
            .apply(x as f64 + 0.5, y as f64 + 0.5)
            .is_some_and(|p| bm.black_at(p))
    };
    // Top-right block: 3 columns (n-11..n-9) × 6 rows; bit order as in ISO 18004 / ZXing.
    let mut top_right = 0u32;
    for j in (0..6).rev() {
        for i in (n - 11..=n - 9).rev() {
            top_right = (top_right << 1) | u32::from(module(i, j));
        }
    }
    let mut bottom_left = 0u32;
    for i in (0..6).rev() {
        for j in (n - 11..=n - 9).rev() {
            bottom_left = (bottom_left << 1) | u32::from(module(i, j));
        }
    }
    // Either block, the one closest to the measured size; none that is far from it.
    [top_right, bottom_left]
        .into_iter()
        .filter_map(decode_version)
        .filter(|&v| (17 + 4 * v).abs_diff(n) <= MAX_VERSION_CORRECTION)
        .min_by_key(|&v| (17 + 4 * v).abs_diff(n))
}

/// How far (in modules per side) the version blocks may move the size the geometry measured.
const MAX_VERSION_CORRECTION: usize = 12;

/// The BCH(18,6) version word for version `v`.
fn version_word(v: u32) -> u32 {
    let mut rem = v << 12;
    for i in (12..18).rev() {
        if rem & (1 << i) != 0 {
            rem ^= 0x1F25 << (i - 12);
        }
    }
    (v << 12) | rem
}

fn decode_version(bits: u32) -> Option<usize> {
    (7..=40u32)
        .map(|v| (v, (version_word(v) ^ bits).count_ones()))
        .filter(|&(_, d)| d <= 3)
        .min_by_key(|&(_, d)| d)
        .map(|(v, _)| v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_words_match_the_standard() {
        assert_eq!(version_word(7), 0x07C94);
        assert_eq!(version_word(10), 0x0A4D3);
        assert_eq!(version_word(40), 0x28C69);
        assert_eq!(decode_version(0x0A4D3 ^ 0b101), Some(10));
        assert_eq!(decode_version(0), None);
    }

    #[test]
    fn finder_ratios() {
        assert!(ratio_ok(&[2, 2, 6, 2, 2]));
        assert!(ratio_ok(&[3, 2, 7, 2, 3]));
        assert!(!ratio_ok(&[2, 2, 2, 2, 2]));
        assert!(!ratio_ok(&[0, 2, 6, 2, 2]));
    }

    #[test]
    fn snaps_to_valid_sizes() {
        assert_eq!(snap(57), 57);
        assert_eq!(snap(58), 57);
        assert_eq!(snap(60), 61);
        assert_eq!(snap(10), 21);
    }
}
