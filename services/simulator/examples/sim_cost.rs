//! What the simulator itself costs per payload: CPU time of this process
//! while `simulator::run` sends to a stand-in that answers at once.
//!
//! ```text
//! cargo run --release -p simulator --example sim_cost -- http  --count 30000 --rate 5000
//! cargo run --release -p simulator --example sim_cost -- http  --count 30000 --rate 5000 --batch 10
//! cargo run --release -p simulator --example sim_cost -- mqtt  --count 30000 --rate 5000
//! cargo run --release -p simulator --example sim_cost -- fleet --count 300000
//! ```
//!
//! `http` starts a copy of this program as a child (`serve`, a small axum
//! server answering every POST with 202 and a producer-sized JSON body), so
//! the server's CPU is not counted; `mqtt` starts mosquitto from the test
//! kit; `fleet` only generates payloads. The settings default to the
//! benchmark's (200 devices, 10 metrics, 256 in flight). CPU comes from
//! `/proc/self/stat` (user + system, all threads, 10 ms ticks), so runs of a
//! few seconds are needed; `--repeat` runs several times in one process
//! and prints each.
//!
//! For instruction counts, which do not depend on what else the machine is
//! doing, run it twice under callgrind at two counts and take the
//! difference per payload (the child server is not traced):
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \
//!   target/release/examples/sim_cost http --count 2000 --rate 300
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use simulator::{Config, Fleet};
use tributary_runtime::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// `http`, `mqtt`, `fleet`, or `serve` (the child's role).
    mode: String,
    #[arg(long, default_value_t = 30_000)]
    count: u64,
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    #[arg(long, default_value_t = 200)]
    devices: u32,
    #[arg(long, default_value_t = 10)]
    metrics: u32,
    #[arg(long, default_value_t = 1)]
    qos: u8,
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Run on a current-thread runtime instead of the benchmark's
    /// multi-thread one.
    #[arg(long)]
    current_thread: bool,
}

/// Process CPU time so far (user + system, every thread, exited ones too).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line (1-based);
    // `after` starts at field 3. Linux counts them in USER_HZ = 100 ticks.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

fn main() {
    let args = Args::parse();
    if args.mode == "serve" {
        return serve();
    }
    let runtime = if args.current_thread {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Runtime::new()
    }
    .expect("runtime");
    match args.mode.as_str() {
        "fleet" => {
            for _ in 0..args.repeat {
                fleet(&args);
            }
        }
        "http" => {
            let mut child = Command::new(std::env::current_exe().expect("own path"))
                .arg("serve")
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the server");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("the server's address");
            let url = format!("http://{}", line.trim());
            for _ in 0..args.repeat {
                let mut config = Config::http(&url);
                config.batch = args.batch;
                runtime.block_on(measure(&args, config));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        "mqtt" => {
            let broker = tributary_testkit::Mosquitto::start().expect("mosquitto");
            for _ in 0..args.repeat {
                let mut config = Config::mqtt(broker.host(), broker.port());
                config.qos = args.qos;
                runtime.block_on(measure(&args, config));
            }
        }
        other => panic!("unknown mode {other:?}: http, mqtt, fleet or serve"),
    }
}

async fn measure(args: &Args, mut config: Config) {
    config.devices = args.devices;
    config.metrics = args.metrics;
    config.rate = args.rate;
    config.count = Some(args.count);
    config.concurrency = args.concurrency;
    config.start_time = Some("2024-05-01T00:00:00Z".to_owned());
    // The steady path: a silence would leave payloads out of the measured ones.
    config.incidents = false;
    let transport = config.transport;
    let cpu = cpu_time();
    let started = Instant::now();
    let report = simulator::run(config, CancellationToken::new()).await.expect("run");
    let wall = started.elapsed();
    let cpu = cpu_time() - cpu;
    let per = cpu.as_secs_f64() * 1e6 / report.sent.max(1) as f64;
    print(&format!(
        "{transport} batch={} qos={} rate={} sent={} acked={} failed={} wall={:.2}s rate_achieved={:.0}/s cpu={:.2}s cpu_per_payload={per:.1}us",
        args.batch,
        args.qos,
        args.rate,
        report.sent,
        report.acknowledged,
        report.failed,
        wall.as_secs_f64(),
        report.sent as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
    ));
}

fn fleet(args: &Args) {
    let mut fleet = Fleet::new(args.devices, args.metrics, 1, 1_714_521_600_000_000, 40_000);
    let cpu = cpu_time();
    let mut bytes = 0;
    for _ in 0..args.count {
        bytes += fleet.next_message().body.len();
    }
    let cpu = cpu_time() - cpu;
    print(&format!(
        "fleet payloads={} bytes={bytes} cpu={:.2}s cpu_per_payload={:.2}us",
        args.count,
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / args.count as f64
    ));
}

#[expect(clippy::print_stdout, reason = "the measurement is the program's output")]
fn print(line: &str) {
    println!("{line}");
}

/// The child: answers every POST with 202 and a body like the producer's,
/// after printing its address on stdout.
fn serve() {
    use axum::http::StatusCode;
    use axum::routing::post;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        print(&listener.local_addr().expect("address").to_string());
        let body = r#"{"status":"accepted","id":"http:bench:0123456789abcdef0123456789abcdef","duplicate":false,"stream":"RAW","sequence":1}"#;
        let router = axum::Router::new().route(
            "/v1/ingest/{source}",
            post(move |_body: axum::body::Bytes| async move {
                (StatusCode::ACCEPTED, [("content-type", "application/json")], body)
            }),
        );
        axum::serve(listener, router).await.expect("serve");
    });
}
