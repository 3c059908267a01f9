//! `tributary-dlq`: list, show and replay dead letters.
//!
//! ```text
//! tributary-dlq list [--stage transformer] [--reason not_json]
//! tributary-dlq show 42
//! tributary-dlq replay 42 43           # these ones
//! tributary-dlq replay --stage sink --reason rejected_by_database --all
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tributary_dlq::{Dlq, DlqError, filter, group};
use tributary_runtime::NatsArgs;

/// Lists, shows and replays Tributary's dead letters.
#[derive(Debug, Parser)]
#[command(name = "tributary-dlq", version)]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    /// The dead-letter stream.
    #[arg(long, env = "TRIBUTARY_DLQ_STREAM", default_value = tributary_schema::DLQ_STREAM)]
    stream: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Counts dead letters by stage and reason.
    List {
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Also print one line per dead letter.
        #[arg(long)]
        each: bool,
        /// Read at most this many.
        #[arg(long, default_value_t = 100_000)]
        limit: usize,
    },
    /// Prints one dead letter: headers and payload.
    Show { seq: u64 },
    /// Publishes dead letters again to the subject they came from, with a
    /// new message id, and deletes them once the stream has them.
    Replay {
        /// Sequences to replay.
        seqs: Vec<u64>,
        /// Every dead letter of --stage and --reason instead.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        #[arg(long, requires = "all")]
        stage: Option<String>,
        #[arg(long, requires = "all")]
        reason: Option<String>,
        /// Keep the dead letters after replaying them.
        #[arg(long)]
        keep: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            #[expect(clippy::print_stderr, reason = "a command-line tool reports to its terminal")]
            {
                eprintln!("tributary-dlq: {error}");
            }
            ExitCode::FAILURE
        }
    }
}

#[expect(clippy::print_stdout, reason = "a command-line tool prints its answer")]
async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Err(problems) = cli.nats.validate() {
        return Err(problems.join("; ").into());
    }
    let (_client, js) = tributary_runtime::nats::connect(&cli.nats, "tributary-dlq").await?;
    let dlq = Dlq::open(js, &cli.stream).await?;
    match cli.command {
        Command::List {
            stage,
            reason,
            each,
            limit,
        } => {
            let letters = dlq.scan(&filter(stage.as_deref(), reason.as_deref()), limit).await?;
            println!("{:<12} {:<24} {:>8}  sequences", "stage", "reason", "count");
            for g in group(&letters) {
                println!(
                    "{:<12} {:<24} {:>8}  {}..{}",
                    g.stage, g.reason, g.count, g.first_seq, g.last_seq
                );
            }
            if each {
                for letter in &letters {
                    println!(
                        "{} {} {}/{}: {}",
                        letter.seq, letter.time, letter.stage, letter.reason, letter.error
                    );
                }
            }
        }
        Command::Show { seq } => print!("{}", dlq.get(seq).await?.describe()),
        Command::Replay {
            seqs,
            all,
            stage,
            reason,
            keep,
        } => {
            let letters = if all {
                dlq.scan(&filter(stage.as_deref(), reason.as_deref()), usize::MAX)
                    .await?
            } else {
                let mut letters = Vec::new();
                for seq in seqs {
                    letters.push(dlq.get(seq).await?);
                }
                letters
            };
            if letters.is_empty() {
                return Err(Box::new(DlqError::Stream {
                    stream: cli.stream,
                    message: "nothing to replay (give sequences, or --all with --stage/--reason)".to_owned(),
                }));
            }
            for letter in &letters {
                let id = dlq.replay(letter, keep).await?;
                println!(
                    "{} → {} as {id}",
                    letter.seq,
                    letter.original_subject.as_deref().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}
