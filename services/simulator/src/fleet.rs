//! The fleet: a deterministic generator of payloads, pure and without I/O:
//! the "items" JSON of README.md's "Payloads", or the same readings as
//! SenML, line protocol or Sparkplug B.
//!
//! Every device has its own random stream derived from the seed and its
//! index, a fixed id, a fixed location near the fleet's site, and per metric
//! a base value. Each reading is
//!
//! ```text
//! base + drift + daily cycle + noise (+ an occasional spike)
//! ```
//!
//! where the drift is a slow mean-reverting random walk and the daily cycle
//! is a sine over the device's local solar day (from its longitude) of event
//! time. Now and then a metric is left out of a payload (a gap), as real
//! devices do. With [`Fleet::with_incidents`], scheduled incidents are
//! added on top: a device's pressure surges, or a device goes silent
//! (`incidents.rs`).
//!
//! The output depends only on the constructor's arguments: the same seed,
//! start time and interval give byte-identical payloads on every machine and
//! every build, so a benchmark or a test can regenerate what was sent.

use crate::config::PayloadFormat;
use crate::incidents::{self, Schedule};
use crate::rng::{Rng, mix};
use crate::sparkplug;
use crate::timestamp::{MILLIS_LEN, write_millis};

/// A metric is left out of a payload once in this many readings.
pub const GAP_ONE_IN: u64 = 200;
/// A reading is a spike once in this many readings.
pub const SPIKE_ONE_IN: u64 = 500;
/// Event time has millisecond resolution on the wire, so a device's payloads
/// are at least this far apart to keep its timestamps strictly increasing.
pub const MIN_INTERVAL_US: i64 = 1000;

/// Domain tags for deriving independent random streams from one seed.
const FLEET_STREAM: u64 = 0xF1EE7;
const DEVICE_STREAM: u64 = 0xDE71CE;

/// How a value is written into `items`, as the reference deployment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// A numeric string with four decimals: `"27.1245"`.
    String4,
    /// A JSON integer: `-107`.
    Integer,
    /// A JSON number with one decimal: `7.2`.
    Decimal1,
}

/// How one kind of sensor behaves.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Range from which each device draws its base value.
    base: (f64, f64),
    /// Amplitude of the daily cycle (each device scales it by 0.5–1.5).
    daily: f64,
    /// Phase of the daily cycle in days: the peak comes at local time
    /// `0.25 + phase` of the day.
    phase: f64,
    /// Standard deviation of the reading-to-reading noise.
    noise: f64,
    /// Standard deviation of one step of the drift's random walk.
    drift: f64,
    /// Physically possible range; readings are clamped into it.
    limits: (f64, f64),
    encoding: Encoding,
}

/// The metrics of the reference deployment (a well-head telemetry unit and
/// its radio), in the order a payload lists them.
const NAMED: [(&str, Profile); 10] = [
    // Fluid pressure, bar.
    (
        "APFluid",
        Profile {
            base: (15.0, 40.0),
            daily: 1.2,
            phase: 0.35,
            noise: 0.25,
            drift: 0.02,
            limits: (0.0, 250.0),
            encoding: Encoding::String4,
        },
    ),
    // Fluid temperature, °C.
    (
        "AvTFluid",
        Profile {
            base: (25.0, 70.0),
            daily: 4.0,
            phase: 0.4,
            noise: 0.15,
            drift: 0.02,
            limits: (-40.0, 150.0),
            encoding: Encoding::String4,
        },
    ),
    // Volumetric fluid flow, m³/d.
    (
        "AvQvFluid",
        Profile {
            base: (50.0, 400.0),
            daily: 8.0,
            phase: 0.1,
            noise: 2.5,
            drift: 0.4,
            limits: (0.0, 5000.0),
            encoding: Encoding::String4,
        },
    ),
    // Oil mass flow, t/d.
    (
        "AvQmOil",
        Profile {
            base: (20.0, 250.0),
            daily: 5.0,
            phase: 0.1,
            noise: 1.5,
            drift: 0.25,
            limits: (0.0, 5000.0),
            encoding: Encoding::String4,
        },
    ),
    // Gas flow at normal conditions, Nm³/d.
    (
        "AvQvnGas",
        Profile {
            base: (500.0, 8000.0),
            daily: 120.0,
            phase: 0.15,
            noise: 30.0,
            drift: 4.0,
            limits: (0.0, 100_000.0),
            encoding: Encoding::String4,
        },
    ),
    // Fluid density, g/cm³.
    (
        "Adfld",
        Profile {
            base: (0.80, 1.05),
            daily: 0.004,
            phase: 0.4,
            noise: 0.0015,
            drift: 0.0002,
            limits: (0.5, 1.5),
            encoding: Encoding::String4,
        },
    ),
    // Gas relative density.
    (
        "Adgas",
        Profile {
            base: (0.60, 0.95),
            daily: 0.003,
            phase: 0.4,
            noise: 0.0015,
            drift: 0.0002,
            limits: (0.3, 1.5),
            encoding: Encoding::String4,
        },
    ),
    // Water cut, %.
    (
        "AvWater",
        Profile {
            base: (5.0, 70.0),
            daily: 0.8,
            phase: 0.2,
            noise: 0.4,
            drift: 0.05,
            limits: (0.0, 100.0),
            encoding: Encoding::String4,
        },
    ),
    // Radio signal strength, dBm.
    (
        "rssi",
        Profile {
            base: (-115.0, -70.0),
            daily: 3.0,
            phase: 0.9,
            noise: 2.0,
            drift: 0.05,
            limits: (-130.0, -30.0),
            encoding: Encoding::Integer,
        },
    ),
    // Radio signal-to-noise ratio, dB.
    (
        "snr",
        Profile {
            base: (-5.0, 12.0),
            daily: 1.5,
            phase: 0.9,
            noise: 0.8,
            drift: 0.02,
            limits: (-20.0, 20.0),
            encoding: Encoding::Decimal1,
        },
    ),
];

/// Extra metrics past the named ones: `temp_1`, `temp_2`, …, ambient °C.
const EXTRA: Profile = Profile {
    base: (15.0, 35.0),
    daily: 5.0,
    phase: 0.375,
    noise: 0.3,
    drift: 0.02,
    limits: (-40.0, 85.0),
    encoding: Encoding::String4,
};

/// The name of metric `index` (0-based) in every payload.
pub fn metric_name(index: usize) -> String {
    match NAMED.get(index) {
        Some((name, _)) => (*name).to_owned(),
        None => format!("temp_{}", index - NAMED.len() + 1),
    }
}

fn profile(index: usize) -> &'static Profile {
    NAMED.get(index).map_or(&EXTRA, |(_, profile)| profile)
}

/// One payload, with what the run needs to account for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The device's id (`_id` in items JSON).
    pub device_id: String,
    /// The payload's bytes in the fleet's format.
    pub body: Vec<u8>,
    /// Rows the pipeline stores for it: readings written (fewer than the
    /// fleet's metrics when a gap left some out; never zero), and for a
    /// Sparkplug NBIRTH every metric, its `bdSeq` and `sparkplug/online`.
    pub metrics: u32,
    /// Its event time, microseconds since the epoch (written with
    /// millisecond precision).
    pub event_time_us: i64,
    /// The MQTT topic the format dictates (Sparkplug B); `None`:
    /// `{topic-prefix}/{device id}`.
    pub topic: Option<String>,
}

/// Per device, per metric state.
#[derive(Debug, Clone)]
struct Series {
    base: f64,
    daily: f64,
    phase: f64,
    drift: f64,
}

#[derive(Debug, Clone)]
struct Device {
    id: String,
    /// What every payload starts with before its time, which never
    /// changes: `{"_id":"…","context":"…","loc":[…,…],"timestamp":"` (items),
    /// `[{"bn":"…:","bt":` (SenML), `telemetry,host=… ` (line protocol);
    /// empty for Sparkplug B.
    prefix: Vec<u8>,
    /// Sparkplug B: the NBIRTH and NDATA topics.
    topics: Option<(String, String)>,
    /// Event time of the device's first payload.
    first_time_us: i64,
    /// Turns taken so far: payloads generated, and payloads a silence left out.
    sent: i64,
    /// Payloads generated so far (a Sparkplug node's first is its NBIRTH,
    /// and its sequence numbers count these).
    emitted: i64,
    rng: Rng,
    series: Vec<Series>,
}

/// The deterministic payload generator.
///
/// Generating a payload writes only what changes (the timestamp and the
/// values) after bytes encoded once per fleet or device, with no formatting
/// machinery: a benchmark's load generator spends its CPU here.
#[derive(Debug, Clone)]
pub struct Fleet {
    format: PayloadFormat,
    context: String,
    /// Per metric, the bytes before its value: `"name":` (items),
    /// `"n":"name","v":` (SenML), `name=` (line protocol), the alias field
    /// (Sparkplug B NDATA).
    keys: Vec<Vec<u8>>,
    /// Room for the longest payload: one allocation per payload.
    capacity: usize,
    devices: Vec<Device>,
    next: usize,
    interval_us: i64,
    /// This payload's readings (metric index, value), gaps left out.
    readings: Vec<(usize, f64)>,
    /// The seed, for the incident schedule.
    seed: u64,
    /// Scheduled incidents, when on.
    incidents: Option<Schedule>,
}

impl Fleet {
    /// A fleet of `devices` devices (at least 1) sending `metrics` metrics
    /// each (at least 1) as items JSON. Device `i`'s first event time is
    /// `start_time_us + i * interval_us / devices`, so the fleet's payloads
    /// are evenly spread in event time; each device's then advances by
    /// `interval_us` (at least [`MIN_INTERVAL_US`]) per round.
    pub fn new(devices: u32, metrics: u32, seed: u64, start_time_us: i64, interval_us: i64) -> Self {
        Self::with_format(
            devices,
            metrics,
            seed,
            start_time_us,
            interval_us,
            PayloadFormat::Items,
            "",
        )
    }

    /// Like [`Fleet::new`], writing `format`. The readings are the same in
    /// every format (a Sparkplug NBIRTH carries every metric, gap or not);
    /// `group` is the Sparkplug B group id, unused by other formats.
    pub fn with_format(
        devices: u32,
        metrics: u32,
        seed: u64,
        start_time_us: i64,
        interval_us: i64,
        format: PayloadFormat,
        group: &str,
    ) -> Self {
        let devices = devices.max(1);
        let metrics = metrics.max(1) as usize;
        let interval_us = interval_us.max(MIN_INTERVAL_US);
        let mut fleet_rng = Rng::new(mix(&[seed, FLEET_STREAM]));
        let context = ObjectIds::new(&mut fleet_rng).id(0);
        // Ids like MongoDB ObjectIds minted by one process: shared time and
        // random parts, then a counter, so they are distinct within a fleet.
        let ids = ObjectIds::new(&mut fleet_rng);
        let site = (fleet_rng.range(-170.0, 170.0), fleet_rng.range(-55.0, 65.0));
        let devices: Vec<Device> = (0..devices)
            .map(|index| {
                let mut rng = Rng::new(mix(&[seed, DEVICE_STREAM, u64::from(index)]));
                let lon = site.0 + rng.range(-0.5, 0.5);
                let lat = site.1 + rng.range(-0.5, 0.5);
                let series = (0..metrics)
                    .map(|m| {
                        let p = profile(m);
                        Series {
                            base: rng.range(p.base.0, p.base.1),
                            daily: p.daily * rng.range(0.5, 1.5),
                            // Local solar time: the device's longitude
                            // shifts its day against UTC.
                            phase: p.phase + rng.range(-0.05, 0.05) - lon / 360.0,
                            drift: 0.0,
                        }
                    })
                    .collect();
                let stagger = i64::from(index) * interval_us / i64::from(devices);
                let id = ids.id(index);
                let prefix = match format {
                    PayloadFormat::Items => {
                        format!(r#"{{"_id":"{id}","context":"{context}","loc":[{lon},{lat}],"timestamp":""#)
                    }
                    PayloadFormat::Senml => format!(r#"[{{"bn":"{id}:","bt":"#),
                    PayloadFormat::Lineproto => format!("telemetry,host={id} "),
                    PayloadFormat::Sparkplug => String::new(),
                }
                .into_bytes();
                let topics = (format == PayloadFormat::Sparkplug).then(|| {
                    (
                        format!("spBv1.0/{group}/NBIRTH/{id}"),
                        format!("spBv1.0/{group}/NDATA/{id}"),
                    )
                });
                Device {
                    id,
                    prefix,
                    topics,
                    first_time_us: start_time_us.saturating_add(stagger),
                    sent: 0,
                    emitted: 0,
                    rng,
                    series,
                }
            })
            .collect();
        let keys: Vec<Vec<u8>> = (0..metrics)
            .map(|m| match format {
                PayloadFormat::Items => format!("\"{}\":", metric_name(m)).into_bytes(),
                PayloadFormat::Senml => format!("\"n\":\"{}\",\"v\":", metric_name(m)).into_bytes(),
                PayloadFormat::Lineproto => format!("{}=", metric_name(m)).into_bytes(),
                PayloadFormat::Sparkplug => {
                    let mut key = Vec::new();
                    sparkplug::alias(&mut key, m as u64);
                    key
                }
            })
            .collect();
        let longest_prefix = devices.iter().map(|d| d.prefix.len()).max().unwrap_or(0);
        let longest_name = (0..metrics).map(|m| metric_name(m).len()).max().unwrap_or(0);
        // Per metric its key, value and punctuation; a Sparkplug NBIRTH also
        // names and types each (and `bdSeq`); the time in any form.
        let capacity = longest_prefix
            + MILLIS_LEN
            + ITEMS_OPEN.len()
            + keys
                .iter()
                .map(|k| k.len() + MAX_VALUE_LEN + 4 + longest_name + 16)
                .sum::<usize>()
            + 64;
        Self {
            format,
            context,
            keys,
            capacity,
            devices,
            next: 0,
            interval_us,
            readings: Vec::with_capacity(metrics),
            seed,
            incidents: None,
        }
    }

    /// The same fleet with scheduled incidents (`on`) or without: from 15 s
    /// after the first event time, every 60 s, one device's `APFluid` reads
    /// about 150 bar for 20 s; from 45 s, every 60 s, one device is silent
    /// for 25 s ([`crate::incidents`]). Call it before the first payload.
    #[must_use]
    pub fn with_incidents(mut self, on: bool) -> Self {
        self.incidents = on.then(|| Schedule::new(self.seed, self.devices.len(), self.start_time_us()));
        self
    }

    /// The fleet's incident number `k` (0 is the first), when it has
    /// incidents.
    pub fn incident(&self, k: u64) -> Option<incidents::Incident> {
        self.incidents.map(|schedule| schedule.incident(k))
    }

    /// The next payload in order (round-robin over devices; each device's
    /// event time advances by `interval_us` per round): (device id, bytes).
    pub fn next_payload(&mut self) -> (String, Vec<u8>) {
        let payload = self.next_message();
        (payload.device_id, payload.body)
    }

    /// Like [`Fleet::next_payload`], with the number of rows it makes, its
    /// event time and topic. Turns a silence leaves out are passed over:
    /// this is the next payload actually sent.
    pub fn next_message(&mut self) -> Payload {
        loop {
            if let Some(payload) = self.next_turn() {
                return payload;
            }
        }
    }

    /// The next device's turn (round-robin; each device's event time
    /// advances by `interval_us` per round): its payload, or `None` when a
    /// scheduled silence leaves it out. A sender paced per turn keeps every
    /// other device's event time on the clock through a silence.
    pub fn next_turn(&mut self) -> Option<Payload> {
        let index = self.next;
        self.next = (index + 1) % self.devices.len();
        let interval_us = self.interval_us;
        let device = &mut self.devices[index];
        let time_us = device
            .first_time_us
            .saturating_add(device.sent.saturating_mul(interval_us));
        device.sent += 1;
        let incident = self.incidents.and_then(|schedule| schedule.at(index, time_us));
        // A Sparkplug NBIRTH declares every metric: no gaps in it.
        let birth = device.emitted == 0 && self.format == PayloadFormat::Sparkplug;
        // Drawn even for a silent turn, so a silence changes no later reading.
        let surge = incident == Some(incidents::Kind::Surge);
        read(device, time_us, birth, surge, &mut self.readings);
        if incident == Some(incidents::Kind::Silence) {
            return None;
        }
        let device = &mut self.devices[index];
        let seq = device.emitted;
        device.emitted += 1;

        let mut body = Vec::with_capacity(self.capacity);
        let device = &self.devices[index];
        let readings = &self.readings;
        let mut metrics = readings.len() as u32;
        let mut topic = None;
        match self.format {
            PayloadFormat::Items => {
                body.extend_from_slice(&device.prefix);
                write_millis(&mut body, time_us);
                body.extend_from_slice(ITEMS_OPEN);
                for (n, &(m, value)) in readings.iter().enumerate() {
                    if n > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&self.keys[m]);
                    write_value(&mut body, value, profile(m).encoding);
                }
                body.extend_from_slice(b"}}");
            }
            PayloadFormat::Senml => {
                body.extend_from_slice(&device.prefix);
                write_seconds(&mut body, time_us);
                for (n, &(m, value)) in readings.iter().enumerate() {
                    body.extend_from_slice(if n == 0 { b"," } else { b",{" });
                    body.extend_from_slice(&self.keys[m]);
                    write_number(&mut body, value, profile(m).encoding);
                    body.push(b'}');
                }
                body.push(b']');
            }
            PayloadFormat::Lineproto => {
                body.extend_from_slice(&device.prefix);
                for (n, &(m, value)) in readings.iter().enumerate() {
                    if n > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&self.keys[m]);
                    let encoding = profile(m).encoding;
                    write_number(&mut body, value, encoding);
                    if encoding == Encoding::Integer {
                        body.push(b'i');
                    }
                }
                body.push(b' ');
                write_fixed(&mut body, time_us.div_euclid(1000), 0);
                body.push(b'\n');
            }
            PayloadFormat::Sparkplug => {
                let time_ms = time_us.div_euclid(1000).max(0) as u64;
                sparkplug::payload_time(&mut body, time_ms);
                for &(m, value) in readings {
                    let (number, datatype) = match profile(m).encoding {
                        Encoding::Integer => (sparkplug::Number::Int32(value.round() as i32), sparkplug::INT32),
                        encoding => (sparkplug::Number::Double(rounded(value, encoding)), sparkplug::DOUBLE),
                    };
                    if birth {
                        sparkplug::birth_metric(&mut body, &metric_name(m), m as u64, datatype, number);
                    } else {
                        sparkplug::data_metric(&mut body, &self.keys[m], number);
                    }
                }
                if birth {
                    sparkplug::birth_metric(
                        &mut body,
                        "bdSeq",
                        u64::MAX,
                        sparkplug::INT64,
                        sparkplug::Number::Int64(0),
                    );
                    // Every metric, its bdSeq and the node's `sparkplug/online`.
                    metrics += 2;
                }
                // Sequence numbers run 0 (the NBIRTH) to 255, then wrap.
                sparkplug::seq(&mut body, seq.rem_euclid(256) as u64);
                let (birth_topic, data_topic) = device.topics.as_ref().map_or(("", ""), |(b, d)| (b, d));
                topic = Some(if birth { birth_topic } else { data_topic }.to_owned());
            }
        }
        Some(Payload {
            device_id: device.id.clone(),
            body,
            metrics,
            event_time_us: time_us,
            topic,
        })
    }

    /// The fleet's `context`, the same in every payload.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The device ids, in the order the fleet cycles through them.
    pub fn device_ids(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|d| d.id.as_str())
    }

    /// Event time of the fleet's first payload.
    pub fn start_time_us(&self) -> i64 {
        self.devices[0].first_time_us
    }

    /// Each device's event time advances by this much per round.
    pub fn interval_us(&self) -> i64 {
        self.interval_us
    }
}

/// A device's readings at `time_us` into `out` (metric index, value), the
/// gaps left out unless `complete`; with `surge`, metric
/// [`incidents::SURGE_METRIC`] reads the surge's level and its noise.
fn read(device: &mut Device, time_us: i64, complete: bool, surge: bool, out: &mut Vec<(usize, f64)>) {
    out.clear();
    let day = time_us.rem_euclid(86_400_000_000) as f64 / 86_400_000_000.0;
    let last = device.series.len() - 1;
    for (m, series) in device.series.iter_mut().enumerate() {
        let p = profile(m);
        let rng = &mut device.rng;
        // Every random draw happens whether or not the reading is sent,
        // so a gap does not shift the values that follow.
        let gap = rng.one_in(GAP_ONE_IN);
        let noise = rng.gaussian();
        let step = rng.gaussian();
        let spike = rng.one_in(SPIKE_ONE_IN);
        let spike_sign = if rng.one_in(2) { 1.0 } else { -1.0 };
        let spike_size = rng.range(4.0, 8.0);

        series.drift = series.drift * 0.995 + p.drift * step;
        let mut value = series.base + series.drift + series.daily * sin_turns(day - series.phase) + p.noise * noise;
        if spike {
            value += spike_sign * spike_size * (series.daily + 3.0 * p.noise);
        }
        if surge && m == incidents::SURGE_METRIC {
            value = incidents::SURGE_LEVEL + p.noise * noise;
        }
        let value = value.clamp(p.limits.0, p.limits.1);
        // Never send an empty payload: keep the last reading if every
        // other one was left out.
        if gap && !complete && !(m == last && out.is_empty()) {
            continue;
        }
        out.push((m, value));
    }
}

/// What follows the timestamp.
const ITEMS_OPEN: &[u8] = b"\",\"items\":{";
/// Longest value [`write_value`] writes for a clamped reading (limits stay
/// within ±10^5): `"-100000.0000"` with its quotes.
const MAX_VALUE_LEN: usize = 14;

/// A reading as an integer number of units of its last written digit, and
/// how many decimals that digit is: `27.12449` → (271245, 4).
fn units(value: f64, encoding: Encoding) -> (i64, usize) {
    match encoding {
        Encoding::String4 => ((value * 1e4).round() as i64, 4),
        Encoding::Integer => (value.round() as i64, 0),
        Encoding::Decimal1 => {
            // Shortest form: a whole number has no decimals (`12`).
            let tenths = (value * 10.0).round() as i64;
            if tenths % 10 == 0 {
                (tenths / 10, 0)
            } else {
                (tenths, 1)
            }
        }
    }
}

/// The number the text [`write_number`] writes stands for, as parsing it
/// gives (units and a power of ten are both exact, and one division rounds
/// correctly).
fn rounded(value: f64, encoding: Encoding) -> f64 {
    let (units, decimals) = units(value, encoding);
    units as f64 / [1.0, 10.0, 100.0, 1000.0, 1e4][decimals]
}

/// Writes a reading as the reference devices do: `"27.1245"`, `-107`, `7.2`.
///
/// The value is rounded to an integer number of units of the last digit
/// and that integer's digits are written: the same text that formatting the
/// rounded float gives (`{:.4}` of `round(v·10⁴)/10⁴`, `{}` of
/// `round(v·10)/10`), since for readings within the profiles' limits the
/// float lies far closer to that decimal than half a unit of its last
/// digit, and never a negative zero. Formatting floats with a fixed
/// precision falls back to bignum arithmetic for some values and cost more
/// than everything else in a payload.
fn write_value(out: &mut Vec<u8>, value: f64, encoding: Encoding) {
    if encoding == Encoding::String4 {
        out.push(b'"');
        write_number(out, value, encoding);
        out.push(b'"');
    } else {
        write_number(out, value, encoding);
    }
}

/// [`write_value`]'s digits, never in quotes: the reading as a number.
fn write_number(out: &mut Vec<u8>, value: f64, encoding: Encoding) {
    let (units, decimals) = units(value, encoding);
    write_fixed(out, units, decimals);
}

/// Seconds since the epoch with three decimals (`1506775817.765`), as a
/// SenML base time.
fn write_seconds(out: &mut Vec<u8>, us: i64) {
    write_fixed(out, us.div_euclid(1000), 3);
}

/// Writes `units / 10^decimals` with exactly `decimals` digits after the
/// point (none and no point for 0), a `-` only below zero.
fn write_fixed(out: &mut Vec<u8>, units: i64, decimals: usize) {
    if units < 0 {
        out.push(b'-');
    }
    let mut n = units.unsigned_abs();
    let mut digits = [0u8; 24];
    let mut at = digits.len();
    let mut written = 0;
    // At least one digit before the point.
    while n > 0 || written <= decimals {
        if written == decimals && decimals > 0 {
            at -= 1;
            digits[at] = b'.';
        }
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        written += 1;
    }
    out.extend_from_slice(&digits[at..]);
}

/// Ids shaped like MongoDB ObjectIds from one process: a 4-byte creation
/// time (2012–2020), 5 process-random bytes, a 3-byte counter.
struct ObjectIds {
    seconds: u32,
    random: u64,
    counter: u32,
}

impl ObjectIds {
    fn new(rng: &mut Rng) -> Self {
        Self {
            seconds: 0x5000_0000 | (rng.next_u64() >> 36) as u32,
            random: rng.next_u64() >> 24,
            counter: (rng.next_u64() >> 40) as u32,
        }
    }

    /// The `n`th id: distinct for distinct `n` below 2^24.
    fn id(&self, n: u32) -> String {
        let counter = self.counter.wrapping_add(n) & 0xFF_FFFF;
        format!("{:08x}{:010x}{counter:06x}", self.seconds, self.random)
    }
}

/// sin(2π·turns), from a polynomial rather than `f64::sin` so that the
/// result, and so every payload, is the same on every platform.
fn sin_turns(turns: f64) -> f64 {
    let mut x = turns - turns.floor(); // [0, 1)
    let mut sign = 1.0;
    if x >= 0.5 {
        x -= 0.5;
        sign = -1.0;
    }
    if x > 0.25 {
        x = 0.5 - x;
    }
    // x in [0, 1/4]: the Taylor series to x^11 is within 6e-8 on [0, π/2].
    let a = x * std::f64::consts::TAU;
    let a2 = a * a;
    let series = a * (1.0 - a2 / 6.0 * (1.0 - a2 / 20.0 * (1.0 - a2 / 42.0 * (1.0 - a2 / 72.0 * (1.0 - a2 / 110.0)))));
    sign * series
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::timestamp::parse_rfc3339;

    const START: i64 = 1_700_000_000_000_000;

    fn fleet(seed: u64) -> Fleet {
        Fleet::new(10, 10, seed, START, 1_000_000)
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let (mut a, mut b, mut c) = (fleet(1), fleet(1), fleet(2));
        let mut differ = 0;
        for _ in 0..1000 {
            let (pa, pb, pc) = (a.next_payload(), b.next_payload(), c.next_payload());
            assert_eq!(pa, pb);
            if pa.1 != pc.1 {
                differ += 1;
            }
        }
        assert_eq!(differ, 1000);
        assert_ne!(fleet(1).context(), fleet(2).context());
    }

    #[test]
    fn output_is_pinned() {
        // The same arguments must give these bytes in every version: change
        // this only on purpose, knowing stored test expectations and
        // benchmark baselines made with the old output no longer match.
        let mut fleet = Fleet::new(2, 12, 1, 1_506_775_817_765_000, 1_000_000);
        let (device, body) = fleet.next_payload();
        assert_eq!(device, "52ebaad35bba6c140863e0f6");
        assert_eq!(
            String::from_utf8(body).expect("UTF-8"),
            concat!(
                r#"{"_id":"52ebaad35bba6c140863e0f6","context":"56f328d5dd8ae28a6811bd16","#,
                r#""loc":[-163.15891483013436,55.502804160634746],"timestamp":"2017-09-30T12:50:17.765Z","#,
                r#""items":{"APFluid":"32.6299","AvTFluid":"22.4738","AvQvFluid":"235.1364","#,
                r#""AvQmOil":"244.0954","AvQvnGas":"1265.0173","Adfld":"0.9002","Adgas":"0.8200","#,
                r#""AvWater":"30.2948","rssi":-94,"snr":-2.1,"temp_1":"24.7710","temp_2":"25.4777"}}"#
            )
        );
    }

    #[test]
    fn payloads_have_the_expected_shape() {
        let mut fleet = Fleet::new(7, 14, 3, START, 250_000);
        let ids: Vec<String> = fleet.device_ids().map(str::to_owned).collect();
        let context = fleet.context().to_owned();
        assert_eq!(ids.len(), 7);
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(id.len(), 24);
            assert!(
                id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{id}"
            );
            assert!(!ids[..n].contains(id), "duplicate id {id}");
        }
        let names: Vec<String> = (0..14).map(metric_name).collect();
        assert_eq!(names[0], "APFluid");
        assert_eq!(names[9], "snr");
        assert_eq!(names[10], "temp_1");
        assert_eq!(names[13], "temp_4");

        let mut locations = HashMap::new();
        for n in 0..700 {
            let payload = fleet.next_message();
            let json: serde_json::Value = serde_json::from_slice(&payload.body).expect("JSON");
            let object = json.as_object().expect("an object");
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 5, "{json}");
            assert_eq!(json["_id"], ids[n % 7].as_str());
            assert_eq!(payload.device_id, ids[n % 7]);
            assert_eq!(json["context"], context.as_str());
            let loc = json["loc"].as_array().expect("loc");
            let (lon, lat) = (loc[0].as_f64().expect("lon"), loc[1].as_f64().expect("lat"));
            assert!(
                (-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat),
                "{json}"
            );
            assert_eq!(
                *locations.entry(payload.device_id.clone()).or_insert((lon, lat)),
                (lon, lat)
            );
            let timestamp = json["timestamp"].as_str().expect("timestamp");
            assert_eq!(timestamp.len(), "2017-09-30T12:50:17.765Z".len(), "{timestamp}");
            assert_eq!(parse_rfc3339(timestamp), Ok(payload.event_time_us / 1000 * 1000));
            let items = json["items"].as_object().expect("items");
            assert_eq!(items.len() as u32, payload.metrics);
            for (name, value) in items {
                assert!(names.contains(name), "{name}");
                match name.as_str() {
                    "rssi" => assert!(value.as_i64().is_some_and(|v| (-130..=-30).contains(&v)), "{value}"),
                    "snr" => assert!(value.as_f64().is_some_and(|v| (-20.0..=20.0).contains(&v)), "{value}"),
                    _ => {
                        let text = value.as_str().expect("a numeric string");
                        let (_, decimals) = text.split_once('.').expect("decimals");
                        assert_eq!(decimals.len(), 4, "{text}");
                        assert!(text.parse::<f64>().is_ok_and(f64::is_finite), "{text}");
                    }
                }
            }
        }
        assert_eq!(locations.len(), 7);
    }

    #[test]
    fn each_device_timestamps_strictly_increase() {
        // The smallest interval, spread over many devices: millisecond
        // timestamps must still never repeat for a device.
        for (devices, interval) in [(10, 1), (3, 1500), (50, 1_000_000)] {
            let mut fleet = Fleet::new(devices, 3, 9, START, interval);
            let mut last: HashMap<String, String> = HashMap::new();
            for _ in 0..devices * 200 {
                let payload = fleet.next_message();
                let json: serde_json::Value = serde_json::from_slice(&payload.body).expect("JSON");
                let timestamp = json["timestamp"].as_str().expect("timestamp").to_owned();
                if let Some(previous) = last.insert(payload.device_id, timestamp.clone()) {
                    // Same-width RFC 3339 UTC strings order like the times.
                    assert!(previous < timestamp, "{previous} then {timestamp}");
                }
            }
        }
    }

    #[test]
    fn event_time_follows_the_schedule() {
        let mut fleet = Fleet::new(4, 1, 1, START, 2_000_000);
        let times: Vec<i64> = (0..8).map(|_| fleet.next_message().event_time_us).collect();
        let expected: Vec<i64> = (0..8).map(|k| START + k * 500_000).collect();
        assert_eq!(times, expected);
    }

    #[test]
    fn gaps_are_rare_and_counted() {
        let mut fleet = Fleet::new(20, 10, 5, START, 1_000_000);
        let (mut total, payloads) = (0u64, 20_000u64);
        for _ in 0..payloads {
            let payload = fleet.next_message();
            let json: serde_json::Value = serde_json::from_slice(&payload.body).expect("JSON");
            let items = json["items"].as_object().expect("items").len() as u32;
            assert_eq!(items, payload.metrics);
            assert!((1..=10).contains(&items));
            total += u64::from(items);
        }
        let gaps = payloads * 10 - total;
        // Expected 1 in 200 of 200,000 readings: 1,000.
        assert!((800..1200).contains(&gaps), "{gaps} gaps");
        // One metric per payload: a gap would empty `items`, so none happen.
        let mut single = Fleet::new(1, 1, 5, START, 1_000_000);
        assert!((0..2000).all(|_| single.next_message().metrics == 1));
    }

    #[test]
    fn incidents_surge_and_silence_on_schedule_and_change_nothing_else() {
        // 4 devices, one turn every 250 ms: each device reads every second.
        let plain = || Fleet::new(4, 10, 3, START, 1_000_000);
        let mut with = plain().with_incidents(true);
        let mut without = plain();
        assert_eq!(without.incident(0), None);
        let ids: Vec<String> = with.device_ids().map(str::to_owned).collect();
        let incidents: Vec<incidents::Incident> = (0..6).map(|k| with.incident(k).expect("on")).collect();
        let during = |device: &str, time_us: i64| {
            incidents
                .iter()
                .find(|i| ids[i.device] == device && (i.start_us..i.end_us).contains(&time_us))
                .map(|i| i.kind)
        };
        let (mut surged, mut silent) = (0, 0);
        // 130 s of event time: four incidents, the last silence ending with it.
        for _ in 0..4 * 130 {
            let expected = without.next_message();
            let json = |p: &Payload| -> serde_json::Value { serde_json::from_slice(&p.body).expect("JSON") };
            let Some(got) = with.next_turn() else {
                assert_eq!(
                    during(&expected.device_id, expected.event_time_us),
                    Some(incidents::Kind::Silence),
                    "a turn left out outside a silence"
                );
                silent += 1;
                continue;
            };
            assert_eq!(
                (&got.device_id, got.event_time_us),
                (&expected.device_id, expected.event_time_us)
            );
            let (mut got_json, mut expected_json) = (json(&got), json(&expected));
            let pressure = |j: &mut serde_json::Value| j["items"].as_object_mut().expect("items").remove("APFluid");
            let (got_pressure, expected_pressure) = (pressure(&mut got_json), pressure(&mut expected_json));
            // Everything but the surging reading is as without incidents.
            assert_eq!(got_json, expected_json);
            assert_eq!(got_pressure.is_some(), expected_pressure.is_some(), "the same gaps");
            let Some(text) = got_pressure.clone() else { continue };
            let value: f64 = text.as_str().expect("a numeric string").parse().expect("a number");
            match during(&got.device_id, got.event_time_us) {
                Some(incidents::Kind::Surge) => {
                    assert!((145.0..155.0).contains(&value), "{value}");
                    surged += 1;
                }
                kind => {
                    assert_eq!(kind, None, "a payload sent during a silence");
                    assert!(value < 100.0, "{value} outside a surge");
                    assert_eq!(got_pressure, expected_pressure);
                }
            }
        }
        // Two surges of 20 readings each, two silences of 25 (a gap may hide a surging reading).
        assert!((36..=40).contains(&surged), "{surged}");
        assert_eq!(silent, 50);
    }

    #[test]
    fn a_silence_keeps_sparkplug_births_and_sequence_numbers_whole() {
        use tributary_formats::sparkplug::decode_message;
        // One device, one turn a second: silences 45, 105, 165 and 225 s in,
        // then 285 s, after the 180th payload.
        let mut fleet =
            Fleet::with_format(1, 2, 1, START, 1_000_000, PayloadFormat::Sparkplug, "g").with_incidents(true);
        let mut seqs = Vec::new();
        while seqs.len() < 180 {
            let payload = fleet.next_message();
            let topic = payload.topic.expect("topic");
            assert_eq!(topic.contains("/NBIRTH/"), seqs.is_empty(), "{topic}");
            let message = decode_message(&topic, &payload.body).expect("decodes").expect("topic");
            seqs.push((payload.event_time_us, message.payload.seq.expect("seq")));
        }
        // Contiguous sequence numbers over the silence, which shows as a jump in event time.
        assert!(seqs.iter().enumerate().all(|(n, &(_, seq))| seq == n as u64 % 256));
        let jumps: Vec<i64> = seqs
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .filter(|&d| d > 1_000_000)
            .collect();
        assert_eq!(jumps, [26_000_000; 4], "four silences of 25 turns");
    }

    #[test]
    fn values_vary_like_sensors() {
        let mut fleet = Fleet::new(1, 10, 11, START, 60_000_000);
        let mut temperature = Vec::new();
        for _ in 0..1440 {
            let json: serde_json::Value = serde_json::from_slice(&fleet.next_message().body).expect("JSON");
            if let Some(v) = json["items"]["AvTFluid"].as_str() {
                temperature.push(v.parse::<f64>().expect("number"));
            }
        }
        let min = temperature.iter().copied().fold(f64::INFINITY, f64::min);
        let max = temperature.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A day of minutes: the daily cycle (±2–6 °C) shows; not a constant.
        assert!(max - min > 3.0, "{min}..{max}");
        assert!(max - min < 60.0, "{min}..{max}");
    }

    /// Decodes a payload with the transformer's own decoders: (device,
    /// metric, time, value) per row, sorted. Sparkplug NDATA resolves its
    /// aliases through `birth`.
    fn rows(
        format: PayloadFormat,
        payload: &Payload,
        birth: Option<&tributary_formats::sparkplug::Birth>,
    ) -> Vec<(String, String, i64, String)> {
        use tributary_formats::{Decoder, Format, Input, Transport, sparkplug};
        let topic = payload.topic.clone().unwrap_or_default();
        let input = Input {
            transport: Transport::Http,
            source: "sim",
            topic: &topic,
            content_type: format.content_type(),
            received_at_us: START,
            precision: Some(tributary_formats::Precision::Milliseconds),
            payload: &payload.body,
        };
        let points = match (format, birth) {
            (PayloadFormat::Sparkplug, Some(birth)) => {
                let message = sparkplug::decode_message(&topic, &payload.body)
                    .expect("decodes")
                    .expect("a Sparkplug topic");
                sparkplug::resolve(&message, &[birth], START).expect("resolves").points
            }
            _ => {
                let decoder = match format {
                    PayloadFormat::Items => Decoder::new(Format::Items),
                    PayloadFormat::Senml => Decoder::new(Format::SenmlJson),
                    PayloadFormat::Lineproto => Decoder::new(Format::LineProtocol),
                    PayloadFormat::Sparkplug => Decoder::new(Format::SparkplugB),
                };
                decoder.decode(&input).expect("decodes")
            }
        };
        let mut rows: Vec<_> = points
            .into_iter()
            .map(|p| {
                let metric = p.metric.strip_prefix("telemetry.").unwrap_or(&p.metric).to_owned();
                let device = p.device_id.rsplit('/').next().unwrap_or_default().to_owned();
                (device, metric, p.time_us, format!("{:?}", p.value))
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn every_format_carries_the_same_readings() {
        use tributary_formats::sparkplug::{Birth, decode_message};
        let formats = [
            PayloadFormat::Items,
            PayloadFormat::Senml,
            PayloadFormat::Lineproto,
            PayloadFormat::Sparkplug,
        ];
        let mut fleets: Vec<Fleet> = formats
            .iter()
            .map(|&f| Fleet::with_format(3, 12, 4, START, 1_000_000, f, "site"))
            .collect();
        let mut births: HashMap<String, Birth> = HashMap::new();
        let (mut compared, mut gapped) = (0, 0);
        for _ in 0..600 {
            let payloads: Vec<Payload> = fleets.iter_mut().map(Fleet::next_message).collect();
            let items = &payloads[0];
            let expected = rows(PayloadFormat::Items, items, None);
            assert_eq!(expected.len() as u32, items.metrics);
            gapped += u32::from(items.metrics < 12);
            for (format, payload) in formats.iter().zip(&payloads).skip(1) {
                assert_eq!(payload.device_id, items.device_id);
                assert_eq!(payload.event_time_us, items.event_time_us);
                let got = if *format == PayloadFormat::Sparkplug {
                    let topic = payload.topic.clone().expect("a Sparkplug topic");
                    if topic.contains("/NBIRTH/") {
                        assert!(topic.starts_with("spBv1.0/site/NBIRTH/"), "{topic}");
                        let message = decode_message(&topic, &payload.body).expect("decodes").expect("topic");
                        births.insert(payload.device_id.clone(), Birth::from_message(&message));
                        let all = rows(*format, payload, None);
                        assert_eq!(all.len() as u32, payload.metrics, "every metric, bdSeq and online");
                        // The birth never leaves a reading out; compare those the items payload has.
                        all.into_iter()
                            .filter(|row| expected.iter().any(|e| e.1 == row.1))
                            .collect()
                    } else {
                        assert!(topic.starts_with("spBv1.0/site/NDATA/"), "{topic}");
                        rows(*format, payload, births.get(&payload.device_id))
                    }
                } else {
                    rows(*format, payload, None)
                };
                assert_eq!(got, expected, "{format}");
                if *format != PayloadFormat::Sparkplug {
                    assert_eq!(payload.metrics, items.metrics, "{format}");
                }
                compared += 1;
            }
        }
        assert_eq!(compared, 1800);
        assert_eq!(births.len(), 3);
        // Some readings were left out on the way, so gaps were compared too.
        assert!(gapped > 0);
    }

    #[test]
    fn sparkplug_sequence_numbers_wrap_per_node() {
        use tributary_formats::sparkplug::decode_message;
        let mut fleet = Fleet::with_format(2, 1, 1, START, 1_000_000, PayloadFormat::Sparkplug, "g");
        for n in 0..600u64 {
            let payload = fleet.next_message();
            let topic = payload.topic.expect("topic");
            let message = decode_message(&topic, &payload.body).expect("decodes").expect("topic");
            assert_eq!(message.payload.seq, Some((n / 2) % 256), "{n}");
        }
    }

    #[test]
    fn sine_matches_the_library() {
        for i in -2000..2000 {
            let turns = f64::from(i) / 997.0;
            let expected = (turns * std::f64::consts::TAU).sin();
            assert!((sin_turns(turns) - expected).abs() < 1e-6, "{turns}");
        }
    }

    #[test]
    fn writes_values_like_the_devices() {
        let check = |value: f64, encoding: Encoding, text: &str| {
            let mut out = Vec::new();
            write_value(&mut out, value, encoding);
            assert_eq!(String::from_utf8_lossy(&out), text, "{value}");
        };
        check(27.124_49, Encoding::String4, "\"27.1245\"");
        check(35.49, Encoding::String4, "\"35.4900\"");
        check(-0.000_01, Encoding::String4, "\"0.0000\"");
        check(-106.6, Encoding::Integer, "-107");
        check(7.24, Encoding::Decimal1, "7.2");
        check(12.0, Encoding::Decimal1, "12");
        check(-0.01, Encoding::Decimal1, "0");
        check(-0.05, Encoding::Decimal1, "-0.1");
        check(-0.000_05, Encoding::String4, "\"-0.0001\"");
        check(99_999.999_96, Encoding::String4, "\"100000.0000\"");
        check(-130.0, Encoding::Integer, "-130");
        check(0.4, Encoding::Integer, "0");
    }

    /// The float formatting the writer replaces, as it was written.
    fn reference(value: f64, encoding: Encoding) -> String {
        match encoding {
            Encoding::String4 => format!("\"{:.4}\"", (value * 1e4).round() / 1e4 + 0.0),
            Encoding::Integer => format!("{}", value.round() as i64),
            Encoding::Decimal1 => format!("{}", (value * 10.0).round() / 10.0 + 0.0),
        }
    }

    #[test]
    fn writes_what_float_formatting_wrote() {
        // Every profile's whole range and a margin, densely near zero and at
        // the ends of each decimal (…x.xxxx5 boundaries included).
        let mut rng = Rng::new(99);
        let mut values: Vec<f64> = (0..400_000)
            .map(|i| {
                let scale = [1e-3, 1.0, 300.0, 1.2e5][i % 4];
                rng.range(-scale, scale)
            })
            .collect();
        for k in -200_000..200_000 {
            let k = f64::from(k);
            values.extend([k / 1e4, (k + 0.5) / 1e4, k / 10.0, (k + 0.5) / 10.0, k + 0.5]);
        }
        for value in values {
            for encoding in [Encoding::String4, Encoding::Integer, Encoding::Decimal1] {
                let mut out = Vec::new();
                write_value(&mut out, value, encoding);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    reference(value, encoding),
                    "{value} {encoding:?}"
                );
            }
        }
    }
}
