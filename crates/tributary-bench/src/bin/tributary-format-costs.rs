//! What decoding costs per row in each format: the same readings (one
//! device, `--metrics` metrics at one time) written in every format the
//! transformer knows, each decoded through the route table's decoder for
//! `--seconds`, best of `--rounds`. Pure CPU, one core, no servers.
//!
//! `just bench-formats` (release build). Compare formats with each other,
//! not with the pipeline's end-to-end numbers.

use std::time::{Duration, Instant};

use clap::Parser;
use tributary_formats::{Decoder, Format, Input, LineOptions, MappedOptions, Transport};

#[derive(Debug, Parser)]
#[command(name = "tributary-format-costs")]
struct Args {
    /// Metrics per payload.
    #[arg(long, default_value_t = 10)]
    metrics: usize,
    /// Seconds per format and round.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// (name, decoder, payload) for each format, all the same readings.
fn payloads(metrics: usize) -> Vec<(&'static str, Decoder, Vec<u8>)> {
    let values: Vec<(String, f64)> = (0..metrics)
        .map(|i| (format!("metric{i}"), 20.0 + i as f64 * 1.25))
        .collect();
    let items = format!(
        r#"{{"_id":"594d186e51b3bc4eb0abafd9","timestamp":"2017-09-30T12:50:17.765Z","items":{{{}}}}}"#,
        values
            .iter()
            .map(|(n, v)| format!("\"{n}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let senml = format!(
        r#"[{}]"#,
        values
            .iter()
            .enumerate()
            .map(|(i, (n, v))| if i == 0 {
                format!(r#"{{"bn":"594d186e51b3bc4eb0abafd9:","bt":1506775817.765,"n":"{n}","v":{v}}}"#)
            } else {
                format!(r#"{{"n":"{n}","v":{v}}}"#)
            })
            .collect::<Vec<_>>()
            .join(",")
    );
    let senml_cbor = {
        let pack: Vec<ciborium::Value> = values
            .iter()
            .enumerate()
            .map(|(i, (n, v))| {
                let mut fields = vec![
                    (ciborium::Value::Integer(0.into()), ciborium::Value::Text(n.clone())),
                    (ciborium::Value::Integer(2.into()), ciborium::Value::Float(*v)),
                ];
                if i == 0 {
                    fields.push((
                        ciborium::Value::Integer((-2).into()),
                        ciborium::Value::Text("594d186e51b3bc4eb0abafd9:".into()),
                    ));
                    fields.push((
                        ciborium::Value::Integer((-3).into()),
                        ciborium::Value::Float(1_506_775_817.765),
                    ));
                }
                ciborium::Value::Map(fields)
            })
            .collect();
        let mut out = Vec::new();
        ciborium::into_writer(&ciborium::Value::Array(pack), &mut out).expect("encodes to memory");
        out
    };
    let lines = format!(
        "readings,host=594d186e51b3bc4eb0abafd9 {} 1506775817765000000\n",
        values
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mapped = format!(
        r#"{{"meta":{{"serial":"594d186e51b3bc4eb0abafd9","ts":"2017-09-30T12:50:17.765Z"}},"readings":[{}]}}"#,
        values
            .iter()
            .map(|(n, v)| format!(r#"{{"name":"{n}","value":{v}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mapped_options = MappedOptions {
        device: "/meta/serial".into(),
        time: Some("/meta/ts".into()),
        metrics: "/readings".into(),
        metric_name: Some("/name".into()),
        metric_value: Some("/value".into()),
        ..MappedOptions::default()
    };
    vec![
        ("items", Decoder::new(Format::Items), items.into_bytes()),
        ("senml-json", Decoder::new(Format::SenmlJson), senml.into_bytes()),
        ("senml-cbor", Decoder::new(Format::SenmlCbor), senml_cbor),
        (
            "line-protocol",
            Decoder::LineProtocol(LineOptions::default()),
            lines.into_bytes(),
        ),
        ("mapped-json", Decoder::MappedJson(mapped_options), mapped.into_bytes()),
    ]
}

#[expect(clippy::print_stdout, reason = "a benchmark prints its table")]
fn main() {
    let args = Args::parse();
    let formats = payloads(args.metrics);
    let budget = Duration::from_secs_f64(args.seconds);
    println!(
        "{:<14} {:>8} {:>12} {:>10} {:>9}",
        "format", "bytes", "ns/payload", "ns/row", "vs items"
    );
    let mut items_ns_per_row = None;
    for (name, decoder, payload) in &formats {
        let input = Input {
            transport: Transport::Http,
            source: "bench",
            topic: "",
            content_type: "",
            received_at_us: 1_700_000_000_000_000,
            precision: None,
            payload,
        };
        let rows = decoder.decode(&input).expect("the sample decodes").len();
        assert_eq!(rows, args.metrics, "{name}: every format carries the same readings");
        let mut best = f64::INFINITY;
        for _ in 0..args.rounds {
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed() < budget {
                for _ in 0..64 {
                    std::hint::black_box(decoder.decode(std::hint::black_box(&input)).expect("decodes"));
                }
                n += 64;
            }
            best = best.min(started.elapsed().as_nanos() as f64 / n as f64);
        }
        let per_row = best / rows as f64;
        let ratio = per_row / *items_ns_per_row.get_or_insert(per_row);
        println!(
            "{name:<14} {:>8} {best:>12.0} {per_row:>10.1} {ratio:>8.2}×",
            payload.len()
        );
    }
}
