//! The last lines of command output and log files, for error messages.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How many lines of stderr or server log an error message carries.
pub const TAIL_LINES: usize = 20;

/// The last `n` lines of `text`, trimmed of surrounding blank lines.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// The last `n` lines of the file at `path` from byte `offset` on (at most the final
/// 64 KiB are read); a file that cannot be read yields a note saying so, because
/// this only ever decorates another error.
pub fn file_tail(path: &Path, offset: u64, n: usize) -> String {
    const MAX_READ: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = offset.max(len.saturating_sub(MAX_READ)).min(len);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => format!("({} has no new lines)", path.display()),
        Ok(text) => last_lines(&text, n),
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn file_tail_reads_from_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "old 1\nold 2\nnew 1\nnew 2\n").unwrap();
        assert_eq!(file_tail(&path, 12, 10), "new 1\nnew 2");
        assert!(file_tail(&dir.path().join("missing"), 0, 3).contains("could not read"));
    }
}
