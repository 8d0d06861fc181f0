//! Decoding images through limits, so that a hostile or broken file costs an error, not the
//! machine (no decompression bombs, no panics).

use std::path::Path;

/// Largest width or height accepted, in pixels.
pub const MAX_DIMENSION: u32 = 16_384;
/// Largest allocation a decoder may make, in bytes.
pub const MAX_ALLOC_BYTES: u64 = 512 * 1024 * 1024;

fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC_BYTES);
    limits
}

/// What an image header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Lower-case container name: `png`, `jpeg`, `bmp`, `tiff`, …
    pub format: String,
}

/// Reads only the header (dimensions and format), guessing the format from the content.
pub fn read_header(path: &Path) -> Result<Header, image::ImageError> {
    let reader = image::ImageReader::open(path)?.with_guessed_format()?;
    let format = reader
        .format()
        .map_or_else(|| "unknown".to_owned(), format_name);
    let (width, height) = reader.into_dimensions()?;
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(limit_error());
    }
    Ok(Header {
        width,
        height,
        format,
    })
}

/// Decodes a whole image file within the limits.
pub fn decode_file(path: &Path) -> Result<image::DynamicImage, image::ImageError> {
    let mut reader = image::ImageReader::open(path)?.with_guessed_format()?;
    reader.limits(limits());
    reader.decode()
}

/// Decodes an in-memory image (e.g. an HTTP upload) within the limits.
pub fn decode_bytes(bytes: &[u8]) -> Result<image::DynamicImage, image::ImageError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    reader.limits(limits());
    reader.decode()
}

fn format_name(f: image::ImageFormat) -> String {
    f.extensions_str()
        .first()
        .map_or_else(|| format!("{f:?}").to_lowercase(), |e| (*e).to_owned())
}

fn limit_error() -> image::ImageError {
    image::ImageError::Limits(image::error::LimitError::from_kind(
        image::error::LimitErrorKind::DimensionError,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let img =
            image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 0]));
        let png = dir.path().join("ok.png");
        img.save(&png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(read_header(&png).unwrap().format, "png");
        assert!(decode_file(&png).is_ok());

        let truncated = dir.path().join("truncated.png");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        assert!(decode_file(&truncated).is_err());

        let garbage = dir.path().join("garbage.jpg");
        std::fs::write(&garbage, b"this is not an image at all").unwrap();
        assert!(read_header(&garbage).is_err());
        assert!(decode_bytes(b"").is_err());
    }

    #[test]
    fn huge_declared_dimensions_are_refused_without_allocating() {
        // A BMP header claiming 100000 x 100000 pixels, with no pixel data.
        let mut bmp = Vec::new();
        bmp.extend_from_slice(b"BM");
        bmp.extend_from_slice(&(54u32).to_le_bytes()); // file size (bogus)
        bmp.extend_from_slice(&0u32.to_le_bytes());
        bmp.extend_from_slice(&54u32.to_le_bytes()); // pixel offset
        bmp.extend_from_slice(&40u32.to_le_bytes()); // DIB header size
        bmp.extend_from_slice(&100_000i32.to_le_bytes());
        bmp.extend_from_slice(&100_000i32.to_le_bytes());
        bmp.extend_from_slice(&1u16.to_le_bytes());
        bmp.extend_from_slice(&24u16.to_le_bytes());
        bmp.extend_from_slice(&[0u8; 24]);
        assert!(decode_bytes(&bmp).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.bmp");
        std::fs::write(&path, &bmp).unwrap();
        assert!(read_header(&path).is_err());
    }
}
