//! Exact duplicates: images whose files are byte for byte identical under different names,
//! common when folders were copied between train and test trees. Copies are kept on one side
//! of every split (see [`super::split`]) and listed as problems; copies with different labels
//! are called out, since at most one of the labels can be right.
//!
//! Files are compared in three steps so that a folder of thousands of same-sized images (BMP
//! crops are all one size) costs a few small reads per file, not a full read: equal size, then
//! an equal fast digest of samples (eight 4 KiB blocks spread over the file, or all of a small
//! file), then equal SHA-256 of the whole file. Only the last step, for files that passed the
//! first two, reads large files completely.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use super::{Manifest, Problem, ProblemKind, Record};

/// Blocks sampled per file in the second step, and their size.
const SAMPLES: u64 = 8;
const SAMPLE_BYTES: usize = 4096;

/// Groups of record paths (each sorted, groups sorted by their first path) whose files are
/// identical. Records with a problem, and records naming the same file twice, are left out.
pub fn find_copies(manifest: &Manifest) -> Vec<Vec<String>> {
    let mut by_size: HashMap<u64, Vec<&str>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in manifest.records.iter().filter(|r| r.is_usable()) {
        if !seen.insert(r.path.as_str()) {
            continue;
        }
        let size = match r.bytes {
            Some(b) => b,
            None => match crate::fs::metadata(manifest.root.join(&r.path)) {
                Ok(m) if m.is_file() => m.len(),
                _ => continue,
            },
        };
        if size > 0 {
            by_size.entry(size).or_default().push(&r.path);
        }
    }
    let candidates: Vec<(u64, &str)> = by_size
        .into_iter()
        .filter(|(_, paths)| paths.len() > 1)
        .flat_map(|(size, paths)| paths.into_iter().map(move |p| (size, p)))
        .collect();
    let root = &manifest.root;
    let sampled = refine(&candidates, |&size, p| {
        sample_digest(&root.join(p), size).map(|d| (size, d))
    });
    let hashed = refine(&sampled, |_, p| full_digest(&root.join(p)));
    let mut groups: BTreeMap<[u8; 32], Vec<String>> = BTreeMap::new();
    for (key, p) in hashed {
        groups.entry(key).or_default().push(p.to_owned());
    }
    let mut out: Vec<Vec<String>> = groups
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    out.sort();
    out
}

/// Keys every item by `key` (in parallel; unreadable files drop out) and keeps the items
/// whose key another item shares.
fn refine<'a, I: Sync, K: Send + Eq + std::hash::Hash + Clone>(
    items: &[(I, &'a str)],
    key: impl Fn(&I, &str) -> Option<K> + Sync,
) -> Vec<(K, &'a str)> {
    let keyed: Vec<(K, &'a str)> = items
        .par_iter()
        .filter_map(|(i, p)| key(i, p).map(|k| (k, *p)))
        .collect();
    let mut count: HashMap<K, usize> = HashMap::new();
    for (k, _) in &keyed {
        *count.entry(k.clone()).or_default() += 1;
    }
    keyed.into_iter().filter(|(k, _)| count[k] > 1).collect()
}

/// A fast (non-cryptographic, fixed-key SipHash) digest of [`SAMPLES`] blocks spread evenly
/// over a file of `size` bytes, or of the whole file when it is no larger than the blocks
/// together. Equal digests are confirmed by SHA-256 of the whole files.
fn sample_digest(path: &Path, size: u64) -> Option<u64> {
    use std::hash::Hasher as _;
    let mut file = crate::fs::File::open(path).ok()?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut block = vec![0u8; SAMPLE_BYTES];
    if size <= SAMPLES * SAMPLE_BYTES as u64 {
        loop {
            let n = read_up_to(&mut file, &mut block)?;
            if n == 0 {
                break;
            }
            hasher.write(&block[..n]);
        }
        return Some(hasher.finish());
    }
    let span = size - SAMPLE_BYTES as u64;
    for i in 0..SAMPLES {
        file.seek(SeekFrom::Start(span * i / (SAMPLES - 1))).ok()?;
        let n = read_up_to(&mut file, &mut block)?;
        hasher.write(&block[..n]);
    }
    Some(hasher.finish())
}

/// SHA-256 of a whole file.
fn full_digest(path: &Path) -> Option<[u8; 32]> {
    let mut file = crate::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = read_up_to(&mut file, &mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Some(hasher.finalize().into())
}

fn read_up_to(file: &mut crate::fs::File, buf: &mut [u8]) -> Option<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(filled)
}

/// The distinct labels of one group of copies, sorted (more than one: at most one is right).
fn labels_of(group: &[String], labels: &HashMap<&str, &Record>) -> Vec<String> {
    let mut distinct: Vec<String> = group
        .iter()
        .filter_map(|p| labels.get(p.as_str()).map(|r| r.label_string()))
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
}

/// How many of the dataset's groups of copies carry different labels.
pub fn conflicting_groups(manifest: &Manifest) -> usize {
    let by_path = records_by_path(manifest);
    manifest
        .copies
        .iter()
        .filter(|g| labels_of(g, &by_path).len() > 1)
        .count()
}

fn records_by_path(manifest: &Manifest) -> HashMap<&str, &Record> {
    manifest
        .records
        .iter()
        .map(|r| (r.path.as_str(), r))
        .collect()
}

/// Finds the dataset's copies, keeps them in `manifest.copies` and lists each group as a
/// problem (on its first file). Returns the number of groups.
pub fn check_copies(manifest: &mut Manifest) -> usize {
    let copies = find_copies(manifest);
    let by_path = records_by_path(manifest);
    let mut problems = Vec::new();
    for group in &copies {
        let distinct = labels_of(group, &by_path);
        let others = group[1..].join(", ");
        let detail = if distinct.len() > 1 {
            format!(
                "identical to {others}, but labelled differently ({}): at most one label is right",
                distinct.join(" vs ")
            )
        } else {
            format!("identical to {others}")
        };
        problems.push(Problem::new(
            ProblemKind::IdenticalImages,
            group[0].clone(),
            detail,
        ));
    }
    let n = copies.len();
    manifest.problems.extend(problems);
    manifest.copies = copies;
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    /// Pixels that differ only in the middle of the file (the first and last blocks, like a
    /// BMP's header and black border rows, are equal), so only a sample or the full hash can
    /// tell them apart.
    fn image_bytes(seed: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        v[len / 2] = seed;
        v
    }

    #[test]
    fn copies_are_grouped_across_folders_and_near_copies_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let len = 50_000;
        let a = image_bytes(1, len);
        write(dir.path(), "A/x.bmp", &a);
        write(dir.path(), "B/x_copy.bmp", &a); // a copy in another class: conflicting labels
        write(dir.path(), "A/y.bmp", &image_bytes(2, len)); // same size, different middle
        // Differs from x.bmp only between two sampled blocks: the full hash tells them apart.
        let mut late = a.clone();
        late[5000] = 9;
        write(dir.path(), "A/z.bmp", &late);
        write(dir.path(), "A/w.bmp", &image_bytes(1, len + 1)); // different size
        let records = ["A/w.bmp", "A/x.bmp", "A/y.bmp", "A/z.bmp", "B/x_copy.bmp"]
            .iter()
            .map(|p| crate::dataset::Record {
                path: (*p).to_owned(),
                labels: vec![p[..1].to_owned()],
                ..Default::default()
            })
            .collect();
        let mut m = Manifest {
            root: dir.path().to_owned(),
            source: dir.path().to_owned(),
            format: crate::dataset::DatasetFormat::ClassFolders,
            records,
            problems: Vec::new(),
            copies: Vec::new(),
        };
        assert_eq!(check_copies(&mut m), 1);
        assert_eq!(
            m.copies,
            vec![vec!["A/x.bmp".to_owned(), "B/x_copy.bmp".to_owned()]]
        );
        let p = m
            .problems
            .iter()
            .find(|p| p.kind == ProblemKind::IdenticalImages)
            .unwrap();
        assert_eq!(p.path, "A/x.bmp");
        assert!(
            p.detail.contains("B/x_copy.bmp") && p.detail.contains("A vs B"),
            "{}",
            p.detail
        );
    }
}
