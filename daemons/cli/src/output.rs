//! What a command prints: a table for people, or apid's own JSON/YAML for scripts.
//!
//! Every value shown in a table or a detail view passes through [`clean`]: host names, disk
//! models and log lines come from agents on the provisioning network, where anyone may run
//! one, and a terminal obeys escape sequences. Control characters are shown escaped, never
//! written raw. `-o json` and `-o yaml` are encoded documents, escaped by their encoders.

use std::io::Write;

use serde_json::Value;

use crate::error::CliError;

/// `-o`: how results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// apid's JSON, pretty-printed.
    Json,
    /// The same document as YAML.
    Yaml,
    /// Names only, one per line (for `xargs` and loops).
    Name,
}

/// `value` safe for a terminal: control characters (ESC, CR, newlines, …) escaped as
/// `\u{1b}`, everything else unchanged.
pub fn clean(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON value as one table cell: strings unquoted, null as `-`, arrays comma-joined.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => clean(s),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.is_empty() => "-".to_owned(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}={}", clean(k), cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => clean(&other.to_string()),
    }
}

/// Rows under headers, columns padded to their widest cell; the last column unpadded.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (its cells already [`clean`]ed).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the table.
    ///
    /// # Errors
    /// When `out` cannot be written.
    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, c) in cells.enumerate().take(columns) {
                if i + 1 == columns {
                    text.push_str(c);
                } else {
                    text.push_str(c);
                    let pad = widths[i] - c.chars().count() + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", text.trim_end())
        };
        line(out, &mut self.headers.iter().copied())?;
        for row in &self.rows {
            line(out, &mut row.iter().map(String::as_str))?;
        }
        Ok(())
    }
}

/// Writes `value` as JSON or YAML (for [`Format::Json`] and [`Format::Yaml`]).
///
/// # Errors
/// When `out` cannot be written.
pub fn document(out: &mut dyn Write, format: Format, value: &Value) -> Result<(), CliError> {
    match format {
        Format::Yaml => {
            let text = serde_yaml_ng::to_string(value)
                .map_err(|e| CliError::Usage(format!("cannot encode YAML: {e}")))?;
            out.write_all(text.as_bytes())?;
        }
        _ => {
            serde_json::to_writer_pretty(&mut *out, value)
                .map_err(|e| CliError::Output(e.into()))?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// `bytes` for people: `1.5 GiB`.
pub fn bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    #[allow(
        clippy::cast_precision_loss,
        reason = "a display rounded to one decimal"
    )]
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in seconds for people: `42s`, `3m05s`, `2h07m`, `3d04h`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// How long ago an RFC 3339 timestamp was (`-` when it is absent or unreadable).
pub fn age(value: &Value, now: jiff::Timestamp) -> String {
    value
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map_or_else(
            || "-".to_owned(),
            |t| {
                let secs = now.duration_since(t).as_secs().max(0);
                duration(u64::try_from(secs).unwrap_or(0))
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["NAME", "STATE", "LABELS"]);
        t.row(vec!["a".into(), "Ready".into(), "-".into()]);
        t.row(vec![
            "longer-name".into(),
            "Registered".into(),
            "x=1".into(),
        ]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME         STATE       LABELS\n\
             a            Ready       -\n\
             longer-name  Registered  x=1\n"
        );
    }

    #[test]
    fn cells_flatten_json() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(
            cell(&json!({"rack": "r1", "role": "gpu"})),
            "rack=r1,role=gpu"
        );
        assert_eq!(cell(&json!(42)), "42");
        assert_eq!(cell(&json!({})), "-");
    }

    #[test]
    fn terminal_escapes_are_shown_not_obeyed() {
        let evil = "host\u{1b}]0;owned\u{7}\r\nname";
        let c = clean(evil);
        assert!(!c.chars().any(char::is_control), "{c:?}");
        assert_eq!(c, "host\\u{1b}]0;owned\\u{7}\\u{d}\\u{a}name");
        // Markup is not a terminal's business: shown as it is.
        assert_eq!(
            clean("<img src=x onerror=alert(1)>"),
            "<img src=x onerror=alert(1)>"
        );
    }

    #[test]
    fn humans_read_sizes_and_durations() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(2_147_483_648), "2.0 GiB");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7620), "2h07m");
        assert_eq!(duration(273_600), "3d04h");
        let now: jiff::Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        assert_eq!(age(&json!("2026-12-03T11:59:00Z"), now), "1m00s");
        assert_eq!(age(&json!("garbage"), now), "-");
        assert_eq!(age(&json!(null), now), "-");
    }

    proptest! {
        #[test]
        fn clean_never_lets_a_control_character_through(s in any::<String>()) {
            prop_assert!(!clean(&s).chars().any(char::is_control));
        }

        #[test]
        fn any_json_is_a_cell(v in any::<String>().prop_map(|s| json!({"k": s, "a": [s.clone()]}))) {
            prop_assert!(!cell(&v).chars().any(char::is_control));
        }
    }
}
