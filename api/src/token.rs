//! The storage API's bearer token: what the node requires and every caller sends.
//!
//! One type for both sides, so the rules (length, alphabet, file mode) and the
//! constant-time comparison live in one place.

use std::fmt;
use std::path::Path;

/// Shortest token accepted: 32 characters of a 62-letter alphabet are 190 bits.
pub const MIN_TOKEN_LEN: usize = 32;

/// A bearer token of the storage API. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Shorter than [`MIN_TOKEN_LEN`].
    #[error("{source_name}: the token has {len} characters; use at least {MIN_TOKEN_LEN} (e.g. `head -c 32 /dev/urandom | base64`)")]
    TooShort { source_name: String, len: usize },
    /// A character that cannot travel in an HTTP header unchanged.
    #[error("{source_name}: the token may only hold printable ASCII without spaces (letters, digits, punctuation)")]
    BadCharacter { source_name: String },
    /// The token file can be read by others than its owner.
    #[error("token file {path} has mode {mode:04o}, readable by its group or others; make it readable by its owner only (chmod 600 {path})")]
    Exposed { path: String, mode: u32 },
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The system's random source failed.
    #[error("cannot generate a token: {0}")]
    Random(String),
}

impl ApiToken {
    /// A token from its text; `source_name` (a flag, a variable, a file) names it in errors.
    pub fn new(value: &str, source_name: &str) -> Result<ApiToken, TokenError> {
        if value.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort {
                source_name: source_name.into(),
                len: value.chars().count(),
            });
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacter {
                source_name: source_name.into(),
            });
        }
        Ok(ApiToken(value.to_string()))
    }

    /// Reads a token file: its content without the trailing newline. The file must not be
    /// readable by its group or others (mode `0600` or `0400`).
    pub fn from_file(path: &Path) -> Result<ApiToken, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let read_err = |source| TokenError::Read {
            path: shown.clone(),
            source,
        };
        // Follows symlinks: a Secret volume's file is a link to the real one.
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        ApiToken::new(text.trim_end_matches(['\n', '\r']), &shown)
    }

    /// A fresh random token: 43 characters of `[A-Za-z0-9]`-like base64url, 256 bits.
    pub fn generate() -> Result<ApiToken, TokenError> {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut buf = [0u8; 43];
        getrandom::getrandom(&mut buf).map_err(|e| TokenError::Random(e.to_string()))?;
        // 64 letters: every byte maps to one with equal probability (6 bits each).
        let s: String = buf
            .iter()
            .map(|b| ALPHABET[(*b & 63) as usize] as char)
            .collect();
        Ok(ApiToken(s))
    }

    /// The token's text, to write into a file or a header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that depends only on the lengths.
    ///
    /// A length mismatch returns early: it tells an attacker the length, which every
    /// caller of the project's own generators already knows, and nothing about the bytes.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if expected.len() != presented.len() {
            return false;
        }
        let diff = expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // Keeps the optimizer from turning the fold into an early-exit comparison.
        std::hint::black_box(diff) == 0
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    pub fn matches_header(&self, header: Option<&[u8]>) -> bool {
        let Some(value) = header else { return false };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => self.matches(&value[7..]),
            _ => false,
        }
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const T: &str = "0123456789abcdefghijklmnopqrstuvwxyz";

    #[test]
    fn compares_whole_tokens_only() {
        let t = ApiToken::new(T, "test").unwrap();
        assert!(t.matches(T.as_bytes()));
        assert!(!t.matches(&T.as_bytes()[..T.len() - 1]));
        let mut last = T.as_bytes().to_vec();
        *last.last_mut().unwrap() ^= 1;
        assert!(!t.matches(&last));
        assert!(!t.matches(b""));
        assert!(t.matches_header(Some(format!("Bearer {T}").as_bytes())));
        assert!(t.matches_header(Some(format!("bearer {T}").as_bytes())));
        assert!(!t.matches_header(Some(format!("Basic {T}").as_bytes())));
        assert!(!t.matches_header(Some(T.as_bytes())));
        assert!(!t.matches_header(Some(b"Bearer")));
        assert!(!t.matches_header(None));
    }

    #[test]
    fn refuses_weak_tokens_and_hides_them() {
        let e = ApiToken::new("short", "RAMIFY_STORAGE_TOKEN").unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
        assert!(ApiToken::new(&format!("{T} x"), "t").is_err());
        let t = ApiToken::new(T, "t").unwrap();
        assert!(!format!("{t:?}").contains(T));
        let g = ApiToken::generate().unwrap();
        assert_eq!(g.expose().len(), 43);
        assert_ne!(g, ApiToken::generate().unwrap());
        ApiToken::new(g.expose(), "generated").unwrap();
    }

    #[test]
    fn token_file_must_be_private() {
        let dir = std::env::temp_dir().join(format!("ramify-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, format!("{T}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = ApiToken::from_file(&path).unwrap_err();
        assert!(e.to_string().contains("mode 0640"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ApiToken::from_file(&path).unwrap().expose(), T);
        let e = ApiToken::from_file(&dir.join("missing")).unwrap_err();
        assert!(e.to_string().contains("cannot read token file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
