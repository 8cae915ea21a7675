//! The prose is held to the committed numbers: every interval that README.md,
//! results/README.md and docs/*.md quote must be one that a committed study's
//! CSV holds (a `*_lo` column and its `*_hi` twin, in one row), to the digits
//! quoted. An interval typed by hand, or left behind when a study was re-run,
//! fails here.

use std::path::PathBuf;

/// Intervals quoted in prose that are not computed intervals of a study: the
/// claim's band and the minibatch sizes.
const NOT_STUDY_INTERVALS: &[&str] = &["[1.6, 2.5]", "[64, 128]", "[0.93, 0.99]"];

/// Intervals the prose quotes that no report computes, each marked as such
/// where it is quoted: paired t-intervals computed by hand from the cells'
/// `metrics.csv` between two arms neither of which is a baseline of the grid
/// (so not a row of its report), and one from a study that is no longer
/// committed. Every entry is a debt: a report row for the pair removes it.
const HAND_COMPUTED: &[(&str, &str)] = &[
    ("docs/studies.md", "[1.48, 1.53]"),      // the earlier, sequential claim-(a) study on another CPU
    ("docs/studies.md", "[−0.044, −0.032]"),  // speedup: ohem − frcn (frcn is no baseline of that grid)
    ("docs/studies.md", "[0.023, 0.035]"),    // speedup: ohem-nonms − ohem
    ("docs/studies.md", "[+0.029, +0.058]"),  // ablation: ohem-nms0.7 − all-rois
    ("docs/studies.md", "[+0.007, +0.029]"),  // strategies: ohem-mmdet − ohem
    ("docs/studies.md", "[−0.001, +0.004]"),  // strategies: pisa − iou-balanced
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(lo, hi)` pairs of every committed results CSV.
fn committed_intervals() -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut stack = vec![root().join("results")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "cells") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "csv") {
                let mut r = csv::Reader::from_path(&p).unwrap();
                let heads: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
                let pairs: Vec<(usize, usize)> = heads
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| h.strip_suffix("_lo").and_then(|stem| heads.iter().position(|g| *g == format!("{stem}_hi")).map(|j| (i, j))))
                    .collect();
                for row in r.records().flatten() {
                    for &(i, j) in &pairs {
                        if let (Some(Ok(lo)), Some(Ok(hi))) = (row.get(i).map(str::parse::<f64>), row.get(j).map(str::parse::<f64>)) {
                            out.push((lo, hi));
                        }
                    }
                }
            }
        }
    }
    out
}

/// A quoted number: its value and its decimals ("−0.010" → (-0.01, 3); "1.21x" → (1.21, 2)).
fn number(s: &str) -> Option<(f64, usize)> {
    let s = s.trim().trim_end_matches('x').replace('−', "-").replace('+', "");
    let d = s.split_once('.').map(|(_, f)| f.len()).unwrap_or(0);
    s.parse().ok().map(|v| (v, d))
}

/// Every `[a, b]` of two numbers in a text, with its line.
fn quoted(text: &str) -> Vec<(usize, String, (f64, usize), (f64, usize))> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(open) = rest.find('[') {
            let after = &rest[open + 1..];
            let Some(close) = after.find(']') else { break };
            let inner = &after[..close];
            if let Some((a, b)) = inner.split_once(", ") {
                if let (Some(x), Some(y)) = (number(a), number(b)) {
                    out.push((n + 1, format!("[{inner}]"), x, y));
                }
            }
            rest = &after[close..];
        }
    }
    out
}

fn prose_files() -> Vec<PathBuf> {
    let mut v = vec![root().join("README.md"), root().join("results/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs")).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "md")).collect();
    docs.sort();
    v.extend(docs);
    v
}

fn matches(q: (f64, usize), v: f64) -> bool {
    (v - q.0).abs() <= 0.5 * 10f64.powi(-(q.1 as i32)) + 1e-9
}

/// Whether the quoted `[lo, hi]` is the committed `[a, b]`, or the same
/// comparison the other way round: `[-b, -a]` for a difference quoted as
/// baseline − arm, `[1/b, 1/a]` for a ratio quoted as arm / baseline.
fn holds(lo: (f64, usize), hi: (f64, usize), a: f64, b: f64) -> bool {
    (matches(lo, a) && matches(hi, b)) || (matches(lo, -b) && matches(hi, -a)) || (a > 0.0 && matches(lo, 1.0 / b) && matches(hi, 1.0 / a))
}

#[test]
fn every_quoted_interval_is_in_a_committed_csv() {
    let known = committed_intervals();
    assert!(known.len() > 100, "the committed studies' CSVs hold {} intervals", known.len());
    let mut missing = Vec::new();
    let mut checked = 0;
    for f in prose_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, s, lo, hi) in quoted(&text) {
            let name = f.strip_prefix(root()).unwrap_or(&f).display().to_string();
            if NOT_STUDY_INTERVALS.contains(&s.as_str()) || lo.1 == 0 || HAND_COMPUTED.contains(&(name.as_str(), s.as_str())) {
                continue;
            }
            checked += 1;
            if !known.iter().any(|&(a, b)| holds(lo, hi, a, b)) {
                missing.push(format!("{name}:{line}: {s}"));
            }
        }
    }
    assert!(checked > 50, "only {checked} intervals found in the prose");
    assert!(missing.is_empty(), "intervals quoted in prose that no committed CSV holds:\n{}", missing.join("\n"));
}

#[test]
fn the_check_finds_a_wrong_digit() {
    let known = vec![(-0.0255, -0.0098)];
    let q = quoted("OHEM ends below HNM, −0.018 [−0.026, −0.010], resolved; a typo [−0.026, −0.011]");
    assert_eq!(q.len(), 2);
    let ok = |i: usize| known.iter().any(|&(a, b)| holds(q[i].2, q[i].3, a, b));
    assert!(ok(0) && !ok(1));
    // the same comparison the other way round
    let q = quoted("HNM ends 0.018 [0.010, 0.026] above OHEM");
    assert!(holds(q[0].2, q[0].3, -0.0255, -0.0098));
}
