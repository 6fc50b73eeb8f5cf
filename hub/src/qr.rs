//! QR code renderings of a code token: PNG (base64) and SVG, sized to fit a push message.

use base64::Engine as _;
use image::ImageEncoder as _;
use qrcode::{EcLevel, QrCode};

/// Pixels per QR module in the PNG.
const PNG_MODULE_PX: u32 = 4;

/// The token rendered both ways: (PNG as standard base64, SVG document).
pub fn render(token: &str) -> Result<(String, String), String> {
    let code = QrCode::with_error_correction_level(token.as_bytes(), EcLevel::M)
        .map_err(|e| format!("QR encoding: {e}"))?;
    let (pixels, side) = luma_pixels(&code);
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, side, side, image::ExtendedColorType::L8)
        .map_err(|e| format!("PNG encoding: {e}"))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .module_dimensions(1, 1)
        .build();
    Ok((base64::engine::general_purpose::STANDARD.encode(png), svg))
}

/// Grey-level pixels (dark modules 0, light 255) with a 4-module quiet zone; the side in
/// pixels. Drawn here rather than through the crate's generic renderer, which is slow
/// when instantiated in an unoptimised build.
fn luma_pixels(code: &QrCode) -> (Vec<u8>, u32) {
    const QUIET: usize = 4;
    let scale = PNG_MODULE_PX as usize;
    let w = code.width();
    let side = (w + 2 * QUIET) * scale;
    let mut px = vec![255u8; side * side];
    for (i, c) in code.to_colors().iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (x0, y0) = ((i % w + QUIET) * scale, (i / w + QUIET) * scale);
            for row in px.chunks_exact_mut(side).skip(y0).take(scale) {
                row[x0..x0 + scale].fill(0);
            }
        }
    }
    (px, u32::try_from(side).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_png_and_svg() {
        let token = qrcash_protocol::CodeToken::issue(
            &qrcash_protocol::PrivateKey::generate(),
            qrcash_protocol::TxId::random(),
            1_800_000_000,
        );
        let (png, svg) = render(&token).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&png)
            .unwrap();
        assert_eq!(&raw[1..4], b"PNG");
        let img = image::load_from_memory(&raw).unwrap().to_luma8();
        assert_eq!(img.width() % PNG_MODULE_PX, 0);
        // Top-left finder pattern: dark from the quiet zone's edge, light inside it.
        let q = 4 * PNG_MODULE_PX;
        assert_eq!(img.get_pixel(0, 0).0[0], 255);
        assert_eq!(img.get_pixel(q, q).0[0], 0);
        assert_eq!(
            img.get_pixel(q + PNG_MODULE_PX, q + PNG_MODULE_PX).0[0],
            255
        );
        assert!(svg.contains("<svg"), "{}", &svg[..80.min(svg.len())]);
        // Both together stay far below the push limit.
        assert!(png.len() + svg.len() < qrcash_protocol::MAX_DOWNLINK_BYTES / 2);
    }
}
