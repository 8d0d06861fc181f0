//! File writing that never leaves a half-written file behind, and file-system errors that
//! name their path.

use std::io::Write;

use anyhow::Context as _;
use std::path::{Path, PathBuf};

/// Writes a file atomically: the content goes to a temporary file in the same folder, is
/// flushed to disk, and then renamed over `path`. A crash leaves either the old file or the
/// new one, never a torn one. Parent folders are created. Errors name the path.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_all(dir)?;
    if crate::fs::is_dir(path) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            format!(
                "cannot write the file: a folder is in its place: {}",
                path.display()
            ),
        ));
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let file = crate::fs::File::create(&tmp)?;
        let mut buf = std::io::BufWriter::new(file);
        write(&mut buf)?;
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        crate::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        crate::fs::remove_file(&tmp).ok();
    }
    result.map_err(|e| with_path(e, "cannot write", path))
}

/// The error `e`, of the same kind, with a message that names `path` (last): `"{doing}
/// ({e}): {path}"`.
pub fn with_path(e: std::io::Error, doing: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{doing} ({e}): {}", path.display()))
}

/// Creates a folder and its parents. Errors name the folder, and a file standing where a
/// folder is needed is said as such (the system says only "File exists").
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    crate::fs::create_dir_all(dir).map_err(|e| {
        let in_the_way = dir.ancestors().find(|a| crate::fs::is_file(a));
        match in_the_way {
            Some(file) if file == dir => std::io::Error::new(
                e.kind(),
                format!(
                    "cannot create the folder: a file of that name exists: {}",
                    dir.display()
                ),
            ),
            Some(file) => std::io::Error::new(
                e.kind(),
                format!(
                    "cannot create the folder {}: a file is in the way: {}",
                    dir.display(),
                    file.display()
                ),
            ),
            None => with_path(e, "cannot create the folder", dir),
        }
    })
}

/// [`write_atomic`] for bytes already in memory.
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", crate::fs::process_id()))
}

/// Version of the run-folder files this build writes (`format_version` in `model.json`,
/// `status.json`, `metrics.json`, `dataset.json`). Readers refuse newer versions.
pub const FORMAT_VERSION: u32 = 1;

/// Refuses a file written by a newer cellbench (a format this build cannot read safely).
pub fn check_format_version(version: u32, path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        version <= FORMAT_VERSION,
        "{} was saved in run-folder format {version} by a newer cellbench; this is cellbench {} (format {FORMAT_VERSION}): update cellbench to read it",
        path.display(),
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}

/// Reads a JSON file of a run folder, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = crate::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {} (damaged?)", path.display()))
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A CSV file read as text: a header and rows of fields (RFC 4180: quoted fields may hold
/// commas, doubled quotes and line breaks). Short rows read as empty fields. The files
/// cellbench writes (`predictions.csv`) and users' prediction files are read with it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CsvTable {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl CsvTable {
    /// Reads and parses `path`; an unclosed quote is an error that names its line.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = crate::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{e}: {}", path.display()))
    }

    /// Parses CSV text (see [`CsvTable`]).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut records: Vec<Vec<String>> = Vec::new();
        let mut record = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut quote_line = 0usize;
        let mut line = 1usize;
        let mut chars = text.chars().peekable();
        let mut at_field_start = true;
        while let Some(c) = chars.next() {
            if quoted {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => quoted = false,
                    '\n' => {
                        line += 1;
                        field.push(c);
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '"' if at_field_start => {
                    quoted = true;
                    quote_line = line;
                    at_field_start = false;
                }
                ',' => {
                    record.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    line += 1;
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                    at_field_start = true;
                }
                _ => {
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
        if quoted {
            let excerpt: String = text
                .lines()
                .nth(quote_line - 1)
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect();
            return Err(format!(
                "line {quote_line}: a quote is never closed (the rest of the file would be one field): {excerpt}"
            ));
        }
        if !field.is_empty() || !record.is_empty() {
            record.push(field);
            records.push(record);
        }
        records.retain(|r| !(r.len() == 1 && r[0].is_empty()));
        let mut it = records.into_iter();
        let header = it.next().unwrap_or_default();
        Ok(Self {
            header,
            rows: it.collect(),
        })
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.rows.len()
    }

    /// A column's values (trimmed), or `None` without such a column.
    pub fn column(&self, name: &str) -> Option<Vec<String>> {
        let i = self.header.iter().position(|h| h.trim() == name.trim())?;
        Some(
            self.rows
                .iter()
                .map(|r| r.get(i).map_or("", |v| v.trim()).to_owned())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_table_reads_quotes_line_breaks_and_short_rows() {
        let t = CsvTable::parse(
            "\u{feff}path,label,p\r\na.bmp,\"x, \"\"y\"\"\",0.5\n\"b\nc.bmp\",z\n\n",
        )
        .unwrap();
        assert_eq!(t.header, ["path", "label", "p"]);
        assert_eq!(t.height(), 2);
        assert_eq!(t.column("label").unwrap(), ["x, \"y\"", "z"]);
        assert_eq!(t.column("p").unwrap(), ["0.5", ""]);
        assert_eq!(t.column("path").unwrap()[1], "b\nc.bmp");
        assert!(t.column("missing").is_none());
        let err = CsvTable::parse("a,b\n1,2\n\"3,4\n5,6\n").unwrap_err();
        assert!(err.starts_with("line 3: a quote is never closed"), "{err}");
        // Fields written by `csv_field` read back unchanged.
        let tricky = ["a,b", "say \"hi\"", "two\nlines", "plain"];
        let line: Vec<String> = tricky.iter().map(|s| csv_field(s)).collect();
        let t = CsvTable::parse(&format!("h1,h2,h3,h4\n{}\n", line.join(","))).unwrap();
        assert_eq!(t.rows[0], tricky);
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        write_atomic_bytes(&path, b"old").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(crate::fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = crate::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
