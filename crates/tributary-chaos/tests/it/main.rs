//! The chaos ledger inside `just test`: a short run under every kind of
//! fault that must find nothing lost, doubled or unexpected (issue 13,
//! acceptance 5: under 3 minutes), and a pipeline broken on purpose that
//! it must catch (acceptance 2). `just chaos` is the long run.
//!
//! The services are the debug builds next to this test (`just test` builds
//! them first). `TRIBUTARY_CHAOS_SEED` replays another seed. The ledger on
//! a three-node NATS cluster is `just chaos-cluster`: its short run takes
//! about 100 s in debug builds, more than `just test` can spare.

use std::time::{Duration, Instant};

use anyhow::Result;
use tributary_chaos::faults::Kind;
use tributary_chaos::{Args, run};

/// The seed of both tests: fixed, so a failure reproduces; another with
/// `TRIBUTARY_CHAOS_SEED`.
fn seed() -> u64 {
    std::env::var("TRIBUTARY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13)
}

fn logs() {
    tributary_runtime::telemetry::init(&tributary_runtime::LogArgs {
        log_format: tributary_runtime::telemetry::LogFormat::Text,
        log_filter: std::env::var("TRIBUTARY_LOG").unwrap_or_else(|_| "tributary_chaos=info,warn,sqlx=error".into()),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_run_under_every_kind_of_fault_loses_and_doubles_nothing() -> Result<()> {
    logs();
    let started = Instant::now();
    let args = Args::new(seed(), 4_000, 2);
    let outcome = run(&args).await?;
    let verdict = &outcome.verdict;
    let faults = &outcome.faults;
    let details = format!(
        "{verdict}\nfaults: {:?}\nfailpoint exits: {:?}\nmisses: {:?}\ncrashes: {:?}\nunclean SIGTERMs: {:?}\n{}",
        faults.executed,
        faults.failpoint_exits,
        faults.failpoint_misses,
        faults.crashes,
        faults.unclean_sigterms,
        verdict.details.join("\n")
    );
    eprintln!("{details}\ntook {:?}", started.elapsed());
    assert!(verdict.passed(), "the ledger found a problem:\n{details}");
    assert_eq!(verdict.events, 4_000);
    for kind in Kind::scheduled(false) {
        assert_eq!(faults.executed.get(kind.name()), Some(&2), "{kind:?}\n{details}");
    }
    // The armed failpoints were reached: the processes died where they were meant to.
    assert_eq!(faults.failpoint_exits.values().sum::<u32>(), 2, "{details}");
    // Every payload was sent and answered; the bad ones all dead-lettered.
    assert!(
        verdict.ok + verdict.failed + verdict.unknown >= verdict.events,
        "{details}"
    );
    assert!(verdict.ok >= verdict.events * 9 / 10, "{details}");
    assert!(verdict.bad > 0 && verdict.dlq == verdict.bad, "{details}");
    assert!(
        verdict.redelivered > 0,
        "the faults caught nothing in flight:\n{details}"
    );
    assert!(
        outcome.elapsed < Duration::from_secs(180),
        "the short run must take under 3 minutes: {:?}",
        outcome.elapsed
    );
    Ok(())
}

/// A sink that acknowledges each batch before writing it (and then drops
/// it): the ledger must say events were lost, and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_acknowledges_before_it_commits_is_caught() -> Result<()> {
    logs();
    let mut args = Args::new(seed(), 600, 0);
    args.failpoint = Some("sink.ack_before_commit=on".into());
    let outcome = run(&args).await?;
    let verdict = &outcome.verdict;
    eprintln!("{verdict}\n{}", verdict.details.join("\n"));
    assert!(verdict.ok > 0, "{verdict}");
    assert!(verdict.lost > 0, "the ledger missed the loss: {verdict}");
    assert!(!verdict.passed());
    assert!(
        verdict
            .details
            .iter()
            .any(|d| d.starts_with("acknowledged events missing from the rows")),
        "{:?}",
        verdict.details
    );
    Ok(())
}
