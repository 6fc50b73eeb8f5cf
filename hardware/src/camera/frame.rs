//! The luma frame every source produces and every scanner consumes, plus borrowed views and
//! crops of it. No pixel processing here.

use std::time::Duration;

/// An 8-bit luma (greyscale) image, row-major, tightly packed (`data.len() == width * height`).
///
/// Sources write into a caller-owned frame through [`LumaFrame::reset`], which keeps the
/// allocation when the size does not change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LumaFrame {
    width: u32,
    height: u32,
    data: Vec<u8>,
    /// Capture time on the source's monotonic clock (for V4L the kernel's buffer timestamp);
    /// only differences between frames of one source are meaningful.
    pub timestamp: Duration,
}

impl LumaFrame {
    /// A frame from packed pixels; `None` if `data.len() != width * height`.
    pub fn from_pixels(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        (data.len() == width as usize * height as usize).then_some(Self {
            width,
            height,
            data,
            timestamp: Duration::ZERO,
        })
    }

    /// A frame filled with one grey level.
    pub fn filled(width: u32, height: u32, level: u8) -> Self {
        Self {
            width,
            height,
            data: vec![level; width as usize * height as usize],
            timestamp: Duration::ZERO,
        }
    }

    /// Resize to `width × height` (reusing the allocation) and hand out the pixels to fill.
    /// The previous content is left in place, not cleared.
    pub fn reset(&mut self, width: u32, height: u32) -> &mut [u8] {
        self.width = width;
        self.height = height;
        self.data.resize(width as usize * height as usize, 0);
        &mut self.data
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The packed pixels.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The packed pixels, mutable (size stays fixed).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Give up the pixel buffer.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// A borrowed view of the whole frame.
    pub fn view(&self) -> LumaView<'_> {
        LumaView {
            width: self.width,
            height: self.height,
            stride: self.width as usize,
            data: &self.data,
        }
    }
}

impl<'a> From<&'a LumaFrame> for LumaView<'a> {
    fn from(frame: &'a LumaFrame) -> Self {
        frame.view()
    }
}

/// An axis-aligned rectangle in pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Rect {
    /// The smallest rectangle holding all `points`, grown by `margin` on every side and clipped
    /// to a `width × height` image. `None` when nothing of it is inside the image.
    pub fn around(points: &[(i64, i64)], margin: i64, width: u32, height: u32) -> Option<Rect> {
        let min_x = points.iter().map(|p| p.0).min()? - margin;
        let max_x = points.iter().map(|p| p.0).max()? + margin;
        let min_y = points.iter().map(|p| p.1).min()? - margin;
        let max_y = points.iter().map(|p| p.1).max()? + margin;
        let x0 = min_x.clamp(0, i64::from(width));
        let x1 = (max_x + 1).clamp(0, i64::from(width));
        let y0 = min_y.clamp(0, i64::from(height));
        let y1 = (max_y + 1).clamp(0, i64::from(height));
        (x1 > x0 && y1 > y0).then(|| Rect {
            x: x0 as u32,
            y: y0 as u32,
            width: (x1 - x0) as u32,
            height: (y1 - y0) as u32,
        })
    }
}

/// A borrowed luma image with a row stride, so that crops and driver buffers with padded rows
/// need no copy.
#[derive(Debug, Clone, Copy)]
pub struct LumaView<'a> {
    width: u32,
    height: u32,
    stride: usize,
    data: &'a [u8],
}

impl<'a> LumaView<'a> {
    /// A view of `data` with `stride` bytes per row; `None` if the buffer is too short or the
    /// stride narrower than the width.
    pub fn new(width: u32, height: u32, stride: usize, data: &'a [u8]) -> Option<Self> {
        let needed = match height {
            0 => 0,
            h => stride * (h as usize - 1) + width as usize,
        };
        (stride >= width as usize && data.len() >= needed).then_some(Self {
            width,
            height,
            stride,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Row `y` (exactly `width` pixels). Panics if `y >= height`, like slice indexing.
    #[inline]
    pub fn row(&self, y: u32) -> &'a [u8] {
        let start = y as usize * self.stride;
        &self.data[start..start + self.width as usize]
    }

    /// The part of the view inside `rect` (clipped to the view).
    pub fn crop(&self, rect: Rect) -> LumaView<'a> {
        let x = rect.x.min(self.width);
        let y = rect.y.min(self.height);
        let width = rect.width.min(self.width - x);
        let height = rect.height.min(self.height - y);
        let start = y as usize * self.stride + x as usize;
        LumaView {
            width,
            height,
            stride: self.stride,
            data: if height == 0 {
                &[]
            } else {
                &self.data[start..]
            },
        }
    }

    /// Copy into a packed frame.
    pub fn to_frame(&self) -> LumaFrame {
        let mut data = Vec::with_capacity(self.width as usize * self.height as usize);
        for y in 0..self.height {
            data.extend_from_slice(self.row(y));
        }
        LumaFrame {
            width: self.width,
            height: self.height,
            data,
            timestamp: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_reuses_the_allocation() {
        let mut frame = LumaFrame::filled(64, 48, 7);
        let ptr = frame.data().as_ptr();
        frame.reset(64, 48).fill(1);
        assert_eq!(frame.data().as_ptr(), ptr);
        assert_eq!(frame.reset(10, 10).len(), 100);
    }

    #[test]
    fn crop_is_a_strided_view() {
        let data: Vec<u8> = (0..100).collect();
        let frame = LumaFrame::from_pixels(10, 10, data).expect("size matches");
        let crop = frame.view().crop(Rect {
            x: 2,
            y: 3,
            width: 4,
            height: 2,
        });
        assert_eq!(crop.row(0), &[32, 33, 34, 35]);
        assert_eq!(crop.row(1), &[42, 43, 44, 45]);
        assert_eq!(crop.to_frame().data(), &[32, 33, 34, 35, 42, 43, 44, 45]);
    }

    #[test]
    fn crop_is_clipped_to_the_view() {
        let frame = LumaFrame::filled(10, 10, 0);
        let crop = frame.view().crop(Rect {
            x: 8,
            y: 9,
            width: 5,
            height: 5,
        });
        assert_eq!((crop.width(), crop.height()), (2, 1));
    }

    #[test]
    fn rect_around_points_with_margin() {
        let r = Rect::around(&[(5, 5), (20, 8)], 3, 100, 100).expect("inside");
        assert_eq!(
            r,
            Rect {
                x: 2,
                y: 2,
                width: 22,
                height: 10
            }
        );
        assert_eq!(Rect::around(&[(-50, -50)], 3, 100, 100), None);
    }

    #[test]
    fn view_rejects_short_buffers() {
        assert!(LumaView::new(10, 2, 12, &[0; 22]).is_some());
        assert!(LumaView::new(10, 2, 12, &[0; 21]).is_none());
        assert!(LumaView::new(10, 2, 8, &[0; 100]).is_none());
    }
}
