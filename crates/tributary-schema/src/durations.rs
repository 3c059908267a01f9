//! The one way durations are written, in flags and in files: a whole
//! number and a unit (`250ms`, `5s`, `2m`, `1h`, `7d`).

use std::time::Duration;

/// Parses `250ms`, `5s`, `2m`, `1h`, `7d` (a whole number and a unit).
///
/// # Errors
///
/// What is wrong with it, in words.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a duration: expected a whole number and a unit, e.g. 250ms, 30s, 5m, 1h, 7d")
    })?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => return Err(format!("{text:?} is not a duration: units are ms, s, m, h, d")),
    };
    d.ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5").unwrap_err().contains("units are"));
        assert!(parse_duration("1.5s").unwrap_err().contains("units are"));
        assert!(parse_duration("s").unwrap_err().contains("whole number"));
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
