//! Reading the small files a node is pointed at and re-reads while it runs
//! (the token file, TLS certificates and keys): regular files only, opened
//! without blocking (a named pipe in their place would otherwise stall the
//! thread that reads them), and bounded in size.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest such file read: far above any real token file or PEM chain.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The whole file, or why it cannot be used (naming the path).
pub fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("cannot read {}: {what}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!("{} bytes, more than the {MAX_FILE_BYTES} allowed", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take`: a file that grows while read stays within the bound.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!("more than the {MAX_FILE_BYTES} bytes allowed")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, b"a read sha256:00\n").unwrap();
        assert_eq!(read_small(&file).unwrap(), b"a read sha256:00\n");
        assert!(read_small(dir.path()).unwrap_err().contains("not a regular file"));
        assert!(read_small(&dir.path().join("missing")).unwrap_err().contains("missing"));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(read_small(&big).unwrap_err().contains("allowed"));
        // A named pipe with no writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_small(&fifo).unwrap_err().contains("not a regular file"));
    }
}
