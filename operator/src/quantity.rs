//! Kubernetes resource quantities (`500m`, `2`, `512Mi`, `1.5G`) as numbers, to compare a
//! branch's compute resources with the installation's maximum per branch.

/// The value of a quantity in base units (cores, bytes), or why it cannot be read.
pub fn parse(q: &str) -> Result<f64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity (e.g. 500m, 2, 512Mi, 4Gi)"))?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            return Err(format!(
                "{q:?} has an unknown suffix {suffix:?} (use m, k, M, G, T, Ki, Mi, Gi, Ti)"
            ))
        }
    };
    Ok(value * factor)
}

/// For a command-line flag: a quantity that parses, kept as written.
pub fn parse_flag(q: &str) -> Result<String, String> {
    parse(q).map(|_| q.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_usual_forms() {
        assert_eq!(parse("500m").unwrap(), 0.5);
        assert_eq!(parse("2").unwrap(), 2.0);
        assert_eq!(parse("1.5").unwrap(), 1.5);
        assert_eq!(parse("512Mi").unwrap(), 512.0 * 1024.0 * 1024.0);
        assert_eq!(parse("4Gi").unwrap(), 4.0 * 1024f64.powi(3));
        assert_eq!(parse("1G").unwrap(), 1e9);
        assert!(parse("4Gi").unwrap() > parse("4G").unwrap());
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for q in ["", "lots", "4GB", "-1", "1.2.3Gi"] {
            assert!(parse(q).is_err(), "{q:?} accepted");
        }
        assert!(parse("4GB").unwrap_err().contains("unknown suffix \"GB\""));
    }
}
