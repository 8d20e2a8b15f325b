//! [`LockFile`]: an exclusive advisory lock on a file that names its holder, so that two Herald
//! processes never use one database (or one data dir) at once.
//!
//! Two writers on one SQLite file would each hand out the same seqs (each reads `last_seq` in its
//! own transaction) with different contents, and each would settle the other's staged appends
//! (see `sqlite/staging.rs`). SQLite's own locks only serialize transactions; they cannot say
//! "this file belongs to that process". So the first process takes this lock, holds it as long
//! as it uses the file, and writes its pid in it for the error the second one gets.
//!
//! The lock is `flock(2)`-style (`File::try_lock`): the kernel drops it when the holder's file
//! descriptor closes, so also when the holder is killed (`kill -9`) or crashes, and a stale file
//! left behind locks nothing. The file itself is never deleted: deleting it while another
//! process has just opened it would let a third one lock a new file of the same name.
//! (Advisory locks on network file systems are only as good as the file system's; Herald's
//! data dir is meant to be local.)

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a refused process waits, at most, for the holder to write its pid, which it does
/// right after taking the lock. At the bound, the pid is reported as unknown.
const HOLDER_PID_WAIT: Duration = Duration::from_millis(200);

/// An exclusive lock, held until dropped. See the module docs.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    /// Holds the lock: closing it (on drop) releases it.
    _file: File,
}

/// Why a [`LockFile`] could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another lock in this one) holds it. `pid`: the holder's, if it
    /// could be read.
    #[error("{} is locked by another process", path.display())]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl LockFile {
    /// Takes the lock on `path` (creating the file if missing) without waiting, and writes this
    /// process's pid in it.
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io { path: path.to_owned(), source };
        // Not truncated on open: that would erase the holder's pid before we know we are not it.
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held { path: path.to_owned(), pid: holder_pid(&mut file) });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io)?;
        Ok(Self { path: path.to_owned(), _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid the holder wrote in `file`; it may not have yet (it writes right after locking):
/// waits a little, then gives up.
fn holder_pid(file: &mut File) -> Option<u32> {
    let deadline = std::time::Instant::now() + HOLDER_PID_WAIT;
    loop {
        let mut text = String::new();
        let read = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_string(&mut text));
        if read.is_ok()
            && let Ok(pid) = text.trim().parse()
        {
            return Some(pid);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = LockFile::acquire(&path).unwrap();
        match LockFile::acquire(&path) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = LockFile::acquire(&path).expect("free once dropped");
        assert_eq!(again.path(), path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
    }
}
