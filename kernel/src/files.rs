//! Files in and out of a session's work directory.
//!
//! A [`WorkDir`] reads, writes and lists files below one directory and refuses everything that
//! would leave it: absolute paths, `..`, and symlinks (any symlink on the way, wherever it
//! points; `list` shows symlinks but never follows them). Paths are `/`-separated and relative;
//! empty and `.` components are ignored.
//!
//! - [`LocalWorkDir`]: a directory on the host (a local session's working directory). Every
//!   component is opened with `openat(…, O_NOFOLLOW)` from the directory before it, so a symlink
//!   swapped in at any moment cannot redirect the walk; the final file is opened the same way
//!   and checked with `fstat` to be a regular file (a FIFO is never opened for blocking I/O).
//! - The Docker launcher's work directory (`/work` in the container, a tmpfs) is reached through
//!   an exec inside the container (see `launcher/docker/files.rs`).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most entries a listing returns (the rest are counted as `truncated`).
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The path is malformed (empty where a file is needed, NUL bytes).
    #[error("bad path {path:?}: {why}")]
    BadPath { path: String, why: String },
    /// The path would leave the work directory (absolute, `..`, or through a symlink).
    #[error("{path:?} is refused: {why}; paths are relative to the session's work directory and may not leave it")]
    Forbidden { path: String, why: String },
    #[error("{path:?} does not exist in the session's work directory")]
    NotFound { path: String },
    /// An upload in `create` mode, but the file exists.
    #[error("{path:?} already exists (upload with mode \"overwrite\" to replace it)")]
    Exists { path: String },
    #[error("{path:?} is {size} bytes; at most {limit} bytes can be transferred")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path:?} is {what}, not a regular file")]
    NotAFile { path: String, what: String },
    #[error("{path:?} is not a directory")]
    NotADirectory { path: String },
    /// The session cannot take file requests right now (restarting, its sandbox gone).
    #[error("{0}")]
    Unavailable(String),
    #[error("{path:?}: {detail}")]
    Io { path: String, detail: String },
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    /// Bytes (for a symlink: the length of its target).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// A directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Sorted by name.
    pub entries: Vec<FileEntry>,
    /// Entries left out beyond [`MAX_LIST_ENTRIES`].
    pub truncated: u64,
}

/// How an upload treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Fail with [`FilesError::Exists`] if the file exists.
    Create,
    /// Replace the file's contents (never through a symlink).
    #[default]
    Overwrite,
}

/// A session's work directory. Calls block (the sandbox's go to its engine); run them on a
/// blocking thread.
pub trait WorkDir: Send + Sync + std::fmt::Debug {
    /// Where it is, as the session's code sees it.
    fn root(&self) -> String;
    /// The file's bytes; [`FilesError::TooLarge`] before reading one larger than `limit`.
    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FilesError>;
    /// Write `data` to the file (its parent directory must exist).
    fn write(&self, path: &str, data: &[u8], mode: WriteMode) -> Result<(), FilesError>;
    /// The entries of a directory (`""` for the work directory itself).
    fn list(&self, path: &str) -> Result<Listing, FilesError>;
}

/// The components of a relative path, checked: no NUL, not absolute, no `..`.
pub fn components(path: &str) -> Result<Vec<String>, FilesError> {
    if path.contains('\0') {
        return Err(FilesError::BadPath {
            path: path.into(),
            why: "it contains a NUL byte".into(),
        });
    }
    if path.starts_with('/') {
        return Err(FilesError::Forbidden {
            path: path.into(),
            why: "it is absolute".into(),
        });
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(FilesError::Forbidden {
                    path: path.into(),
                    why: "it contains \"..\"".into(),
                })
            }
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// The components of a path that must name a file (at least one component).
pub fn file_components(path: &str) -> Result<Vec<String>, FilesError> {
    let c = components(path)?;
    if c.is_empty() {
        return Err(FilesError::BadPath {
            path: path.into(),
            why: "it names the work directory itself, not a file".into(),
        });
    }
    Ok(c)
}

/// A work directory on the host.
#[derive(Debug, Clone)]
pub struct LocalWorkDir {
    root: PathBuf,
}

impl LocalWorkDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn open_root(&self) -> Result<OwnedFd, FilesError> {
        let c = CString::new(self.root.as_os_str().as_encoded_bytes()).map_err(|_| {
            FilesError::Unavailable("the work directory's path contains NUL".into())
        })?;
        // SAFETY: a valid C string; the descriptor returned is ours.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(FilesError::Unavailable(format!(
                "the work directory {} cannot be opened: {e}",
                self.root.display()
            )));
        }
        // SAFETY: a fresh descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Walk `dirs` from the root, one `openat(O_NOFOLLOW | O_DIRECTORY)` at a time.
    fn walk(&self, path: &str, dirs: &[String]) -> Result<OwnedFd, FilesError> {
        let mut fd = self.open_root()?;
        for (i, d) in dirs.iter().enumerate() {
            let shown = dirs[..=i].join("/");
            fd = openat(
                &fd,
                d,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(|e| classify(&fd, d, &shown, path, e, true))?;
        }
        Ok(fd)
    }
}

fn openat(dir: &OwnedFd, name: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::other("NUL in a file name"))?;
    // SAFETY: a valid directory descriptor and C string; the descriptor returned is ours.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `lstat` of `name` in `dir`.
fn lstat_at(dir: &OwnedFd, name: &str) -> Option<libc::stat> {
    let c = CString::new(name).ok()?;
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out-parameter.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    (r == 0).then_some(st)
}

fn what(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symlink",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        _ => "a regular file",
    }
}

/// Turn a failed `openat` of `name` into the error that says why.
fn classify(
    dir: &OwnedFd,
    name: &str,
    shown: &str,
    path: &str,
    e: io::Error,
    want_dir: bool,
) -> FilesError {
    match lstat_at(dir, name) {
        None if e.raw_os_error() == Some(libc::ENOENT) => {
            FilesError::NotFound { path: shown.into() }
        }
        Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => FilesError::Forbidden {
            path: path.into(),
            why: format!("{shown:?} is a symlink"),
        },
        Some(st) if want_dir && st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
            FilesError::NotADirectory { path: shown.into() }
        }
        Some(st) if !want_dir && st.st_mode & libc::S_IFMT != libc::S_IFREG => {
            FilesError::NotAFile {
                path: shown.into(),
                what: what(st.st_mode).into(),
            }
        }
        _ => FilesError::Io {
            path: shown.into(),
            detail: e.to_string(),
        },
    }
}

fn io_err(path: &str) -> impl Fn(io::Error) -> FilesError + '_ {
    move |e| FilesError::Io {
        path: path.into(),
        detail: e.to_string(),
    }
}

impl WorkDir for LocalWorkDir {
    fn root(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FilesError> {
        let comps = file_components(path)?;
        let (last, dirs) = comps.split_last().expect("at least one component");
        let dir = self.walk(path, dirs)?;
        let shown = comps.join("/");
        let fd = openat(
            &dir,
            last,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )
        .map_err(|e| classify(&dir, last, &shown, path, e, false))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(io_err(&shown))?;
        if !meta.is_file() {
            return Err(FilesError::NotAFile {
                path: shown,
                what: what(meta.mode()).into(),
            });
        }
        if meta.len() > limit {
            return Err(FilesError::TooLarge {
                path: shown,
                size: meta.len(),
                limit,
            });
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        // One byte more than the limit, to notice a file that grew since the fstat.
        file.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(io_err(&shown))?;
        if data.len() as u64 > limit {
            return Err(FilesError::TooLarge {
                path: shown,
                size: data.len() as u64,
                limit,
            });
        }
        Ok(data)
    }

    fn write(&self, path: &str, data: &[u8], mode: WriteMode) -> Result<(), FilesError> {
        let comps = file_components(path)?;
        let (last, dirs) = comps.split_last().expect("at least one component");
        let dir = self.walk(path, dirs)?;
        let shown = comps.join("/");
        let flags = match mode {
            WriteMode::Create => libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            WriteMode::Overwrite => {
                libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK
            }
        };
        let fd = openat(&dir, last, flags, 0o644).map_err(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                match lstat_at(&dir, last) {
                    Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                        FilesError::Forbidden {
                            path: path.into(),
                            why: format!("{shown:?} is a symlink"),
                        }
                    }
                    _ => FilesError::Exists {
                        path: shown.clone(),
                    },
                }
            } else {
                classify(&dir, last, &shown, path, e, false)
            }
        })?;
        let mut file = File::from(fd);
        let meta = file.metadata().map_err(io_err(&shown))?;
        if !meta.is_file() {
            return Err(FilesError::NotAFile {
                path: shown,
                what: what(meta.mode()).into(),
            });
        }
        crate::launcher::clear_nonblock(file.as_raw_fd());
        file.set_len(0).map_err(io_err(&shown))?;
        file.write_all(data).map_err(io_err(&shown))?;
        Ok(())
    }

    fn list(&self, path: &str) -> Result<Listing, FilesError> {
        let comps = components(path)?;
        let dir = self.walk(path, &comps)?;
        let shown = if comps.is_empty() {
            ".".to_string()
        } else {
            comps.join("/")
        };
        // The magic link names the very directory opened above, whatever was renamed since.
        let rd = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(io_err(&shown))?;
        let mut entries = Vec::new();
        let mut truncated = 0u64;
        for e in rd {
            let e = e.map_err(io_err(&shown))?;
            if entries.len() >= MAX_LIST_ENTRIES {
                truncated += 1;
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(m) = e.metadata() else { continue };
            let ft = m.file_type();
            let kind = if ft.is_symlink() {
                FileKind::Symlink
            } else if ft.is_dir() {
                FileKind::Dir
            } else if ft.is_file() {
                FileKind::File
            } else {
                FileKind::Other
            };
            entries.push(FileEntry {
                name,
                kind,
                size: m.len(),
                mtime: m.mtime(),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Listing { entries, truncated })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (PathBuf, LocalWorkDir) {
        let d = std::env::temp_dir().join(format!("spindle-files-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&d).unwrap();
        (d.clone(), LocalWorkDir::new(d))
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(components("a/./b//c").unwrap(), ["a", "b", "c"]);
        assert!(components("").unwrap().is_empty());
        assert!(matches!(
            components("/etc/passwd"),
            Err(FilesError::Forbidden { .. })
        ));
        assert!(matches!(
            components("a/../../x"),
            Err(FilesError::Forbidden { .. })
        ));
        assert!(matches!(
            components("a\0b"),
            Err(FilesError::BadPath { .. })
        ));
        assert!(matches!(
            file_components("./"),
            Err(FilesError::BadPath { .. })
        ));
    }

    #[test]
    fn round_trip_and_refusals() {
        let (root, w) = scratch();
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        w.write("x.bin", &data, WriteMode::Create).unwrap();
        assert_eq!(w.read("x.bin", 1 << 20).unwrap(), data);
        assert!(matches!(
            w.write("x.bin", b"y", WriteMode::Create),
            Err(FilesError::Exists { .. })
        ));
        w.write("x.bin", b"short", WriteMode::Overwrite).unwrap();
        assert_eq!(w.read("x.bin", 10).unwrap(), b"short");
        assert!(matches!(
            w.read("x.bin", 4),
            Err(FilesError::TooLarge { size: 5, .. })
        ));
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("pw")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("inside")).unwrap();
        for bad in ["etc/passwd", "pw", "inside/f"] {
            assert!(
                matches!(w.read(bad, 1 << 20), Err(FilesError::Forbidden { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            w.write("pw", b"x", WriteMode::Overwrite),
            Err(FilesError::Forbidden { .. })
        ));
        assert!(matches!(
            w.write("pw", b"x", WriteMode::Create),
            Err(FilesError::Forbidden { .. })
        ));
        assert!(matches!(w.list("etc"), Err(FilesError::Forbidden { .. })));
        assert!(matches!(
            w.read("sub", 10),
            Err(FilesError::NotAFile { .. })
        ));
        assert!(matches!(
            w.read("nope", 10),
            Err(FilesError::NotFound { .. })
        ));
        assert!(matches!(
            w.list("x.bin"),
            Err(FilesError::NotADirectory { .. })
        ));
        let l = w.list("").unwrap();
        let names: Vec<(&str, FileKind)> = l
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("etc", FileKind::Symlink),
                ("inside", FileKind::Symlink),
                ("pw", FileKind::Symlink),
                ("sub", FileKind::Dir),
                ("x.bin", FileKind::File)
            ]
        );
        crate::launcher::mkfifo(&root.join("fifo")).unwrap();
        assert!(matches!(
            w.read("fifo", 10),
            Err(FilesError::NotAFile { .. })
        ));
        std::fs::remove_dir_all(root).unwrap();
    }
}
