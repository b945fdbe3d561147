//! Everything the client shows: results on stdout as aligned tables, `key: value` lists or JSON, and
//! notes, warnings and errors on stderr. Colour only where the stream is a terminal and `NO_COLOR`
//! is not set. Writes go through `std::io::Write` and ignore failures (a closed pipe is not an error
//! worth a panic).

use std::io::{IsTerminal, Write};

use serde_json::Value;

use crate::error::CliError;

/// `--output`: how results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables and lists, for people
    Table,
    /// The API's JSON, for scripts
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    Bold,
    Red,
    Green,
    Yellow,
    Cyan,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Self::Bold => "1",
            Self::Red => "31",
            Self::Green => "32",
            Self::Yellow => "33",
            Self::Cyan => "36",
        }
    }
}

/// One table or list cell: its text and, optionally, a colour applied after alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    text: String,
    paint: Option<Paint>,
}

impl Cell {
    pub fn painted(text: impl Into<String>, paint: Paint) -> Self {
        Self {
            text: text.into(),
            paint: Some(paint),
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self { text, paint: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::from(text.to_string())
    }
}

/// The colour of an execution status.
pub fn status_cell(status: &str) -> Cell {
    let paint = match status {
        "succeeded" => Paint::Green,
        "failed" | "timed_out" => Paint::Red,
        "queued" | "running" => Paint::Cyan,
        _ => Paint::Yellow,
    };
    Cell::painted(status, paint)
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: OutputFormat,
    pub stdout_is_terminal: bool,
    pub stderr_is_terminal: bool,
    stdout_color: bool,
    stderr_color: bool,
}

impl Output {
    pub fn new(format: OutputFormat, no_color: bool) -> Self {
        let stdout_is_terminal = std::io::stdout().is_terminal();
        let stderr_is_terminal = std::io::stderr().is_terminal();
        Self {
            format,
            stdout_is_terminal,
            stderr_is_terminal,
            stdout_color: stdout_is_terminal && !no_color,
            stderr_color: stderr_is_terminal && !no_color,
        }
    }

    pub fn json_mode(&self) -> bool {
        self.format == OutputFormat::Json
    }

    fn paint(enabled: bool, text: &str, paint: Option<Paint>) -> String {
        match paint {
            Some(p) if enabled => format!("\x1b[{}m{text}\x1b[0m", p.code()),
            _ => text.to_string(),
        }
    }

    /// Writes text to stdout as it is.
    pub fn write(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }

    /// Writes one line to stdout.
    pub fn line(&self, text: &str) {
        self.write(&format!("{text}\n"));
    }

    /// Writes a line to stdout, painted.
    pub fn painted_line(&self, text: &str, paint: Paint) {
        self.line(&Self::paint(self.stdout_color, text, Some(paint)));
    }

    /// Pretty JSON, for `--output json`.
    pub fn json(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        self.line(&text);
    }

    /// A JSON value a function returned: pretty on a terminal, compact (one line) when piped.
    pub fn json_data(&self, value: &Value) {
        if self.stdout_is_terminal {
            self.json(value);
        } else {
            self.line(&value.to_string());
        }
    }

    /// An aligned table with a header row.
    pub fn table(&self, headers: &[&str], rows: &[Vec<Cell>]) {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.text.chars().count());
                }
            }
        }
        let render = |cells: Vec<(String, Option<Paint>)>| {
            let last = cells.len().saturating_sub(1);
            let mut line = String::new();
            for (i, (text, paint)) in cells.into_iter().enumerate() {
                let pad = if i == last {
                    0
                } else {
                    widths[i].saturating_sub(text.chars().count()) + 2
                };
                line.push_str(&Self::paint(self.stdout_color, &text, paint));
                line.push_str(&" ".repeat(pad));
            }
            line
        };
        let mut out = render(
            headers
                .iter()
                .map(|h| (h.to_string(), Some(Paint::Bold)))
                .collect(),
        );
        out.push('\n');
        for row in rows {
            out.push_str(&render(
                row.iter().map(|c| (c.text.clone(), c.paint)).collect(),
            ));
            out.push('\n');
        }
        self.write(&out);
    }

    /// `key: value` lines with the values aligned.
    pub fn fields(&self, rows: &[(&str, Cell)]) {
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count() + 1)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in rows {
            let label = format!("{key}:");
            out.push_str(&Self::paint(self.stdout_color, &label, Some(Paint::Bold)));
            out.push_str(&" ".repeat(width - label.chars().count() + 1));
            out.push_str(&Self::paint(self.stdout_color, &value.text, value.paint));
            out.push('\n');
        }
        self.write(&out);
    }

    /// A message for the person at the terminal (stderr, so stdout stays data).
    pub fn note(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// Text for stderr as it is (function logs).
    pub fn stderr_text(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(text.as_bytes());
        let _ = stderr.flush();
    }

    pub fn warn(&self, text: &str) {
        let label = Self::paint(self.stderr_color, "warning:", Some(Paint::Yellow));
        let _ = writeln!(std::io::stderr().lock(), "{label} {text}");
    }

    /// An error: always exactly one line.
    pub fn error(&self, error: &CliError) {
        self.error_line(&error.line());
    }

    pub fn error_line(&self, text: &str) {
        let label = Self::paint(self.stderr_color, "error:", Some(Paint::Red));
        let _ = writeln!(
            std::io::stderr().lock(),
            "{label} {}",
            crate::error::one_line(text)
        );
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A server timestamp (RFC 3339) shortened for a table: `2025-01-02 03:04:05`.
pub fn short_time(timestamp: &str) -> String {
    match timestamp.get(..19) {
        Some(head) if timestamp.as_bytes().get(10) == Some(&b'T') => head.replacen('T', " ", 1),
        _ => timestamp.to_string(),
    }
}

/// `-` for a missing value.
pub fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_times_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(
            short_time("2025-01-02T03:04:05.123456Z"),
            "2025-01-02 03:04:05"
        );
        assert_eq!(short_time("soon"), "soon");
    }
}
