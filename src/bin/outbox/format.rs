//! Tables, durations, sizes and times, for people and from them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{Failure, Outcome};

/// Prints rows under a header, in columns as wide as their widest cell.
/// A section of a report: a blank line, then `items` as a table, one
/// `row` each; nothing at all without items.
pub(crate) fn section<T>(header: &[&str], items: &[T], row: impl Fn(&T) -> Vec<String>) {
    if items.is_empty() {
        return;
    }
    println!();
    table(header, items.iter().map(row).collect());
}

pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

pub(crate) fn age_of(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

/// A duration for a person: the two largest units.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A size for a person.
pub(crate) fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub(crate) fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}...", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// `90s`, `5m`, `12h`, `7d` (or a number of seconds).
pub(crate) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write 90s, 5m, 12h or 7d"))?;
    let unit_secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?} is not a duration: write 90s, 5m, 12h or 7d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(unit_secs)))
}

/// An RFC 3339 time, or an age (`1h`: an hour ago).
pub(crate) fn parse_time(s: &str) -> std::result::Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor an age like 1h"))?;
    ago(age).map_err(|Failure(e)| e)
}

/// The time `age` ago; an age beyond the calendar is an error.
pub(crate) fn ago(age: Duration) -> Outcome<DateTime<Utc>> {
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| Failure(format!("{} is too long ago", human(age))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        let t = parse_time("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05+00:00");
        let hour_ago = parse_time("1h").unwrap();
        let age = Utc::now() - hour_ago;
        assert!((3599..=3601).contains(&age.num_seconds()));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn durations_read_for_people() {
        assert_eq!(human(Duration::from_millis(20)), "20ms");
        assert_eq!(human(Duration::from_secs(75)), "1m 15s");
        assert_eq!(human(Duration::from_secs(2 * 3600 + 120)), "2h 2m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 3600)), "3d 1h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
