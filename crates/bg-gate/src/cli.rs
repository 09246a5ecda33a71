//! Helpers for command lines built on the gate.

use std::time::Duration;

/// Parses a duration written like `500ms`, `30s`, `2m`, `1h` or `1.5s`.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad(s))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad(s)),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad(s));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn bad(s: &str) -> String {
    format!(
        "{:?} is not a duration: write a number with a unit, like 500ms, 30s, 2m or 1h",
        s.chars().take(40).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration(" 1h ").unwrap(), Duration::from_secs(3600));
        for bad in ["", "5", "s", "-1s", "1d", "1.2.3s", "1e3s", "nan s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
