//! Durations ("250ms", "5s", "10m", "1h") and sizes ("64MB", or a plain number of bytes) as
//! written in the configuration file.

use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A duration written as a string with a unit: `ms`, `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// Parses "250ms", "5s", "10m", "1h", "2d"; "0" alone means zero.
    ///
    /// # Errors
    /// Returns a message naming what is wrong with the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("duration {text:?} needs a unit (ms, s, m, h, d)"))?;
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("duration {text:?} does not start with a number"))?;
        let secs = match unit.trim() {
            "us" => value / 1_000_000.0,
            "ms" => value / 1000.0,
            "s" | "sec" => value,
            "m" | "min" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86400.0,
            other => return Err(format!("duration {text:?} has unknown unit {other:?}")),
        };
        if !secs.is_finite() || secs < 0.0 || secs > 1.0e9 {
            return Err(format!("duration {text:?} is out of range"));
        }
        Ok(Self(Duration::from_secs_f64(secs)))
    }

    /// The duration, or `None` when it is zero (zero means "off" for timeouts).
    pub fn non_zero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(de::Error::custom)
    }
}

/// A size in bytes, written as an integer or a string such as "64MB", "1GB", "512kB".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses "64MB", "1GB", "512kB", "100B" or a plain number (case-insensitive units, powers of 1024).
    ///
    /// # Errors
    /// Returns a message naming what is wrong with the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: u64 = num
            .parse()
            .map_err(|_| format!("size {text:?} does not start with a number"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => return Err(format!("size {text:?} has unknown unit {other:?}")),
        };
        value
            .checked_mul(mult)
            .map(Self)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(n)),
            Raw::Text(s) => Self::parse(&s).map_err(de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 20 && n % (1 << 20) == 0 {
            write!(f, "{}MB", n >> 20)
        } else if n >= 1 << 10 && n % (1 << 10) == 0 {
            write!(f, "{}kB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(ConfigDuration::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(ConfigDuration::parse("5s").unwrap().0, Duration::from_secs(5));
        assert_eq!(ConfigDuration::parse("10m").unwrap().0, Duration::from_secs(600));
        assert_eq!(ConfigDuration::parse("1h").unwrap().0, Duration::from_secs(3600));
        assert_eq!(ConfigDuration::parse("0s").unwrap().0, Duration::ZERO);
        assert_eq!(ConfigDuration::parse("0").unwrap().0, Duration::ZERO);
        assert!(ConfigDuration::parse("5").is_err());
        assert!(ConfigDuration::parse("abc").is_err());
        assert!(ConfigDuration::parse("5 fortnights").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("64MB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("1GB").unwrap().0, 1 << 30);
        assert_eq!(ByteSize::parse("512kB").unwrap().0, 512 << 10);
        assert_eq!(ByteSize::parse("100").unwrap().0, 100);
        assert!(ByteSize::parse("99999999999999TB").is_err());
        assert!(ByteSize::parse("MB").is_err());
    }
}
