//! The benchmark's printed report.

use std::fmt::Write;

use crate::run::{Phase, Report};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ratio(value: f64, limit: f64) -> String {
    if limit > 0.0 {
        format!("{:.0}%", 100.0 * value / limit)
    } else {
        "n/a".into()
    }
}

/// Renders the report as text (what `just bench` prints).
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let a = &report.args;
    let l = &report.limits;
    let _ = writeln!(out, "Tributary benchmark");
    let _ = writeln!(
        out,
        "machine: {} cores, {:.1} GiB; everything (servers, services, simulator) on this machine",
        report.cores, report.memory_gib
    );
    let _ = writeln!(
        out,
        "load: {} devices, {} metrics per payload, {} rate {} payloads/s{}\n",
        a.devices,
        a.metrics,
        if a.find_max { "starting" } else { "offered" },
        a.rate,
        if a.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(out, "machine limits, measured in this run with the same message sizes:");
    let _ = writeln!(
        out,
        "  JetStream publish (acks pipelined)   {:>10.0} msgs/s",
        l.js_publish_per_s
    );
    let _ = writeln!(
        out,
        "  JetStream pull consume + ack         {:>10.0} msgs/s",
        l.js_consume_per_s
    );
    let _ = writeln!(
        out,
        "  COPY binary (no key)                 {:>10.0} rows/s",
        l.copy_rows_per_s
    );
    let _ = writeln!(
        out,
        "  MQTT QoS 1 round trip                {:>10.0} msgs/s\n",
        l.mqtt_qos1_per_s
    );
    for phase in &report.phases {
        render_phase(&mut out, report, phase);
    }
    for (transport, best) in &report.max_sustained {
        match best {
            Some((rate, committed)) => {
                let _ = writeln!(
                    out,
                    "highest sustained rate over {transport}: {rate:.0} payloads/s offered, {committed:.0} metric rows/s \
                     committed (steps of {:.0} s: a longer run at that rate is the real test)",
                    report.phases.first().map_or(0.0, |p| p.load.as_secs_f64())
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "highest sustained rate over {transport}: below the starting rate {}",
                    a.rate
                );
            }
        }
    }
    out
}

fn render_phase(out: &mut String, report: &Report, p: &Phase) {
    let metrics = f64::from(report.args.metrics);
    let l = &report.limits;
    let _ = writeln!(
        out,
        "── {} at {:.0} payloads/s for {:.0} s ──",
        p.transport,
        p.offered_per_s,
        p.load.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  accepted          {:>10.0} payloads/s ({} failed)",
        p.accepted_per_s, p.failed
    );
    let _ = writeln!(
        out,
        "  committed         {:>10.0} metric rows/s while loading; drained {:.1} s after the load stopped{}",
        p.committed_per_s,
        p.drain.as_secs_f64(),
        if p.sustained(report.args.metrics) {
            " (sustained)"
        } else {
            " (NOT sustained)"
        }
    );
    let f = &p.freshness;
    let _ = writeln!(
        out,
        "  freshness         p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms (accepted → committed)",
        f.p50_ms, f.p95_ms, f.p99_ms, f.max_ms
    );
    let _ = writeln!(out, "  loss check        {}", p.loss);
    let ingest_limit = if p.transport == "mqtt" {
        l.mqtt_qos1_per_s
    } else {
        l.js_publish_per_s
    };
    let _ = writeln!(
        out,
        "  vs limits         producer {} of {} · transformer {} of JetStream publish · sink {} of pull consume, {} of COPY",
        ratio(p.accepted_per_s, ingest_limit),
        if p.transport == "mqtt" {
            "MQTT QoS 1"
        } else {
            "JetStream publish"
        },
        ratio(p.committed_per_s, l.js_publish_per_s),
        ratio(p.committed_per_s, l.js_consume_per_s),
        ratio(p.committed_per_s, l.copy_rows_per_s),
    );
    let _ = writeln!(out, "  per process       CPU µs per committed row · peak RSS");
    let mut total = 0.0;
    for (name, cpu, rss) in &p.usage {
        total += cpu;
        let _ = writeln!(out, "    {name:<26} {cpu:>8.1} µs · {:>6.1} MiB", mib(*rss));
    }
    let _ = writeln!(
        out,
        "    {:<26} {total:>8.1} µs per row ({:.0} µs per payload)\n",
        "all processes",
        total * metrics
    );
}
