//! The prose is held to the committed reports, with no exemptions. README.md,
//! results/README.md, results/claim-a/README.md and docs/*.md state outcomes
//! only by quoting a generated line verbatim (`> ` quote lines): a study's
//! Verdicts or Findings line from its `summary.md`, or a claim-(a) sweep's
//! Findings line from its `claim_a.md`; and the README's claims table is
//! `harness claims results`' output as it comes. Every `[a, b]` of two
//! numbers in the prose must sit in such a quote or in that table, every
//! quote must be a generated line word for word, and every quoted Findings
//! line must agree with the row of `findings.csv` for the *same* comparison
//! and measure: its numbers to the digits printed, its interval and its
//! words. A number typed by hand, a word changed, or a quote left behind when
//! a study was re-run fails here.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `harness claims results`, run from the checkout's root.
fn claims() -> String {
    ohem_harness::report::claims::claims_md_as(&root().join("results"), Path::new("results")).unwrap()
}

fn prose_files() -> Vec<PathBuf> {
    let mut v = vec![root().join("README.md"), root().join("results/README.md"), root().join("results/claim-a/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs")).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "md")).collect();
    docs.sort();
    v.extend(docs);
    v
}

/// A generated line a quote may copy: the text after the "- " of a list item, and the study
/// whose findings.csv it must agree with (None for a claim-(a) sweep).
struct Generated {
    line: String,
    study: Option<PathBuf>,
    /// The folder under results/ it comes from: a study's name, or "claim-a" for every sweep.
    source: String,
    /// For an item nested under another (a verdict's remark), that item's line.
    parent: Option<String>,
}

/// Every generated line of the committed reports: the list items of each study's summary.md
/// and of each claim-(a) sweep's claim_a.md.
fn generated_lines() -> Vec<Generated> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root().join("results")).unwrap().flatten() {
        let dir = e.path();
        let (file, study) = if dir.join("summary.md").is_file() { (dir.join("summary.md"), Some(dir.clone())) } else { continue };
        let source = dir.file_name().unwrap().to_string_lossy().into_owned();
        // a list item, or one nested under it (a verdict's remarks), with its parent
        let mut head: Option<String> = None;
        for l in std::fs::read_to_string(file).unwrap().lines() {
            let Some(item) = l.trim_start().strip_prefix("- ") else { continue };
            let nested = l.starts_with(' ');
            if !nested {
                head = Some(item.to_string());
            }
            out.push(Generated { line: item.to_string(), study: study.clone(), source: source.clone(), parent: if nested { head.clone() } else { None } });
        }
    }
    for e in std::fs::read_dir(root().join("results/claim-a")).unwrap().flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path().join("claim_a.md")) {
            for l in text.lines().filter_map(|l| l.strip_prefix("- ")) {
                out.push(Generated { line: l.to_string(), study: None, source: "claim-a".into(), parent: None });
            }
        }
    }
    out
}

/// Whether a line holds an interval: `[a, b]` of two numbers (signs, decimals, an `x`).
fn has_interval(line: &str) -> bool {
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        if let Some((a, b)) = after[..close].split_once(", ") {
            if number(a).is_some() && number(b).is_some() {
                return true;
            }
        }
        rest = &after[close..];
    }
    false
}

/// A printed number's value ("−0.010" and "-0.010" → -0.01; "1.21x" → 1.21).
fn number(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches('x').replace('−', "-").replace('+', "");
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-') {
        return None;
    }
    s.parse().ok()
}

/// A Findings line parsed: (baseline, arm, measure, the value and interval as printed, interval text, words).
fn parse_finding(line: &str) -> Option<(String, String, String, String, String, String)> {
    let (what, rest) = line.split_once(": ")?;
    let (pair, measure) = what.split_once(", ")?;
    let (baseline, arm) = if let Some((b, a)) = pair.split_once(" / ") { (b, a) } else { let (a, b) = pair.split_once(" − ")?; (b, a) };
    let open = rest.find(" (")?;
    let numbers = &rest[..open];
    let after = &rest[open + 2..];
    let close = after.find("): ")?;
    Some((baseline.into(), arm.into(), measure.into(), numbers.into(), after[..close].into(), after[close + 3..].into()))
}

/// The Findings line findings.csv's row gives, formatted independently of the report's code:
/// a ratio to 2 decimals with an `x`, a difference to 4 with its sign; "—" without a value.
fn expected_finding(study: &Path, baseline: &str, arm: &str, measure: &str) -> Option<(String, String, String)> {
    let mut r = csv::Reader::from_path(study.join("findings.csv")).unwrap();
    for row in r.records().flatten() {
        if (&row[0], &row[1], &row[2]) != (baseline, arm, measure) {
            continue;
        }
        let ratio = !measure.starts_with("final_");
        let fmt = |s: &str| -> Option<String> { s.parse::<f64>().ok().map(|x| if ratio { format!("{x:.2}x") } else { format!("{x:+.4}") }) };
        let value = fmt(&row[3]).unwrap_or_else(|| "—".into());
        let ci = fmt(&row[4]).zip(fmt(&row[5])).map(|(l, h)| format!(" [{l}, {h}]")).unwrap_or_default();
        return Some((format!("{value}{ci}"), row[6].to_string(), row[7].to_string()));
    }
    None
}

/// The last `results/<name>` a line names: the study its quotes below come from.
fn named_source(line: &str) -> Option<String> {
    let i = line.rfind("results/")?;
    let name: String = line[i + 8..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    (!name.is_empty()).then_some(name)
}

/// What is wrong with one prose text: intervals outside quotes and the claims table, quotes
/// that are no generated line of the study the text last named (`results/<study>`), quoted
/// findings that disagree with their CSV row.
fn check(name: &str, text: &str, generated: &[Generated], claims: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let claims_block: Vec<&str> = claims.lines().collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut in_claims = vec![false; lines.len()];
    if let Some(start) = lines.iter().position(|l| l.starts_with("<!-- generated by `harness claims")) {
        let end = start + claims_block.len();
        if lines.get(start..end) != Some(&claims_block[..]) {
            bad.push(format!("{name}:{}: the claims table is not `harness claims results`' output as it comes", start + 1));
        }
        for f in in_claims.iter_mut().skip(start).take(claims_block.len()) {
            *f = true;
        }
    }
    // a `harness compare A B …` table: that command's output as it comes
    for start in (0..lines.len()).filter(|&i| lines[i].starts_with("<!-- generated by `harness compare ")) {
        let args: Vec<PathBuf> = lines[start]["<!-- generated by `harness compare ".len()..].split('`').next().unwrap_or("").split_whitespace().map(PathBuf::from).collect();
        let dirs: Vec<PathBuf> = args.iter().map(|a| root().join(a)).collect();
        let block = ohem_harness::report::studies::compare_md(&dirs, &args, None).unwrap();
        let block: Vec<&str> = block.lines().collect();
        if lines.get(start..start + block.len()) != Some(&block[..]) {
            bad.push(format!("{name}:{}: the compare table is not `harness compare`' output as it comes", start + 1));
        }
        for f in in_claims.iter_mut().skip(start).take(block.len()) {
            *f = true;
        }
    }
    let mut source: Option<String> = None;
    // the last quoted top-level item: a nested quote must be one of its own remarks
    let mut head: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        let at = format!("{name}:{}", i + 1);
        if in_claims[i] {
            continue;
        }
        let Some(quote) = line.strip_prefix("> ") else {
            if has_interval(line) {
                bad.push(format!("{at}: an interval outside a quote of a generated line: {line}"));
            }
            if let Some(s) = named_source(line) {
                source = Some(s);
            }
            continue;
        };
        let item = quote.trim_start().strip_prefix("- ");
        let q = item.unwrap_or(quote);
        let nested = item.is_some() && quote.starts_with(' ');
        if item.is_some() && !nested {
            head = Some(q.to_string());
        }
        let parent = if nested { head.clone() } else { None };
        let Some(g) = generated.iter().find(|g| g.line == q && Some(&g.source) == source.as_ref() && (!nested || g.parent == parent)) else {
            if has_interval(q) || !q.trim().is_empty() && item.is_some() {
                bad.push(format!("{at}: a quote that is no generated line of results/{} (the study the text last named): {q}", source.as_deref().unwrap_or("?")));
            }
            continue;
        };
        if let (Some(study), Some((b, a, m, nums, interval, words))) = (&g.study, parse_finding(q)) {
            if !q.starts_with('"') {
                match expected_finding(study, &b, &a, &m) {
                    Some((n, i, w)) if n == nums && i == interval && w == words => {}
                    Some((n, i, w)) => bad.push(format!("{at}: {b} / {a}, {m}: quoted \"{nums}\" ({interval}): {words}; findings.csv has \"{n}\" ({i}): {w}")),
                    None => bad.push(format!("{at}: no row of {}/findings.csv for {b}, {a}, {m}", study.display())),
                }
            }
        }
    }
    bad
}

#[test]
fn the_prose_quotes_the_reports_and_states_no_interval_of_its_own() {
    let generated = generated_lines();
    assert!(generated.len() > 200, "only {} generated lines found", generated.len());
    let claims = claims();
    let committed = std::fs::read_to_string(root().join("results/claims.md")).unwrap();
    assert_eq!(committed, claims, "results/claims.md is not what `harness claims results --out results/claims.md` writes now");
    let mut bad = Vec::new();
    let mut quotes = 0;
    for f in prose_files() {
        let name = f.strip_prefix(root()).unwrap_or(&f).display().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        quotes += text.lines().filter(|l| l.starts_with("> - ")).count();
        bad.extend(check(&name, &text, &generated, &claims));
    }
    assert!(quotes >= 30, "only {quotes} quoted lines in the prose");
    assert!(bad.is_empty(), "prose that is not the reports' own words:\n{}", bad.join("\n"));
}

/// The check can fail: one changed word, one changed digit, an interval of the wrong
/// comparison, an interval typed outside a quote, and a claims table edited by hand.
#[test]
fn the_check_finds_a_changed_word_digit_or_comparison() {
    let generated = generated_lines();
    let claims = claims();
    let line = std::fs::read_to_string(root().join("results/convergence/summary.md")).unwrap().lines().find(|l| l.starts_with("- ohem − hnm, final_map_voc07")).unwrap().to_string();
    let ok = format!("A study, `results/convergence`.\n\n>{}\n", &line[1..].replacen("- ", " - ", 1));
    assert!(check("t", &ok, &generated, &claims).is_empty(), "{:?}", check("t", &ok, &generated, &claims));
    // one word changed in the quoted sentence
    let word = ok.replace("ends lower than", "ends below");
    assert_ne!(word, ok);
    assert!(!check("t", &word, &generated, &claims).is_empty());
    let word = ok.replace("not resolved", "resolved").replace("resolved below", "not resolved below");
    assert!(!check("t", &word, &generated, &claims).is_empty());
    // one digit
    let digit = ok.replacen("-0.0", "-0.1", 1);
    assert!(!check("t", &digit, &generated, &claims).is_empty());
    // the interval of another comparison under this one's name
    let other = std::fs::read_to_string(root().join("results/convergence/summary.md")).unwrap().lines().find(|l| l.starts_with("- ohem − frcn, final_map_voc07")).unwrap().to_string();
    let swapped = format!("results/convergence\n> {}", other.replace("ohem − frcn", "ohem − hnm"));
    assert!(!check("t", &swapped, &generated, &claims).is_empty());
    // a true line of one study quoted under another's name
    assert!(!check("t", &ok.replace("results/convergence", "results/speedup"), &generated, &claims).is_empty());
    // the same numbers typed as prose
    assert!(!check("t", "OHEM ends lower, −0.018 [−0.026, −0.010].", &generated, &claims).is_empty());
    // the claims table edited
    let mut table = format!("Intro.\n\n{claims}\nAfter.\n");
    assert!(check("t", &table, &generated, &claims).is_empty(), "{:?}", check("t", &table, &generated, &claims));
    table = table.replacen("not resolved", "supported", 1);
    assert!(!check("t", &table, &generated, &claims).is_empty());
    // a compare table: as the command prints it, and edited
    let cmp = ohem_harness::report::studies::compare_md(&[root().join("results/convergence"), root().join("results/trees")], &[PathBuf::from("results/convergence"), PathBuf::from("results/trees")], None).unwrap();
    let page = format!("Intro.\n\n{cmp}\nAfter.\n");
    assert!(check("t", &page, &generated, &claims).is_empty(), "{:?}", check("t", &page, &generated, &claims));
    assert!(!check("t", &page.replacen("resolved below 0", "resolved above 0", 1), &generated, &claims).is_empty());
    // a findings row parsed both ways round
    let (b, a, m, nums, _, words) = parse_finding("hnm / ohem, total_wall_s: 1.14x [1.03x, 1.26x] (Bonferroni over 20 (99.75%)): resolved above 1: ohem is faster than hnm in total_wall_s").unwrap();
    assert_eq!((b.as_str(), a.as_str(), m.as_str(), nums.as_str()), ("hnm", "ohem", "total_wall_s", "1.14x [1.03x, 1.26x]"));
    assert!(words.starts_with("resolved above 1"));
}

/// `harness claims`: the table from the command line is the function's, `--out` writes it,
/// and a folder that does not exist is an error naming it.
#[test]
fn the_claims_command_writes_the_table() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("claims.md");
    let results = root().join("results");
    let (ok, _, err) = crate::util::harness(&["claims", results.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written, ohem_harness::report::claims::claims_md(&results).unwrap());
    assert!(written.contains("| OHEM trains about 2x faster than offline hard-negative mining (time to target) |"), "{written}");
    let (ok, _, err) = crate::util::harness(&["claims", "/no/such/results"]);
    assert!(!ok && err.contains("/no/such/results") && !err.contains("panicked"), "{err}");
}

/// Copies `from` into `to`, folders and files (the cells' logs, the grid, the sweep's CSV).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Every committed report is what the code writes now from its committed logs: each study
/// regenerated in a copy (`harness report`) gives the same summary.md and tables, byte for
/// byte, and each claim-(a) sweep replotted from its CSV the same claim_a.md and CSV. A quote
/// of a committed line is then a quote of what main produces, and regenerating twice is a no-op.
#[test]
fn the_committed_reports_are_what_the_code_writes_now() {
    let t = tempfile::tempdir().unwrap();
    let mut studies = 0;
    for e in std::fs::read_dir(root().join("results")).unwrap().flatten() {
        let dir = e.path();
        // a study with its report (one still running, its folder not yet committed, has none)
        if !dir.join("grid.json").is_file() || !dir.join("summary.md").is_file() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let copy = t.path().join(&name);
        copy_tree(&dir, &copy);
        ohem_harness::report::generate(&copy).unwrap();
        for f in ["summary.md", "summary.csv", "speedups.csv", "map_diffs.csv", "verdicts.csv", "findings.csv", "mining.csv", "runs.csv", "across_splits.csv"] {
            // mining.csv only where an arm mined, across_splits.csv only over splits or outcomes
            if ["mining.csv", "across_splits.csv"].contains(&f) && !copy.join(f).exists() {
                assert!(!dir.join(f).exists(), "results/{name}/{f} is committed but `harness report results/{name}` no longer writes it");
                continue;
            }
            let now = std::fs::read_to_string(copy.join(f)).unwrap().replace(&copy.display().to_string(), &format!("results/{name}"));
            let committed = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(now == committed, "results/{name}/{f} is not what `harness report results/{name}` writes now");
        }
        studies += 1;
    }
    assert!(studies >= 7, "{studies} studies");
    for e in std::fs::read_dir(root().join("results/claim-a")).unwrap().flatten() {
        if !e.path().join("claim_a.csv").is_file() {
            continue;
        }
        let copy = t.path().join("claim-a").join(e.file_name());
        copy_tree(&e.path(), &copy);
        ohem_harness::bench::replot_claim_a(&copy).unwrap();
        for f in ["claim_a.md", "claim_a.csv"] {
            assert!(std::fs::read(copy.join(f)).unwrap() == std::fs::read(e.path().join(f)).unwrap(), "results/claim-a/{}/{f} is not what --replot writes now", e.file_name().to_string_lossy());
        }
    }
}

/// Issue 39: the charts draw what the words use. Regenerated from each committed study's logs,
/// the speed-up chart of a verdict's baseline names the verdict's band (from verdicts.csv,
/// formatted here), the time-to-target curve names its band and the report's target, and a
/// family-wise whisker that runs past 10^4 (an interval that says nothing, speedups.csv) is
/// cut with its end written.
#[test]
fn the_charts_draw_the_claims_bands_the_target_and_cut_whiskers() {
    let t = tempfile::tempdir().unwrap();
    let (mut bands, mut cuts) = (0, 0);
    for e in std::fs::read_dir(root().join("results")).unwrap().flatten() {
        let dir = e.path();
        if !dir.join("grid.json").is_file() || !dir.join("summary.md").is_file() {
            continue;
        }
        let copy = t.path().join(dir.file_name().unwrap());
        copy_tree(&dir, &copy);
        ohem_harness::report::generate(&copy).unwrap();
        let svg = |name: &str| std::fs::read_to_string(copy.join(name)).unwrap_or_default().replace("&apos;", "'");
        let stem = |b: &str| b.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect::<String>();
        let mut r = csv::Reader::from_path(copy.join("verdicts.csv")).unwrap();
        for row in r.records().flatten() {
            let (baseline, arm, measure) = (&row[1], &row[2], &row[3]);
            let (lo, hi): (f64, f64) = (row[5].parse().unwrap(), row[6].parse().unwrap());
            let chart = svg(&format!("speedup_vs_{}.svg", stem(baseline)));
            assert!(chart.contains(&format!("{measure}: {lo:.2}-{hi:.2}x")), "{}: speedup_vs_{baseline}.svg lacks the band of {arm}, {measure}", dir.display());
            bands += 1;
            if measure == "time_to_target" && copy.join("target_curve.csv").is_file() {
                let curve = svg("ttt_ratio_vs_target.svg");
                assert!(curve.contains(&format!("claim band, {baseline} / {arm}: {lo:.2}-{hi:.2}x")) && curve.contains("the report's target, 0."), "{}: the curve lacks its band or target", dir.display());
            }
        }
        let mut r = csv::Reader::from_path(copy.join("speedups.csv")).unwrap();
        for row in r.records().flatten() {
            if let Ok(hi) = row[8].parse::<f64>() {
                if hi >= 1e4 {
                    assert!(svg(&format!("speedup_vs_{}.svg", stem(&row[0]))).contains(&format!("to {hi:.1e}x")), "{}: {} / {} {}: the whisker to {hi} is not cut and written", dir.display(), &row[0], &row[1], &row[2]);
                    cuts += 1;
                }
            }
        }
    }
    assert!(bands >= 5 && cuts >= 3, "{bands} bands and {cuts} cut whiskers checked");
}
