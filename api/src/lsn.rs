//! Postgres write-ahead-log positions (`XLogRecPtr`), written `X/Y` in hex as Postgres does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position in the write-ahead log, as Postgres's `pg_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: {reason} (expected two hexadecimal numbers of at most 8 digits separated by '/', like 0/16B3748)")]
pub struct LsnParseError {
    input: String,
    reason: &'static str,
}

impl Lsn {
    /// The invalid position 0/0, which Postgres uses for "none".
    pub const INVALID: Lsn = Lsn(0);

    /// The 16 MiB segment number this position falls in.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }

    /// Byte distance from `earlier` to `self` (0 when `earlier` is later).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| LsnParseError {
            input: s.to_string(),
            reason,
        };
        let (hi, lo) = s.split_once('/').ok_or_else(|| err("no '/'"))?;
        let part = |p: &str| -> Result<u64, LsnParseError> {
            if p.is_empty() || p.len() > 8 {
                return Err(err("each half must have 1 to 8 hex digits"));
            }
            if !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err("not hexadecimal"));
            }
            u64::from_str_radix(p, 16).map_err(|_| err("not hexadecimal"))
        };
        Ok(Lsn((part(hi)? << 32) | part(lo)?))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_notation() {
        for s in ["0/0", "0/16B3748", "1/0", "FFFFFFFF/FFFFFFFF", "A/BCDEF012"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("0/16b3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("1/2".parse::<Lsn>().unwrap(), Lsn((1 << 32) | 2));
    }

    #[test]
    fn rejects_garbage_with_a_helpful_message() {
        for s in [
            "",
            "0",
            "/",
            "0/",
            "/0",
            "0/ZZ",
            "-1",
            "0/-1",
            "123456789/0",
            "0/1/2",
            " 0/1",
            "0x1/2",
        ] {
            let e = s.parse::<Lsn>().unwrap_err().to_string();
            assert!(e.contains("like 0/16B3748"), "{s}: {e}");
        }
    }

    #[test]
    fn segment_math() {
        let seg = 16 * 1024 * 1024;
        assert_eq!("0/1000000".parse::<Lsn>().unwrap().segment(seg), 1);
        assert_eq!("1/0".parse::<Lsn>().unwrap().segment(seg), 256);
        assert_eq!(Lsn(10).bytes_since(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_since(Lsn(10)), 0);
    }
}
