//! The run-directory format: files written atomically and cleaned up on failure,
//! `mining.csv` unchanged column for column, pre-emption recorded as a typed phase.

use ohem_harness::rundir::{read_mining, read_phase, write_file, write_mining, MiningRow, MiningStats, Phase, PhaseKind, Preempted, PROGRESS};

#[test]
fn a_failed_atomic_write_leaves_no_temporary_file_and_the_old_file_intact() {
    let t = tempfile::tempdir().unwrap();
    // the target is a non-empty directory: writing the temporary file works, the rename fails
    let target = t.path().join("manifest.json");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    let err = write_file(&target, b"{}").unwrap_err().to_string();
    assert!(err.contains("manifest.json"), "{err}");
    let left: Vec<String> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["manifest.json".to_string()], "a temporary file was left behind");
    assert!(target.join("inside").is_dir(), "the old entry was touched");
    // and a successful write replaces a file whole
    let f = t.path().join("status.json");
    write_file(&f, b"old").unwrap();
    write_file(&f, b"new").unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 2);
}

#[test]
fn committed_mining_logs_read_and_write_back_byte_for_byte() {
    let cells = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/speedup/cells");
    let mut checked = 0;
    for e in std::fs::read_dir(&cells).unwrap() {
        let path = e.unwrap().path().join("mining.csv");
        if !path.exists() {
            continue;
        }
        let rows = read_mining(&path).unwrap();
        assert!(!rows.is_empty() && rows.iter().all(|r| r.stats.mined > 0), "{}", path.display());
        let t = tempfile::tempdir().unwrap();
        let copy = t.path().join("mining.csv");
        write_mining(&copy, &rows).unwrap();
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), std::fs::read_to_string(&path).unwrap(), "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} committed mining logs found");
}

#[test]
fn mining_columns_are_when_then_the_stats() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("mining.csv");
    let row = MiningRow { round: 2, epoch: 3, iteration: 17, stats: MiningStats { seconds: 1.5, images: 4, negatives: 100, mined: 8, empty_images: 1, mined_loss: Some(0.5), random_loss: None, ..Default::default() } };
    write_mining(&p, std::slice::from_ref(&row)).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let header = text.lines().next().unwrap();
    assert_eq!(header, "round,epoch,iteration,seconds,images,negatives,mined,empty_images,mined_loss,random_loss,mined_fg_score,random_fg_score,prev_still_hard");
    assert_eq!(text.lines().nth(1).unwrap(), "2,3,17,1.5,4,100,8,1,0.5,,,,");
    assert_eq!(read_mining(&p).unwrap(), vec![row]);
}

#[test]
fn a_preemption_phase_reads_back_as_the_same_error() {
    // what `rundir::preempted` writes into progress.json (the sink is process-global, so the
    // test writes the phase itself; the Slurm test runs the real signal through `harness cell`)
    let t = tempfile::tempdir().unwrap();
    let write = |p: &Phase| write_file(&t.path().join(PROGRESS), serde_json::to_string(p).unwrap().as_bytes()).unwrap();
    let mid = Phase { phase: PhaseKind::Preempted, epoch: 2, epochs: 6, done: 5, total: 8, updated: 0 };
    write(&mid);
    assert_eq!(read_phase(t.path()).unwrap(), mid);
    let e = Preempted::read(t.path());
    assert_eq!(e.to_string(), "pre-empted by a signal: checkpointed in epoch 2/6 after iteration 5/8; a rerun resumes there");
    assert_eq!(mid.to_string(), e.where_);
    write(&Phase { phase: PhaseKind::Preempted, epoch: 3, epochs: 6, done: 0, total: 0, updated: 0 });
    assert_eq!(Preempted::read(t.path()).where_, "after epoch 3 of 6");
    // a process that was still training, or recorded nothing
    write(&Phase { phase: PhaseKind::Training, epoch: 3, epochs: 6, done: 1, total: 8, updated: 0 });
    assert_eq!(Preempted::read(t.path()).where_, "at its last checkpoint");
    let text = std::fs::read_to_string(t.path().join(PROGRESS)).unwrap();
    assert!(text.contains("\"phase\":\"training\""), "{text}");
    assert_eq!(Preempted::read(tempfile::tempdir().unwrap().path()).where_, "at its last checkpoint");
}

#[test]
fn a_cell_is_flagged_only_when_another_process_shared_the_machine() {
    let m = |start: f64, end: f64| -> ohem_harness::rundir::Manifest {
        serde_json::from_value(serde_json::json!({"harness_version": "x", "git_revision": null, "libtorch": "x", "device": "auto", "host": "h", "started": "s", "ended": "e", "cores": 2, "load_start": start, "load_end": end})).unwrap()
    };
    // a quiet 2-core machine running one cell: the cell's own threads keep the load near 2
    assert!(!m(1.3, 2.08).overloaded() && !m(2.08, 2.0).overloaded() && !m(2.0, 3.0).overloaded());
    // a build beside the cell: one more busy core at least
    assert!(m(3.4, 2.1).overloaded() && m(2.0, 3.9).overloaded());
    // a manifest from before the fields existed is never flagged
    let old: ohem_harness::rundir::Manifest = serde_json::from_value(serde_json::json!({"harness_version": "x", "git_revision": null, "libtorch": "x", "device": "auto", "host": "h", "started": "s", "ended": null})).unwrap();
    assert!(!old.overloaded());
}

#[test]
fn the_instruction_set_is_read_from_the_cpu_flags() {
    use ohem_harness::rundir::isa_of_flags;
    assert_eq!(isa_of_flags("fpu sse2 avx avx2 fma"), "AVX2 yes, AVX-512 no, AMX no");
    assert_eq!(isa_of_flags("avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8"), "AVX2 yes, AVX-512 yes, AMX yes");
    // a flag is a whole word: avx512_vnni alone is not AVX-512 F, avx is not AVX2
    assert_eq!(isa_of_flags("avx avx512_vnni"), "AVX2 no, AVX-512 no, AMX no");
}

/// The COCO columns of `metrics.csv` are `coco_` and the lowercased summary
/// key, in [`SUMMARY_KEYS`]'s order, after `load_s`; a row's COCO numbers land
/// under their key's column; the committed COCO logs write back byte for byte.
#[test]
fn metrics_coco_columns_follow_the_summary_keys() {
    use ohem_harness::eval::coco::SUMMARY_KEYS;
    use ohem_harness::rundir::{read_metrics, write_csv, EpochRow, Metric, COCO_COLUMNS};
    let want: Vec<String> = SUMMARY_KEYS.iter().map(|k| format!("coco_{}", k.to_lowercase())).collect();
    assert_eq!(COCO_COLUMNS.to_vec(), want);
    let mut row = EpochRow::default();
    let stats: [f64; 12] = std::array::from_fn(|i| i as f64 / 100.0);
    row.set_coco(&stats);
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("metrics.csv");
    write_csv(&p, &[row.clone()]).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let coco: Vec<&str> = header.iter().copied().filter(|c| c.starts_with("coco_")).collect();
    assert_eq!(coco, want);
    let before_coco = ["load_s", "streamed_images", "prefetched_images", "cpu_s", "iter_median_s", "iter_iqr_s", "others_cpu_share"];
    // Faster R-CNN's RPN losses come after the COCO columns, so that older logs' columns keep their places
    let after_coco = ["loss_rpn_obj", "loss_rpn_box"];
    let tail: Vec<&str> = before_coco.into_iter().chain(want.iter().map(String::as_str)).chain(after_coco).collect();
    assert_eq!(header[header.len() - tail.len()..], tail[..]);
    let mut r = csv::Reader::from_path(&p).unwrap();
    let rec: std::collections::HashMap<String, String> = r.deserialize().next().unwrap().unwrap();
    for (i, k) in SUMMARY_KEYS.iter().enumerate() {
        assert_eq!(rec[&format!("coco_{}", k.to_lowercase())].parse::<f64>().unwrap(), stats[i], "{k}");
        assert_eq!(row.map(Metric::Coco(i)), Some(stats[i]), "{k}");
        assert_eq!(Metric::Coco(i).column(), want[i]);
    }
    // the committed logs with COCO columns read and write back with every column and value
    // they had, text for text (columns added since, the loader's counts, are empty)
    let mut checked = 0;
    let records = |p: &std::path::Path| -> Vec<std::collections::HashMap<String, String>> { csv::Reader::from_path(p).unwrap().deserialize().map(|r| r.unwrap()).collect() };
    for e in std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/coco-quick/cells")).unwrap() {
        let path = e.unwrap().path().join("metrics.csv");
        let copy = t.path().join("copy.csv");
        write_csv(&copy, &read_metrics(&path).unwrap()).unwrap();
        let (old, new) = (records(&path), records(&copy));
        assert_eq!(old.len(), new.len());
        for (o, n) in old.iter().zip(&new) {
            for (k, v) in o {
                assert_eq!(n.get(k), Some(v), "{}: column {k}", path.display());
            }
            assert!(n.iter().all(|(k, v)| o.contains_key(k) || v.is_empty()), "{}: a new column with a value", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 3);
}

/// The 12 COCO metric names stand in one place in the sources: each column
/// name (`coco_ap` … `coco_arl`) is on one code line under src/, beside its
/// summary key, so that no second list can disagree with it.
#[test]
fn coco_metric_names_are_defined_once() {
    use ohem_harness::eval::coco::SUMMARY_KEYS;
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut src = Vec::new();
    files(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut src);
    let mut lines = Vec::new();
    for p in &src {
        for (n, l) in std::fs::read_to_string(p).unwrap().lines().enumerate() {
            if !l.trim_start().starts_with("//") {
                let words: Vec<String> = l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map(String::from).collect();
                lines.push((format!("{}:{}", p.display(), n + 1), words));
            }
        }
    }
    let mut wrong = Vec::new();
    for k in SUMMARY_KEYS {
        let col = format!("coco_{}", k.to_lowercase());
        let at: Vec<&(String, Vec<String>)> = lines.iter().filter(|(_, w)| w.contains(&col)).collect();
        if at.len() != 1 || !at[0].1.iter().any(|w| w == k) {
            wrong.push(format!("{col}: on {} code lines {:?}, expected one, beside {k}", at.len(), at.iter().map(|a| &a.0).collect::<Vec<_>>()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// ISO 8601 UTC times: parse_iso inverts iso_of (dates across leap years and centuries, by
/// hand), and refuses anything else.
#[test]
fn iso_times_read_back() {
    use ohem_harness::rundir::{iso_of, parse_iso};
    // by hand: 2000-03-01 is 11017 days after 1970-01-01; 1970-01-01 is 0
    assert_eq!(parse_iso("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_iso("2000-03-01T00:00:00Z"), Some(11_017 * 86_400));
    assert_eq!(parse_iso("2026-12-07T13:01:02Z"), Some(1_796_648_462));
    for s in [0u64, 951_782_400, 1_709_164_799, 1_796_648_462, 4_102_444_800] {
        assert_eq!(parse_iso(&iso_of(s)), Some(s), "{}", iso_of(s));
    }
    for bad in ["2026-12-07 13:01:02Z", "2026-13-07T13:01:02Z", "2026-02-31T00:00:00Z", "2026-12-07T13:01:02", "yesterday"] {
        assert_eq!(parse_iso(bad), None, "{bad}");
    }
}
