//! The README's lists checked against the code they describe, so that they cannot drift:
//! the `sftpgate serve` settings table against the flags clap knows (names, and each
//! default `--help` states), the `/metrics` names against what a live gateway serves,
//! the audit events against every `event = "..."` the source logs, and the load test's
//! figure against tests/load.rs.
//! (The Failure reasons paragraph is checked against the `Reason` enum by a unit test in
//! src/api/reason.rs.) The table's prose is the README's own, so it is checked, not
//! generated.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// The text from the line starting with `start` to the next line starting with `end`.
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("the README has no {start:?}"));
    let rest = &text[from..];
    let to = rest[start.len()..]
        .find(end)
        .map_or(rest.len(), |i| i + start.len());
    &rest[..to]
}

/// `--flag` -> the `[default: ...]` its `--help` text states, if any.
fn help_flags() -> Vec<(String, Option<String>)> {
    let out = Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed
            .strip_prefix("--")
            .filter(|_| line.starts_with("  "))
        {
            let name = rest.split([' ', '=', '<']).next().unwrap_or("");
            if line.len() - trimmed.len() <= 6 {
                flags.push((format!("--{name}"), None));
                continue;
            }
        }
        if let Some(last) = flags.last_mut() {
            let doc = last.1.take().unwrap_or_default() + " " + trimmed;
            last.1 = Some(doc);
        }
    }
    flags
        .into_iter()
        .map(|(name, doc)| {
            let doc = doc.unwrap_or_default();
            let default = doc
                .split_once("[default: ")
                .and_then(|(_, d)| d.split_once(']'))
                .map(|(d, _)| d.split_whitespace().collect::<Vec<_>>().join(" "));
            (name, default)
        })
        .collect()
}

/// Asserts `readme` and `code` hold the same names, saying which side lacks which.
fn assert_same(readme: &BTreeSet<String>, code: &BTreeSet<String>, r: &str, c: &str) {
    let only_readme: Vec<_> = readme.difference(code).collect();
    let only_code: Vec<_> = code.difference(readme).collect();
    assert!(
        only_readme.is_empty() && only_code.is_empty(),
        "{r} but not {c}: {only_readme:?}; {c} but not {r}: {only_code:?}"
    );
}

#[test]
fn the_settings_table_lists_every_flag_with_its_default() {
    let readme = readme();
    let table = section(
        &readme,
        "## `sftpgate serve` settings",
        "Once both listeners",
    );
    // Each row: the flags it names (first cell) and its default (second cell).
    let mut rows: Vec<(Vec<String>, String)> = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `--")) {
        let (first, rest) = line[1..].split_once(" | ").unwrap();
        let flags = first
            .split('`')
            .filter(|s| s.starts_with("--"))
            .map(|s| s.split(' ').next().unwrap().to_string())
            .collect();
        rows.push((flags, rest.replace('`', "")));
    }
    let in_readme: BTreeSet<String> = rows.iter().flat_map(|(f, _)| f.clone()).collect();
    let help = help_flags();
    let in_help: BTreeSet<String> = help
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != "--help")
        .collect();
    assert_same(
        &in_readme,
        &in_help,
        "flags in the README's settings table",
        "flags of `sftpgate serve`",
    );
    for (flag, default) in help {
        let Some(default) = default else { continue };
        let (_, cell) = rows.iter().find(|(f, _)| f.contains(&flag)).unwrap();
        assert!(
            cell.contains(&default),
            "{flag}: --help says the default is {default:?}, the README says {cell:?}"
        );
    }
}

#[test]
fn the_metrics_list_is_what_the_gateway_serves() {
    let g = Gateway::start();
    let out = Command::new("curl")
        .args(["-sS", "--fail", &format!("http://{}/metrics", g.admin)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let served: BTreeSet<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    assert!(served.len() > 10, "{served:?}");
    let readme = readme();
    // The names the README gives as metrics: `sftpgate_...` in backticks, with or without
    // labels, in the /metrics bullet and the events' metrics paragraph.
    let mut listed = BTreeSet::new();
    for part in [
        section(&readme, "- `GET /metrics`", "- `GET /openapi.json`"),
        section(&readme, "### Events: the hook", "\n## "),
    ] {
        for quoted in part.split('`').skip(1).step_by(2) {
            let name = quoted.split('{').next().unwrap();
            if name.starts_with("sftpgate_")
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                listed.insert(name.to_string());
            }
        }
    }
    assert_same(
        &listed,
        &served,
        "metrics in the README",
        "metrics the gateway serves",
    );
}

/// Every `event = "name"` in the files below `dir` (all of them are audit events).
fn logged_events(dir: &std::path::Path, into: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            logged_events(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let source = std::fs::read_to_string(&path).unwrap();
            for (_, rest) in source
                .match_indices("event = \"")
                .map(|(i, _)| source.split_at(i + 9))
            {
                let name = rest.split('"').next().unwrap();
                into.insert(name.to_string());
            }
        }
    }
}

#[test]
fn the_audit_events_list_is_every_event_the_code_logs() {
    let mut logged = BTreeSet::new();
    logged_events(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut logged,
    );
    assert!(logged.len() > 20, "{logged:?}");
    let readme = readme();
    let list = section(&readme, "Audit events (target `audit`", "keys appear by");
    // The names come after "(target `audit`, field `event`):".
    let (_, list) = list.split_once("):").unwrap();
    let listed: BTreeSet<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        .map(str::to_string)
        .collect();
    assert_same(
        &listed,
        &logged,
        "audit events in the README",
        "events the source logs",
    );
}

/// The README's figure for the load test is the number of uploads the test runs (it once
/// said 200 where the test ran 300).
#[test]
fn the_load_figure_is_the_tests() {
    let load = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/load.rs"))
        .expect("tests/load.rs");
    let n = load
        .split_once("let n = ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .map(|(n, _)| n.trim().to_string())
        .expect("tests/load.rs sets `let n = ...;`");
    let readme = readme();
    let said = format!("Load (`tests/load.rs`): {n} concurrent `sftp` uploads");
    assert!(readme.contains(&said), "the README should say: {said}");
}
