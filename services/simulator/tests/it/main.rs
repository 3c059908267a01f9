//! The simulator against real listeners: a small axum server standing in
//! for the producer's ingest API, a raw TCP server for the HTTP client's
//! connection handling, and a real mosquitto broker.

mod http;
mod http_wire;
mod mqtt;

use simulator::{Config, Fleet};

/// The fixed start time the tests regenerate payloads from.
pub const START: &str = "2024-05-01T00:00:00Z";

/// What a run with `config` sends, in order: (device id, body, metrics).
pub fn expected(config: &Config, n: u64) -> Vec<(String, Vec<u8>, u32)> {
    let mut fleet: Fleet = config.fleet().expect("fleet");
    (0..n)
        .map(|_| {
            let p = fleet.next_message();
            (p.device_id, p.body, p.metrics)
        })
        .collect()
}
