//! Image checks: that image bytes are what their MIME type claims, their size, and an optional
//! downscaled copy for vision-model consumers. The original is always kept.

use std::io::Cursor;

use base64::Engine;
use image::ImageFormat as Fmt;
use spindle_protocol::{Downscaled, ImageFormat};

/// What the check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub width: u32,
    pub height: u32,
    pub downscaled: Option<Downscaled>,
}

/// Check base64 image data against its claimed format. SVG is text and is not checked.
pub fn check(format: ImageFormat, b64: &str, max_dim: Option<u32>) -> Result<Checked, String> {
    let expected = match format {
        ImageFormat::Png => Fmt::Png,
        ImageFormat::Jpeg => Fmt::Jpeg,
        ImageFormat::Gif => Fmt::Gif,
        ImageFormat::Webp => Fmt::WebP,
        ImageFormat::Svg => return Err("svg is not a raster image".into()),
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let cleaned: String;
    let text = if b64.contains(['\n', '\r']) {
        cleaned = b64.chars().filter(|c| !c.is_whitespace()).collect();
        &cleaned
    } else {
        b64
    };
    let bytes = engine
        .decode(text)
        .map_err(|e| format!("{} data is not valid base64: {e}", format.mime()))?;
    let actual = image::guess_format(&bytes)
        .map_err(|_| format!("{} data is not an image Spindle recognises", format.mime()))?;
    if actual != expected {
        return Err(format!(
            "{} data is really {}",
            format.mime(),
            actual.to_mime_type()
        ));
    }
    let reader = image::ImageReader::with_format(Cursor::new(&bytes), expected);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| format!("{} data could not be read: {e}", format.mime()))?;
    let downscaled = match max_dim {
        Some(max) if max > 0 && (width > max || height > max) => {
            let img = image::load_from_memory_with_format(&bytes, expected)
                .map_err(|e| format!("{} data could not be decoded: {e}", format.mime()))?;
            let small = img.thumbnail(max, max);
            let mut out = Vec::new();
            small
                .write_to(&mut Cursor::new(&mut out), Fmt::Png)
                .map_err(|e| format!("could not encode the downscaled copy: {e}"))?;
            Some(Downscaled {
                data: engine.encode(&out),
                width: small.width(),
                height: small.height(),
            })
        }
        _ => None,
    };
    Ok(Checked {
        width,
        height,
        downscaled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> String {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), Fmt::Png)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    #[test]
    fn reads_size_and_downscales_keeping_aspect() {
        let c = check(ImageFormat::Png, &png(400, 200), Some(100)).unwrap();
        assert_eq!((c.width, c.height), (400, 200));
        let d = c.downscaled.unwrap();
        assert_eq!((d.width, d.height), (100, 50));
        assert!(check(ImageFormat::Png, &png(40, 20), Some(100))
            .unwrap()
            .downscaled
            .is_none());
    }

    #[test]
    fn wrong_claim_is_reported() {
        let err = check(ImageFormat::Jpeg, &png(4, 4), None).unwrap_err();
        assert!(err.contains("really image/png"), "{err}");
        assert!(check(ImageFormat::Png, "not base64!!", None).is_err());
        assert!(check(ImageFormat::Png, "aGVsbG8=", None).is_err());
    }
}
