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
    let img = code
        .render::<image::Luma<u8>>()
        .module_dimensions(PNG_MODULE_PX, PNG_MODULE_PX)
        .build();
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::L8,
        )
        .map_err(|e| format!("PNG encoding: {e}"))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .module_dimensions(1, 1)
        .build();
    Ok((base64::engine::general_purpose::STANDARD.encode(png), svg))
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
        let img = image::load_from_memory(&raw).unwrap();
        assert_eq!(img.width() % PNG_MODULE_PX, 0);
        assert!(svg.contains("<svg"), "{}", &svg[..80.min(svg.len())]);
        // Both together stay far below the push limit.
        assert!(png.len() + svg.len() < qrcash_protocol::MAX_DOWNLINK_BYTES / 2);
    }
}
