//! Output files: the one way cnnc writes a file (plans, ONNX models and their external
//! data, checkpoints, results, generated scripts and crates).
//!
//! Contract of [`write_atomic_with`]:
//! - `-` and `/dev/stdout` name standard output, written as a stream (never replaced);
//! - otherwise the target must be a regular file or absent: a symbolic link, a directory,
//!   a FIFO, a device or a socket there is an error naming what it is, and nothing is
//!   written or replaced;
//! - the bytes go to a temporary file created exclusively (`O_CREAT | O_EXCL`, which
//!   refuses any existing name, a symbolic link included, without following it) beside
//!   the target under an unpredictable name, a new name on a collision; the temporary
//!   file is synced, then renamed over the target (`rename` replaces a name, it never
//!   follows a link there), so a reader sees the old file or the new one, never half of
//!   one; on any error the temporary file is removed.
//!
//! Error messages do not repeat the target's path (callers say "cannot write PATH: …"),
//! but name any other path involved (the temporary file, its folder).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How many unpredictable temporary names are tried before giving up.
const TEMP_TRIES: u32 = 64;

/// Writes `contents` to `path` atomically; see the module's contract.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(contents))
}

/// Whether `path` names standard output (`-` or `/dev/stdout`), which writers stream to.
pub fn is_stdout(path: &Path) -> bool {
    path == Path::new("-") || path == Path::new("/dev/stdout")
}

/// Writes what `fill` writes to `path` atomically (or to standard output, streamed, when
/// [`is_stdout`]); see the module's contract. A closed standard output (`| head`) is
/// not an error.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    if is_stdout(path) {
        let mut out = io::stdout().lock();
        return match fill(&mut out).and_then(|_| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        };
    }
    check_target(path)?;
    let (tmp, file) = create_temporary(path, &mut unpredictable)?;
    let result = (|| {
        let mut out = io::BufWriter::new(file);
        fill(&mut out).and_then(|_| out.flush()).map_err(|e| with_path(e, &tmp))?;
        let file = out.into_inner().map_err(|e| with_path(e.into_error(), &tmp))?;
        file.sync_all().map_err(|e| with_path(e, &tmp))?;
        drop(file);
        // The target may have changed since it was checked: `rename` still never follows
        // a link planted there (it replaces the link itself), and fails on a directory.
        std::fs::rename(&tmp, path).map_err(|e| io::Error::new(e.kind(), format!("cannot rename {} to it: {e}", tmp.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The target must be absent or a regular file (not followed if it is a link).
fn check_target(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    let (kind, what) = if t.is_symlink() {
        (io::ErrorKind::AlreadyExists, "it is a symbolic link; cnnc replaces regular files only and does not write through links")
    } else if t.is_dir() {
        (io::ErrorKind::IsADirectory, "it is a directory")
    } else {
        (io::ErrorKind::AlreadyExists, special_kind(&t))
    };
    Err(io::Error::new(kind, what.to_string()))
}

#[cfg(unix)]
fn special_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "it is a FIFO, not a regular file (use `-o -` to write to standard output)"
    } else if t.is_char_device() || t.is_block_device() {
        "it is a device, not a regular file (use `-o -` to write to standard output)"
    } else if t.is_socket() {
        "it is a socket, not a regular file"
    } else {
        "it is not a regular file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "it is not a regular file"
}

/// Creates a new file beside `path`, exclusively, under a name made of `path`'s and a
/// number from `numbers` (a new one after each name that is taken).
fn create_temporary(path: &Path, numbers: &mut dyn FnMut() -> u64) -> io::Result<(PathBuf, std::fs::File)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    // Short enough that a long target name still leaves a valid temporary name.
    let stem: String = name.chars().take(100).collect();
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let tmp = dir.join(format!(".{stem}.{:016x}.tmp", numbers()));
        // O_CREAT | O_EXCL: an existing name, a symbolic link or a FIFO included, is
        // refused without being followed or opened.
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create a temporary file in {}: {e}", dir.display()))),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(io::Error::new(e.kind(), format!("cannot create a temporary file in {} ({TEMP_TRIES} names taken): {e}", dir.display())))
}

/// 64 bits nobody can predict: the standard library's randomly keyed hasher over the
/// process id, the time and a counter.
fn unpredictable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish()
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Links planted at the temporary names tried first are neither followed nor
    /// replaced: the next name is taken, and the links' target keeps its bytes.
    #[cfg(unix)]
    #[test]
    fn links_at_temporary_names_are_skipped_not_followed() {
        let dir = scratch("tmp-links");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        let target = dir.join("plan.json");
        for n in [1u64, 2] {
            std::os::unix::fs::symlink(&victim, dir.join(format!(".plan.json.{n:016x}.tmp"))).unwrap();
        }
        let mut next = 0u64;
        let (tmp, mut file) = create_temporary(&target, &mut || {
            next += 1;
            next
        })
        .unwrap();
        assert_eq!(tmp, dir.join(format!(".plan.json.{:016x}.tmp", 3)));
        file.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
        for n in [1u64, 2] {
            assert!(std::fs::symlink_metadata(dir.join(format!(".plan.json.{n:016x}.tmp"))).unwrap().file_type().is_symlink());
        }
        // Every name taken: an error naming the folder, nothing followed.
        let err = create_temporary(&target, &mut || 1).unwrap_err();
        assert!(err.to_string().contains(&format!("cannot create a temporary file in {}", dir.display())), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_differ_between_calls() {
        let names: std::collections::HashSet<u64> = (0..1000).map(|_| unpredictable()).collect();
        assert_eq!(names.len(), 1000);
    }
}
