//! The PyTorch + torchvision peer that `bench samplers --peer` and `bench
//! claim-a --peer` time on the same shapes: `scripts/bench_peer.py`, run by
//! its own Python, read back as JSON, and its libtorch settings set beside ours.

use anyhow::{Context, Result};
use tch::Device;

use super::common::venv_python;
use super::profile;

/// The peer's Python: `$OHEM_PEER_PYTHON` (a machine's own PyTorch), else the venv that
/// `scripts/peer-venv.sh` installs under the cache.
pub(super) fn peer_python() -> Result<std::path::PathBuf> {
    venv_python("OHEM_PEER_PYTHON", "scripts/peer-venv.sh", "--peer")
}

/// What the peer measured per step kind: seconds per iteration and peak memory (MiB).
pub(super) struct PeerSteps {
    steps: serde_json::Map<String, serde_json::Value>,
    peak_mib: serde_json::Map<String, serde_json::Value>,
    /// RoIs per image before sampling (proposals and ground truth), per kind; a Faster R-CNN
    /// peer's RPN decides them.
    rois_per_image: serde_json::Map<String, serde_json::Value>,
}

impl PeerSteps {
    pub(super) fn secs(&self, kind: &str) -> Option<f64> {
        self.steps.get(kind).and_then(|v| v.as_f64())
    }
    pub(super) fn peak(&self, kind: &str) -> Option<f64> {
        self.peak_mib.get(kind).and_then(|v| v.as_f64())
    }
    pub(super) fn rois_per_image(&self, kind: &str) -> Option<f64> {
        self.rois_per_image.get(kind).and_then(|v| v.as_f64())
    }
}

/// Runs `scripts/bench_peer.py` with the same shapes; returns its `steps` (kind → s/iter) and `peak_mib`.
pub(super) fn run_peer(python: &std::path::Path, n_props: usize, iters: usize, cfg: &crate::config::TrainConfig, device: Device, shapes: &[(i64, i64)], kinds: &[&str], announce: bool) -> Result<PeerSteps> {
    let v = peer_json(python, n_props, iters, cfg, device, shapes, kinds, false)?;
    if announce {
        println!("  peer: PyTorch {} + torchvision {}, {} threads, roi_pool 7x7, nms", v["torch"].as_str().unwrap_or("?"), v["torchvision"].as_str().unwrap_or("?"), v["threads"]);
        print_settings(&v);
    }
    let steps = v["steps"].as_object().cloned().ok_or_else(|| anyhow::anyhow!("the peer's JSON has no steps"))?;
    Ok(PeerSteps { steps, peak_mib: v["peak_mib"].as_object().cloned().unwrap_or_default(), rois_per_image: v["rois_per_image"].as_object().cloned().unwrap_or_default() })
}

/// Runs `scripts/bench_peer.py` on `shapes` (one per iteration, the warm-up first), `--profile` when `profile`; its JSON.
#[allow(clippy::too_many_arguments)]
pub(super) fn peer_json(python: &std::path::Path, n_props: usize, iters: usize, cfg: &crate::config::TrainConfig, device: Device, shapes: &[(i64, i64)], kinds: &[&str], profile: bool) -> Result<serde_json::Value> {
    let mut cmd = std::process::Command::new(python);
    let backbone = if cfg.model.backbone == crate::model::Backbone::Vgg16 { "vgg16" } else { "small" };
    cmd.arg("scripts/bench_peer.py")
        .args(["--backbone", backbone, "--shapes", &shapes_arg(shapes), "--kinds", &kinds.join(",")])
        .args(["--proposals", &n_props.to_string(), "--iters", &iters.to_string(), "--stride", &cfg.model.feature_stride().to_string(), "--fc-dim", &cfg.model.fc_width().to_string()])
        .args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }]);
    if cfg.model.bn_frozen() {
        cmd.arg("--freeze-bn");
    }
    if !cfg.model.detector.is_fast_rcnn() {
        // torchvision's RPN with the model's own settings
        let r = cfg.model.rpn_config().unwrap_or_default();
        let list = |v: &[f64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        cmd.args(["--detector", "faster_rcnn", "--anchor-sizes", &list(&r.anchor_sizes), "--aspect-ratios", &list(&r.aspect_ratios)])
            .args(["--rpn-fg-iou", &r.fg_iou.to_string(), "--rpn-bg-iou", &r.bg_iou.to_string(), "--rpn-batch", &r.batch_per_image.to_string()])
            .args(["--rpn-positive-fraction", &r.positive_fraction.to_string(), "--rpn-pre-nms", &r.pre_nms_top_n_train.to_string()])
            .args(["--rpn-post-nms", &r.post_nms_top_n_train.to_string(), "--rpn-nms", &r.nms.to_string()]);
    }
    if profile {
        cmd.arg("--profile");
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("running {} scripts/bench_peer.py", python.display()))?;
    if !out.status.success() {
        anyhow::bail!("scripts/bench_peer.py failed (exit {:?})", out.status.code());
    }
    serde_json::from_slice(&out.stdout).context("parsing the peer's JSON")
}

/// Whether libtorch runs with the peer's settings (threads, OpenMP, MKL, oneDNN): "the same", or the lines that differ.
pub(super) fn print_settings(peer: &serde_json::Value) {
    let Some(theirs) = peer["settings"].as_str() else { return };
    let diff = profile::settings_differences(&profile::torch_settings(), theirs);
    if diff.is_empty() {
        println!("  libtorch settings (torch.__config__.parallel_info(): threads, OpenMP, MKL, oneDNN; mkldnn enabled): identical to the peer's");
    } else {
        println!("  libtorch settings that differ from the peer's (ours | peer's):");
        for (o, p) in diff {
            println!("    {o:<50} | {p}");
        }
    }
}

/// `HxW,HxW,...`, as `bench_peer.py --shapes` reads it.
pub(super) fn shapes_arg(shapes: &[(i64, i64)]) -> String {
    shapes.iter().map(|(h, w)| format!("{h}x{w}")).collect::<Vec<_>>().join(",")
}
