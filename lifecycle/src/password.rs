//! Fresh random passwords for branch roles.

/// 32 characters from a 62-letter alphabet (~190 bits), from the OS's CSPRNG.
pub fn generate() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut buf = [0u8; 64];
        getrandom::getrandom(&mut buf)?;
        // Rejection sampling keeps every letter equally likely.
        for b in buf {
            if (b as usize) < ALPHABET.len() * 4 && out.len() < 32 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_long_random_and_distinct() {
        let a = super::generate().unwrap();
        let b = super::generate().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
