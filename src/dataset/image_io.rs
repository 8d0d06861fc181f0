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

/// A reader of an image file through [`crate::fs`] (the browser's files live in memory), its
/// format guessed from the content, else from the extension.
fn open_reader(
    path: &Path,
) -> Result<image::ImageReader<std::io::BufReader<crate::fs::File>>, image::ImageError> {
    let file = crate::fs::File::open(path).map_err(image::ImageError::IoError)?;
    let mut reader = image::ImageReader::new(std::io::BufReader::new(file));
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    Ok(reader.with_guessed_format()?)
}

/// Reads only the header (dimensions and format), guessing the format from the content.
pub fn read_header(path: &Path) -> Result<Header, image::ImageError> {
    let reader = open_reader(path)?;
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

/// [`read_header`], telling a file cut short (its header, or what the header points to, is
/// missing: a TIFF whose directory comes after its pixels) from an unreadable one.
pub fn read_header_complete(path: &Path) -> Result<Header, DecodeFailure> {
    read_header(path).map_err(|e| {
        let cut_short = crate::fs::read(path).ok().and_then(|bytes| {
            let format = image::guess_format(&bytes).ok()?;
            check_complete(&bytes, format).err()
        });
        cut_short.map_or_else(
            || DecodeFailure::Unreadable(e.to_string()),
            DecodeFailure::Truncated,
        )
    })
}

/// Decodes a whole image file within the limits.
pub fn decode_file(path: &Path) -> Result<image::DynamicImage, image::ImageError> {
    let mut reader = open_reader(path)?;
    reader.limits(limits());
    reader.decode()
}

/// Decodes an in-memory image (e.g. an HTTP upload) within the limits.
pub fn decode_bytes(bytes: &[u8]) -> Result<image::DynamicImage, image::ImageError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    reader.limits(limits());
    reader.decode()
}

/// Checks that an encoded image is complete: that the file does not end before its format's
/// end marker. Decoders are lenient about truncation (a JPEG cut in half still decodes, its
/// lower part grey), so a decode that succeeds does not prove the file is whole.
///
/// - JPEG: the marker segments are walked from the start-of-image marker to the end-of-image
///   marker `FF D9` (bytes after it are ignored; thumbnails inside APP segments are skipped).
/// - PNG: the chunks are walked up to `IEND`.
/// - BMP: the file is at least as long as its header declares (the file size field and, for
///   uncompressed pixels, the pixel offset plus the rows).
/// - WebP: the file is at least as long as its RIFF header declares.
///
/// - TIFF: every image file directory (IFD), the values it points to and the image data its
///   strips or tiles declare lie within the file (classic and BigTIFF).
///
/// Other formats are left to their decoder. The error names what is missing.
pub fn check_complete(bytes: &[u8], format: image::ImageFormat) -> Result<(), String> {
    match format {
        image::ImageFormat::Jpeg => jpeg_complete(bytes),
        image::ImageFormat::Png => png_complete(bytes),
        image::ImageFormat::Bmp => bmp_complete(bytes),
        image::ImageFormat::WebP => webp_complete(bytes),
        image::ImageFormat::Tiff => tiff_complete(bytes),
        _ => Ok(()),
    }
}

fn truncated(what: &str, len: usize) -> String {
    format!("truncated: the file ({len} bytes) ends before {what}")
}

fn jpeg_complete(b: &[u8]) -> Result<(), String> {
    const EOI: &str = "the JPEG end-of-image marker (FF D9)";
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG: no start-of-image marker (FF D8)".into());
    }
    let len = b.len();
    let mut i = 2;
    loop {
        // Between segments: optional garbage, then a marker (0xFF, fill bytes, the code).
        let Some(ff) = b[i..].iter().position(|&x| x == 0xFF) else {
            return Err(truncated(EOI, len));
        };
        i += ff;
        while i < len && b[i] == 0xFF {
            i += 1;
        }
        let Some(&code) = b.get(i) else {
            return Err(truncated(EOI, len));
        };
        i += 1;
        match code {
            0xD9 => return Ok(()),
            // Markers without a length: TEM, RSTn, a stray SOI, and a stuffed zero.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(size) = b
            .get(i..i + 2)
            .map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
        else {
            return Err(truncated(EOI, len));
        };
        if size < 2 {
            return Err(format!(
                "corrupt JPEG: segment FF {code:02X} declares {size} bytes"
            ));
        }
        if i + size > len {
            return Err(truncated(
                &format!("the end of its FF {code:02X} segment, and before {EOI}"),
                len,
            ));
        }
        i += size;
        if code == 0xDA {
            // Entropy-coded data follows the scan header: it ends at the first 0xFF that is
            // neither a stuffed zero (FF 00) nor a restart marker (FF D0..D7).
            loop {
                let Some(ff) = b[i..].iter().position(|&x| x == 0xFF) else {
                    return Err(truncated(EOI, len));
                };
                i += ff;
                match b.get(i + 1) {
                    None => return Err(truncated(EOI, len)),
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

fn png_complete(b: &[u8]) -> Result<(), String> {
    const IEND: &str = "the PNG IEND chunk";
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    if !b.starts_with(&SIGNATURE) {
        return Err("not a PNG: no PNG signature".into());
    }
    let len = b.len();
    let mut i = SIGNATURE.len();
    while let Some(head) = b.get(i..i + 8) {
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        // Length, type, data, CRC.
        let end = i.saturating_add(12).saturating_add(size);
        if end > len {
            let name = String::from_utf8_lossy(kind);
            return Err(truncated(
                &format!("the end of its {name} chunk, and before {IEND}"),
                len,
            ));
        }
        if kind == b"IEND" {
            return Ok(());
        }
        i = end;
    }
    Err(truncated(IEND, len))
}

fn bmp_complete(b: &[u8]) -> Result<(), String> {
    let len = b.len();
    let u16_at = |i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if !b.starts_with(b"BM") {
        return Err("not a BMP: no BM signature".into());
    }
    let (Some(declared), Some(offset), Some(dib)) = (u32_at(2), u32_at(10), u32_at(14)) else {
        return Err(truncated("the end of the BMP header", len));
    };
    if declared as usize > len {
        return Err(truncated(
            &format!("the {declared} bytes its BMP header declares"),
            len,
        ));
    }
    // Uncompressed pixels: the rows, padded to 4 bytes, start at the pixel offset.
    let geometry = match dib {
        12 => u16_at(18)
            .zip(u16_at(20))
            .zip(u16_at(24))
            .map(|((w, h), bpp)| (u64::from(w), u64::from(h), u64::from(bpp), 0)),
        40.. => u32_at(18)
            .zip(u32_at(22))
            .zip(u16_at(28))
            .zip(u32_at(30))
            .map(|(((w, h), bpp), compression)| {
                (
                    u64::from((w as i32).unsigned_abs()),
                    u64::from((h as i32).unsigned_abs()),
                    u64::from(bpp),
                    compression,
                )
            }),
        _ => None,
    };
    let Some((width, height, bpp, compression)) = geometry else {
        return Err(truncated("the end of the BMP header", len));
    };
    // BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS; compressed pixels have no fixed size.
    if matches!(compression, 0 | 3 | 6) {
        let row = (width.saturating_mul(bpp).saturating_add(31) / 32).saturating_mul(4);
        let needed = u64::from(offset).saturating_add(row.saturating_mul(height));
        if needed > len as u64 {
            return Err(truncated(
                &format!("the end of its pixel rows (byte {needed})"),
                len,
            ));
        }
    }
    Ok(())
}

fn webp_complete(b: &[u8]) -> Result<(), String> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WEBP" {
        return Err("not a WebP: no RIFF/WEBP header".into());
    }
    let declared = u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]])) + 8;
    if declared > b.len() as u64 {
        return Err(truncated(
            &format!("the {declared} bytes its RIFF header declares"),
            b.len(),
        ));
    }
    Ok(())
}

/// Walks a TIFF's chain of image file directories; anything they point to beyond the end of
/// the file means it was cut short. Oddities that are not a short file (an unknown value
/// type, a loop of directories) are left to the decoder.
fn tiff_complete(b: &[u8]) -> Result<(), String> {
    let len = b.len() as u64;
    let little = match b.get(0..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Err("not a TIFF: no byte-order mark".into()),
    };
    let uint = |at: u64, size: u64| -> Option<u64> {
        let start = usize::try_from(at).ok()?;
        let bytes = b.get(start..start.checked_add(usize::try_from(size).ok()?)?)?;
        let mut v = 0u64;
        for i in 0..bytes.len() {
            let byte = if little {
                bytes[bytes.len() - 1 - i]
            } else {
                bytes[i]
            };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let short = || truncated("its TIFF header", b.len());
    let big = match uint(2, 2).ok_or_else(short)? {
        42 => false,
        43 => true,
        _ => return Ok(()),
    };
    // Classic TIFF: 2-byte entry counts, 12-byte entries, 4-byte offsets; BigTIFF: 8, 20, 8.
    let (count_size, entry_size, offset_size) = if big { (8, 20, 8) } else { (2, 12, 4) };
    let mut ifd = uint(if big { 8 } else { 4 }, offset_size).ok_or_else(short)?;
    let mut visited = std::collections::HashSet::new();
    while ifd != 0 && visited.insert(ifd) {
        let directory = || truncated(&format!("its TIFF directory at byte {ifd}"), b.len());
        let entries = uint(ifd, count_size).ok_or_else(directory)?;
        let first = ifd + count_size;
        let next_at = entries
            .checked_mul(entry_size)
            .and_then(|n| n.checked_add(first))
            .filter(|end| end.saturating_add(offset_size) <= len)
            .ok_or_else(directory)?;
        let (mut offsets, mut counts) = (Vec::new(), Vec::new());
        for i in 0..entries {
            let entry = first + i * entry_size;
            let tag = uint(entry, 2).ok_or_else(directory)?;
            let kind = uint(entry + 2, 2).ok_or_else(directory)?;
            let n = uint(entry + 4, offset_size).ok_or_else(directory)?;
            let value_size = match kind {
                1 | 2 | 6 | 7 => 1,
                3 | 8 => 2,
                4 | 9 | 11 | 13 => 4,
                5 | 10 | 12 | 16..=18 => 8,
                _ => continue,
            };
            let field = entry + 4 + offset_size;
            let Some(bytes) = n.checked_mul(value_size) else {
                return Err(truncated(
                    &format!("the {n} values of TIFF tag {tag}"),
                    b.len(),
                ));
            };
            let at = if bytes <= offset_size {
                field
            } else {
                uint(field, offset_size).ok_or_else(directory)?
            };
            if at.checked_add(bytes).is_none_or(|end| end > len) {
                return Err(truncated(
                    &format!(
                        "the values of TIFF tag {tag} (bytes {at}..{})",
                        at.saturating_add(bytes)
                    ),
                    b.len(),
                ));
            }
            let list = match tag {
                273 | 324 => &mut offsets,
                279 | 325 => &mut counts,
                _ => continue,
            };
            if matches!(kind, 3 | 4 | 16) {
                for k in 0..n {
                    list.push(uint(at + k * value_size, value_size).ok_or_else(directory)?);
                }
            }
        }
        for (offset, count) in offsets.iter().zip(&counts) {
            if offset.checked_add(*count).is_none_or(|end| end > len) {
                return Err(truncated(
                    &format!(
                        "the image data its TIFF directory declares (bytes {offset}..{})",
                        offset.saturating_add(*count)
                    ),
                    b.len(),
                ));
            }
        }
        ifd = uint(next_at, offset_size).ok_or_else(directory)?;
    }
    Ok(())
}

/// Reads and decodes a whole file within the limits, after checking with [`check_complete`]
/// that it is not truncated.
pub fn decode_file_complete(path: &Path) -> Result<image::DynamicImage, DecodeFailure> {
    let bytes = crate::fs::read(path).map_err(|e| DecodeFailure::Unreadable(e.to_string()))?;
    decode_bytes_complete(&bytes)
}

/// Decodes an encoded image within the limits after checking with [`check_complete`] that it
/// is not truncated: a cut-off JPEG decodes to a picture with a grey lower part, which training
/// and features must never take for the image.
pub fn decode_bytes_complete(bytes: &[u8]) -> Result<image::DynamicImage, DecodeFailure> {
    if let Ok(format) = image::guess_format(bytes) {
        check_complete(bytes, format).map_err(DecodeFailure::Truncated)?;
    }
    decode_bytes(bytes).map_err(|e| DecodeFailure::Unreadable(e.to_string()))
}

/// Why [`decode_file_complete`] refused a file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeFailure {
    /// The file ends before its format's end marker.
    #[error("{0}")]
    Truncated(String),
    /// The file could not be read or decoded.
    #[error("{0}")]
    Unreadable(String),
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
        let bytes = crate::fs::read(&png).unwrap();
        assert_eq!(read_header(&png).unwrap().format, "png");
        assert!(decode_file(&png).is_ok());

        let truncated = dir.path().join("truncated.png");
        crate::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        assert!(decode_file(&truncated).is_err());

        let garbage = dir.path().join("garbage.jpg");
        crate::fs::write(&garbage, b"this is not an image at all").unwrap();
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
        crate::fs::write(&path, &bmp).unwrap();
        assert!(read_header(&path).is_err());
    }

    fn noise(w: u32, h: u32) -> image::RgbImage {
        let mut state = 0x2545_f491_u32;
        image::RgbImage::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
        })
    }

    fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn truncated_jpeg_is_caught_even_when_it_decodes() {
        let jpeg = encode(&noise(64, 48), image::ImageFormat::Jpeg);
        check_complete(&jpeg, image::ImageFormat::Jpeg).unwrap();
        // Bytes after the end-of-image marker (camera trailers) are fine.
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(b"trailing data\xff\x00");
        check_complete(&trailer, image::ImageFormat::Jpeg).unwrap();
        for cut in [jpeg.len() - 2, jpeg.len() - 1, jpeg.len() / 2, 300, 3] {
            let err = check_complete(&jpeg[..cut], image::ImageFormat::Jpeg).unwrap_err();
            assert!(err.starts_with("truncated"), "cut at {cut}: {err}");
        }
        let err = check_complete(&jpeg[..jpeg.len() / 2], image::ImageFormat::Jpeg).unwrap_err();
        assert!(err.contains("FF D9"), "{err}");
        assert_eq!(
            decode_file_complete_bytes(&jpeg[..jpeg.len() / 2]),
            Err("truncated".to_owned())
        );
    }

    #[test]
    fn an_end_marker_inside_a_thumbnail_does_not_hide_truncation() {
        let jpeg = encode(&noise(64, 48), image::ImageFormat::Jpeg);
        // An APP1 segment holding a tiny embedded JPEG, end marker included, as EXIF
        // thumbnails do.
        let payload: &[u8] = b"Exif\0\0\xff\xd8\xff\xd9";
        let mut with_thumb = jpeg[..2].to_vec();
        with_thumb.extend_from_slice(&[0xFF, 0xE1]);
        with_thumb.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        with_thumb.extend_from_slice(payload);
        with_thumb.extend_from_slice(&jpeg[2..]);
        check_complete(&with_thumb, image::ImageFormat::Jpeg).unwrap();
        let cut = &with_thumb[..with_thumb.len() * 2 / 3];
        assert!(check_complete(cut, image::ImageFormat::Jpeg).is_err());
    }

    #[test]
    fn truncated_png_bmp_and_webp_are_caught() {
        let img = noise(33, 17);
        for format in [
            image::ImageFormat::Png,
            image::ImageFormat::Bmp,
            image::ImageFormat::WebP,
        ] {
            let bytes = encode(&img, format);
            check_complete(&bytes, format).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            for cut in [bytes.len() - 1, bytes.len() / 2, 20] {
                let err = check_complete(&bytes[..cut], format).unwrap_err();
                assert!(
                    err.starts_with("truncated"),
                    "{format:?} cut at {cut}: {err}"
                );
            }
        }
        // PNG: everything but the IEND chunk.
        let png = encode(&img, image::ImageFormat::Png);
        let err = check_complete(&png[..png.len() - 12], image::ImageFormat::Png).unwrap_err();
        assert!(err.contains("IEND"), "{err}");
        // BMP: a zeroed file-size field does not hide missing pixel rows.
        let mut bmp = encode(&img, image::ImageFormat::Bmp);
        bmp[2..6].copy_from_slice(&0u32.to_le_bytes());
        check_complete(&bmp, image::ImageFormat::Bmp).unwrap();
        let err = check_complete(&bmp[..bmp.len() - 40], image::ImageFormat::Bmp).unwrap_err();
        assert!(err.contains("pixel rows"), "{err}");
        // Wrong signatures are errors, not panics.
        for format in [
            image::ImageFormat::Jpeg,
            image::ImageFormat::Png,
            image::ImageFormat::Bmp,
            image::ImageFormat::WebP,
        ] {
            assert!(check_complete(b"", format).is_err());
            assert!(check_complete(b"garbage", format).is_err());
        }
    }

    #[test]
    fn webp_decodes() {
        let img = noise(20, 12);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cell.webp");
        img.save(&path).unwrap();
        let header = read_header(&path).unwrap();
        assert_eq!(
            (header.width, header.height, header.format.as_str()),
            (20, 12, "webp")
        );
        let decoded = decode_file_complete(&path).unwrap().to_rgb8();
        // Lossless: the pixels come back exactly.
        assert_eq!(decoded, img);
    }

    #[test]
    fn truncated_tiff_is_reported_as_truncated() {
        for img in [noise(40, 40), noise(300, 200)] {
            let tiff = encode(&img, image::ImageFormat::Tiff);
            decode_bytes(&tiff).unwrap();
            assert_eq!(check_complete(&tiff, image::ImageFormat::Tiff), Ok(()));
            assert_eq!(decode_file_complete_bytes(&tiff), Ok(()));
            // Cut in the header, the image data, the directory and its last byte.
            for cut in [
                6,
                tiff.len() / 3,
                tiff.len() / 2,
                tiff.len() - 30,
                tiff.len() - 1,
            ] {
                assert_eq!(
                    decode_file_complete_bytes(&tiff[..cut]),
                    Err("truncated".into()),
                    "cut at {cut} of {}",
                    tiff.len()
                );
            }
            let message =
                check_complete(&tiff[..tiff.len() - 1], image::ImageFormat::Tiff).unwrap_err();
            assert!(message.contains("TIFF"), "{message}");
            // Its header cannot be read either, and that is said as a cut, not as garbage.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cut.tif");
            crate::fs::write(&path, &tiff[..tiff.len() - 8]).unwrap();
            assert!(matches!(
                read_header_complete(&path),
                Err(DecodeFailure::Truncated(_))
            ));
            crate::fs::write(&path, b"II*\0garbage!").unwrap();
            assert!(read_header_complete(&path).is_err());
        }
    }

    /// [`decode_file_complete`] through a temporary file: `Err("truncated")` or
    /// `Err("unreadable")`.
    fn decode_file_complete_bytes(bytes: &[u8]) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        crate::fs::write(&path, bytes).unwrap();
        match decode_file_complete(&path) {
            Ok(_) => Ok(()),
            Err(DecodeFailure::Truncated(_)) => Err("truncated".into()),
            Err(DecodeFailure::Unreadable(_)) => Err("unreadable".into()),
        }
    }
}
