//! The README's Rust examples are excerpts of code that runs.
//!
//! Every ```` ```rust ```` block of `README.md` must appear, line by line and
//! in order, inside one runnable unit: an example program under
//! `bulk-runtime/examples/` (CI runs each against the test server) or a
//! doctest of `bulk-runtime` or `bulk-derive` (run by the README's test
//! command against the test server). The unit may have more lines between
//! the README's (set-up, hidden `# ` lines, assertions); comments and blank
//! lines are ignored on both sides. So a README example that drifts from the
//! API, or from what it prints, fails here with the line that no longer
//! matches.

use std::fs;
use std::path::{Path, PathBuf};

/// One piece of code: where it is, and its lines, normalized.
struct Unit {
    place: String,
    lines: Vec<String>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate lives in the workspace").to_path_buf()
}

/// `line` without indentation and without a trailing `//` comment (one
/// outside a string literal); empty for a blank or comment-only line.
fn normalize(line: &str) -> String {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return line[..i].trim().to_owned(),
            _ => {}
        }
    }
    line.trim().to_owned()
}

fn normalized(lines: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<String> {
    lines.into_iter().map(|l| normalize(l.as_ref())).filter(|l| !l.is_empty()).collect()
}

/// The README's Rust blocks: the line each starts on, and its lines.
fn readme_blocks() -> Vec<(usize, Vec<String>)> {
    let text = fs::read_to_string(workspace().join("README.md")).expect("README.md is readable");
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for (n, line) in text.lines().enumerate() {
        if current.is_none() && line.starts_with("```rust") {
            current = Some((n + 1, Vec::new()));
        } else if line.starts_with("```") {
            if let Some(block) = current.take() {
                blocks.push(block);
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line.to_owned());
        }
    }
    blocks
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The doctests of a source file: the fenced blocks of its `//!` and `///`
/// comments, hidden lines (`# `) included, since they run too.
fn doctests(path: &Path, place: &str, out: &mut Vec<Unit>) {
    let text = fs::read_to_string(path).expect("a readable source file");
    let mut current: Option<(usize, Vec<String>)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let Some(doc) = trimmed.strip_prefix("//!").or_else(|| trimmed.strip_prefix("///")) else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.trim_start().starts_with("```") {
            match current.take() {
                Some((start, lines)) => {
                    out.push(Unit { place: format!("{place}:{start}"), lines: normalized(lines) });
                }
                None => {
                    let info = doc.trim_start().trim_start_matches('`');
                    // Only Rust blocks run: no info string, or one of Rust's.
                    let rust = info.is_empty() || info.split(',').any(|t| t == "rust" || t == "no_run");
                    if rust {
                        current = Some((n + 1, Vec::new()));
                    }
                }
            }
        } else if let Some((_, lines)) = current.as_mut() {
            let code = doc.strip_prefix("# ").unwrap_or(if doc.trim() == "#" { "" } else { doc });
            lines.push(code.to_owned());
        }
    }
}

fn units() -> Vec<Unit> {
    let root = workspace();
    let mut units = Vec::new();
    let mut examples = Vec::new();
    rust_files(&root.join("bulk-runtime/examples"), &mut examples);
    for path in examples {
        let text = fs::read_to_string(&path).expect("a readable example");
        let place = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
        units.push(Unit { place, lines: normalized(text.lines()) });
    }
    for krate in ["bulk-runtime/src", "bulk-derive/src"] {
        let mut sources = Vec::new();
        rust_files(&root.join(krate), &mut sources);
        for path in sources {
            let place = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
            doctests(&path, &place, &mut units);
        }
    }
    units
}

/// How many of `block`'s lines `unit` holds in order, counted from the start.
fn matched(block: &[String], unit: &[String]) -> usize {
    let mut rest = unit.iter();
    block.iter().take_while(|line| rest.any(|u| u == *line)).count()
}

#[test]
fn every_readme_example_is_an_excerpt_of_code_that_runs() {
    let units = units();
    assert!(units.len() > 10, "found only {} examples and doctests: is the layout still the same?", units.len());
    let blocks = readme_blocks();
    assert!(!blocks.is_empty(), "README.md has no ```rust blocks");
    let mut problems = Vec::new();
    for (start, lines) in blocks {
        let block = normalized(&lines);
        let best = units.iter().max_by_key(|u| matched(&block, &u.lines)).expect("at least one unit");
        let n = matched(&block, &best.lines);
        if n < block.len() {
            problems.push(format!(
                "README.md:{start}: line `{}` is not in any example or doctest after the lines before it \
                 (closest: {}, which matches the first {n} of {} lines)",
                block[n],
                best.place,
                block.len()
            ));
        }
    }
    assert!(problems.is_empty(), "README examples that no running code holds:\n{}", problems.join("\n"));
}

#[test]
fn normalize_drops_comments_outside_strings_only() {
    assert_eq!(normalize("    println!(\"{outcome}\"); // \"2 of 4\""), "println!(\"{outcome}\");");
    assert_eq!(normalize("let url = \"http://x\";"), "let url = \"http://x\";");
    assert_eq!(normalize("  // only a comment"), "");
    assert_eq!(matched(&["a".into(), "b".into()], &["a".into(), "x".into(), "b".into()]), 2);
    assert_eq!(matched(&["b".into(), "a".into()], &["a".into(), "b".into()]), 1);
}
