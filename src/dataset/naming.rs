//! File-name conventions of public cell and medical image datasets.
//!
//! Parsers here are pure functions over a file name: no file system access, no allocation
//! beyond the returned value, so they can run on 100k names per second in any build.

/// A C-NMC 2019 cell file name: `UID_<patient>_<image>_<cell>_<all|hem>.bmp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CnmcName {
    /// Patient (or healthy subject) id, normalised: numeric ids without leading zeros
    /// (`011` and `11` are the same patient, `11`), healthy-subject ids upper-cased (`h3`,
    /// `H03` and `H3` are the same subject, `H3`).
    pub patient: String,
    /// Microscope image number within the patient.
    pub image_no: u32,
    /// Cell index within that microscope image.
    pub cell_no: u32,
    /// `all` (leukemic blast) or `hem` (normal B cell).
    pub label: String,
}

/// Parses a C-NMC file name (the final path component). Returns `None` if it does not
/// follow the convention. The extension is not restricted to `.bmp` (converted copies exist),
/// but there must be one.
pub fn parse_cnmc(file_name: &str) -> Option<CnmcName> {
    let stem = file_name.rsplit_once('.').map(|(stem, _ext)| stem)?;
    let rest = stem.strip_prefix("UID_")?;
    let mut parts = rest.split('_');
    let patient = parts.next()?;
    let image_no = parts.next()?.parse().ok()?;
    let cell_no = parts.next()?.parse().ok()?;
    let label = parts.next()?.to_ascii_lowercase();
    if parts.next().is_some() || !(label == "all" || label == "hem") {
        return None;
    }
    Some(CnmcName {
        patient: normalise_cnmc_patient(patient)?,
        image_no,
        cell_no,
        label,
    })
}

/// `11` → `11`, `011` → `11`, `H10` → `H10`, `h3` → `H3`, `H03` → `H3`; anything else is
/// not a C-NMC patient token. Zero padding never makes two ids of one patient (which a
/// patient split would put on both sides).
fn normalise_cnmc_patient(token: &str) -> Option<String> {
    let (prefix, digits) = match token.as_bytes().first()? {
        b'h' | b'H' => ("H", &token[1..]),
        _ => ("", token),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = match digits.trim_start_matches('0') {
        "" => "0",
        d => d,
    };
    Some(format!("{prefix}{digits}"))
}

/// A Kaggle diabetic-retinopathy image id: `<patient>_<left|right>` (e.g. `10_left`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetinaName {
    pub patient: String,
    pub eye: Eye,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eye {
    Left,
    Right,
}

/// Parses `10_left`, `10_right` or a file name such as `10_left.jpeg`.
pub fn parse_retina(id_or_file: &str) -> Option<RetinaName> {
    let id = match id_or_file.rsplit_once('.') {
        Some((stem, ext)) if is_image_extension(ext) => stem,
        _ => id_or_file,
    };
    let (patient, eye) = id.rsplit_once('_')?;
    let eye = match eye.to_ascii_lowercase().as_str() {
        "left" => Eye::Left,
        "right" => Eye::Right,
        _ => return None,
    };
    if patient.is_empty() || !patient.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(RetinaName {
        patient: patient.to_owned(),
        eye,
    })
}

/// Image file extensions cellbench opens (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"];

/// True for `png`, `JPG`, `tiff`, …
pub fn is_image_extension(ext: &str) -> bool {
    IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// Splits a multi-label cell such as `Effusion|Infiltration` into trimmed labels, dropping
/// empty pieces. A single label is a one-element list.
pub fn split_labels(cell: &str) -> Vec<String> {
    cell.split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnmc_names_from_the_training_set() {
        let n = parse_cnmc("UID_11_10_1_all.bmp").unwrap();
        assert_eq!(
            n,
            CnmcName {
                patient: "11".into(),
                image_no: 10,
                cell_no: 1,
                label: "all".into()
            }
        );
        let n = parse_cnmc("UID_H10_43_1_hem.bmp").unwrap();
        assert_eq!((n.patient.as_str(), n.image_no, n.cell_no), ("H10", 43, 1));
        assert_eq!(n.label, "hem");
    }

    #[test]
    fn cnmc_lower_case_subject_is_the_same_subject() {
        for padded in ["UID_011_10_1_all.bmp", "UID_0011_10_1_all.bmp"] {
            assert_eq!(parse_cnmc(padded).unwrap().patient, "11");
        }
        assert_eq!(parse_cnmc("UID_H03_1_1_hem.bmp").unwrap().patient, "H3");
        assert_eq!(parse_cnmc("UID_0_1_1_all.bmp").unwrap().patient, "0");
        let lower = parse_cnmc("UID_h3_6_1_hem.bmp").unwrap();
        let upper = parse_cnmc("UID_H3_6_2_hem.bmp").unwrap();
        assert_eq!(lower.patient, "H3");
        assert_eq!(lower.patient, upper.patient);
        assert_eq!(upper.cell_no, 2);
    }

    #[test]
    fn cnmc_rejects_near_misses() {
        for bad in [
            "UID_11_10_1_all",       // no extension
            "UID_11_10_all.bmp",     // missing cell number
            "UID_11_10_1_2_all.bmp", // extra field
            "UID_11_x_1_all.bmp",    // non-numeric image number
            "UID_11_10_1_foo.bmp",   // unknown label
            "uid_11_10_1_all.bmp",   // prefix is case-sensitive
            "UID_H_10_1_hem.bmp",    // subject without number
            "UID_X3_10_1_hem.bmp",   // unknown prefix
            "UID__10_1_hem.bmp",     // empty patient
            "BloodImage_00008_1.jpg",
        ] {
            assert_eq!(parse_cnmc(bad), None, "{bad}");
        }
    }

    #[test]
    fn cnmc_label_and_extension_case() {
        let n = parse_cnmc("UID_7_1_3_ALL.BMP").unwrap();
        assert_eq!((n.label.as_str(), n.cell_no), ("all", 3));
    }

    #[test]
    fn retina_ids() {
        assert_eq!(
            parse_retina("10_left"),
            Some(RetinaName {
                patient: "10".into(),
                eye: Eye::Left
            })
        );
        assert_eq!(parse_retina("10_right.jpeg").unwrap().eye, Eye::Right);
        assert_eq!(parse_retina("44342_RIGHT").unwrap().patient, "44342");
        assert_eq!(parse_retina("10_middle"), None);
        assert_eq!(parse_retina("_left"), None);
        assert_eq!(parse_retina("10left"), None);
    }

    #[test]
    fn multi_labels() {
        assert_eq!(
            split_labels("Effusion|Infiltration"),
            ["Effusion", "Infiltration"]
        );
        assert_eq!(split_labels("No Finding"), ["No Finding"]);
        assert_eq!(split_labels(" A || B "), ["A", "B"]);
        assert!(split_labels("").is_empty());
    }
}
