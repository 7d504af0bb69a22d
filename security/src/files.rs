//! Writing credentials (and the agent's other kept state) to disk: private keys and tokens
//! are created 0600 and replaced atomically and durably (write a temporary file beside,
//! fsync, rename, fsync the directory), so a crash leaves the old file or the new one, never
//! half of one.

use std::io::Write as _;
use std::path::Path;

use crate::SecurityError;

/// Writes `contents` to `path` atomically and durably; `secret` files are created 0600,
/// others 0644.
pub fn write_atomic(path: &Path, contents: &[u8], secret: bool) -> Result<(), SecurityError> {
    let io = |action: &'static str| {
        move |source| SecurityError::Io {
            path: path.display().to_string(),
            action,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(io("create"))?;
    #[cfg(unix)]
    if secret {
        // An existing temporary file keeps its mode through `open`; make sure.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io("restrict the permissions of"))?;
    }
    file.write_all(contents).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("replace"))?;
    // The rename survives a power loss only once the directory is synced too.
    #[cfg(unix)]
    {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io("sync the directory of"))?;
    }
    Ok(())
}

/// Reads `path` as text, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, SecurityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecurityError::Io {
            path: path.display().to_string(),
            action: "read",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("key");
        write_atomic(&path, b"one", true).expect("write");
        write_atomic(&path, b"two", true).expect("rewrite");
        assert_eq!(read_optional(&path).expect("read").as_deref(), Some("two"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(read_optional(&dir.path().join("none")).expect("read"), None);
    }
}
