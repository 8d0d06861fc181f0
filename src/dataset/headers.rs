//! Reading image headers (and optionally decoding every image) in parallel, on request.

use rayon::prelude::*;

use super::image_io::{DecodeFailure, decode_file_complete, read_header_complete};
use super::{Manifest, Problem, ProblemKind};

/// How thoroughly to check images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckLevel {
    /// Read headers only: dimensions and format; catches garbage and empty files.
    Headers,
    /// Decode every image completely and check that no file ends before its end marker
    /// (JPEG, PNG, BMP, WebP, TIFF): also catches truncated files that still decode. Slow.
    Decode,
}

/// Fills `width`, `height` and `format` of every usable record; an image that fails gets its
/// `problem` set and a [`ProblemKind::Unreadable`] entry, or [`ProblemKind::Truncated`] for a
/// file cut short (found when its header cannot be read, or when decoding). Returns how many
/// failed.
pub fn check_images(manifest: &mut Manifest, level: CheckLevel) -> usize {
    let root = manifest.root.clone();
    let failures: Vec<Problem> = manifest
        .records
        .par_iter_mut()
        .filter(|r| r.is_usable())
        .filter_map(|r| {
            let path = root.join(&r.path);
            let result = read_header_complete(&path).and_then(|h| {
                if level == CheckLevel::Decode {
                    decode_file_complete(&path)?;
                }
                Ok(h)
            });
            match result {
                Ok(h) => {
                    r.width = Some(h.width);
                    r.height = Some(h.height);
                    r.format = Some(h.format);
                    None
                }
                Err(failure) => {
                    let (kind, detail) = match failure {
                        DecodeFailure::Truncated(d) => (ProblemKind::Truncated, d),
                        DecodeFailure::Unreadable(d) => (ProblemKind::Unreadable, d),
                    };
                    r.problem = Some(format!("{}: {detail}", kind.name()));
                    Some(Problem::new(kind, r.path.clone(), detail))
                }
            }
        })
        .collect();
    let n = failures.len();
    manifest.problems.extend(failures);
    n
}
