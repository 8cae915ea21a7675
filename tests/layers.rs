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
