//! What both reports share: the samples file (one JSON line per wrk run, written by `wrk-summary`),
//! the medians over repeats, and the lines about the machine and wrk.

pub mod api;
pub mod engine;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::stats::{median, round_to};
use crate::wrk::Run;

/// One wrk run and what it measured (`--tag key=value`: runtime, target, db, …).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub tags: BTreeMap<String, String>,
    pub run: Run,
}

impl Sample {
    pub fn tag(&self, key: &str) -> Result<&str> {
        self.tags
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("a sample without the tag {key:?}: {self:?}"))
    }
}

/// Reads a file of JSON lines (samples or cold runs).
pub fn read_json_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// The repeats of one figure, reduced: medians rounded to whole req/s and µs (the precision the
/// targets are judged at), the lowest and highest req/s, and the errors of all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub rps: f64,
    pub rps_low: f64,
    pub rps_high: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

impl Figure {
    pub fn of<'a>(runs: impl IntoIterator<Item = &'a Run>) -> Option<Figure> {
        let runs: Vec<&Run> = runs.into_iter().collect();
        let rps: Vec<f64> = runs.iter().map(|r| r.requests_per_s).collect();
        let column = |f: fn(&Run) -> f64| median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        Some(Figure {
            rps: round_to(median(&rps)?, 0),
            rps_low: round_to(rps.iter().copied().fold(f64::INFINITY, f64::min), 0),
            rps_high: round_to(rps.iter().copied().fold(f64::NEG_INFINITY, f64::max), 0),
            p50_us: round_to(column(|r| r.p50_us)?, 0),
            p99_us: round_to(column(|r| r.p99_us)?, 0),
            errors: runs.iter().map(|r| r.errors()).sum(),
        })
    }
}

/// "N cores (CPU model), Linux 6.18.0": what `nproc`, /proc/cpuinfo and `uname -sr` say.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(": "))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let kernel = |name| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).map(|s| s.trim().to_owned())
    };
    let system = match (kernel("ostype"), kernel("osrelease")) {
        (Ok(os), Ok(release)) => format!("{os} {release}"),
        _ => std::env::consts::OS.to_owned(),
    };
    format!("{cores} cores ({model}), {system}")
}

/// wrk's version, the second word of `wrk -v` ("4.1.0", "debian/4.1.0-3+b2").
pub fn wrk_version() -> String {
    Command::new("wrk")
        .arg("-v")
        .output()
        .ok()
        .and_then(|out| {
            // wrk -v prints its banner and exits 1.
            let text = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()?
                .split_whitespace()
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "(unknown)".to_owned())
}

/// A sample with `tags` of one run, for the reports' tests.
#[cfg(test)]
pub(crate) fn test_sample(
    tags: &[(&str, &str)],
    connections: u32,
    (rps, p50, p99): (f64, f64, f64),
    (status_errors, socket_errors): (u64, u64),
) -> Sample {
    Sample {
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        run: Run {
            connections,
            requests: 0,
            requests_per_s: rps,
            p50_us: p50,
            p99_us: p99,
            exact_percentiles: true,
            status_errors,
            socket_errors,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64, p50: f64, p99: f64, errors: u64) -> Run {
        Run {
            connections: 1,
            requests: 0,
            requests_per_s: rps,
            p50_us: p50,
            p99_us: p99,
            exact_percentiles: true,
            status_errors: errors,
            socket_errors: 0,
        }
    }

    #[test]
    fn figures_are_rounded_medians() {
        let runs = [
            run(1000.4, 100.0, 300.0, 1),
            run(900.2, 120.0, 310.0, 0),
            run(1100.6, 90.0, 290.0, 2),
        ];
        let figure = Figure::of(&runs).unwrap();
        assert_eq!(
            figure,
            Figure {
                rps: 1000.0,
                rps_low: 900.0,
                rps_high: 1101.0,
                p50_us: 100.0,
                p99_us: 300.0,
                errors: 3
            }
        );
        let figure = Figure::of(&runs[..2]).unwrap();
        assert_eq!(
            (figure.rps, figure.p50_us, figure.p99_us),
            (950.0, 110.0, 305.0)
        );
        assert_eq!(Figure::of(&[]), None);
    }
}
