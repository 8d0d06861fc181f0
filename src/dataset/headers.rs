//! Reading image headers (and optionally decoding every image) in parallel, on request.

use rayon::prelude::*;

use super::image_io::{decode_file, read_header};
use super::{Manifest, Problem, ProblemKind};

/// How thoroughly to check images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckLevel {
    /// Read headers only: dimensions and format; catches garbage and empty files.
    Headers,
    /// Decode every image completely: also catches truncated files. Slow.
    Decode,
}

/// Fills `width`, `height` and `format` of every usable record; an image that fails gets its
/// `problem` set and a [`ProblemKind::Unreadable`] entry. Returns how many failed.
pub fn check_images(manifest: &mut Manifest, level: CheckLevel) -> usize {
    let root = manifest.root.clone();
    let failures: Vec<Problem> = manifest
        .records
        .par_iter_mut()
        .filter(|r| r.is_usable())
        .filter_map(|r| {
            let path = root.join(&r.path);
            let result = read_header(&path).and_then(|h| {
                if level == CheckLevel::Decode {
                    decode_file(&path)?;
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
                Err(err) => {
                    let detail = err.to_string();
                    r.problem = Some(format!("unreadable: {detail}"));
                    Some(Problem::new(
                        ProblemKind::Unreadable,
                        r.path.clone(),
                        detail,
                    ))
                }
            }
        })
        .collect();
    let n = failures.len();
    manifest.problems.extend(failures);
    n
}
