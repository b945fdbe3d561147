//! The cold-start driver of the engine benchmark: N invocations that each start a new instance, on
//! every server given, taking turns with N bare spawns of the interpreter (the floor), all timed by
//! this one client; the samples are written as one JSON line for `report engine`.
//!
//! One round: for each server, a `PUT` bumps the function's version (so the next invocation cannot
//! reuse an instance) and one `POST …/execute` is timed from send to the last byte of the answer;
//! then the floor command is spawned and waited for. The first round is not counted: it unpacks the
//! code and reads the interpreter's files from disk.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http::Client;
use crate::stats::percentile;

/// The event every invocation gets (the same as the warm runs').
pub const EVENT: &str = r#"{"bench": true, "n": 1}"#;

/// One server's function to start cold: `NAME,URL,TOKEN,FUNCTION_ID`.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub token: String,
    pub function: String,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Target> {
        let parts: Vec<&str> = spec.split(',').collect();
        let [name, url, token, function] = parts.as_slice() else {
            bail!("expected NAME,URL,TOKEN,FUNCTION_ID");
        };
        Ok(Target {
            name: (*name).to_owned(),
            url: (*url).to_owned(),
            token: (*token).to_owned(),
            function: (*function).to_owned(),
        })
    }
}

/// What one driver run writes: per server, the end-to-end times and the server's
/// `init_duration_ms`; the floor's times; all in ms, in the order taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColdRun {
    pub runtime: String,
    /// The floor command as run (its first word may be a full path).
    pub floor_command: Vec<String>,
    pub targets: Vec<TargetSamples>,
    pub floor_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetSamples {
    pub name: String,
    pub e2e_ms: Vec<f64>,
    pub init_ms: Vec<f64>,
}

impl ColdRun {
    pub fn target(&self, name: &str) -> Result<&TargetSamples> {
        self.targets
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{}: no cold starts for {name}", self.runtime))
    }

    /// The floor as the report names it: the command with its program's directory left out.
    pub fn floor_name(&self) -> String {
        let mut words = self.floor_command.clone();
        if let Some(program) = words.first_mut()
            && let Some((_, base)) = program.rsplit_once('/')
        {
            *program = base.to_owned();
        }
        words.join(" ")
    }

    /// One line for the log: p50 and p99 of every series.
    pub fn summary(&self) -> String {
        let mut series: Vec<(&str, &str, &[f64])> = Vec::new();
        for t in &self.targets {
            series.push((&t.name, "e2e", &t.e2e_ms));
            series.push((&t.name, "init", &t.init_ms));
        }
        series.push(("floor", "floor", &self.floor_ms));
        series
            .iter()
            .map(|(target, measure, values)| {
                let p = |q| percentile(values, q).unwrap_or(f64::NAN);
                format!("{target} {measure} p50 {:.2} p99 {:.2}", p(50.0), p(99.0))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Runs the rounds: `n` counted ones after one that is not.
pub fn run(runtime: &str, n: usize, targets: &[Target], floor: &[String]) -> Result<ColdRun> {
    let (program, args) = floor.split_first().context("no floor command")?;
    let mut clients = targets
        .iter()
        .map(|t| Ok((t, Client::new(&t.url, &t.token)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut samples: Vec<TargetSamples> = targets
        .iter()
        .map(|t| TargetSamples {
            name: t.name.clone(),
            e2e_ms: Vec::with_capacity(n),
            init_ms: Vec::with_capacity(n),
        })
        .collect();
    let mut floor_ms = Vec::with_capacity(n);
    for round in 0..=n {
        let counted = round > 0;
        for ((target, client), samples) in clients.iter_mut().zip(&mut samples) {
            let bump = json!({ "description": format!("cold start {round}") }).to_string();
            call(
                client,
                target,
                "PUT",
                &format!("/api/functions/{}", target.function),
                &bump,
            )?;
            let path = format!("/api/functions/{}/execute", target.function);
            let start = Instant::now();
            let response = client.request("POST", &path, EVENT)?;
            let took = start.elapsed().as_secs_f64() * 1e3;
            let result = json_answer(target, "POST", &path, &response)?;
            if result.get("status") != Some(&json!("succeeded"))
                || result.get("cold_start") != Some(&json!(true))
            {
                bail!(
                    "{}: expected a successful cold start, got {}",
                    target.name,
                    clip(&result.to_string(), 500)
                );
            }
            if counted {
                samples.e2e_ms.push(took);
                samples.init_ms.push(
                    result
                        .get("init_duration_ms")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0),
                );
            }
        }
        let start = Instant::now();
        let status = Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("running {program}"))?;
        let took = start.elapsed().as_secs_f64() * 1e3;
        ensure!(
            status.success(),
            "the floor command {floor:?} failed: {status}"
        );
        if counted {
            floor_ms.push(took);
        }
    }
    Ok(ColdRun {
        runtime: runtime.to_owned(),
        floor_command: floor.to_vec(),
        targets: samples,
        floor_ms,
    })
}

fn call(
    client: &mut Client,
    target: &Target,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Value> {
    let response = client.request(method, path, body)?;
    json_answer(target, method, path, &response)
}

/// The answer's JSON; anything but a 200 stops the run.
fn json_answer(
    target: &Target,
    method: &str,
    path: &str,
    response: &crate::http::Response,
) -> Result<Value> {
    let text = String::from_utf8_lossy(&response.body);
    if response.status != 200 {
        bail!(
            "{}: {method} {path}: {} {}",
            target.name,
            response.status,
            clip(&text, 300)
        );
    }
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: {method} {path}: not JSON: {}",
            target.name,
            clip(&text, 300)
        )
    })
}

fn clip(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_floor_names() {
        let t: Target = "voltrun,http://127.0.0.1:1,tok,fn-1".parse().unwrap();
        assert_eq!(
            (
                t.name.as_str(),
                t.url.as_str(),
                t.token.as_str(),
                t.function.as_str()
            ),
            ("voltrun", "http://127.0.0.1:1", "tok", "fn-1")
        );
        assert!("a,b,c".parse::<Target>().is_err());
        let run = ColdRun {
            runtime: "python".into(),
            floor_command: vec!["/usr/bin/python3".into(), "-c".into(), "pass".into()],
            targets: vec![TargetSamples {
                name: "voltrun".into(),
                e2e_ms: vec![20.0, 30.0],
                init_ms: vec![10.0, 12.0],
            }],
            floor_ms: vec![15.0, 16.0],
        };
        assert_eq!(run.floor_name(), "python3 -c pass");
        assert_eq!(
            run.summary(),
            "voltrun e2e p50 20.00 p99 30.00; voltrun init p50 10.00 p99 12.00; floor floor p50 15.00 p99 16.00"
        );
        assert!(run.target("baseline").is_err());
    }

    #[test]
    fn clips_on_characters() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("hi", 5), "hi");
    }
}
