//! Pure pixel-format conversions from camera buffers to packed luma: GREY (with row padding),
//! YUYV 4:2:2 and MJPEG. No device access here, so these run and are tested on every build.

use std::io::Cursor;

use image::{ColorType, ImageDecoder, codecs::jpeg::JpegDecoder};

use super::LumaFrame;

/// A camera buffer that does not fit its declared format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The buffer is shorter than `stride * (height - 1) + row bytes`.
    #[error(
        "buffer holds {got} bytes, a {width}x{height} frame with stride {stride} needs {needed}"
    )]
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes delivered.
        got: usize,
        /// Frame width in pixels.
        width: u32,
        /// Frame height in pixels.
        height: u32,
        /// Bytes per row.
        stride: usize,
    },
    /// The stride is smaller than one row of pixels.
    #[error("stride {stride} is smaller than a row of {row_bytes} bytes")]
    StrideTooSmall {
        /// Bytes per row declared.
        stride: usize,
        /// Bytes one row of pixels takes.
        row_bytes: usize,
    },
    /// The MJPEG frame is not a decodable JPEG.
    #[error("MJPEG frame: {0}")]
    Jpeg(String),
}

fn check(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    row_bytes: usize,
) -> Result<(), ConvertError> {
    if stride < row_bytes {
        return Err(ConvertError::StrideTooSmall { stride, row_bytes });
    }
    let needed = match height {
        0 => 0,
        h => stride * (h as usize - 1) + row_bytes,
    };
    if src.len() < needed {
        return Err(ConvertError::TooShort {
            needed,
            got: src.len(),
            width,
            height,
            stride,
        });
    }
    Ok(())
}

/// Copy an 8-bit GREY buffer whose rows are `stride` bytes apart (drivers pad rows) into `dst`.
pub fn grey_to_luma(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    dst: &mut LumaFrame,
) -> Result<(), ConvertError> {
    let w = width as usize;
    check(src, width, height, stride, w)?;
    let out = dst.reset(width, height);
    if stride == w {
        out.copy_from_slice(&src[..out.len()]);
        return Ok(());
    }
    for (row_out, row_in) in out.chunks_exact_mut(w.max(1)).zip(src.chunks(stride)) {
        row_out.copy_from_slice(&row_in[..w]);
    }
    Ok(())
}

/// Extract the Y channel of a packed YUYV 4:2:2 buffer (Y0 U Y1 V ...) into `dst`.
pub fn yuyv_to_luma(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    dst: &mut LumaFrame,
) -> Result<(), ConvertError> {
    let w = width as usize;
    check(src, width, height, stride, 2 * w)?;
    let out = dst.reset(width, height);
    for (row_out, row_in) in out.chunks_exact_mut(w.max(1)).zip(src.chunks(stride)) {
        for (o, pair) in row_out.iter_mut().zip(row_in.chunks_exact(2)) {
            *o = pair[0];
        }
    }
    Ok(())
}

/// Decodes MJPEG frames (plain JPEG, or the AVI1 flavour with the Huffman tables left out) to
/// luma, keeping its colour scratch buffer between frames.
#[derive(Debug, Default)]
pub struct MjpegDecoder {
    scratch: Vec<u8>,
}

impl MjpegDecoder {
    /// A decoder with an empty scratch buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one JPEG into `dst` (resized to the JPEG's size).
    pub fn decode(&mut self, jpeg: &[u8], dst: &mut LumaFrame) -> Result<(), ConvertError> {
        let jpeg_err = |e: image::ImageError| ConvertError::Jpeg(e.to_string());
        let decoder = JpegDecoder::new(Cursor::new(jpeg)).map_err(jpeg_err)?;
        let (width, height) = decoder.dimensions();
        let color = decoder.color_type();
        let len = usize::try_from(decoder.total_bytes())
            .map_err(|_| ConvertError::Jpeg("image too large".into()))?;
        self.scratch.resize(len, 0);
        decoder.read_image(&mut self.scratch).map_err(jpeg_err)?;
        let out = dst.reset(width, height);
        match color {
            ColorType::L8 => out.copy_from_slice(&self.scratch[..out.len()]),
            ColorType::Rgb8 => rgb_to_luma(&self.scratch, out),
            other => {
                return Err(ConvertError::Jpeg(format!(
                    "unsupported JPEG colour type {other:?}"
                )));
            }
        }
        Ok(())
    }
}

/// BT.601 luma from packed RGB: `(77 R + 150 G + 29 B) / 256`, which is what the camera's
/// own Y channel holds.
pub fn rgb_to_luma(rgb: &[u8], out: &mut [u8]) {
    for (o, px) in out.iter_mut().zip(rgb.chunks_exact(3)) {
        let y = 77 * u32::from(px[0]) + 150 * u32::from(px[1]) + 29 * u32::from(px[2]);
        *o = (y >> 8) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_with_padding_drops_the_padding() {
        // 3x2 pixels, stride 5: two padding bytes per row.
        let src = [1, 2, 3, 99, 99, 4, 5, 6, 99, 99];
        let mut dst = LumaFrame::default();
        grey_to_luma(&src, 3, 2, 5, &mut dst).expect("fits");
        assert_eq!(dst.data(), &[1, 2, 3, 4, 5, 6]);
        // The last row needs no padding after it.
        grey_to_luma(&src[..8], 3, 2, 5, &mut dst).expect("fits");
    }

    #[test]
    fn grey_packed_is_a_copy() {
        let src: Vec<u8> = (0..12).collect();
        let mut dst = LumaFrame::default();
        grey_to_luma(&src, 4, 3, 4, &mut dst).expect("fits");
        assert_eq!(dst.data(), &src[..]);
    }

    #[test]
    fn short_or_narrow_buffers_are_errors_not_panics() {
        let mut dst = LumaFrame::default();
        assert!(matches!(
            grey_to_luma(&[0; 5], 3, 2, 3, &mut dst),
            Err(ConvertError::TooShort { needed: 6, .. })
        ));
        assert!(matches!(
            yuyv_to_luma(&[0; 100], 4, 2, 6, &mut dst),
            Err(ConvertError::StrideTooSmall { .. })
        ));
        assert!(matches!(
            yuyv_to_luma(&[0; 15], 4, 2, 8, &mut dst),
            Err(ConvertError::TooShort { .. })
        ));
    }

    #[test]
    fn yuyv_keeps_the_y_samples() {
        // 4x2 pixels, stride 10 (2 padding bytes).
        let src = [
            10, 128, 11, 129, 12, 130, 13, 131, 0, 0, //
            20, 128, 21, 129, 22, 130, 23, 131, 0, 0,
        ];
        let mut dst = LumaFrame::default();
        yuyv_to_luma(&src, 4, 2, 10, &mut dst).expect("fits");
        assert_eq!(dst.data(), &[10, 11, 12, 13, 20, 21, 22, 23]);
    }

    fn encode_jpeg(img: &image::DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .expect("encode");
        out
    }

    #[test]
    fn mjpeg_colour_frame_decodes_to_luma() {
        let mut rgb = image::RgbImage::new(32, 16);
        for (x, _, px) in rgb.enumerate_pixels_mut() {
            *px = if x < 16 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            };
        }
        let jpeg = encode_jpeg(&image::DynamicImage::ImageRgb8(rgb));
        let mut dst = LumaFrame::default();
        MjpegDecoder::new()
            .decode(&jpeg, &mut dst)
            .expect("decodes");
        assert_eq!((dst.width(), dst.height()), (32, 16));
        let row = &dst.data()[8 * 32..9 * 32];
        assert!(row[2] < 30, "dark half stays dark: {}", row[2]);
        assert!(row[29] > 225, "light half stays light: {}", row[29]);
    }

    #[test]
    fn mjpeg_grey_frame_decodes() {
        let grey = image::GrayImage::from_pixel(8, 8, image::Luma([100]));
        let jpeg = encode_jpeg(&image::DynamicImage::ImageLuma8(grey));
        let mut dst = LumaFrame::default();
        MjpegDecoder::new()
            .decode(&jpeg, &mut dst)
            .expect("decodes");
        assert!(dst.data().iter().all(|&p| p.abs_diff(100) <= 2));
    }

    #[test]
    fn mjpeg_garbage_is_an_error() {
        let mut dst = LumaFrame::default();
        assert!(MjpegDecoder::new().decode(b"not a jpeg", &mut dst).is_err());
    }

    #[test]
    fn rgb_luma_weights() {
        let mut out = [0u8; 3];
        rgb_to_luma(&[255, 255, 255, 0, 0, 0, 255, 0, 0], &mut out);
        assert_eq!(out, [255, 0, 76]);
    }
}
