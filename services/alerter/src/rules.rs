//! The rules file in force: read at start, then again on SIGHUP and
//! whenever its contents change (checked every `--rules-poll`). A new file
//! with problems is reported, every problem at once, and the rules in force
//! stay; a good one is handed to the pipelines, which carries every alert's
//! state over to the new rules (`Engine::restore`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;
use tokio::signal::unix::Signal;

use tokio::sync::watch;
use tributary_alerts::RuleSet;
use tributary_runtime::CancellationToken;

/// Reads and parses the rules file: its text and its rules.
///
/// # Errors
///
/// Every problem with it, prefixed with the flag and the path.
pub fn read(path: &Path) -> Result<(String, RuleSet), Vec<String>> {
    let mut text = String::new();
    let rules = tributary_runtime::config::read_config_file("--rules", path, |t| {
        text = t.to_owned();
        RuleSet::from_toml(t)
    })?;
    Ok((text, rules))
}

/// Watches the rules file until `shutdown`: on SIGHUP (`hangup`) it is read
/// again whatever it holds; every `poll` it is read and, if its text
/// changed since it was last read, parsed. Good rules replace the ones in
/// `apply` (every reader sees the newest: the pipelines of each partition,
/// the notifier). Returns when every reader is gone.
pub async fn watch(
    path: PathBuf,
    poll: Duration,
    mut last: String,
    mut hangup: Option<Signal>,
    apply: watch::Sender<Arc<RuleSet>>,
    shutdown: CancellationToken,
) {
    let mut unreadable = false;
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => true,
            () = tokio::time::sleep(poll) => false,
        };
        if forced {
            tracing::info!(file = %path.display(), "SIGHUP: reading the rules file again");
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => {
                unreadable = false;
                text
            }
            Err(error) => {
                // Said once, not every poll (an editor may be replacing it).
                if forced || !unreadable {
                    tracing::error!(file = %path.display(), %error, "cannot read the rules file; the rules in force stay");
                }
                unreadable = true;
                continue;
            }
        };
        if !forced && text == last {
            continue;
        }
        last.clone_from(&text);
        match RuleSet::from_toml(&text) {
            Ok(rules) => {
                tracing::info!(file = %path.display(), rules = rules.rules().len(), "rules file read; applying it");
                let count = rules.rules().len();
                if apply.send(Arc::new(rules)).is_err() {
                    return;
                }
                metrics::counter!("tributary_alerter_rule_reloads_total", "outcome" => "applied").increment(1);
                metrics::gauge!("tributary_alerter_rules").set(count as f64);
            }
            Err(problems) => {
                metrics::counter!("tributary_alerter_rule_reloads_total", "outcome" => "refused").increment(1);
                tracing::error!(
                    file = %path.display(),
                    n_problems = problems.len(),
                    problems = %problems.join("; "),
                    "the rules file has problems; the rules in force stay"
                );
            }
        }
    }
}
