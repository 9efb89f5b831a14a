//! Reading the files a config names — the config itself, includes, list files, certificates,
//! the ban file — so that none of them can block or exhaust the daemon.
//!
//! A path may name anything: a FIFO (whose `open` blocks until a writer appears, and whose data
//! never ends), a device (`/dev/zero` is endless, a tape blocks), a directory, a socket, or a
//! sparse 10 GB file. Only regular files are read, and at most [`MAX_FILE_BYTES`] of them. The
//! type is checked with `stat` before the file is opened (so opening never waits on a FIFO or
//! touches a device) and again on the opened file, which must be the one just checked. A whole
//! config load runs on a thread of its own with a deadline ([`off_loop`], [`with_deadline`]),
//! so even a read stuck in the kernel (a dead network mount) never holds up the control loop,
//! SIGTERM or `stanzawall check`.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

/// Largest file the config may name (list files are the big ones: 64 MiB is millions of
/// entries, and every entry is also held compiled in memory).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// How long loading a config (every file it names, certificates, compiling the policy) may
/// take before it is given up (a reload then keeps the running configuration).
pub const LOAD_DEADLINE: Duration = Duration::from_secs(30);

fn refuse(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// What kind of thing `meta` is, unless it is a regular file of an acceptable size.
fn check(meta: &Metadata) -> io::Result<()> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(kind) = kind {
        return Err(refuse(format!("is not a regular file ({kind})")));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(refuse(format!(
            "is {} bytes; a file the configuration names may have at most {} MiB",
            meta.len(),
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(())
}

/// The bytes of the regular file at `path`, at most [`MAX_FILE_BYTES`] of them.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let before = std::fs::metadata(path)?;
    check(&before)?;
    let file = File::open(path)?;
    let meta = file.metadata()?;
    // Replaced between the stat and the open: check what was opened.
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        check(&meta)?;
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len().min(MAX_FILE_BYTES)).unwrap_or(0));
    // A file growing while it is read is still cut at the cap.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(refuse(format!("grew past {} MiB while being read", MAX_FILE_BYTES >> 20)));
    }
    Ok(buf)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not valid UTF-8"))
}

/// Why a job run off the control loop gave no result.
#[derive(Debug, thiserror::Error)]
pub enum OffLoopError {
    /// The deadline passed first (the thread is left to finish or hang on its own).
    #[error("took longer than {0:?} (a file on a hung mount?)")]
    TimedOut(Duration),
    /// No thread could be started.
    #[error("cannot start a thread: {0}")]
    Spawn(io::Error),
    /// The job panicked.
    #[error("failed unexpectedly")]
    Panicked,
}

/// Run `job` on a thread of its own and wait for it, at most `deadline`, without blocking the
/// async runtime.
///
/// A plain detached thread, not `spawn_blocking`: the runtime waits for its blocking tasks when
/// it shuts down, so a read stuck in the kernel would keep SIGTERM from ending the process.
pub async fn off_loop<T: Send + 'static>(
    deadline: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OffLoopError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stanzawall-load".to_owned())
        .spawn(move || {
            let _ = tx.send(job());
        })
        .map_err(OffLoopError::Spawn)?;
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(OffLoopError::Panicked),
        Err(_) => Err(OffLoopError::TimedOut(deadline)),
    }
}

/// [`off_loop`] for callers without a runtime (`check`, `nft`, `explain`): the process exits
/// after a timeout even if the thread is stuck.
pub fn with_deadline<T: Send + 'static>(
    deadline: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OffLoopError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("stanzawall-load".to_owned())
        .spawn(move || {
            let _ = tx.send(job());
        })
        .map_err(OffLoopError::Spawn)?;
    match rx.recv_timeout(deadline) {
        Ok(v) => Ok(v),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(OffLoopError::TimedOut(deadline)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(OffLoopError::Panicked),
    }
}

/// Replace `path` with `text` atomically: a temporary file in the same directory, synced, then
/// renamed over it (readers see the old file or the new one, never half of one). The new file
/// keeps the old one's permissions, or gets `mode` when there was none.
pub fn replace_atomically(path: &Path, text: &str, mode: Option<u32>) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| refuse(format!("{}: not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let old = std::fs::metadata(path).ok();
    let keep = old.as_ref().map(|m| m.permissions().mode() & 0o7777);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(keep.or(mode).unwrap_or(0o644))
        .open(&tmp)?;
    // Keep the file's group too: a 0640 root:stanzawall token file edited by root must stay
    // readable by the service. Best effort (only root or a member may set it), as before.
    if let Some(gid) = old.as_ref().map(std::os::unix::fs::MetadataExt::gid) {
        let _ = std::os::unix::fs::fchown(&f, None, Some(gid));
    }
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
