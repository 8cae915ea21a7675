//! Which module may import which: the typed configuration depends on no
//! pipeline stage, and the model and the report know no sampler.

use std::path::{Path, PathBuf};

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code lines (comments left out) under `paths` that mention `needle`.
fn mentions(paths: &[&str], needle: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for p in paths {
        let p = root.join(p);
        if p.is_dir() {
            rs_files(&p, &mut files);
        } else {
            files.push(p);
        }
    }
    let mut hits = Vec::new();
    for f in files {
        for (n, l) in std::fs::read_to_string(&f).unwrap().lines().enumerate() {
            if l.contains(needle) && !l.trim_start().starts_with("//") {
                hits.push(format!("{}:{}: {}", f.display(), n + 1, l.trim()));
            }
        }
    }
    hits
}

/// config → proposals → data → config was a circle: the configuration, which
/// every stage reads, now imports no pipeline stage for its types (selective
/// search's parameters live in config and proposals re-exports them).
#[test]
fn config_imports_no_proposals_and_model_and_report_no_sampler() {
    let hits = mentions(&["src/config.rs"], "crate::proposals");
    assert!(hits.is_empty(), "{}", hits.join("\n"));
    let hits = mentions(&["src/model", "src/report"], "crate::sampler");
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}

/// The selective-search parameters serialise as before: they are part of the
/// proposal cache's key, so moving them must not change a key.
#[test]
fn selective_search_parameters_serialise_as_before() {
    let d = ohem_harness::proposals::SsParams::default();
    assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"mode":"fast","sigma":0.8,"min_side":6,"max_boxes":2000}"#);
    assert_eq!(ohem_harness::config::ProposalConfig::default().ss_params(), d);
}

/// The lines of each function body under src/ (from its `fn` line to the brace that closes
/// it; braces inside strings, characters and comments do not count).
fn function_lengths() -> Vec<(usize, String)> {
    let mut files = Vec::new();
    rs_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "pub(super) fn ", "async fn ", "unsafe fn ", "pub unsafe fn ", "const fn ", "pub const fn "].iter().any(|p| t.starts_with(p));
            if !is_fn {
                continue;
            }
            // from the body's opening brace to its match
            let (mut depth, mut opened, mut end) = (0i64, false, None);
            'scan: for (j, line) in lines.iter().enumerate().skip(i) {
                let (mut in_str, mut chars) = (false, line.chars().peekable());
                while let Some(c) = chars.next() {
                    match c {
                        '\\' if in_str => {
                            chars.next();
                        }
                        '"' => in_str = !in_str,
                        '/' if !in_str && chars.peek() == Some(&'/') => break,
                        '\'' if !in_str => {
                            // a char literal such as '{' or '\'' (a lifetime has no closing quote nearby)
                            let rest: String = chars.clone().take(3).collect();
                            if rest.starts_with("\\") || rest.chars().nth(1) == Some('\'') {
                                for _ in 0..if rest.starts_with("\\") { 3 } else { 2 } {
                                    chars.next();
                                }
                            }
                        }
                        '{' if !in_str => {
                            depth += 1;
                            opened = true;
                        }
                        '}' if !in_str => depth -= 1,
                        ';' if !in_str && !opened && depth == 0 => break 'scan, // a declaration without a body
                        _ => {}
                    }
                }
                if opened && depth == 0 {
                    end = Some(j);
                    break;
                }
            }
            if let Some(j) = end {
                out.push((j - i + 1, format!("{}:{}", f.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&f).display(), i + 1)));
            }
        }
    }
    out
}

/// No function in src/ runs over 100 lines: a longer one is split into the steps it takes.
#[test]
fn no_function_is_over_100_lines() {
    let all = function_lengths();
    assert!(all.len() > 500, "the scan found {} functions", all.len());
    let long: Vec<String> = all.iter().filter(|(n, _)| *n > 100).map(|(n, at)| format!("{at}: {n} lines")).collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}
