//! Names users choose (snapshots), checked in one place so every component agrees.

/// Checks a snapshot name: 1–63 characters of `a-z`, `0-9`, `-`, `_`, `.`, starting
/// with a letter or digit. Names become directory names, so nothing else is allowed.
pub fn validate_snapshot_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if name.is_empty() || name.len() > 63 || !ok_first || !ok_rest {
        return Err(format!(
            "invalid snapshot name {name:?}: use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names() {
        for ok in ["a", "before-migration", "agent.step_3", "0"] {
            validate_snapshot_name(ok).unwrap();
        }
        for bad in ["", "-a", "A", "a/b", "..", ".x", "a b", &"x".repeat(64)] {
            assert!(validate_snapshot_name(bad).is_err(), "{bad}");
        }
    }
}
