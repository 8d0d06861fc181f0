//! Job packages: a zip with every file at its root, as Ray's `working_dir` expects.
//!
//! The zip is deterministic (sorted entries, fixed timestamps, fixed permissions), so the same
//! inputs give the same bytes, the same content hash and therefore the same package name on
//! the cluster: re-uploading an unchanged package costs one `GET`.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::{ClusterError, Result};

/// Builds a job package. `files` are `(name in the zip, path on disk)`; `extra` are
/// `(name in the zip, contents)`, e.g. a generated job spec. Names may contain `/` for
/// sub-folders but must be relative and must not contain `..`. A file that is executable on
/// disk gets mode 0755 in the zip (Ray restores it when unpacking), everything else 0644.
pub fn build_package(files: &[(String, PathBuf)], extra: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    enum Source<'a> {
        Disk(&'a Path),
        Bytes(&'a [u8]),
    }
    let mut entries: Vec<(&str, Source)> = files
        .iter()
        .map(|(n, p)| (n.as_str(), Source::Disk(p.as_path())))
        .chain(
            extra
                .iter()
                .map(|(n, b)| (n.as_str(), Source::Bytes(b.as_slice()))),
        )
        .collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for pair in entries.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(bad_entry(pair[0].0, "appears twice in the package"));
        }
    }
    let base = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default());
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, source) in &entries {
        check_name(name)?;
        let zip_err = |e: zip::result::ZipError| {
            ClusterError::io(
                format!("adding {name} to the job package"),
                std::io::Error::other(e),
            )
        };
        match source {
            Source::Bytes(bytes) => {
                zip.start_file(*name, base.unix_permissions(0o644))
                    .map_err(zip_err)?;
                zip.write_all(bytes).map_err(|e| {
                    ClusterError::io(format!("adding {name} to the job package"), e)
                })?;
            }
            Source::Disk(path) => {
                let ctx = || format!("adding {} to the job package as {name}", path.display());
                let mut file =
                    crate::fs::File::open(path).map_err(|e| ClusterError::io(ctx(), e))?;
                let meta = file.metadata().map_err(|e| ClusterError::io(ctx(), e))?;
                if !meta.is_file() {
                    return Err(bad_entry(name, "is not a regular file"));
                }
                let options = base
                    .unix_permissions(if is_executable(&meta) { 0o755 } else { 0o644 })
                    .large_file(meta.len() >= u64::from(u32::MAX));
                zip.start_file(*name, options).map_err(zip_err)?;
                copy(&mut file, &mut zip).map_err(|e| ClusterError::io(ctx(), e))?;
            }
        }
    }
    let cursor = zip
        .finish()
        .map_err(|e| ClusterError::io("finishing the job package", std::io::Error::other(e)))?;
    Ok(cursor.into_inner())
}

/// The name Ray's own clients would give these bytes, content-addressed:
/// `_ray_pkg_<first 16 bytes of SHA-256, hex>.zip`.
pub fn package_name(zip: &[u8]) -> String {
    let digest = Sha256::digest(zip);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("_ray_pkg_{hex}.zip")
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('/') || name.ends_with('/') {
        return Err(bad_entry(name, "must be a relative file name"));
    }
    if name.contains('\\') || name.contains('\0') {
        return Err(bad_entry(name, "must use '/' as separator"));
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad_entry(name, "must not contain empty, '.' or '..' parts"));
    }
    Ok(())
}

fn bad_entry(name: &str, what: &str) -> ClusterError {
    ClusterError::io(
        "building the job package",
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("entry {name:?} {what}"),
        ),
    )
}

#[cfg(unix)]
fn is_executable(meta: &crate::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &crate::fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::ZipArchive;

    #[test]
    fn zip_is_deterministic_flat_and_keeps_exec_bits() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("cellbench");
        crate::fs::write(&bin, b"#!/bin/sh\necho hi\n".repeat(100)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            crate::fs::set_permissions(&bin, crate::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let data = dir.path().join("notes.txt");
        crate::fs::write(&data, b"plain").unwrap();
        let files = vec![
            ("notes.txt".to_string(), data.clone()),
            ("cellbench".to_string(), bin.clone()),
        ];
        let extra = vec![("job.toml".to_string(), b"epochs = 1\n".to_vec())];

        let a = build_package(&files, &extra).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let mut rev = files.clone();
        rev.reverse();
        let b = build_package(&rev, &extra).unwrap();
        assert_eq!(a, b, "same inputs must give the same bytes");
        assert_eq!(package_name(&a), package_name(&b));
        assert!(package_name(&a).starts_with("_ray_pkg_") && package_name(&a).len() == 9 + 32 + 4);

        let mut z = ZipArchive::new(Cursor::new(a)).unwrap();
        let names: Vec<String> = (0..z.len())
            .map(|i| z.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert_eq!(names, ["cellbench", "job.toml", "notes.txt"]);
        let mode = |z: &mut ZipArchive<Cursor<Vec<u8>>>, n: &str| {
            z.by_name(n).unwrap().unix_mode().unwrap() & 0o777
        };
        #[cfg(unix)]
        assert_eq!(mode(&mut z, "cellbench"), 0o755);
        assert_eq!(mode(&mut z, "notes.txt"), 0o644);
        assert_eq!(mode(&mut z, "job.toml"), 0o644);
        let mut f = z.by_name("cellbench").unwrap();
        assert_eq!(f.compression(), CompressionMethod::Deflated);
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert!(s.starts_with("#!/bin/sh"));
    }

    #[test]
    fn rejects_bad_names_and_duplicates() {
        for bad in ["../x", "/abs", "a//b", "a\\b", "dir/", ""] {
            assert!(
                build_package(&[], &[(bad.to_string(), vec![])]).is_err(),
                "{bad}"
            );
        }
        let dup = vec![("a".to_string(), vec![1]), ("a".to_string(), vec![2])];
        assert!(
            build_package(&[], &dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let missing = vec![("a".to_string(), PathBuf::from("/definitely/not/here"))];
        assert!(
            build_package(&missing, &[])
                .unwrap_err()
                .to_string()
                .contains("/definitely/not/here")
        );
        build_package(&[], &[("sub/dir/file.txt".to_string(), b"x".to_vec())]).unwrap();
    }
}
