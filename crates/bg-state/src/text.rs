//! Text for people: durations as written on command lines, times in
//! messages, and store URLs with their credentials hidden. Not the model.

use crate::model::Millis;

/// Parses a duration written like `500ms`, `30s`, `2m`, `1h` or `1.5s`.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
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
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn bad(s: &str) -> String {
    format!(
        "{:?} is not a duration: write a number with a unit, like 500ms, 30s, 2m or 1h",
        s.chars().take(40).collect::<String>()
    )
}

/// `ms` as an RFC 3339 UTC time, e.g. `2026-11-27T15:04:05.123Z`.
#[must_use]
pub fn format_millis(ms: Millis) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// A URL as it may be shown in a message or a log: user name and password
/// masked, the query (which can carry `?pass=`) elided; a URL that does not
/// parse is not echoed if it may hold credentials.
#[must_use]
pub fn redact_url(url: &str) -> String {
    // Everything up to the last `@` may be credentials, whatever it holds:
    // a password with a raw `/`, `?` or `#` would otherwise be cut in two
    // and its first part shown as a host, or its second as a fragment.
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((_, after)) = rest.rsplit_once('@')
    {
        let after = after.split('#').next().unwrap_or_default();
        let (after, query) = match after.split_once('?') {
            Some((a, _)) => (a, "?…"),
            None => (after, ""),
        };
        return shorten(&format!("{scheme}://***@{after}{query}"));
    }
    match url::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() {
                let _ = u.set_username("***");
            }
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query().is_some() {
                u.set_query(Some("…"));
            }
            shorten(u.as_str())
        }
        // Several hosts (`redis-sentinel://a:26379,b:26379/m`) are no URL to
        // the url crate: hide the user part and the query by hand.
        Err(_) => match url.split_once("://") {
            Some((scheme, rest)) => {
                let rest = rest.split('#').next().unwrap_or_default();
                let (rest, query) = match rest.split_once('?') {
                    Some((r, _)) => (r, "?…"),
                    None => (rest, ""),
                };
                // A password may hold a `/`: everything up to the last `@` goes.
                let rest = match rest.rsplit_once('@') {
                    Some((_, after)) => format!("***@{after}"),
                    None => rest.to_owned(),
                };
                shorten(&format!("{scheme}://{rest}{query}"))
            }
            None if url.contains('@') || url.contains('?') => {
                "<URL with credentials, not shown>".to_owned()
            }
            None => shorten(url),
        },
    }
}

/// Shortens user input quoted back in an error message.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("500ms").unwrap(),
            std::time::Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("30s").unwrap(),
            std::time::Duration::from_secs(30)
        );
        assert_eq!(
            parse_duration("2m").unwrap(),
            std::time::Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration("1.5s").unwrap(),
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration(" 1h ").unwrap(),
            std::time::Duration::from_secs(3600)
        );
        for bad in ["", "5", "s", "-1s", "1d", "1.2.3s", "1e3s", "nan s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        for (url, secret) in [
            ("redis://:hunter2@host:6380/0", "hunter2"),
            ("redis://admin:hunter2@host/0", "hunter2"),
            ("redis://host/0?pass=hunter2", "hunter2"),
            ("rediss://[bad/0?pass=hunter2", "hunter2"),
            ("nope://user:hunter2@[x", "hunter2"),
            ("redis-sentinel://:hunter2@a:1,b:2/m", "hunter2"),
            ("redis-sentinel://:hun/ter2@a:1,b:2/m", "ter2"),
            ("rediss-cluster://a:1,b:2?ca=/hunter2.pem", "hunter2"),
            // A raw `/`, `?` or `#` in a password: neither half shows.
            ("redis://:hun/ter2@host/0", "hun"),
            ("redis://:hun?ter2@host/0", "hun"),
            ("redis://:hun?ter2@host/0", "ter2"),
            ("redis://:hun#ter2@host/0", "hun"),
            ("redis://:hun#ter2@host/0", "ter2"),
            ("redis://user:12#hunter2@host/0", "hunter2"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
        }
        assert_eq!(
            redact_url("file:///var/lib/bg.json"),
            "file:///var/lib/bg.json"
        );
        assert_eq!(
            redact_url("redis-sentinel://:hunter2@a:26379,b:26379/mymaster/1"),
            "redis-sentinel://***@a:26379,b:26379/mymaster/1"
        );
    }

    #[test]
    fn formats_times() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_millis(1_795_791_845_123), "2026-11-27T15:04:05.123Z");
        assert_eq!(format_millis(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
