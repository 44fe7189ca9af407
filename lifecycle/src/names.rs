//! Branch names: DNS labels, so the same name works as a Kubernetes object name.

/// Checks a branch name: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter
/// and ending with a letter or digit (RFC 1123 label, as Kubernetes requires).
pub fn validate_branch_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid branch name {name:?}: use 1-63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit (like dev or pr-42)"
        ))
    }
}

pub use ramify_api::names::uri_database;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["main", "dev", "pr-42", "a", "x1", &"a".repeat(63)] {
            validate_branch_name(ok).unwrap();
        }
        for bad in [
            "",
            "Dev",
            "-dev",
            "dev-",
            "1dev",
            "dev_1",
            "dev.1",
            "dév",
            &"a".repeat(64),
        ] {
            let e = validate_branch_name(bad).unwrap_err();
            assert!(e.contains("like dev or pr-42"), "{bad}: {e}");
        }
    }
}
