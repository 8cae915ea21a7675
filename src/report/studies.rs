//! `harness compare A B …`: two or more studies side by side, from their reports and logs
//! alone. What differs between their recipes (the config keys whose values differ between the
//! studies' cells of a shared arm), the arms they share with each one's final accuracy and
//! seconds per iteration, and every finding between two shared arms in one table, each as its
//! own report states it (its `findings.csv`: the value, its family-wise interval and its words);
//! one chart of the final-accuracy findings. Each interval is its own study's, family-wise over
//! that study's comparisons: nothing here compares two studies' numbers with an interval.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::compare::Finding;
use super::RunLog;
use crate::config::TrainConfig;
use crate::rundir::State;

/// One study: its folder, as named in the output, its grid's name and arms, its finished
/// cells and its findings.
struct Study {
    shown: PathBuf,
    name: String,
    arms: Vec<String>,
    done: Vec<RunLog>,
    cells: usize,
    splits: usize,
    findings: Vec<Finding>,
}

impl Study {
    fn load(dir: &Path, shown: &Path) -> Result<Study> {
        let (meta, runs, _) = super::load_runs(dir)?;
        let fpath = dir.join("findings.csv");
        if !fpath.is_file() {
            bail!("{}: no findings.csv: run `harness report {}` first", dir.display(), dir.display());
        }
        let mut r = csv::Reader::from_path(&fpath).with_context(|| format!("reading {}", fpath.display()))?;
        let findings = r.deserialize().collect::<std::result::Result<Vec<Finding>, _>>().with_context(|| format!("reading {}", fpath.display()))?;
        let cells = runs.len();
        let splits = runs.iter().filter_map(|r| r.split.as_ref().map(|s| s.index)).collect::<std::collections::BTreeSet<_>>().len();
        let done = runs.into_iter().filter(|r| r.state == State::Done).collect();
        Ok(Study { shown: shown.to_path_buf(), name: meta.name, arms: meta.arms, done, cells, splits, findings })
    }

    fn runs_of<'a>(&'a self, arm: &'a str) -> impl Iterator<Item = &'a RunLog> + 'a {
        self.done.iter().filter(move |r| r.arm == arm)
    }

    /// The interval of its findings (one family per study), as its report names it.
    fn family(&self) -> String {
        self.findings.first().map(|f| f.interval.clone()).unwrap_or_else(|| "—".into())
    }
}

/// The config keys (dotted) whose values differ between `configs`, each with its value in each
/// (`—` where a config lacks the key): the seed, the device and the image budget left out
/// (where a cell runs, not what it computes).
pub fn config_diff(configs: &[&TrainConfig]) -> Vec<(String, Vec<String>)> {
    let flat: Vec<Vec<(String, serde_json::Value)>> = configs
        .iter()
        .map(|c| {
            let mut out = Vec::new();
            crate::harness::grid::flatten("", &serde_json::to_value(c).unwrap_or_default(), &mut out);
            out
        })
        .collect();
    let mut keys: Vec<String> = Vec::new();
    for f in &flat {
        for (k, _) in f {
            if !keys.contains(k) && !["seed", "device", "dataset.cache_mib", "name"].contains(&k.as_str()) {
                keys.push(k.clone());
            }
        }
    }
    let show = |v: Option<&serde_json::Value>| match v {
        None => "—".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    keys.into_iter()
        .filter_map(|k| {
            let vals: Vec<Option<&serde_json::Value>> = flat.iter().map(|f| f.iter().find(|(x, _)| *x == k).map(|(_, v)| v)).collect();
            let differ = vals.iter().any(|v| *v != vals[0]);
            differ.then(|| (k, vals.into_iter().map(show).collect()))
        })
        .collect()
}

/// A finding's numbers as the report's Findings write them: a ratio to 2 decimals with an x, a
/// difference to 4 with its sign, the interval after.
fn fmt_finding(f: &Finding) -> String {
    let ratio = !f.measure.starts_with("final_");
    let fmt = |x: f64| if ratio { super::compare::compact_ratio(x) } else { format!("{x:+.4}") };
    let value = f.value.map(fmt).unwrap_or_else(|| "—".into());
    let ci = f.ci_lo.zip(f.ci_hi).map(|(l, h)| format!(" [{}, {}]", fmt(l), fmt(h))).unwrap_or_default();
    // the finding's words up to their explanation (`resolved below 0`, `not resolved`)
    let words = f.finding.split([':', '(']).next().unwrap_or("").trim();
    format!("{value}{ci} {words}")
}

fn mean_sd(v: &[f64]) -> String {
    match super::mean_std(v) {
        Some((m, s)) if v.len() > 1 => format!("{m:.4} ± {s:.4} ({})", v.len()),
        Some((m, _)) => format!("{m:.4} (1)"),
        None => "—".into(),
    }
}

/// The order of measures in the findings table: accuracy first, then the speed measures.
fn measure_rank(m: &str) -> usize {
    ["final_", "s_per_iter", "cpu_s_per_iter", "total_wall_s", "time_to_target"].iter().position(|p| m.starts_with(p)).unwrap_or(9)
}

/// A Markdown table's header: `first` then one column per study.
fn header(first: &str, studies: &[Study]) -> String {
    format!("| {first} | {} |\n|---|{}\n", studies.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(" | "), "---|".repeat(studies.len()))
}

/// The studies: cells, arms, cells per arm, splits, wall clock and their findings' interval.
fn studies_table(md: &mut String, studies: &[Study]) {
    md.push_str("\n| study | cells done | arms | finished cells per arm | splits | wall clock (finished cells) | its findings' interval |\n|---|---|---|---|---|---|---|\n");
    for s in studies {
        let per_arm = s.arms.iter().map(|a| s.runs_of(a).count()).max().unwrap_or(0);
        let wall: f64 = s.done.iter().filter_map(|r| r.rows.last().map(|x| x.wall_s)).sum();
        let splits = if s.splits > 0 { s.splits.to_string() } else { "one".into() };
        md.push_str(&format!("| [{}]({}/summary.md) | {} of {} | {} | {per_arm} | {splits} | {} | {} |\n", s.name, s.shown.display(), s.done.len(), s.cells, s.arms.len(), crate::fmt_duration(wall), s.family()));
    }
}

/// What differs between the studies' recipes: the first shared arm finished in every study,
/// its first finished cell in each (by split, then seed).
fn recipe_table(md: &mut String, studies: &[Study], shared: &[String]) {
    let Some(arm) = shared.iter().find(|a| studies.iter().all(|s| s.runs_of(a).any(|r| r.config.is_some()))) else { return };
    let configs: Vec<&TrainConfig> = studies.iter().filter_map(|s| s.runs_of(arm).filter(|r| r.config.is_some()).min_by_key(|r| (r.split.as_ref().map(|x| x.index), r.seed)).and_then(|r| r.config.as_ref())).collect();
    let diff = config_diff(&configs);
    md.push_str(&format!("\nWhat differs between the studies' recipes (the config of each one's first finished {arm} cell; seed and device left out):\n\n"));
    md.push_str(&header("key", studies));
    if diff.is_empty() {
        md.push_str(&format!("| (none) |{}\n", " |".repeat(studies.len())));
    }
    for (k, vals) in &diff {
        md.push_str(&format!("| `{k}` | {} |\n", vals.join(" | ")));
    }
}

/// The shared arms: final accuracy (mean ± sd over finished cells) and seconds per iteration.
fn arms_table(md: &mut String, studies: &[Study], shared: &[String]) {
    let metric = studies[0].findings.iter().find(|f| f.measure.starts_with("final_")).map(|f| f.measure.trim_start_matches("final_").to_string()).unwrap_or_else(|| "map_voc07".into());
    let m = crate::rundir::Metric::from_column(&metric).unwrap_or_default();
    md.push_str(&format!("\nThe arms they share: final {metric} (mean ± sd over finished cells, their count) and seconds per iteration (mean).\n\n"));
    md.push_str(&header("arm", studies));
    for a in shared {
        let cells: Vec<String> = studies
            .iter()
            .map(|s| {
                let finals: Vec<f64> = s.runs_of(a).filter_map(|r| r.rows.iter().rev().find_map(|x| x.map(m))).collect();
                let spi: Vec<f64> = s.runs_of(a).filter_map(|r| super::mean_std(&r.rows.iter().filter(|x| x.iterations > 0).map(|x| x.train_s / x.iterations as f64).collect::<Vec<_>>()).map(|x| x.0)).collect();
                let spi = super::mean_std(&spi).map(|x| format!("{:.3} s/iter", x.0)).unwrap_or_else(|| "—".into());
                format!("{}; {spi}", mean_sd(&finals))
            })
            .collect();
        md.push_str(&format!("| {a} | {} |\n", cells.join(" | ")));
    }
}

/// Every finding between two shared arms, accuracy first; returns the (baseline, arm, measure) keys.
fn findings_table(md: &mut String, studies: &[Study], shared: &[String]) -> Vec<(String, String, String)> {
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for s in studies {
        for f in &s.findings {
            let k = (f.baseline.clone(), f.arm.clone(), f.measure.clone());
            if shared.contains(&f.baseline) && shared.contains(&f.arm) && !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys.sort_by_key(|(b, a, m)| (measure_rank(m), shared.iter().position(|x| x == b), shared.iter().position(|x| x == a)));
    md.push_str("\nTheir findings between shared arms, each as its own report states it (the value, its family-wise interval over that study's comparisons, its words); no interval here compares one study with another.\n\n");
    md.push_str(&header("baseline / arm, measure", studies));
    for (b, a, m) in &keys {
        let cells: Vec<String> = studies.iter().map(|s| s.findings.iter().find(|f| (&f.baseline, &f.arm, &f.measure) == (b, a, m)).map(fmt_finding).unwrap_or_else(|| "—".into())).collect();
        md.push_str(&format!("| {b} / {a}, {m} | {} |\n", cells.join(" | ")));
    }
    keys
}

/// The studies in `dirs` side by side as Markdown, each named by the matching `shown` path (the
/// command line's); with `charts`, the final-accuracy findings' chart is drawn into that folder
/// and linked.
pub fn compare_md(dirs: &[PathBuf], shown: &[PathBuf], charts: Option<&Path>) -> Result<String> {
    if dirs.len() < 2 {
        bail!("compare needs two or more results directories (got {})", dirs.len());
    }
    let studies: Vec<Study> = dirs.iter().zip(shown).map(|(d, s)| Study::load(d, s)).collect::<Result<_>>()?;
    let shared: Vec<String> = studies[0].arms.iter().filter(|a| studies[1..].iter().all(|s| s.arms.contains(a))).cloned().collect();
    let cmd = shown.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ");
    let mut md = format!("<!-- generated by `harness compare {cmd}` from the studies' logs and reports -->\n");
    studies_table(&mut md, &studies);
    if shared.is_empty() {
        md.push_str("\nThe studies share no arm.\n");
        return Ok(md);
    }
    recipe_table(&mut md, &studies, &shared);
    arms_table(&mut md, &studies, &shared);
    let keys = findings_table(&mut md, &studies, &shared);
    if let Some(dir) = charts {
        let acc: Vec<&(String, String, String)> = keys.iter().filter(|k| k.2.starts_with("final_")).collect();
        if !acc.is_empty() {
            let labels: Vec<String> = acc.iter().map(|(b, a, _)| format!("{a} − {b}")).collect();
            let values: Vec<Vec<Option<(f64, f64, f64)>>> = studies
                .iter()
                .map(|s| acc.iter().map(|(b, a, m)| s.findings.iter().find(|f| (&f.baseline, &f.arm, &f.measure) == (b, a, m)).and_then(|f| f.value.zip(f.ci_lo).zip(f.ci_hi).map(|((v, l), h)| (v, l, h)))).collect())
                .collect();
            let names: Vec<String> = studies.iter().map(|s| s.name.clone()).collect();
            let file = super::charts::draw_compare(dir, &names, &labels, &values, &acc[0].2)?;
            md.push_str(&format!("\n![final-accuracy findings of each study]({file})\n"));
        }
    }
    Ok(md)
}
