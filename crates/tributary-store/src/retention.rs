//! Retention: old data leaves as whole monthly partitions, detached and
//! dropped, never by `DELETE`. The rows and each rollup level keep their own
//! period (for example rows 30 days, minutes a year, hours for ever).
//!
//! A partition goes only when its whole month ends before its table's
//! horizon (now minus the period), so the partition being written (the
//! current month, and any month whose data is still inside the period) is
//! never dropped. Writes keep behind the same horizon: the sink refuses
//! events older than the rows' horizon (they are dead-lettered as
//! `beyond_retention`), and a rollup level skips points older than its own.

use std::time::Duration;

use time::{Date, Month, OffsetDateTime, Time};

/// How long each table keeps its data; `None` keeps it for ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// The events table.
    pub rows: Option<Duration>,
    /// The per-minute rollups.
    pub minutes: Option<Duration>,
    /// The per-hour rollups.
    pub hours: Option<Duration>,
}

/// The shortest period a table may keep: an hour (anything shorter would
/// refuse the ordinary lateness of devices on a slow link).
pub const SHORTEST: Duration = Duration::from_secs(3600);

impl Retention {
    /// True when every table keeps its data for ever.
    pub fn is_forever(&self) -> bool {
        self.rows.is_none() && self.minutes.is_none() && self.hours.is_none()
    }

    /// Every problem with these periods, named by the flags that set them.
    pub fn problems(&self) -> Vec<String> {
        [
            ("--retention", self.rows),
            ("--retention-1m", self.minutes),
            ("--retention-1h", self.hours),
        ]
        .into_iter()
        .filter(|(_, keep)| keep.is_some_and(|keep| keep < SHORTEST))
        .map(|(flag, _)| format!("{flag} must be at least 1h (or \"forever\")"))
        .collect()
    }
}

/// The oldest event time a table keeping data for `keep` still takes at
/// `now_us` (µs since the Unix epoch); `None` for ever.
pub fn horizon_us(keep: Option<Duration>, now_us: i64) -> Option<i64> {
    keep.map(|keep| now_us.saturating_sub(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX)))
}

/// The end (exclusive) of the month a partition named `<parent>_pYYYYMM`
/// holds, µs since the Unix epoch; `None` for any other name (a partition
/// someone attached by hand is never touched).
pub fn partition_end_us(parent: &str, partition: &str) -> Option<i64> {
    let suffix = partition.strip_prefix(parent)?.strip_prefix("_p")?;
    if suffix.len() != 6 || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, month) = (suffix[..4].parse::<i32>().ok()?, suffix[4..].parse::<u8>().ok()?);
    let month = Month::try_from(month).ok()?;
    let (year, month) = if month == Month::December {
        (year + 1, Month::January)
    } else {
        (year, month.next())
    };
    let end = OffsetDateTime::new_utc(Date::from_calendar_date(year, month, 1).ok()?, Time::MIDNIGHT);
    Some((end.unix_timestamp_nanos() / 1000) as i64)
}

/// The partitions of `parent` (among `partitions`) whose whole month ends
/// at or before `horizon_us`, oldest first.
pub fn expired(parent: &str, partitions: &[String], horizon_us: i64) -> Vec<String> {
    let mut old: Vec<(i64, String)> = partitions
        .iter()
        .filter_map(|name| Some((partition_end_us(parent, name)?, name.clone())))
        .filter(|(end, _)| *end <= horizon_us)
        .collect();
    old.sort();
    old.into_iter().map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;
    /// 2026-12-06T18:00:00Z.
    const NOW: i64 = 1_796_580_000_000_000;

    #[test]
    fn partition_names_give_their_month_end() {
        // 2017-10-01T00:00:00Z, 2018-01-01T00:00:00Z.
        assert_eq!(
            partition_end_us("metric_events", "metric_events_p201709"),
            Some(1_506_816_000_000_000)
        );
        assert_eq!(partition_end_us("ev", "ev_p201712"), Some(1_514_764_800_000_000));
        for other in [
            "ev_p2017",
            "ev_p201713",
            "ev_p20170a",
            "ev_1m_p201709",
            "other_p201709",
            "ev_p2017090",
        ] {
            assert_eq!(partition_end_us("ev", other), None, "{other}");
        }
    }

    #[test]
    fn only_whole_months_before_the_horizon_expire() {
        let names: Vec<String> = [
            "ev_p202612",
            "ev_p202611",
            "ev_p202610",
            "ev_p201709",
            "ev_p202701",
            "ev_manual",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let thirty_days = horizon_us(Some(Duration::from_secs(30 * 86_400)), NOW).unwrap();
        // 2026-11-06: October ended before it, November did not.
        assert_eq!(expired("ev", &names, thirty_days), ["ev_p201709", "ev_p202610"]);
        // A day: November ended 5 days ago; December (being written) and
        // January (future) stay.
        assert_eq!(
            expired("ev", &names, NOW - DAY),
            ["ev_p201709", "ev_p202610", "ev_p202611"]
        );
        assert!(expired("ev", &names, NOW - 20_000 * DAY).is_empty());
        assert_eq!(horizon_us(None, NOW), None);
    }

    #[test]
    fn periods_shorter_than_an_hour_are_refused() {
        let retention = Retention {
            rows: Some(Duration::from_secs(60)),
            minutes: Some(SHORTEST),
            hours: None,
        };
        assert_eq!(
            retention.problems(),
            ["--retention must be at least 1h (or \"forever\")"]
        );
        assert!(Retention::default().is_forever() && Retention::default().problems().is_empty());
    }
}
