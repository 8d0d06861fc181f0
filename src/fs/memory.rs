//! An in-memory file system with the parts of `std::fs`'s API the library uses: the browser's
//! file system. Compiled (and tested) on every target; re-exported as [`crate::fs`] only on
//! wasm32.
//!
//! One process-wide tree of absolute paths (a relative path is taken from `/`). Files are byte
//! vectors; folders exist explicitly (`create_dir_all`) or implicitly as parents of a file
//! (`write` creates missing parents, as a browser user never made them).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use web_time::SystemTime;

#[derive(Clone, Debug)]
enum Node {
    File {
        bytes: Arc<Vec<u8>>,
        modified: SystemTime,
    },
    Dir,
}

static TREE: Mutex<BTreeMap<PathBuf, Node>> = Mutex::new(BTreeMap::new());

impl Node {
    fn metadata(&self) -> Metadata {
        match self {
            Node::File { bytes, modified } => Metadata {
                len: bytes.len() as u64,
                dir: false,
                modified: *modified,
            },
            Node::Dir => Metadata {
                len: 0,
                dir: true,
                modified: SystemTime::UNIX_EPOCH,
            },
        }
    }
}

fn tree() -> MutexGuard<'static, BTreeMap<PathBuf, Node>> {
    TREE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `path` as an absolute path without `.`/`..` components.
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no such file or folder: {}", path.display()),
    )
}

fn ensure_parents(t: &mut BTreeMap<PathBuf, Node>, path: &Path) -> io::Result<()> {
    let mut p = path.parent();
    while let Some(dir) = p {
        match t.get(dir) {
            Some(Node::Dir) => break,
            Some(Node::File { .. }) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is a file, not a folder", dir.display()),
                ));
            }
            None => {
                t.insert(dir.to_owned(), Node::Dir);
            }
        }
        p = dir.parent();
    }
    Ok(())
}

fn put(path: &Path, bytes: Vec<u8>) -> io::Result<()> {
    let path = normalise(path);
    let mut t = tree();
    if matches!(t.get(&path), Some(Node::Dir)) {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!("{} is a folder", path.display()),
        ));
    }
    ensure_parents(&mut t, &path)?;
    t.insert(
        path,
        Node::File {
            bytes: Arc::new(bytes),
            modified: SystemTime::now(),
        },
    );
    Ok(())
}

fn get(path: &Path) -> io::Result<Arc<Vec<u8>>> {
    let path = normalise(path);
    match tree().get(&path) {
        Some(Node::File { bytes, .. }) => Ok(bytes.clone()),
        Some(Node::Dir) => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!("{} is a folder", path.display()),
        )),
        None => Err(not_found(&path)),
    }
}

pub fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    get(path.as_ref()).map(|b| b.as_ref().clone())
}

pub fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> io::Result<()> {
    put(path.as_ref(), contents.as_ref().to_vec())
}

pub fn create_dir_all(path: impl AsRef<Path>) -> io::Result<()> {
    let path = normalise(path.as_ref());
    let mut t = tree();
    match t.get(&path) {
        Some(Node::Dir) => return Ok(()),
        Some(Node::File { .. }) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a file", path.display()),
            ));
        }
        None => {}
    }
    ensure_parents(&mut t, &path)?;
    t.insert(path, Node::Dir);
    Ok(())
}

pub fn create_dir(path: impl AsRef<Path>) -> io::Result<()> {
    let p = normalise(path.as_ref());
    if tree().contains_key(&p) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists", p.display()),
        ));
    }
    create_dir_all(p)
}

pub fn remove_file(path: impl AsRef<Path>) -> io::Result<()> {
    let path = normalise(path.as_ref());
    let mut t = tree();
    match t.get(&path) {
        Some(Node::File { .. }) => {
            t.remove(&path);
            Ok(())
        }
        Some(Node::Dir) => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!("{} is a folder", path.display()),
        )),
        None => Err(not_found(&path)),
    }
}

pub fn remove_dir_all(path: impl AsRef<Path>) -> io::Result<()> {
    let path = normalise(path.as_ref());
    let mut t = tree();
    if !matches!(t.get(&path), Some(Node::Dir)) {
        return Err(not_found(&path));
    }
    t.retain(|p, _| !p.starts_with(&path));
    Ok(())
}

/// Moves a file or a folder with everything in it; a file replaces an existing file.
pub fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    let (from, to) = (normalise(from.as_ref()), normalise(to.as_ref()));
    let mut t = tree();
    let node = t.get(&from).cloned().ok_or_else(|| not_found(&from))?;
    ensure_parents(&mut t, &to)?;
    match node {
        Node::File { .. } => {
            if matches!(t.get(&to), Some(Node::Dir)) {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a folder", to.display()),
                ));
            }
            t.remove(&from);
            t.insert(to, node);
        }
        Node::Dir => {
            let moved: Vec<(PathBuf, Node)> = t
                .range(from.clone()..)
                .take_while(|(p, _)| p.starts_with(&from))
                .map(|(p, n)| (p.clone(), n.clone()))
                .collect();
            for (p, _) in &moved {
                t.remove(p);
            }
            for (p, n) in moved {
                let rel = p.strip_prefix(&from).unwrap_or(Path::new(""));
                t.insert(to.join(rel), n);
            }
        }
    }
    Ok(())
}

/// What [`metadata`] tells about a file or folder.
#[derive(Clone, Debug)]
pub struct Metadata {
    len: u64,
    dir: bool,
    modified: SystemTime,
}

impl Metadata {
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn is_dir(&self) -> bool {
        self.dir
    }
    pub fn is_file(&self) -> bool {
        !self.dir
    }
    pub fn file_type(&self) -> FileType {
        FileType { dir: self.dir }
    }
    pub fn modified(&self) -> io::Result<SystemTime> {
        Ok(self.modified)
    }
}

/// A folder entry's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileType {
    dir: bool,
}

impl FileType {
    pub fn is_dir(&self) -> bool {
        self.dir
    }
    pub fn is_file(&self) -> bool {
        !self.dir
    }
    pub fn is_symlink(&self) -> bool {
        false
    }
}

pub fn metadata(path: impl AsRef<Path>) -> io::Result<Metadata> {
    let path = normalise(path.as_ref());
    if path == Path::new("/") {
        return Ok(Metadata {
            len: 0,
            dir: true,
            modified: SystemTime::UNIX_EPOCH,
        });
    }
    tree()
        .get(&path)
        .map(Node::metadata)
        .ok_or_else(|| not_found(&path))
}

/// An entry of [`read_dir`].
#[derive(Clone, Debug)]
pub struct DirEntry {
    path: PathBuf,
    meta: Metadata,
}

impl DirEntry {
    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }
    pub fn file_name(&self) -> std::ffi::OsString {
        self.path.file_name().unwrap_or_default().to_owned()
    }
    pub fn file_type(&self) -> io::Result<FileType> {
        Ok(self.meta.file_type())
    }
    pub fn metadata(&self) -> io::Result<Metadata> {
        Ok(self.meta.clone())
    }
}

/// The entries of a folder, sorted by name.
pub struct ReadDir(std::vec::IntoIter<DirEntry>);

impl Iterator for ReadDir {
    type Item = io::Result<DirEntry>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(Ok)
    }
}

pub fn read_dir(path: impl AsRef<Path>) -> io::Result<ReadDir> {
    let path = normalise(path.as_ref());
    if !metadata(&path)?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a folder", path.display()),
        ));
    }
    let t = tree();
    let entries = t
        .range(path.clone()..)
        .skip_while(|(p, _)| **p == path)
        .take_while(|(p, _)| p.starts_with(&path))
        .filter(|(p, _)| p.parent() == Some(path.as_path()))
        .map(|(p, n)| DirEntry {
            path: p.clone(),
            meta: n.metadata(),
        })
        .collect::<Vec<_>>();
    Ok(ReadDir(entries.into_iter()))
}

/// How a [`File`] is opened.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
}

impl OpenOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn read(&mut self, v: bool) -> &mut Self {
        self.read = v;
        self
    }
    pub fn write(&mut self, v: bool) -> &mut Self {
        self.write = v;
        self
    }
    pub fn append(&mut self, v: bool) -> &mut Self {
        self.append = v;
        self
    }
    pub fn truncate(&mut self, v: bool) -> &mut Self {
        self.truncate = v;
        self
    }
    pub fn create(&mut self, v: bool) -> &mut Self {
        self.create = v;
        self
    }
    pub fn create_new(&mut self, v: bool) -> &mut Self {
        self.create_new = v;
        self
    }

    pub fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let path = normalise(path.as_ref());
        let existing = match get(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if self.create_new && existing.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let writes = self.write || self.append;
        let bytes = match existing {
            Some(b) if self.truncate => {
                drop(b);
                Vec::new()
            }
            Some(b) => b.as_ref().clone(),
            None if writes && (self.create || self.create_new) => Vec::new(),
            None => return Err(not_found(&path)),
        };
        if writes {
            put(&path, bytes.clone())?;
        }
        let pos = if self.append { bytes.len() as u64 } else { 0 };
        Ok(File {
            path,
            cursor: io::Cursor::new(bytes),
            writes,
            append: self.append,
        })
        .map(|mut f| {
            f.cursor.set_position(pos);
            f
        })
    }
}

/// An open file. Writes reach the tree at once (there is no other process to race with).
#[derive(Debug)]
pub struct File {
    path: PathBuf,
    cursor: io::Cursor<Vec<u8>>,
    writes: bool,
    append: bool,
}

impl File {
    pub fn create(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }
    pub fn open(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new().read(true).open(path)
    }
    pub fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
    pub fn metadata(&self) -> io::Result<Metadata> {
        metadata(&self.path)
    }
}

impl Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cursor.read(buf)
    }
}

impl Seek for File {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.cursor.seek(pos)
    }
}

impl Write for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.writes {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is open for reading only", self.path.display()),
            ));
        }
        if self.append {
            self.cursor.seek(SeekFrom::End(0))?;
        }
        let n = self.cursor.write(buf)?;
        put(&self.path, self.cursor.get_ref().clone())?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_folders_and_renames_behave_like_a_file_system() {
        let root = Path::new("/memory-test/a");
        write(root.join("x/1.bmp"), b"one").unwrap();
        write(root.join("x/2.bmp"), b"two").unwrap();
        create_dir_all(root.join("empty")).unwrap();
        assert_eq!(read(root.join("x/../x/1.bmp")).unwrap(), b"one");
        assert!(metadata(root.join("x")).unwrap().is_dir());
        assert_eq!(metadata(root.join("x/2.bmp")).unwrap().len(), 3);
        let names: Vec<_> = read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["empty", "x"]);
        // A folder's entries are its children only, and `x` does not list `x2`'s files.
        write(root.join("x2/3.bmp"), b"3").unwrap();
        assert_eq!(read_dir(root.join("x")).unwrap().count(), 2);

        rename(root.join("x"), root.join("y")).unwrap();
        assert!(read(root.join("x/1.bmp")).is_err());
        assert_eq!(read_to_string(root.join("y/2.bmp")).unwrap(), "two");
        assert!(write(root.join("y/2.bmp/inner"), b"").is_err());

        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(root.join("log.jsonl"))
            .unwrap();
        f.write_all(b"a\n").unwrap();
        drop(f);
        let mut f = OpenOptions::new()
            .append(true)
            .open(root.join("log.jsonl"))
            .unwrap();
        f.write_all(b"b\n").unwrap();
        assert_eq!(read_to_string(root.join("log.jsonl")).unwrap(), "a\nb\n");
        assert!(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(root.join("log.jsonl"))
                .is_err()
        );
        let mut s = String::new();
        File::open(root.join("log.jsonl"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "a\nb\n");
        assert!(File::open(root.join("missing")).is_err());

        remove_dir_all(root).unwrap();
        assert!(metadata(root.join("y/1.bmp")).is_err());
        assert!(metadata("/memory-test").unwrap().is_dir());
    }
}
