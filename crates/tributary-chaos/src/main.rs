//! `tributary-chaos` (`just chaos`): see the crate's documentation and
//! README.md, "Reliability: the chaos ledger". Prints one summary line on
//! stdout; exits 1 when anything was lost, doubled or unexpected (with the
//! seed that reproduces the run), 2 when the run itself could not be made.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = tributary_chaos::Args::parse();
    // Logs on stderr: stdout is for the summary line alone.
    let filter = std::env::var("TRIBUTARY_LOG").unwrap_or_else(|_| "info,sqlx=error,async_nats=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // The same seed for the plan and the schedule, and for the message below.
    let args = tributary_chaos::Args {
        seed: Some(args.seed()),
        ..args
    };
    match tributary_chaos::run(&args).await {
        Ok(outcome) => {
            report(&outcome);
            if outcome.verdict.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            complain(&format!("tributary-chaos (seed {}): {error:#}", args.seed()));
            ExitCode::from(2)
        }
    }
}

#[expect(clippy::print_stdout, reason = "the summary line is the program's output")]
fn report(outcome: &tributary_chaos::Outcome) {
    let verdict = &outcome.verdict;
    let faults = &outcome.faults;
    let mut lines = vec![format!("took {:.0} s", outcome.elapsed.as_secs_f64())];
    lines.push(format!("faults by kind: {:?}", faults.executed));
    lines.push(format!("failpoint exits by point: {:?}", faults.failpoint_exits));
    if faults.unscheduled_failpoint_exits > 0 {
        lines.push(format!("--failpoint exits: {}", faults.unscheduled_failpoint_exits));
    }
    for (what, list) in [
        (
            "armed failpoints never reached",
            faults.failpoint_misses.iter().map(|s| s.to_string()).collect(),
        ),
        ("unclean exits after SIGTERM", faults.unclean_sigterms.clone()),
        ("services that exited by themselves", faults.crashes.clone()),
        ("slow recoveries", faults.slow_recoveries.clone()),
        (
            "proxy faults that cut nothing (the service was connected to a NATS node directly)",
            faults.bypassed_proxies.clone(),
        ),
        ("cluster faults that found no leader", faults.leaderless.clone()),
    ] {
        let list: Vec<String> = list;
        if !list.is_empty() {
            lines.push(format!("{what}: {}", list.join("; ")));
        }
    }
    if faults.held_after_sigterm.values().any(|n| *n > 0) {
        lines.push(format!(
            "messages unacknowledged on the durable once a service exited after SIGTERM (redelivered): {:?}; \
             already unacknowledged just before those SIGTERMs (earlier faults' deliveries waiting for the ack wait): {:?}",
            faults.held_after_sigterm, faults.held_before_sigterm
        ));
    }
    lines.extend(stalls(&faults.stalls));
    if let Some(lists) = &outcome.lists {
        lines.push(format!(
            "consumer lists (the list API, which trimming no longer trusts) that left out a consumer: {} of {}, {} of them naming another{}",
            lists.gaps,
            lists.reads,
            lists.partial,
            match lists.examples.is_empty() {
                true => String::new(),
                false => format!(", e.g. {}", lists.examples.join("; ")),
            }
        ));
    }
    lines.extend(verdict.details.iter().cloned());
    if let Some(dir) = &outcome.kept {
        lines.push(format!("logs and data kept in {}", dir.display()));
    }
    if !verdict.passed() {
        lines.push(format!(
            "FAILED: reproduce with `just chaos --seed {} --events {}` and the same other flags",
            verdict.seed, verdict.events
        ));
    }
    complain(&lines.join("\n"));
    println!("{verdict}");
}

/// The stall lines: the longest, what was under way, and the longest per fault kind.
fn stalls(stalls: &tributary_chaos::stall::Summary) -> Vec<String> {
    use tributary_chaos::stall::seconds;
    let mut lines = vec![format!(
        "longest ingest stall: {} during {}",
        seconds(stalls.longest),
        match stalls.longest_during.is_empty() {
            true => "no fault".to_owned(),
            false => stalls.longest_during.join(", "),
        }
    )];
    if !stalls.by_kind.is_empty() {
        let by_kind: Vec<String> = stalls
            .by_kind
            .iter()
            .map(|(kind, longest)| format!("{kind} {}", seconds(*longest)))
            .collect();
        lines.push(format!("longest ingest stall by fault kind: {}", by_kind.join(", ")));
    }
    if stalls.outside_faults > 0 {
        lines.push(format!(
            "ingest stalls of {} or more outside any fault: {} (longest {})",
            seconds(tributary_chaos::stall::NOTED),
            stalls.outside_faults,
            seconds(stalls.longest_outside_faults)
        ));
    }
    lines
}

#[expect(
    clippy::print_stderr,
    reason = "details go to stderr, the summary line alone to stdout"
)]
fn complain(text: &str) {
    eprintln!("{text}");
}
