//! Output helpers that match docker's: human sizes and durations (go-units), tab-aligned
//! tables, and the `--format` mini template language (`{{.Field}}`, `table`, `json`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// go-units `HumanSizeWithPrecision(size, 3)`: decimal units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", sig3(v), UNITS[i])
}

fn sig3(v: f64) -> String {
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// go-units `HumanDuration`, as in docker's CREATED column.
pub fn human_duration(secs: i64) -> String {
    let minutes = secs / 60;
    let hours = ((secs as f64) / 3600.0 + 0.5) as i64;
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", secs / 3600 / 24 / 365)
    }
}

pub fn since(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => format!("{} ago", human_duration((Utc::now() - t).num_seconds())),
        None => "N/A".into(),
    }
}

/// Go's tabwriter as docker configures it (minwidth 10, padding 3).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count() + 3).max(10);
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(widths[i] - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A parsed `--format` value.
pub enum Format {
    Table(Vec<String>),
    Template(String, bool),
    Json,
}

impl Format {
    /// `None` is docker's default table with the given columns.
    pub fn parse(f: Option<&str>, default_cols: &[&str]) -> Format {
        match f {
            None | Some("") | Some("table") => {
                Format::Table(default_cols.iter().map(|s| s.to_string()).collect())
            }
            Some("json") => Format::Json,
            Some(t) => match t.strip_prefix("table") {
                Some(rest) => Format::Template(rest.trim_start().to_string(), true),
                None => Format::Template(t.to_string(), false),
            },
        }
    }
}

/// Renders `{{.Field}}` (and `{{json .}}`) against a row of named values; `\t` separates
/// table cells.
pub fn render(template: &str, row: &BTreeMap<&str, String>) -> String {
    let template = template.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = rest[start + 2..start + end].trim();
        if expr == "json ." {
            out.push_str(&serde_json::to_string(row).unwrap_or_default());
        } else if let Some(field) = expr.strip_prefix('.') {
            out.push_str(row.get(field).map(String::as_str).unwrap_or("<no value>"));
        } else if let Some(field) = expr.strip_prefix("json .") {
            out.push_str(
                &serde_json::to_string(row.get(field).map(String::as_str).unwrap_or(""))
                    .unwrap_or_default(),
            );
        } else {
            out.push_str(&rest[start..start + end + 2]);
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Header cell for a template field: `{{.CreatedSince}}` → `CREATED`, as docker names them.
pub fn header_for(template: &str, names: &BTreeMap<&str, &str>) -> String {
    let mut row = BTreeMap::new();
    for (k, v) in names {
        row.insert(*k, v.to_string());
    }
    render(template, &row)
}

/// Prints rows for a template, tab-aligned when it is a table.
pub fn print_rows(
    template: &str,
    table_mode: bool,
    header: &BTreeMap<&str, &str>,
    rows: &[BTreeMap<&str, String>],
) {
    if table_mode {
        let mut cells: Vec<Vec<String>> = vec![header_for(template, header)
            .split('\t')
            .map(str::to_string)
            .collect()];
        for r in rows {
            cells.push(
                render(template, r)
                    .split('\t')
                    .map(str::to_string)
                    .collect(),
            );
        }
        print!("{}", table(&cells));
    } else {
        for r in rows {
            println!("{}", render(template, r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_236_000), "1.24MB");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(105_300), "105kB");
        assert_eq!(human_size(77_800_000), "77.8MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }

    #[test]
    fn durations_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(30), "30 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(20 * 86400), "2 weeks");
    }

    #[test]
    fn templates() {
        let mut row = BTreeMap::new();
        row.insert("Repository", "busybox".to_string());
        row.insert("Tag", "latest".to_string());
        assert_eq!(render("{{.Repository}}:{{.Tag}}", &row), "busybox:latest");
        assert_eq!(render("{{ .Missing }}", &row), "<no value>");
        assert_eq!(render("{{json .Tag}}", &row), "\"latest\"");
        let t = table(&[
            vec!["REPOSITORY".into(), "TAG".into()],
            vec!["busybox".into(), "latest".into()],
        ]);
        assert_eq!(t, "REPOSITORY   TAG\nbusybox      latest\n");
    }
}
