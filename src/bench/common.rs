//! What the benchmarks share: the training configs they time, the header's
//! machine line, peak memory (this process's and a child's), the median, and
//! the trainer's own step timed on images held in memory.

use std::time::Instant;

use anyhow::Result;
use tch::Device;

use crate::config::TrainConfig;
use crate::data::synth;
use crate::model::sgd::Sgd;
use crate::trainer::build_model;

/// The training config the benches time: the default data's small backbone
/// (batch norm frozen, as the pre-trained trainer runs it), or VGG16 at 600 px
/// (conv1_x and conv2_x frozen), with random weights (no pre-training file).
pub const SMALL: &str = "dataset:\n  root: .\nmodel:\n  fc_dim: 512\n  dropout: 0.0\n";
pub const VGG16: &str = "dataset:\n  root: .\nmodel:\n  backbone: vgg16\n  fc_dim: 4096\n  dropout: 0.0\ninput:\n  scale: 600\n  max_size: 1000\n";

pub fn bench_config(yaml: &str) -> Result<TrainConfig> {
    crate::config::from_value(crate::config::parse_yaml(yaml, "bench")?, "bench")
}

/// The bench header's machine line: the CPU model and its vector extensions, the libtorch version and threads.
pub fn machine_line(device: Device) -> String {
    format!("machine: {} ({}), libtorch {}, {} threads, device {device:?}", crate::rundir::cpu_model().unwrap_or_else(|| "unknown CPU".into()), crate::rundir::cpu_isa(), env!("OHEM_LIBTORCH_VERSION"), tch::get_num_threads())
}

/// What libtorch reports about CUDA, for the bench headers (a CUDA build on a machine without a GPU says so here).
pub fn cuda_state() -> String {
    // libtorch_cuda mapped into this process: a CUDA build, whatever the machine has
    let cuda_build = std::fs::read_to_string("/proc/self/maps").map(|m| m.contains("libtorch_cuda")).unwrap_or(false);
    match tch::Cuda::device_count() {
        0 if cuda_build => "libtorch with CUDA, but no GPU is present".into(),
        0 => "a CPU-only libtorch".into(),
        n => format!("{n} CUDA device(s)"),
    }
}

pub(super) fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// Current resident memory of this process (VmRSS), in MiB.
pub fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak resident memory (VmHWM) to the current one, by writing 5 to
/// /proc/self/clear_refs (Linux 4.0 on), so that a peak can be taken per step
/// kind within one process. False where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak memory of one step kind, in MiB: the process's peak RSS while it
/// ran (what `bench samplers` prints: the paper's Table 5 gives a process's
/// memory too), and that peak less the RSS just before. The second is not the
/// kind's own working set: the RSS at its start holds the libtorch runtime and
/// what earlier kinds left in the allocator. On the CPU only: on CUDA the
/// tensors live in the device allocator, which this build cannot query, so
/// both are `None` there.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakMemory {
    pub peak_mib: Option<f64>,
    pub above_start_mib: Option<f64>,
}

impl std::fmt::Display for PeakMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.peak_mib, self.above_start_mib) {
            (Some(p), _) => write!(f, "peak RSS {p:.0} MiB"),
            (None, _) => write!(f, "peak RSS —"),
        }
    }
}

/// Runs `f` and measures its [`PeakMemory`] (CPU only).
pub fn measure_peak<T>(device: Device, f: impl FnOnce() -> T) -> (T, PeakMemory) {
    let ok = device == Device::Cpu && reset_peak_rss();
    let start = if ok { rss_mib() } else { None };
    let out = f();
    let peak = if ok { proc_status_mib("VmHWM:") } else { None };
    (out, PeakMemory { peak_mib: peak, above_start_mib: peak.zip(start).map(|(p, s)| (p - s).max(0.0)) })
}

/// Peak resident memory (MiB) of a child process, from `wait4`.
pub(super) fn run_measured(cmd: &mut std::process::Command) -> Result<(std::process::ExitStatus, f64, String)> {
    use std::os::unix::process::ExitStatusExt;
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    let out = child.wait_with_output_rusage(pid)?;
    Ok((std::process::ExitStatus::from_raw(out.0), out.1 as f64 / 1024.0, out.2))
}

trait WaitRusage {
    /// Reads the child's output, then reaps it with `wait4`: (raw status, ru_maxrss in KiB, stderr).
    fn wait_with_output_rusage(self, pid: libc::pid_t) -> Result<(i32, i64, String)>;
}

impl WaitRusage for std::process::Child {
    fn wait_with_output_rusage(mut self, pid: libc::pid_t) -> Result<(i32, i64, String)> {
        use std::io::Read;
        let mut err = String::new();
        let mut out = String::new();
        if let Some(mut s) = self.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        if let Some(mut s) = self.stderr.take() {
            s.read_to_string(&mut err)?;
        }
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid, and wait4 writes it for our own child's pid
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r != pid {
            anyhow::bail!("wait4 on the training process failed: {}", std::io::Error::last_os_error());
        }
        Ok((status, ru.ru_maxrss, err))
    }
}

/// The median of a non-empty sample (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Images of the default dataset (rendered in memory) with `n_props` random proposals each.
pub(super) fn bench_store(n_props: usize) -> crate::trainer::batch::ImageStore {
    let make = |i: u64| {
        let (img, ann) = synth::render_image(0, i, &format!("{i:06}"));
        let (w, h) = (img.width() as f32, img.height() as f32);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(i);
        let props: Vec<[f32; 4]> = (0..n_props)
            .map(|_| {
                use rand::Rng;
                let (x, y) = (rng.random_range(1.0..w - 8.0), rng.random_range(1.0..h - 8.0));
                [x, y, (x + rng.random_range(8.0..w * 0.6)).min(w), (y + rng.random_range(8.0..h * 0.6)).min(h)]
            })
            .collect();
        (img, ann, props)
    };
    let parts: Vec<_> = (0..20u64).map(make).filter(|p| p.1.objects.iter().any(|o| !o.difficult)).collect();
    crate::trainer::batch::ImageStore::from_parts(parts.iter().map(|p| p.1.clone()).collect(), &parts.iter().map(|p| p.0.clone()).collect::<Vec<_>>(), &parts.iter().map(|p| p.2.clone()).collect::<Vec<_>>())
}

/// Iteration `it`'s minibatch of the timed steps: images `2·it` and `2·it + 1` of `store`, unflipped.
pub(super) fn bench_pair(store: &crate::trainer::batch::ImageStore, input: &crate::config::InputConfig, it: usize, device: Device) -> Vec<crate::trainer::batch::Prepared> {
    // a store made by from_parts holds its images: prepare cannot fail on I/O
    (0..2).map(|j| crate::trainer::batch::prepare(store, (2 * it + j) % store.len(), input, false, device).expect("images in memory")).collect()
}

/// The padded batch's `(H, W)` of each iteration that [`time_step`] runs (the warm-up first):
/// [`bench_pair`]'s images, rescaled and zero-padded to the larger of each side.
pub(super) fn batch_shapes(store: &crate::trainer::batch::ImageStore, input: &crate::config::InputConfig, iters: usize, device: Device) -> Vec<(i64, i64)> {
    use crate::trainer::batch;
    (0..iters + 1)
        .map(|it| {
            let s = batch::collate(&bench_pair(store, input, it, device)).size();
            (s[2], s[3])
        })
        .collect()
}

/// Seconds per iteration of `cfg`'s sampler through the trainer's own model and
/// step, over `iters` iterations after one warm-up, with the RoIs backpropagated
/// and the RoIs per image before sampling (proposals and ground truth), per iteration.
pub(super) fn time_step(cfg: &TrainConfig, store: &crate::trainer::batch::ImageStore, iters: usize, device: Device) -> Result<(f64, f64, f64)> {
    use crate::trainer::train_step;
    let (vs, model) = build_model(cfg, device, synth::CLASSES.len(), None)?;
    let mut opt = Sgd::new(&vs, 0.9, 5e-4);
    let mut sampler = cfg.sampler.build();
    let (mut total, mut rois, mut per_image) = (0.0, 0.0, 0.0);
    for it in 0..iters + 1 {
        let pair = bench_pair(store, &cfg.input, it, device);
        let t = Instant::now();
        let out = train_step(&model, &mut opt, 1e-3, sampler.as_mut(), &pair, cfg)?;
        sync(device);
        if it > 0 {
            total += t.elapsed().as_secs_f64();
            rois += out.rois as f64;
            per_image += out.rois_all as f64 / out.images as f64;
        }
    }
    let n = iters as f64;
    Ok((total / n, rois / n, per_image / n))
}

/// A Python: `$env` when set, else the one that `script` (a venv installer,
/// run from the repository root) prints; `flag` names what needs it in errors.
pub(super) fn venv_python(env: &str, script: &str, flag: &str) -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(p.into());
    }
    let path = std::path::Path::new(script);
    if !path.is_file() {
        anyhow::bail!("{flag} needs {script}: run `harness bench` from the repository root, or set {env}");
    }
    let out = std::process::Command::new("bash").arg(path).stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        anyhow::bail!("{script} failed (exit {:?})", out.status.code());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().into())
}
