//! wrk, the load generator: the Lua script the benchmark scripts pass it, and the reading of one
//! run's output into the figures a report needs (requests/s, p50, p99, errors).
//!
//! wrk's own text (`--latency`) gives the request count, requests/s, the connection count and the
//! errors exactly, but prints its percentiles in units rounded to two decimals ("12.83ms" for
//! 12,829 µs). The exact percentiles are only reachable from Lua, so the script keeps a `done` hook
//! that prints one line of wrk's raw numbers ([`RAW_PREFIX`]); it does no arithmetic. When that line
//! is missing (output from a plain `wrk --latency`), the rounded percentiles from the text are used.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The first word of the `done` hook's line.
pub const RAW_PREFIX: &str = "voltrun-bench-raw";

/// The `done` hook: wrk's summary and two percentiles of its latency histogram (µs), as they are.
const DONE_HOOK: &str = r#"-- Only prints wrk's raw numbers: the exact percentiles are not in wrk's text output, which rounds
-- them; everything computed from them is voltrun-bench's.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "voltrun-bench-raw requests=%d duration_us=%d p50_us=%d p99_us=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"#;

/// The Lua script for `wrk -s`: the `done` hook, and with `post_json` every request a POST of that
/// JSON body.
pub fn lua_script(post_json: Option<&str>) -> String {
    let mut script = String::new();
    if let Some(body) = post_json {
        script.push_str("wrk.method = \"POST\"\n");
        script.push_str(&format!("wrk.body = {}\n", lua_string(body)));
        script.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    }
    script.push_str(DONE_HOOK);
    script
}

/// A Lua string literal: quotes, backslashes and control characters escaped (`\ddd`, which every
/// Lua wrk embeds understands; `\u{…}` is Lua 5.3 only).
fn lua_string(text: &str) -> String {
    let mut out = String::from("\"");
    for byte in text.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

/// One wrk run, read from its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub connections: u32,
    pub requests: u64,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Whether the percentiles are wrk's exact ones (the hook's line) or its rounded text.
    pub exact_percentiles: bool,
    /// Responses other than 2xx and 3xx.
    pub status_errors: u64,
    /// connect + read + write + timeout.
    pub socket_errors: u64,
}

impl Run {
    pub fn errors(&self) -> u64 {
        self.status_errors + self.socket_errors
    }
}

/// Reads one run's output (wrk's text with `--latency`, and the hook's line when the script had it).
pub fn parse(output: &str) -> Result<Run> {
    let mut connections = None;
    let mut requests = None;
    let mut requests_per_s = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut status_errors = 0;
    let mut socket_errors = 0;
    let mut raw = None;
    let mut in_distribution = false;
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // "  2 threads and 8 connections"
            [_, "threads", "and", n, "connections"] => connections = Some(number(n, line)?),
            ["Latency", "Distribution"] => in_distribution = true,
            ["50%", value] if in_distribution => p50 = Some(micros(value)?),
            ["99%", value] if in_distribution => p99 = Some(micros(value)?),
            // "  891 requests in 1.03s, 527.44KB read"
            [n, "requests", "in", ..] => {
                in_distribution = false;
                requests = Some(number(n, line)?);
            }
            ["Requests/sec:", n] => requests_per_s = Some(number(n, line)?),
            ["Non-2xx", "or", "3xx", "responses:", n] => status_errors = number(n, line)?,
            // "  Socket errors: connect 0, read 6459, write 0, timeout 0"
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest
                    .chunks(2)
                    .map(|pair| {
                        number::<u64>(pair.get(1).unwrap_or(&"").trim_end_matches(','), line)
                    })
                    .sum::<Result<u64>>()?;
            }
            [prefix, fields @ ..] if *prefix == RAW_PREFIX => raw = Some(Raw::parse(fields, line)?),
            _ => {}
        }
    }
    let connections = connections.context("no \"N threads and N connections\" line")?;
    let Some(raw) = raw else {
        return Ok(Run {
            connections,
            requests: requests.context("no \"N requests in\" line")?,
            requests_per_s: requests_per_s.context("no \"Requests/sec:\" line")?,
            p50_us: p50.context("no 50% line (was wrk run with --latency?)")?,
            p99_us: p99.context("no 99% line (was wrk run with --latency?)")?,
            exact_percentiles: false,
            status_errors,
            socket_errors,
        });
    };
    if raw.duration_us == 0 {
        bail!("{RAW_PREFIX}: a run of 0 µs");
    }
    Ok(Run {
        connections,
        requests: raw.requests,
        // wrk's own Requests/sec, unrounded.
        requests_per_s: raw.requests as f64 / (raw.duration_us as f64 / 1e6),
        p50_us: raw.p50_us as f64,
        p99_us: raw.p99_us as f64,
        exact_percentiles: true,
        status_errors: raw.status,
        socket_errors: raw.connect + raw.read + raw.write + raw.timeout,
    })
}

/// The hook's line.
#[derive(Debug, Default)]
struct Raw {
    requests: u64,
    duration_us: u64,
    p50_us: u64,
    p99_us: u64,
    status: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
}

impl Raw {
    fn parse(fields: &[&str], line: &str) -> Result<Raw> {
        let mut raw = Raw::default();
        let mut seen = 0;
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .with_context(|| format!("{line:?}: {field:?}"))?;
            let slot = match key {
                "requests" => &mut raw.requests,
                "duration_us" => &mut raw.duration_us,
                "p50_us" => &mut raw.p50_us,
                "p99_us" => &mut raw.p99_us,
                "status" => &mut raw.status,
                "connect" => &mut raw.connect,
                "read" => &mut raw.read,
                "write" => &mut raw.write,
                "timeout" => &mut raw.timeout,
                _ => bail!("{line:?}: unknown field {key:?}"),
            };
            *slot = number(value, line)?;
            seen += 1;
        }
        if seen != 9 {
            bail!("{line:?}: expected 9 fields");
        }
        Ok(raw)
    }
}

fn number<T: std::str::FromStr>(text: &str, line: &str) -> Result<T> {
    text.parse()
        .ok()
        .with_context(|| format!("{line:?}: {text:?} is not a number"))
}

/// A wrk time ("445.00us", "12.83ms", "1.02s", "2.00m") in µs.
fn micros(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (value, unit) = text.split_at(split);
    let value: f64 = value
        .parse()
        .ok()
        .with_context(|| format!("{text:?} is not a time"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("{text:?}: unknown unit {unit:?}"),
    };
    // Whole nanoseconds: 12.83 × 1000 is 12829.999… in binary.
    Ok((value * scale * 1e3).round() / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real wrk 4.1.0 runs (Debian's build) with the hook's line, against Python's http.server (GET:
    // 200, POST: 501) and a socket that closes every connection after at most one response.
    const GET_C1: &str = include_str!("../fixtures/wrk-get-c1.txt");
    const POST_C8: &str = include_str!("../fixtures/wrk-post-c8.txt");
    const GET_C64: &str = include_str!("../fixtures/wrk-get-c64.txt");
    const SOCKET_ERRORS: &str = include_str!("../fixtures/wrk-get-c2-socket-errors.txt");

    /// The text without the hook's line: what a plain `wrk --latency` prints.
    fn text_only(output: &str) -> String {
        output
            .lines()
            .filter(|line| !line.starts_with(RAW_PREFIX))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[test]
    fn reads_the_exact_figures_from_the_hook() {
        let run = parse(GET_C1).unwrap();
        assert_eq!(run.connections, 1);
        assert_eq!(run.requests, 891);
        assert!((run.requests_per_s - 891.0 / 1.027_199).abs() < 1e-9);
        assert_eq!((run.p50_us, run.p99_us), (445.0, 12_829.0));
        assert!(run.exact_percentiles);
        assert_eq!(run.errors(), 0);

        let run = parse(GET_C64).unwrap();
        assert_eq!((run.connections, run.requests), (64, 1781));
        assert_eq!((run.p50_us, run.p99_us), (3763.0, 448_253.0));
    }

    #[test]
    fn counts_non_2xx_and_socket_errors() {
        let run = parse(POST_C8).unwrap();
        assert_eq!((run.connections, run.requests), (8, 999));
        assert_eq!((run.status_errors, run.socket_errors), (999, 0));
        let run = parse(SOCKET_ERRORS).unwrap();
        assert_eq!((run.status_errors, run.socket_errors), (0, 6459));
    }

    #[test]
    fn the_text_alone_agrees_to_its_rounding() {
        for output in [GET_C1, POST_C8, GET_C64, SOCKET_ERRORS] {
            let exact = parse(output).unwrap();
            let text = parse(&text_only(output)).unwrap();
            assert!(!text.exact_percentiles);
            assert_eq!(
                (
                    text.connections,
                    text.requests,
                    text.status_errors,
                    text.socket_errors
                ),
                (
                    exact.connections,
                    exact.requests,
                    exact.status_errors,
                    exact.socket_errors
                )
            );
            assert!((text.requests_per_s - exact.requests_per_s).abs() <= 0.005 + 1e-9);
            // Two decimals of the unit shown: 0.005 µs, 5 µs or 5 ms.
            for (rounded, exact) in [(text.p50_us, exact.p50_us), (text.p99_us, exact.p99_us)] {
                assert!(
                    (rounded - exact).abs() <= exact * 0.005,
                    "{rounded} vs {exact}"
                );
            }
        }
        let text = parse(&text_only(GET_C1)).unwrap();
        assert_eq!(
            (text.p50_us, text.p99_us, text.requests_per_s),
            (445.0, 12_830.0, 867.41)
        );
    }

    #[test]
    fn refuses_output_without_a_summary() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused\n").is_err());
        let no_latency: String = text_only(GET_C1)
            .lines()
            .filter(|l| !l.contains('%'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(parse(&no_latency).is_err());
        assert!(parse(&format!("{GET_C1}{RAW_PREFIX} requests=1\n")).is_err());
    }

    #[test]
    fn times_in_wrk_units() {
        assert_eq!(micros("445.00us").unwrap(), 445.0);
        assert_eq!(micros("12.83ms").unwrap(), 12_830.0);
        assert_eq!(micros("1.50s").unwrap(), 1_500_000.0);
        assert!(micros("12.83").is_err());
        assert!(micros("ms").is_err());
    }

    #[test]
    fn the_script_posts_an_escaped_body() {
        let script = lua_script(Some(r#"{"bench": true, "a\b": "x"}"#));
        assert!(
            script.contains(r#"wrk.body = "{\"bench\": true, \"a\\b\": \"x\"}""#),
            "{script}"
        );
        assert!(script.contains("wrk.method = \"POST\""));
        assert!(script.contains("done = function"));
        assert_eq!(lua_string("a\nb"), "\"a\\010b\"");
        assert!(!lua_script(None).contains("wrk.method"));
    }
}
