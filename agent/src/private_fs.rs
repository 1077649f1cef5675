//! Owner-only files and directories: what the agent keeps on disk (its key, the jobs'
//! specs with secret values unmasked, their output, backup dumps) and the control
//! plane's data directory are created `0600` (files) in `0700` (directories), with the
//! mode set explicitly after creation, so no umask (not even `000`) widens them.
//!
//! Directories the program did not create are left as they are, except those it owns
//! by name (the agent's `jobs/` and each job's directory), which [`ensure_dir`] keeps
//! at `0700`. Files opened here are set to `0600` whether new or old.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every private directory.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every private file.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and any missing parent as private directories; directories that
/// exist already are left as they are.
pub fn create_dir(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `path` like [`create_dir`] and sets it to `0700` even when it existed: for
/// directories that belong to the program alone.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    create_dir(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

fn open(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.mode(FILE_MODE).open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Opens `path` for appending, creating it private.
pub fn open_append(path: &Path) -> io::Result<File> {
    open(path, OpenOptions::new().create(true).append(true))
}

/// Creates (or truncates) `path` for writing, private.
pub fn create(path: &Path) -> io::Result<File> {
    open(
        path,
        OpenOptions::new().create(true).write(true).truncate(true),
    )
}

/// Creates `path` as a new, empty private file, or makes an existing one private.
pub fn touch(path: &Path) -> io::Result<()> {
    open(path, OpenOptions::new().create(true).append(true)).map(|_| ())
}

/// Writes `contents` to `path` (created or truncated), private.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    create(path)?.write_all(contents.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    /// Whatever the umask, new directories are 0700 and files 0600; a file that was
    /// wider is narrowed when opened.
    #[test]
    fn modes_hold_under_any_umask() {
        let root = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this process's file creation mask; the test
        // restores it before returning.
        let old = unsafe { libc::umask(0) };
        let nested = root.path().join("a/b/c");
        create_dir(&nested).unwrap();
        write(&nested.join("secret.json"), b"{}").unwrap();
        let wide = root.path().join("wide");
        std::fs::write(&wide, b"x").unwrap();
        std::fs::set_permissions(&wide, Permissions::from_mode(0o666)).unwrap();
        open_append(&wide).unwrap();
        let existing = root.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&existing).unwrap();
        unsafe { libc::umask(old) };
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.path().join(dir)), 0o700, "{dir}");
        }
        assert_eq!(mode(&nested.join("secret.json")), 0o600);
        assert_eq!(mode(&wide), 0o600);
        assert_eq!(mode(&existing), 0o700);
    }
}
