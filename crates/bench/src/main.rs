//! `voltrun-bench`: everything the benchmark scripts compute. The scripts install the tools and the
//! peers, start and stop the servers, deploy the functions with curl and run wrk; this tool writes
//! wrk's Lua script, reads wrk's output, drives the cold starts, and prints the reports (medians,
//! percentiles, ratios, targets and verdicts, the markdown tables).
//!
//!   voltrun-bench wrk-script [--post-json BODY]       the Lua script for `wrk -s`
//!   voltrun-bench wrk-summary [--tag K=V]… FILE       one wrk run as a JSON line (stdout)
//!   voltrun-bench cold --runtime R --count N --out FILE --target NAME,URL,TOKEN,ID… -- FLOOR CMD…
//!   voltrun-bench report engine --samples F --cold F [settings]
//!   voltrun-bench report api --samples F [settings]

mod cold;
mod http;
mod report;
mod stats;
mod wrk;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::report::Sample;

#[derive(Debug, Parser)]
#[command(
    name = "voltrun-bench",
    about = "The benchmarks' arithmetic and reports (see scripts/bench-*.sh)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Prints the Lua script for `wrk -s`: a `done` hook that prints wrk's raw figures, and with
    /// --post-json a POST of that body.
    WrkScript {
        #[arg(long)]
        post_json: Option<String>,
    },
    /// Reads wrk's output (with `--latency` and the script's hook) and prints one JSON line per file
    /// on stdout, and a one-line summary of each on stderr.
    WrkSummary {
        /// What the run measured, KEY=VALUE (runtime, target, db, section…), copied into the line.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The engine benchmark's cold starts: N rounds, after one not counted, of a new instance on
    /// every target and one spawn of the floor command; writes the samples as a JSON line.
    Cold {
        /// The runtime's name in the report (python, node).
        #[arg(long)]
        runtime: String,
        /// Counted rounds.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        count: u32,
        /// NAME,URL,TOKEN,FUNCTION_ID (NAME: voltrun or baseline); the targets take turns.
        #[arg(long = "target", required = true)]
        targets: Vec<cold::Target>,
        /// Where the JSON line goes (the floor command keeps stdout).
        #[arg(long)]
        out: PathBuf,
        /// The floor: a command spawned and waited for after each round's invocations.
        #[arg(last = true, required = true)]
        floor: Vec<String>,
    },
    /// Prints a benchmark's report on stdout.
    Report {
        #[command(subcommand)]
        which: Report,
    },
}

#[derive(Debug, Subcommand)]
enum Report {
    /// scripts/bench-engine.sh: samples tagged runtime= and target= (voltrun, baseline, peer).
    Engine {
        #[arg(long)]
        samples: PathBuf,
        /// The cold runs, one JSON line per runtime, in the report's order.
        #[arg(long)]
        cold: PathBuf,
        #[arg(long)]
        duration: u32,
        #[arg(long)]
        repeat: u32,
        #[arg(long)]
        warmup: u32,
        #[arg(long)]
        cold_n: u32,
        /// The binary measured, named in the header with a baseline.
        #[arg(long)]
        voltrun: String,
        /// The baseline binary: adds its columns.
        #[arg(long)]
        baseline: Option<String>,
        #[arg(long)]
        python_peer_version: String,
        #[arg(long)]
        node_peer_version: String,
    },
    /// scripts/bench-api.sh: samples tagged section=, target= and db=.
    Api {
        #[arg(long)]
        samples: PathBuf,
        #[arg(long)]
        duration: u32,
        #[arg(long)]
        repeat: u32,
    },
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("voltrun-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Reports and JSON lines are this tool's output: written through one locked handle.
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Cmd::WrkScript { post_json } => {
            stdout.write_all(wrk::lua_script(post_json.as_deref()).as_bytes())?
        }
        Cmd::WrkSummary { tags, files } => {
            for file in files {
                let output = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let run = wrk::parse(&output).with_context(|| {
                    format!(
                        "could not read wrk's summary in {}:\n{output}",
                        file.display()
                    )
                })?;
                let label: Vec<&str> = tags.iter().map(|(_, v)| v.as_str()).collect();
                eprintln!(
                    "voltrun-bench: {:<40} c={:<3} {:>9.0} req/s  p50 {:7.3} ms  p99 {:7.3} ms  errors {}",
                    label.join(" "),
                    run.connections,
                    run.requests_per_s,
                    run.p50_us / 1000.0,
                    run.p99_us / 1000.0,
                    run.errors()
                );
                let sample = Sample {
                    tags: tags.iter().cloned().collect(),
                    run,
                };
                writeln!(stdout, "{}", serde_json::to_string(&sample)?)?;
            }
        }
        Cmd::Cold {
            runtime,
            count,
            targets,
            out,
            floor,
        } => {
            let result = cold::run(&runtime, count as usize, &targets, &floor)?;
            eprintln!("voltrun-bench: {runtime}: {}", result.summary());
            std::fs::write(&out, format!("{}\n", serde_json::to_string(&result)?))
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Cmd::Report {
            which:
                Report::Engine {
                    samples,
                    cold,
                    duration,
                    repeat,
                    warmup,
                    cold_n,
                    voltrun,
                    baseline,
                    python_peer_version,
                    node_peer_version,
                },
        } => {
            let settings = report::engine::Settings {
                duration_s: duration,
                repeat,
                warmup_s: warmup,
                cold_n,
                machine: report::machine(),
                wrk_version: report::wrk_version(),
                voltrun,
                baseline,
                python_peer_version,
                node_peer_version,
            };
            let samples: Vec<Sample> = report::read_json_lines(&samples)?;
            let cold: Vec<cold::ColdRun> = report::read_json_lines(&cold)?;
            stdout.write_all(report::engine::render(&settings, &samples, &cold)?.as_bytes())?;
        }
        Cmd::Report {
            which:
                Report::Api {
                    samples,
                    duration,
                    repeat,
                },
        } => {
            let settings = report::api::Settings {
                duration_s: duration,
                repeat,
                machine: report::machine(),
                wrk_version: report::wrk_version(),
            };
            let samples: Vec<Sample> = report::read_json_lines(&samples)?;
            stdout.write_all(report::api::render(&settings, &samples)?.as_bytes())?;
        }
    }
    stdout.flush()?;
    Ok(())
}
