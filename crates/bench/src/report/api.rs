//! The API read benchmark's report (`scripts/bench-api.sh`): one row per section (database), target
//! and connection count in the order measured, each next to the floor measured alongside it, and
//! the targets for the authenticated read, as the table in docs/benchmarks.md.
//!
//! Figures are judged at the precision shown: medians at whole µs, the ratio at whole percent.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::{Figure, Sample};
use crate::stats::{round_to, verdict};

/// The target the other rows are a ratio of.
pub const FLOOR_TARGET: &str = "floor /hello";
/// The target the verdicts are about.
pub const READ_TARGET: &str = "GET /api/functions/:id";
/// Target: the read's req/s at least this percentage of the floor's.
const MIN_PERCENT_OF_FLOOR: f64 = 50.0;
/// Target: the read's p99 under this at [`P99_CONNECTIONS`] connections.
const MAX_P99_US: f64 = 5000.0;
const P99_CONNECTIONS: u32 = 64;

#[derive(Debug, Clone)]
pub struct Settings {
    pub duration_s: u32,
    pub repeat: u32,
    pub machine: String,
    pub wrk_version: String,
}

/// One row: the tags that name it and its figure.
#[derive(Debug)]
struct Row {
    target: String,
    db: String,
    connections: u32,
    figure: Figure,
    percent_of_floor: f64,
}

/// The rows in the order first measured; repeats of (section, target, connections) folded into one.
fn rows(samples: &[Sample]) -> Result<Vec<Row>> {
    let mut keys: Vec<(&str, &str, u32)> = Vec::new();
    for s in samples {
        let key = (s.tag("section")?, s.tag("target")?, s.run.connections);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let figure_of = |section: &str, target: &str, c: u32| -> Result<(Figure, &str)> {
        let runs: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.tags.get("section").is_some_and(|v| v == section))
            .filter(|s| s.tags.get("target").is_some_and(|v| v == target) && s.run.connections == c)
            .collect();
        let db = runs.first().map_or(Ok("-"), |s| s.tag("db"))?;
        let figure = Figure::of(runs.iter().map(|s| &s.run))
            .with_context(|| format!("no wrk runs for {section} {target} at {c} connections"))?;
        Ok((figure, db))
    };
    keys.iter()
        .map(|&(section, target, c)| {
            let (figure, db) = figure_of(section, target, c)?;
            let (floor, _) = figure_of(section, FLOOR_TARGET, c)
                .with_context(|| format!("{section} {target}: no floor measured alongside"))?;
            let percent = if floor.rps > 0.0 {
                round_to(100.0 * figure.rps / floor.rps, 0)
            } else {
                0.0
            };
            Ok(Row {
                target: target.to_owned(),
                db: db.to_owned(),
                connections: c,
                figure,
                percent_of_floor: percent,
            })
        })
        .collect()
}

pub fn render(settings: &Settings, samples: &[Sample]) -> Result<String> {
    let rows = rows(samples)?;
    let s = settings;
    let mut out = String::new();
    writeln!(out)?;
    writeln!(
        out,
        "VoltRun API read benchmark: wrk {}, {}s per run, {} runs per figure",
        s.wrk_version, s.duration_s, s.repeat
    )?;
    writeln!(
        out,
        "(medians; the range is the lowest and highest req/s). wrk threads: 1 at 1 connection, 2 at 64."
    )?;
    writeln!(
        out,
        "JWT-authenticated reads of one function; LOG_LEVEL=warn."
    )?;
    writeln!(out, "Machine: {}.", s.machine)?;
    writeln!(
        out,
        "wrk runs on the same cores as the server: the figures compare the API with the bare floor"
    )?;
    writeln!(
        out,
        "on one machine; they are not a capacity statement. ratio = req/s / floor /hello req/s at the"
    )?;
    writeln!(
        out,
        "same connection count, measured alongside. errors = non-2xx responses + socket errors."
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| target                 | db       | conns | req/s  | req/s range    | p50 (ms) | p99 (ms) | ratio | errors |"
    )?;
    writeln!(
        out,
        "|------------------------|----------|------:|-------:|----------------|---------:|---------:|------:|-------:|"
    )?;
    for r in &rows {
        let f = &r.figure;
        writeln!(
            out,
            "| {:<22} | {:<8} | {:>5} | {:>6.0} | {:<14} | {:>8.3} | {:>8.3} | {:>4.0}% | {:>6} |",
            r.target,
            r.db,
            r.connections,
            f.rps,
            format!("{:.0}-{:.0}", f.rps_low, f.rps_high),
            f.p50_us / 1000.0,
            f.p99_us / 1000.0,
            r.percent_of_floor,
            f.errors
        )?;
    }
    writeln!(out)?;
    for r in rows.iter().filter(|r| r.target == READ_TARGET) {
        let mut line = format!(
            "target {} c={}: req/s >= 50% of floor: {} ({:.0}%)",
            r.db,
            r.connections,
            verdict(r.percent_of_floor >= MIN_PERCENT_OF_FLOOR),
            r.percent_of_floor
        );
        if r.connections == P99_CONNECTIONS {
            let p99 = r.figure.p99_us;
            write!(
                line,
                "; p99 < 5 ms: {} ({:.3} ms)",
                verdict(p99 < MAX_P99_US),
                p99 / 1000.0
            )?;
        }
        if r.figure.errors != 0 {
            write!(line, "; {} ERRORS", r.figure.errors)?;
        }
        writeln!(out, "{line}")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_sample;

    /// A run of `target` (section, target, db) at `c` connections.
    fn sample(
        (section, target, db): (&str, &str, &str),
        c: u32,
        rps: f64,
        p50: f64,
        p99: f64,
        errors: u64,
    ) -> Sample {
        test_sample(
            &[("section", section), ("target", target), ("db", db)],
            c,
            (rps, p50, p99),
            (0, errors),
        )
    }

    #[test]
    fn the_table_and_the_verdicts() {
        let mut samples = Vec::new();
        for (c, floor, read) in [
            (1, [13527.4, 13783.0], [9186.0, 12328.0]),
            (64, [117463.0, 129009.0], [20000.0, 22000.0]),
        ] {
            for i in 0..2 {
                samples.push(sample(
                    ("sqlite", FLOOR_TARGET, "-"),
                    c,
                    floor[i],
                    68.0,
                    210.0,
                    0,
                ));
                samples.push(sample(
                    ("sqlite", "GET /health", "sqlite"),
                    c,
                    9526.0,
                    104.0,
                    211.0,
                    0,
                ));
                samples.push(sample(
                    ("sqlite", READ_TARGET, "sqlite"),
                    c,
                    read[i],
                    88.0,
                    if c == 1 { 192.0 } else { 5000.0 },
                    i as u64,
                ));
            }
        }
        let settings = Settings {
            duration_s: 5,
            repeat: 2,
            machine: "2 cores (EPYC), Linux 6.18".into(),
            wrk_version: "4.1.0".into(),
        };
        let report = render(&settings, &samples).unwrap();
        let expected = "
VoltRun API read benchmark: wrk 4.1.0, 5s per run, 2 runs per figure
(medians; the range is the lowest and highest req/s). wrk threads: 1 at 1 connection, 2 at 64.
JWT-authenticated reads of one function; LOG_LEVEL=warn.
Machine: 2 cores (EPYC), Linux 6.18.
wrk runs on the same cores as the server: the figures compare the API with the bare floor
on one machine; they are not a capacity statement. ratio = req/s / floor /hello req/s at the
same connection count, measured alongside. errors = non-2xx responses + socket errors.

| target                 | db       | conns | req/s  | req/s range    | p50 (ms) | p99 (ms) | ratio | errors |
|------------------------|----------|------:|-------:|----------------|---------:|---------:|------:|-------:|
| floor /hello           | -        |     1 |  13655 | 13527-13783    |    0.068 |    0.210 |  100% |      0 |
| GET /health            | sqlite   |     1 |   9526 | 9526-9526      |    0.104 |    0.211 |   70% |      0 |
| GET /api/functions/:id | sqlite   |     1 |  10757 | 9186-12328     |    0.088 |    0.192 |   79% |      1 |
| floor /hello           | -        |    64 | 123236 | 117463-129009  |    0.068 |    0.210 |  100% |      0 |
| GET /health            | sqlite   |    64 |   9526 | 9526-9526      |    0.104 |    0.211 |    8% |      0 |
| GET /api/functions/:id | sqlite   |    64 |  21000 | 20000-22000    |    0.088 |    5.000 |   17% |      1 |

target sqlite c=1: req/s >= 50% of floor: met (79%); 1 ERRORS
target sqlite c=64: req/s >= 50% of floor: MISSED (17%); p99 < 5 ms: MISSED (5.000 ms); 1 ERRORS
";
        assert_eq!(report, expected);
    }

    #[test]
    fn every_row_needs_its_floor() {
        let samples = [sample(
            ("sqlite", READ_TARGET, "sqlite"),
            1,
            1.0,
            1.0,
            1.0,
            0,
        )];
        let settings = Settings {
            duration_s: 1,
            repeat: 1,
            machine: String::new(),
            wrk_version: String::new(),
        };
        assert!(render(&settings, &samples).is_err());
        assert!(render(&settings, &[]).unwrap().contains("| errors |"));
    }
}
