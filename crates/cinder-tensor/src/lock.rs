//! One writer per output directory: an advisory lock on a file `.cinder.lock` inside
//! it, holding the writer's process id.
//!
//! The lock is the operating system's (`flock` through [`std::fs::File::try_lock`]), so it
//! dies with its process: a lock file left by a killed run holds no lock and is taken
//! over by the next writer, atomically, whatever it says. A second writer while the
//! first lives gets [`LockError::Held`] naming the directory and the holder's process id.
//! The lock is advisory: it keeps cinder's own commands apart, nothing else.
//!
//! [`DirLock::wait`] queues instead of failing: processes that share a directory on
//! purpose (the cells of one experiment fanned out over a scheduler) take turns at the
//! stages they share.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = ".cinder.lock";

#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by process {pid} (lock file {lock}): wait for it to finish or \
         choose another output directory"
    )]
    Held {
        dir: PathBuf,
        lock: PathBuf,
        /// The holder's process id as its lock file states it (`unknown` when unreadable).
        pid: String,
    },
    #[error("{path}: cannot lock the output directory: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive right to write in a directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    // Closing the file releases the lock.
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it for this process, or fails naming the
    /// process that holds it. Also proves that `dir` is writable.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        Self::lock(dir, false)
    }

    /// As [`DirLock::acquire`], but waits for the holder to release the lock instead
    /// of failing.
    pub fn wait(dir: &Path) -> Result<Self, LockError> {
        Self::lock(dir, true)
    }

    fn lock(dir: &Path, wait: bool) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| LockError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if wait {
            file.lock().map_err(io)?;
        } else {
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Err(held(dir, &path, &mut file)),
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The error for a lock held by another writer, naming it from its lock file.
fn held(dir: &Path, lock: &Path, file: &mut File) -> LockError {
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    let pid = pid.trim();
    LockError::Held {
        dir: dir.to_path_buf(),
        lock: lock.to_path_buf(),
        pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let lock = DirLock::acquire(&out).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        let err = DirLock::acquire(&out).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        assert!(message.contains("run"), "{message}");
        drop(lock);
        DirLock::acquire(&out).unwrap();
    }

    #[test]
    fn waiting_writer_gets_the_lock_when_the_holder_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_path_buf();
        let holder = DirLock::acquire(&out).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let lock = DirLock::wait(&out).unwrap();
            tx.send(()).unwrap();
            lock
        });
        let still_waiting = rx.recv_timeout(std::time::Duration::from_millis(200));
        assert!(still_waiting.is_err(), "the waiter got a held lock");
        drop(holder);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiter gets the lock once it is free");
        let lock = waiter.join().unwrap();
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(LockError::Held { .. })
        ));
        drop(lock);
    }

    #[test]
    fn stale_lock_file_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A lock file as a killed process leaves it: a pid, no lock held.
        std::fs::write(dir.path().join(LOCK_FILE), "4194303\n").unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = DirLock::acquire(&file.join("sub")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }));
        assert!(err.to_string().contains("file"), "{err}");
    }
}
