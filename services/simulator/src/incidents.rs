//! Scheduled incidents: now and then one device's fluid pressure surges, or
//! one device goes silent, so that alert rules have something to find (the
//! dev rules in `deploy/dev-alert-rules.toml` watch for both).
//!
//! The schedule is pure and deterministic: incident `k` begins
//! [`FIRST_AFTER_US`] + `k` × [`EVERY_US`] after the fleet's first event
//! time; even ones are surges, odd ones silences; which device it strikes
//! comes from the seed and `k`. Time is event time, so with `--start-time`
//! a test knows exactly when each incident happens and to whom, and at the
//! usual pace (event time follows the clock) the first surge comes 15 s
//! into a run and the first silence 45 s in.
//!
//! The random readings of the fleet (drift, noise, the rare one-reading
//! spikes and gaps) are the same with or without incidents: a surge
//! replaces a reading after every random draw for it, and a silence skips
//! a payload after its readings were drawn.

use crate::rng::mix;

/// The first incident begins this long after the fleet's first event time.
pub const FIRST_AFTER_US: i64 = 15_000_000;
/// One incident begins every this long, alternately a surge and a silence.
pub const EVERY_US: i64 = 30_000_000;
/// How long a surge lasts.
pub const SURGE_US: i64 = 20_000_000;
/// How long a silence lasts.
pub const SILENCE_US: i64 = 25_000_000;
/// The metric a surge raises: metric 0, `APFluid` (fluid pressure, bar),
/// which every fleet sends.
pub const SURGE_METRIC: usize = 0;
/// What the surging metric reads (plus its usual noise), bar: far above
/// anything it reads otherwise (its bases are 15–40 bar, its random spikes
/// stay under 65), within its physical limit of 250.
pub const SURGE_LEVEL: f64 = 150.0;

/// Domain tag for the incident stream of a seed.
const INCIDENT_STREAM: u64 = 0x1AC1_DE47;

/// What happens in an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Metric [`SURGE_METRIC`] of the device reads about [`SURGE_LEVEL`].
    Surge,
    /// The device sends nothing.
    Silence,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Surge => "surge",
            Self::Silence => "silence",
        })
    }
}

/// One incident: `kind` on device number `device` (in the fleet's order)
/// for event times in `[start_us, end_us)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incident {
    pub kind: Kind,
    pub device: usize,
    pub start_us: i64,
    pub end_us: i64,
}

/// The incidents of one fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    seed: u64,
    devices: usize,
    /// The fleet's first event time.
    origin_us: i64,
}

impl Schedule {
    /// The schedule of a fleet of `devices` devices (at least 1) from
    /// `seed`, whose first event time is `origin_us`.
    pub fn new(seed: u64, devices: usize, origin_us: i64) -> Self {
        Self {
            seed,
            devices: devices.max(1),
            origin_us,
        }
    }

    /// Incident number `k` (0 is the first).
    pub fn incident(&self, k: u64) -> Incident {
        let offset = i64::try_from(k)
            .unwrap_or(i64::MAX)
            .saturating_mul(EVERY_US)
            .saturating_add(FIRST_AFTER_US);
        let start_us = self.origin_us.saturating_add(offset);
        let (kind, length) = if k.is_multiple_of(2) {
            (Kind::Surge, SURGE_US)
        } else {
            (Kind::Silence, SILENCE_US)
        };
        Incident {
            kind,
            device: (mix(&[self.seed, INCIDENT_STREAM, k]) % self.devices as u64) as usize,
            start_us,
            end_us: start_us.saturating_add(length),
        }
    }

    /// The incident under way at event time `time_us` on device number
    /// `device`, if any. Incidents never overlap: each ends before the next
    /// begins.
    pub fn at(&self, device: usize, time_us: i64) -> Option<Kind> {
        let since = time_us.checked_sub(self.origin_us)?.checked_sub(FIRST_AFTER_US)?;
        if since < 0 {
            return None;
        }
        let k = u64::try_from(since / EVERY_US).ok()?;
        let incident = self.incident(k);
        (incident.device == device && time_us < incident.end_us).then_some(incident.kind)
    }
}

const _: () = assert!(
    SURGE_US <= EVERY_US && SILENCE_US <= EVERY_US,
    "incidents must not overlap"
);

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: i64 = 1_714_521_600_000_000;

    #[test]
    fn incidents_alternate_on_a_fixed_beat() {
        let schedule = Schedule::new(1, 10, ORIGIN);
        let check = |k: u64, kind: Kind, start_s: i64, end_s: i64| {
            let incident = schedule.incident(k);
            assert_eq!(incident.kind, kind, "{k}");
            assert_eq!(incident.start_us, ORIGIN + start_s * 1_000_000, "{k}");
            assert_eq!(incident.end_us, ORIGIN + end_s * 1_000_000, "{k}");
            assert!(incident.device < 10, "{k}");
        };
        check(0, Kind::Surge, 15, 35);
        check(1, Kind::Silence, 45, 70);
        check(2, Kind::Surge, 75, 95);
        check(3, Kind::Silence, 105, 130);
        check(100, Kind::Surge, 3015, 3035);
    }

    #[test]
    fn the_seed_picks_the_devices_the_same_way_every_time() {
        let devices = |seed: u64| -> Vec<usize> {
            let schedule = Schedule::new(seed, 10, ORIGIN);
            (0..40).map(|k| schedule.incident(k).device).collect()
        };
        assert_eq!(devices(1), devices(1));
        assert_ne!(devices(1), devices(2));
        // Pinned: change only on purpose (the dev runner's first alerts move).
        assert_eq!(&devices(1)[..4], &[4, 2, 3, 7]);
        assert_eq!(&devices(2)[..4], &[4, 1, 2, 6]);
        // Spread over the fleet, not stuck on a few devices.
        let mut hit = devices(3);
        hit.sort_unstable();
        hit.dedup();
        assert!(hit.len() >= 8, "{hit:?}");
        // One device: every incident is its.
        assert!((0..10).all(|k| Schedule::new(5, 1, ORIGIN).incident(k).device == 0));
    }

    #[test]
    fn at_finds_the_incident_under_way_and_nothing_else() {
        let schedule = Schedule::new(9, 4, ORIGIN);
        for k in 0..6 {
            let incident = schedule.incident(k);
            let other = (incident.device + 1) % 4;
            for (time_us, expected) in [
                (incident.start_us - 1, None),
                (incident.start_us, Some(incident.kind)),
                (incident.end_us - 1, Some(incident.kind)),
                (incident.end_us, None),
            ] {
                assert_eq!(schedule.at(incident.device, time_us), expected, "{k} at {time_us}");
                assert_eq!(schedule.at(other, time_us), None, "{k} at {time_us}, another device");
            }
        }
        assert_eq!(schedule.at(0, i64::MIN), None);
        assert_eq!(schedule.at(0, ORIGIN - 1), None);
        // The ends of time: no overflow.
        let _ = schedule.at(0, i64::MAX);
    }
}
