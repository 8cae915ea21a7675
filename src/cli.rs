//! The `harness` command line, in two stages as ripgrep does it: clap parses
//! the raw flags into one argument struct per command, [`Command::validate`]
//! checks every value before any work starts, and one function per command
//! hands the validated values to the library. `main` only turns the result
//! into an exit code.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{parse_device, TrainConfig};
use crate::data::synth::{self, SynthSize};
use crate::data::Dataset;
use crate::config::DataFormat;
use crate::eval;
use crate::harness::slurm::{SlurmOptions, WarningSignal};
use crate::proposals::{self, SsMode, SsParams};

#[derive(Parser, Debug)]
#[command(name = "harness", version = concat!(env!("CARGO_PKG_VERSION"), " (libtorch ", env!("OHEM_LIBTORCH_VERSION"), ")"), about = "Offline hard-negative mining vs OHEM on one Fast R-CNN trainer")]
pub struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the generated "shapes-in-clutter" dataset in the PASCAL VOC (or COCO) layout.
    MakeDataset(MakeDatasetArgs),
    /// Convert a dataset between the VOC and COCO layouts (the direction follows from the source).
    Convert(ConvertArgs),
    /// Cut large annotated images (VOC XML + PNG/JPEG) into tiles, written as a split of a VOC dataset.
    Tile(TileArgs),
    /// Compute (or load) region proposals for a split and report their recall.
    Proposals(ProposalsArgs),
    /// Score detections against a split: VOC results files or a COCO results JSON against a VOC root, or a COCO results JSON against an instances JSON.
    Eval(EvalArgs),
    /// Run one epoch's checkpoint of a run or cell over a split and write its detections (COCO results JSON, or VOC comp4 files), which `harness eval` scores.
    Detect(DetectArgs),
    /// Train one configuration; a rerun resumes after the last finished epoch.
    Train(TrainArgs),
    /// Pre-train the shared backbone of a training config (`model.init: pretrained`), or find it in the cache.
    Pretrain(PretrainArgs),
    /// Run a grid of configs x seeds; skips finished cells, resumes interrupted ones, then reports.
    Run(RunArgs),
    /// Run one cell of a results directory (what each Slurm array task runs).
    Cell(CellArgs),
    /// Pending, running, done and failed cells of a results directory, per arm and per cell (local and Slurm runs).
    Status {
        /// A results directory written by `harness run`.
        results: PathBuf,
    },
    /// Aggregate a results directory into summary.csv, summary.md and charts, from the logs alone.
    Report {
        /// A results directory written by `harness run`.
        results: PathBuf,
    },
    /// Two or more studies side by side: what differs in their recipes, the arms they share, and their findings in one table, each as its own report states it; with --out, also one chart.
    Compare {
        /// Results directories written by `harness run` and reported (`harness report`).
        #[arg(required = true, num_args = 2..)]
        results: Vec<PathBuf>,
        /// Write compare.md and the chart (compare.png, compare.svg) into this folder instead of printing the table.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The claims table: every verdict of every study under a folder of reports, and the claim-(a) sweeps' findings (the README's copy).
    Claims {
        /// A folder of results directories (`results`).
        #[arg(default_value = "results")]
        root: PathBuf,
        /// Write the table here (e.g. results/claims.md) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Benchmarks, one per argument (see docs/benchmarks.md): proposals, eval (and the test-set bootstrap; --coco against pycocotools), train, samplers (--peer against PyTorch + torchvision), epoch, claim-a, data, or all (the first four).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct MakeDatasetArgs {
    /// Output root (created; must be empty or absent).
    #[arg(long)]
    out: PathBuf,
    /// tiny: 16+8 images (tests); small: 240+120 (default, quick runs); large: 1200+400 (the study).
    #[arg(long, value_enum, default_value_t = SynthSize::Small)]
    size: SynthSize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// voc: Annotations/, JPEGImages/, ImageSets/Main/; coco: annotations/instances_<split>.json and images/.
    #[arg(long, value_enum, default_value_t = DataFormat::Voc)]
    format: DataFormat,
    /// A long tail: the classes' object counts fall geometrically, the last class R times rarer
    /// than the first (the same scenes, sizes and object counts; only the classes change).
    #[arg(long, value_name = "R")]
    long_tail: Option<f64>,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The dataset to read: a VOC root, or a COCO root (annotations/instances_<split>.json beside <split>/ or images/).
    src: PathBuf,
    /// The root to write, in the other layout (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Splits to convert (repeatable) [default: every split of the source].
    #[arg(long = "split")]
    splits: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TileArgs {
    /// VOC annotation files, one per image; each names its image (PNG or JPEG) in <filename>, relative to the XML.
    #[arg(required = true)]
    annotations: Vec<PathBuf>,
    /// Output VOC root (created; a root that exists keeps its classes.txt).
    #[arg(long)]
    out: PathBuf,
    /// The split the tiles form (ImageSets/Main/<split>.txt; refused if it exists).
    #[arg(long)]
    split: String,
    /// Tile side in pixels.
    #[arg(long, default_value_t = 400)]
    size: u32,
    /// Pixels shared by neighbouring tiles.
    #[arg(long, default_value_t = 0)]
    overlap: u32,
    /// Keep a box cut by a tile edge when at least this share of its area is inside.
    #[arg(long, default_value_t = 0.7)]
    keep: f32,
    /// Drop it below this share; between --drop and --keep it is kept, marked difficult.
    #[arg(long, default_value_t = 0.3)]
    drop: f32,
    /// Rename classes, e.g. `Dead=Tree,Alive=Tree`.
    #[arg(long, default_value = "")]
    class_map: String,
    /// Leave out tiles with no box.
    #[arg(long)]
    drop_empty: bool,
    /// JPEG quality of the tiles.
    #[arg(long, default_value_t = 95)]
    quality: u8,
    /// Put before every tile id; `{dir}` is the name of each XML's folder (sources with one file
    /// stem, e.g. `site1/image.xml` and `site2/image.xml`: `--prefix '{dir}_'`). An id already in
    /// the root is refused, never overwritten.
    #[arg(long, default_value = "")]
    prefix: String,
}

impl TileArgs {
    fn params(&self) -> Result<crate::data::tile::TileParams> {
        let p = crate::data::tile::TileParams {
            size: self.size,
            overlap: self.overlap,
            keep: self.keep,
            drop: self.drop,
            class_map: crate::data::tile::parse_class_map(&self.class_map)?,
            drop_empty: self.drop_empty,
            quality: self.quality,
            prefix: self.prefix.clone(),
        };
        p.check()?;
        Ok(p)
    }
}

#[derive(Args, Debug)]
pub struct ProposalsArgs {
    /// Dataset root, VOC or COCO layout (detected, as `dataset.format` does); with --rpn, the run's.
    #[arg(required_unless_present = "rpn", conflicts_with = "rpn")]
    dataset: Option<PathBuf>,
    #[arg(long, default_value = "trainval")]
    split: String,
    /// Selective-search diversification.
    #[arg(long, value_enum, default_value_t = SsMode::Fast)]
    mode: SsMode,
    /// Keep at most this many boxes per image.
    #[arg(long, default_value_t = SsParams::default().max_boxes)]
    max_boxes: usize,
    /// Drop boxes with a side shorter than this (pixels).
    #[arg(long, default_value_t = SsParams::default().min_side)]
    min_side: u32,
    /// Gaussian pre-smoothing of the segmentation.
    #[arg(long, default_value_t = SsParams::default().sigma)]
    sigma: f32,
    /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals, or $OHEM_CACHE/proposals].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Recompute and do not read or write the cache.
    #[arg(long)]
    no_cache: bool,
    /// Use precomputed proposals from this file instead of selective search.
    #[arg(long, conflicts_with_all = ["no_cache", "cache_dir"])]
    from: Option<PathBuf>,
    /// Also write the proposals to this file: the binary format (read one image at a time) when it ends in `.bin`, else `<image_id> <x1> <y1> <x2> <y2>` lines.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The region proposal network of a Faster R-CNN run instead of selective search: a run (or
    /// cell) directory, whose newest kept checkpoint (or --epoch's) is used, or a checkpoint file;
    /// the run's dataset, the RPN at its test-time settings.
    #[arg(long, conflicts_with_all = ["from", "no_cache", "cache_dir"])]
    rpn: Option<PathBuf>,
    /// With --rpn: the epoch whose checkpoint to use (1-based; the newest kept when absent).
    #[arg(long, requires = "rpn")]
    epoch: Option<usize>,
    /// Recall also at the first N proposals of each image, for each N (comma-separated, e.g.
    /// 300,1000,2000); with --rpn the network keeps up to the largest N after its NMS.
    #[arg(long, value_delimiter = ',')]
    top: Vec<usize>,
}

impl ProposalsArgs {
    fn params(&self) -> SsParams {
        SsParams { mode: self.mode, sigma: self.sigma, min_side: self.min_side, max_boxes: self.max_boxes }
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A VOC dataset root, or a COCO instances JSON (the images are not needed).
    dataset: PathBuf,
    /// The VOC split.
    #[arg(long, default_value = "test")]
    split: String,
    /// A folder of comp4_det_<split>_<class>.txt files (VOC root only; comp4_det_test_<class>.txt for another split if it has none), or a COCO results JSON [{image_id, category_id, bbox, score}].
    #[arg(long)]
    dets: PathBuf,
    /// voc07 / voc10: VOC mAP; coco: pycocotools' 12 box summaries.
    #[arg(long, value_enum, default_value_t = EvalMetric::Voc07)]
    metric: EvalMetric,
    /// Print the result as JSON (coco: the 12 summaries under AP, AP50, …, ARl).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct DetectArgs {
    /// A run or cell directory (its newest kept checkpoint, or --epoch's), or a checkpoint file (`checkpoints/epoch_NNN.safetensors`).
    target: PathBuf,
    /// The split to detect on [default: the run's test split].
    #[arg(long)]
    split: Option<String>,
    /// The epoch whose checkpoint to use (1-based) [default: the newest kept].
    #[arg(long)]
    epoch: Option<usize>,
    /// Where to write: a COCO results JSON file (--format coco) or a folder of comp4 files (--format voc).
    #[arg(long)]
    out: PathBuf,
    /// coco: a results JSON [{image_id, category_id, bbox, score}]; voc: comp4_det_<split>_<class>.txt files [default: the dataset's own layout].
    #[arg(long, value_enum)]
    format: Option<DetFormat>,
    /// The run's config [default: config.yaml of the run directory].
    #[arg(long)]
    config: Option<PathBuf>,
    /// cpu, cuda, cuda:N [default: the config's].
    #[arg(long)]
    device: Option<String>,
    /// Proposal cache folder [default: the project cache].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DetFormat {
    Coco,
    Voc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalMetric {
    Voc07,
    Voc10,
    Coco,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The config file (YAML; see docs/config.md).
    config: PathBuf,
    /// Run directory [default: runs/<config file stem>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a config key, e.g. `--set sampler.fg_fraction=0.5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Discard what the run directory holds and train from scratch.
    #[arg(long)]
    force: bool,
    /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Run on this device (auto, cpu, cuda:N), whatever the config says; not part of the run's identity.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// A training config (its dataset, model, input and pretrain sections are used).
    config: PathBuf,
    /// Override a config key, e.g. `--set pretrain.epochs=4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Pre-trained backbone cache [default: ~/.cache/ohem-harness/pretrain, or $OHEM_CACHE/pretrain].
    #[arg(long)]
    pretrain_dir: Option<PathBuf>,
    /// Train anew (cache and shipped folder ignored) and compare, tensor by tensor, with the
    /// weights that runs are served; bit-identical only on the CPU that made them.
    #[arg(long, conflicts_with = "ship")]
    verify: bool,
    /// Write the backbone (trained first if the cache lacks it) into pretrained/<key>/ of the
    /// source tree, with its SHA-256 and CPU, for first runs to find.
    #[arg(long)]
    ship: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The grid file (YAML; see docs/grids.md).
    grid: PathBuf,
    /// Override a config key in every cell, e.g. `--set train.epochs=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the expanded cells and their ids; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: estimate the grid's cost from a short timed run of each arm here,
    /// 2 × N iterations from scratch weights with one evaluation (and one mining round
    /// where the sampler mines) [N: 10]; see docs/grids.md.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "10", requires = "dry_run")]
    calibrate: Option<usize>,
    /// Cells run at once (one GPU each when several are present).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Rerun finished cells from scratch.
    #[arg(long)]
    force: bool,
    /// Measure again the timings of the finished cells that the report flags (their own
    /// evidence of a busy machine): each trains again from scratch beside itself; when its
    /// accuracy rows come out identical (the same CPU model), its timings replace the old ones.
    #[arg(long, conflicts_with_all = ["force", "dry_run"])]
    retime: bool,
    /// Results directory [default: the grid's `results`, else runs/<grid file stem>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Copy, instead of training again, each cell whose twin (the same cell id: the same config
    /// and seed) is a finished cell of this other results directory (repeatable).
    #[arg(long, value_name = "RESULTS_DIR", conflicts_with_all = ["force", "dry_run", "retime"])]
    reuse: Vec<PathBuf>,
    /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Where the cells run: here (`local`), or as one Slurm job array (`slurm`; docs/cluster.md).
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    executor: Executor,
    #[command(flatten)]
    slurm: SlurmArgs,
}

/// The options of `harness run --executor slurm`.
#[derive(Args, Debug)]
pub struct SlurmArgs {
    /// slurm: the partition of every task.
    #[arg(long)]
    partition: Option<String>,
    /// slurm: GPUs per task.
    #[arg(long)]
    gpus_per_task: Option<u32>,
    /// slurm: CPUs per task.
    #[arg(long)]
    cpus_per_task: Option<u32>,
    /// slurm: time limit per task, as sbatch takes it (e.g. 2:00:00).
    #[arg(long)]
    time: Option<String>,
    /// slurm: tasks of the array running at once.
    #[arg(long, default_value_t = 16)]
    max_parallel: usize,
    /// slurm: an extra sbatch argument, passed as it is (repeatable), e.g. `--sbatch-arg=--account=vision`.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// slurm: the warning signal before the time limit, SIGNAL@SECONDS (USR1 or TERM); the cell checkpoints and stops on it.
    #[arg(long, default_value = "USR1@90", value_name = "SIGNAL@SECONDS")]
    signal: WarningSignal,
    /// slurm: do not requeue a task that the warning signal stopped (re-submit the grid instead).
    #[arg(long)]
    no_requeue: bool,
}

#[derive(Args, Debug)]
pub struct CellArgs {
    /// A results directory prepared by `harness run` (it holds cells.json).
    results: PathBuf,
    /// The cell's index in cells.json ($SLURM_ARRAY_TASK_ID).
    #[arg(long)]
    index: usize,
    /// Rerun the cell from scratch even if it is done.
    #[arg(long)]
    force: bool,
    /// Requeue this Slurm task (scontrol requeue) when a signal stops it after a checkpoint.
    #[arg(long)]
    requeue: bool,
    /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(value_enum, default_value_t = BenchWhat::All)]
    what: BenchWhat,
    /// Images for the proposal benchmark.
    #[arg(long, default_value_t = 20)]
    images: usize,
    /// Timed iterations per configuration of the training benchmarks [default: 5]; iterations per epoch of `bench data`'s training stage [default: 100].
    #[arg(long)]
    iters: Option<usize>,
    /// `bench data`: dataset.cache_mib of its stages (MiB of decoded images held per split).
    #[arg(long, default_value_t = 64)]
    cache_mib: u64,
    /// `bench data`: training images of each generated dataset (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000")]
    sizes: Vec<usize>,
    /// `bench eval`: also time COCO evaluation against pycocotools 2.0.11 (scripts/coco-venv.sh) on the
    /// same 5,000-image case, checking that the 12 summaries agree.
    #[arg(long)]
    coco: bool,
    /// Also benchmark vgg16 at 600 px (slow on CPU; `bench samplers` then times VGG16 alone, at --proposals).
    #[arg(long)]
    vgg16: bool,
    /// The training config of `bench epoch`.
    #[arg(long, default_value = "experiments/frcn-quick.yaml")]
    config: PathBuf,
    /// Epochs trained (and evaluated) by `bench epoch` [default: 2], and by `bench data`'s training stage [default: 3].
    #[arg(long)]
    epochs: Option<usize>,
    /// `bench data`: dataset.cache_mib of its `held` stage, a budget the splits fit.
    #[arg(long, default_value_t = 4096)]
    held_mib: u64,
    /// `bench data`: the stages to run (comma-separated): pretrain, train, mine, eval, held.
    #[arg(long, value_delimiter = ',', default_value = "pretrain,train,mine,eval,held")]
    stages: Vec<String>,
    /// Proposals per image of `bench samplers` (comma-separated counts).
    #[arg(long, value_delimiter = ',', default_value = "500,2000")]
    proposals: Vec<usize>,
    /// `bench samplers`: also time the same steps in PyTorch + torchvision (scripts/bench_peer.py) and print the ratios.
    #[arg(long)]
    peer: bool,
    /// `bench samplers`: rounds per proposal count, the order of ours and the peer alternating
    /// (peer first in odd rounds), so that a machine's drift falls on both; medians are printed,
    /// with the range of the per-round ratios.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// `bench samplers` (small backbone): also time every kind with model.fold_bn on, in the
    /// same rounds (alternating which goes first), and print folded / unfolded.
    #[arg(long)]
    fold_bn: bool,
    /// `bench samplers`: the detector whose step is timed; faster_rcnn: the RPN on the same
    /// backbone proposes the RoIs, its top --proposals by objectness (an NMS of 1.0, which
    /// suppresses none: the same count on both sides), then once as trained (the default
    /// model.rpn); --peer puts torchvision's RegionProposalNetwork in front of the peer's head.
    #[arg(long, value_parser = ["fast_rcnn", "faster_rcnn"], default_value = "fast_rcnn")]
    detector: String,
    /// `bench samplers`: instead of the timings, where each kind's step goes, op by op (libtorch's
    /// profiler, self time by family); with --peer, the peer's (torch.profiler) beside it on the same shapes.
    #[arg(long)]
    profile: bool,
    /// `bench claim-a`: proposals per image of the sweep (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,4000")]
    rois: Vec<usize>,
    /// `bench claim-a`: head widths (fc6/fc7) of the small backbone (comma-separated); 512,4096
    /// when not given, and none with --vgg16 (VGG16's points alone; give --fc to add the sweep).
    #[arg(long, value_delimiter = ',')]
    fc: Vec<i64>,
    /// `bench claim-a --vgg16`: proposals per image of VGG16's points (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
    vgg16_rois: Vec<usize>,
    /// `bench claim-a`: the output folder.
    #[arg(long, default_value = "results/claim-a")]
    out: PathBuf,
    /// `bench claim-a`: redraw claim_a.md and the chart from --out's claim_a.csv, timing nothing.
    #[arg(long)]
    replot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    Local,
    Slurm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    /// Selective search (fast mode, one thread) on generated images: mean and median ms per image.
    Proposals,
    /// VOC07/VOC10 evaluation of 10,000 generated detections, the report's bootstrap, and with --coco COCO AP against pycocotools.
    Eval,
    /// ms per training iteration split by stage, peak memory, RoI pooling vs the per-RoI reference.
    Train,
    /// s per iteration of each sampler (fixed-ratio, OHEM read-only and masked, all RoIs), HNM mining time, the per-class bookkeeping's cost.
    Samplers,
    /// Test-split evaluation against a training epoch of a config, in one run (not part of `all`: it needs the data).
    Epoch,
    /// Claim (a) across regimes: masked / read-only OHEM against RoIs per image and head width, written to --out (not part of `all`).
    ClaimA,
    /// Memory over the whole pipeline on datasets of 1,000, 5,000 and 20,000 images: peak RSS of each stage (pre-training, training over --epochs of --iters, a mining round, evaluation, training held), the wait for images per epoch (not part of `all`).
    Data,
    /// proposals, eval, train and samplers, one after another.
    All,
}

impl Command {
    /// Checks the values clap cannot check alone, before any work starts.
    pub fn validate(&self) -> Result<()> {
        match self {
            Command::Proposals(a) => a.params().check(),
            Command::Tile(a) => a.params().map(|_| ()),
            Command::Train(a) => a.device.as_deref().map_or(Ok(()), |d| parse_device(d).map(|_| ())),
            Command::Run(a) => {
                if a.jobs == 0 {
                    bail!("--jobs must be at least 1");
                }
                if a.executor == Executor::Slurm && a.slurm.max_parallel == 0 {
                    bail!("--max-parallel 0: at least one task must be allowed to run");
                }
                Ok(())
            }
            Command::Bench(a) => {
                if a.images == 0 || a.iters == Some(0) || a.epochs == Some(0) || a.proposals.contains(&0) || a.rois.contains(&0) || a.vgg16_rois.contains(&0) || a.fc.iter().any(|&f| f < 1) {
                    bail!("--images, --iters, --epochs, --proposals, --rois, --vgg16-rois and --fc must be at least 1");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Parses the command line, validates it, and runs it.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    cli.command.validate()?;
    let progress = !cli.quiet;
    match cli.command {
        Command::MakeDataset(a) => make_dataset(a, progress),
        Command::Convert(a) => convert(a),
        Command::Tile(a) => tile(a),
        Command::Proposals(a) => proposals(a, progress),
        Command::Eval(a) => evaluate(a),
        Command::Detect(a) => detect(a, progress),
        Command::Train(a) => train(a, progress),
        Command::Pretrain(a) => pretrain(a, progress),
        Command::Run(a) => run_grid(a, progress),
        Command::Cell(a) => cell(a),
        Command::Status { results } => {
            print!("{}", crate::harness::status::read(&results)?);
            Ok(())
        }
        Command::Report { results } => report(&results),
        Command::Compare { results, out } => {
            let md = crate::report::studies::compare_md(&results, &results, out.as_deref())?;
            match out {
                Some(dir) => {
                    let p = dir.join("compare.md");
                    crate::rundir::write_file(&p, md.as_bytes())?;
                    println!("{}", p.display());
                    Ok(())
                }
                None => {
                    print!("{md}");
                    Ok(())
                }
            }
        }
        Command::Claims { root, out } => {
            let md = crate::report::claims::claims_md(&root)?;
            match out {
                Some(p) => Ok(crate::rundir::write_file(&p, md.as_bytes())?),
                None => {
                    print!("{md}");
                    Ok(())
                }
            }
        }
        Command::Bench(a) => bench(a),
    }
}

fn tile(a: TileArgs) -> Result<()> {
    let s = crate::data::tile::tile_into(&a.out, &a.split, &a.annotations, &a.params()?)?;
    println!(
        "{}: split {:?}: {} tiles of {} px from {} images ({} empty tiles left out); {} source boxes -> {} kept, {} difficult (cut, {:.0}-{:.0}% inside), {} pieces dropped (< {:.0}% inside); classes: {}",
        a.out.display(), a.split, s.tiles, a.size, s.images, s.empty_skipped, s.boxes, s.kept, s.difficult, a.drop * 100.0, a.keep * 100.0, s.dropped, a.drop * 100.0, s.classes.join(", ")
    );
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<()> {
    let to = if crate::data::coco::looks_like_coco(&a.src) { "VOC" } else { "COCO" };
    let s = crate::data::coco::convert(&a.src, &a.out, &a.splits)?;
    for (split, images, objects) in &s.splits {
        println!("{}: split {split}: {images} images, {objects} objects", a.out.display());
    }
    if s.reencoded > 0 {
        println!("  {} images that were not JPEG were encoded as JPEG (quality 95): the VOC layout holds JPEGImages/<id>.jpg", s.reencoded);
    }
    println!("written in the {to} layout at {}", a.out.display());
    Ok(())
}

/// A dataset root in either layout (detected), with `split` as its training split.
fn open_any(root: &std::path::Path, split: &str) -> Result<Dataset> {
    let mut cfg = crate::config::DatasetConfig::voc(root);
    cfg.train_split = split.to_string();
    cfg.test_split = split.to_string();
    Ok(Dataset::from_config(&cfg)?)
}

fn make_dataset(a: MakeDatasetArgs, progress: bool) -> Result<()> {
    let t = Instant::now();
    let m = if a.format == DataFormat::Coco && !a.out.join("ohem_dataset.json").exists() {
        // generated in the VOC layout beside `out`, then converted (the same image bytes)
        let voc = PathBuf::from(format!("{}.voc-partial", a.out.display()));
        if voc.exists() {
            std::fs::remove_dir_all(&voc).with_context(|| format!("removing {}", voc.display()))?;
        }
        let r = synth::make_dataset_with(&voc, a.size, a.seed, a.long_tail, progress).and_then(|m| {
            crate::data::coco::convert(&voc, &a.out, &[])?;
            std::fs::copy(voc.join("ohem_dataset.json"), a.out.join("ohem_dataset.json")).context("copying the dataset manifest")?;
            Ok(m)
        });
        let _ = std::fs::remove_dir_all(&voc);
        r?
    } else {
        synth::make_dataset_with(&a.out, a.size, a.seed, a.long_tail, progress)?
    };
    let ds = open_any(&a.out, "trainval")?;
    let mut counts = vec![(0, 0); ds.classes.len()];
    for split in ["trainval", "test"] {
        let ds = open_any(&a.out, split)?;
        for (c, (n, d)) in crate::data::voc::class_counts(&ds.load_split(split)?, ds.classes.len()).into_iter().enumerate() {
            counts[c].0 += n;
            counts[c].1 += d;
        }
    }
    println!("dataset {} ({:?}, seed {}): {} trainval + {} test images, {:.1}s", a.out.display(), m.size, m.seed, m.trainval, m.test, t.elapsed().as_secs_f64());
    for (c, (n, d)) in ds.classes.iter().zip(counts) {
        println!("  {c:<10} {n:>5} objects, {d:>4} difficult");
    }
    Ok(())
}

/// A trained RPN's proposals for split `split` (`harness proposals --rpn`), up to `top` an image
/// when given: the annotations, the boxes, and the dataset root.
fn rpn_proposals(run: &std::path::Path, epoch: Option<usize>, split: &str, top: Option<usize>, progress: bool) -> Result<(Vec<crate::data::voc::Annotation>, Vec<Vec<crate::boxes::BBox>>, PathBuf)> {
    let opts = crate::trainer::TrainOptions { progress, ..Default::default() };
    let mut l = crate::trainer::detect::load_checkpoint(run, None, epoch, Some(split), None, true, &opts)?;
    let Some(rpn) = l.model.rpn.as_mut() else { bail!("{}: a run of model.detector fast_rcnn, which has no region proposal network", run.display()) };
    if let Some(n) = top {
        rpn.cfg.post_nms_top_n_test = n as i64;
        rpn.cfg.pre_nms_top_n_test = rpn.cfg.pre_nms_top_n_test.max(n as i64);
    }
    let boxes = crate::trainer::detect::propose(&l.model, &l.store, &l.cfg.input, l.device)?;
    Ok((l.store.anns.clone(), boxes, l.cfg.dataset.root.clone()))
}

fn proposals(a: ProposalsArgs, progress: bool) -> Result<()> {
    if a.top.contains(&0) {
        bail!("--top 0: give positive numbers of proposals");
    }
    let (anns, boxes, stats, root) = match &a.rpn {
        Some(run) => {
            let (anns, boxes, root) = rpn_proposals(run, a.epoch, &a.split, a.top.iter().max().copied(), progress)?;
            (anns, boxes, proposals::ComputeStats { images: 0, ..Default::default() }, root)
        }
        None => {
            let dataset = a.dataset.clone().expect("clap requires DATASET without --rpn");
            let (anns, boxes, stats) = ss_proposals(&a, &dataset, progress)?;
            (anns, boxes, stats, dataset)
        }
    };
    if let Some(o) = &a.out {
        let ids: Vec<&str> = anns.iter().map(|a| a.id.as_str()).collect();
        proposals::write_proposals_file(o, &ids, &boxes)?;
    }
    let r = proposals::recall_report(&anns, &boxes);
    let top: Vec<(usize, proposals::RecallReport)> = a.top.iter().map(|&n| (n, proposals::recall_report(&anns, &boxes.iter().map(|b| b[..b.len().min(n)].to_vec()).collect::<Vec<_>>()))).collect();
    let source = match (&a.rpn, &a.from) {
        (Some(r), _) => format!("the RPN of {}", r.display()),
        (None, Some(f)) => f.display().to_string(),
        (None, None) => "selective search".to_string(),
    };
    if a.json {
        let top_json: Vec<serde_json::Value> = top.iter().map(|(n, r)| serde_json::json!({"top": n, "recall": r})).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"split": a.split, "params": a.rpn.is_none().then(|| a.params()), "source": source, "recall": r, "at_top": top_json, "compute": stats}))?);
        return Ok(());
    }
    println!("proposals ({source}) for {} / {}: {} images, {} non-difficult ground-truth boxes", root.display(), a.split, r.images, r.gt_boxes);
    println!("  recall@0.5  {:.4}", r.recall_at_05);
    println!("  recall@0.7  {:.4}", r.recall_at_07);
    println!("  ABO         {:.4}", r.abo);
    println!("  boxes/image {:.1}", r.mean_boxes_per_image);
    for (n, t) in &top {
        println!("  first {n:>5}: recall@0.5 {:.4}, recall@0.7 {:.4} ({:.1} boxes/image)", t.recall_at_05, t.recall_at_07, t.mean_boxes_per_image);
    }
    if a.from.is_none() && a.rpn.is_none() {
        println!("  ms/image    {:.1} (computed {}, from cache {})", stats.compute_ms_per_image, stats.computed, stats.from_cache);
    }
    if let Some(o) = &a.out {
        println!("  written to  {}", o.display());
    }
    Ok(())
}

/// Selective search's proposals for `a`'s split of `dataset` (or those of `--from`).
fn ss_proposals(a: &ProposalsArgs, dataset: &std::path::Path, progress: bool) -> Result<(Vec<crate::data::voc::Annotation>, Vec<Vec<crate::boxes::BBox>>, proposals::ComputeStats)> {
    let ds = open_any(dataset, &a.split)?;
    let anns = ds.load_split(&a.split)?;
    if anns.is_empty() {
        bail!("split file {} lists no images", ds.split_path(&a.split).display());
    }
    let params = a.params();
    let (boxes, stats) = match &a.from {
        Some(f) => (proposals::from_file(f, &anns)?, proposals::ComputeStats { images: anns.len(), ..Default::default() }),
        None => {
            let cache = (!a.no_cache).then(|| a.cache_dir.clone().unwrap_or_else(proposals::default_cache_dir));
            proposals::compute(&ds, &anns, &params, cache.as_deref(), progress)?
        }
    };
    Ok((anns, boxes, stats))
}

fn evaluate(a: EvalArgs) -> Result<()> {
    use crate::data::coco::{self, CocoFile};
    // the ground truth and the detections, in both forms
    let (anns, classes, dets, coco_gt, coco_dets, image_ids, category_ids) = if a.dataset.is_file() {
        let gt = CocoFile::read(&a.dataset)?;
        if !a.dets.exists() {
            bail!("--dets {}: not found (a COCO results JSON, as the instances file {} calls for)", a.dets.display(), a.dataset.display());
        }
        if !a.dets.is_file() {
            bail!("--dets {}: a folder; a COCO instances file is scored against a COCO results JSON file", a.dets.display());
        }
        let (cd, left_out) = eval::coco::read_results(&a.dets, &gt)?;
        if left_out.results > 0 {
            let ids: Vec<String> = left_out.category_ids.iter().map(|c| c.to_string()).collect();
            let (n, plural) = (left_out.results, if ids.len() == 1 { "id" } else { "ids" });
            eprintln!(
                "warning: {}: {n} {} of category {plural} {} that {} lacks left out, as pycocotools evaluates only the ground truth's categories",
                a.dets.display(),
                if n == 1 { "result" } else { "results" },
                ids.join(", "),
                a.dataset.display()
            );
        }
        let anns = gt.annotations(std::path::Path::new(""));
        let classes = gt.classes();
        let cats = gt.category_ids();
        // per class, VOC boxes (for VOC mAP), each naming its image by its index in the file
        let index: std::collections::HashMap<i64, u32> = gt.images.iter().enumerate().map(|(i, im)| (im.id, i as u32)).collect();
        let mut d = vec![Vec::new(); classes.len()];
        for x in &cd {
            let c = cats.binary_search(&x.category_id).expect("read_results keeps the ground truth's categories");
            d[c].push(eval::Detection { image: index[&x.image_id], score: x.score as f32, bbox: coco::coco_to_voc(x.bbox) });
        }
        let images: Vec<i64> = gt.images.iter().map(|i| i.id).collect();
        (anns, classes, d, eval::coco::gt_of_file(&gt), cd, images, cats)
    } else {
        let ds = Dataset::open(&a.dataset)?;
        let anns = ds.load_split(&a.split)?;
        let d = if a.dets.is_file() { eval::coco::read_results_of_split(&a.dets, &anns, ds.classes.len())? } else { eval::read_results_dir_of(&a.dets, &a.split, &ds.classes, &anns)? };
        let cats: Vec<i64> = (1..=ds.classes.len() as i64).collect();
        let cd = eval::coco::dets_of_annotations(&anns, &d, &cats);
        let gt = eval::coco::gt_of_annotations(&anns);
        let images = coco::image_ids(&anns);
        (anns, ds.classes, d, gt, cd, images, cats)
    };
    match a.metric {
        EvalMetric::Coco => {
            let r = eval::coco::evaluate(&image_ids, &category_ids, &coco_gt, &coco_dets);
            if a.json {
                let m: serde_json::Map<String, serde_json::Value> = eval::coco::SUMMARY_KEYS.iter().zip(r.stats).map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print!("{}", eval::coco::format_summary(&r));
            }
        }
        m => {
            let r = eval::evaluate(&anns, &classes, &dets, if m == EvalMetric::Voc07 { eval::VocMetric::Voc07 } else { eval::VocMetric::Voc10 });
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", eval::format_table(&r));
            }
        }
    }
    Ok(())
}

fn detect(a: DetectArgs, progress: bool) -> Result<()> {
    if let Some(d) = &a.device {
        parse_device(d)?;
    }
    let opts = crate::trainer::TrainOptions { progress, cache_dir: a.cache_dir.clone(), ..Default::default() };
    let r = crate::trainer::detect::detect_checkpoint(&a.target, a.config.as_deref(), a.epoch, a.split.as_deref(), a.device.as_deref(), &opts)?;
    let format = a.format.unwrap_or(if r.coco_instances.is_some() { DetFormat::Coco } else { DetFormat::Voc });
    let n: usize = r.dets.iter().map(Vec::len).sum();
    let against = match format {
        DetFormat::Coco => {
            let boxes: Vec<eval::coco::DetBox> = r.dets.iter().enumerate().flat_map(|(c, d)| eval::coco::dets_of_class(&r.image_ids, d, r.category_ids[c])).collect();
            crate::rundir::write_file(&a.out, eval::coco::results_json(&boxes).as_bytes())?;
            r.coco_instances.clone().unwrap_or_else(|| r.cfg.dataset.root.clone())
        }
        DetFormat::Voc => {
            if let Some(f) = &r.coco_instances {
                bail!("--format voc: split {:?} is a COCO split ({}); its detections are written as a COCO results JSON (--format coco)", r.split, f.display());
            }
            if a.out.is_file() {
                bail!("--out {}: a file; --format voc writes a folder of comp4 files", a.out.display());
            }
            eval::write_results_dir_of(&a.out, &r.split, &r.classes, &r.anns, &r.dets)?;
            r.cfg.dataset.root.clone()
        }
    };
    let m07 = eval::evaluate(&r.anns, &r.classes, &r.dets, eval::VocMetric::Voc07).map;
    let epoch = r.epoch.map_or_else(|| "its".to_string(), |e| format!("epoch {e}'s"));
    println!("{}: {n} detections of split {:?} from {epoch} checkpoint {}", a.out.display(), r.split, r.checkpoint.display());
    let logged = r.logged.as_ref().filter(|_| r.split == r.cfg.dataset.test_split).and_then(|row| row.map_voc07);
    match logged {
        Some(l) => println!("  mAP VOC07 {m07:.4} (the run logged {l:.4} for this epoch)"),
        None => println!("  mAP VOC07 {m07:.4}"),
    }
    let split = if r.coco_instances.is_some() { String::new() } else { format!(" --split {}", r.split) };
    println!("  score it: harness eval {}{split} --dets {}", against.display(), a.out.display());
    Ok(())
}

fn train(a: TrainArgs, progress: bool) -> Result<()> {
    let mut cfg = TrainConfig::load(&a.config, &a.overrides)?;
    if let Some(d) = a.device {
        cfg.device = d;
    }
    let out = a.out.unwrap_or_else(|| PathBuf::from("runs").join(a.config.file_stem().unwrap_or_default()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crate::rundir::set_phase_dir(&out);
    crate::rundir::catch_preemption_signals()?;
    let opts = crate::trainer::TrainOptions { progress, force: a.force, cache_dir: a.cache_dir, pretrain_dir: None, stop: Some(&crate::rundir::STOP), kill_checkpoint_after: None, stop_in: None, warnings: None, class_every: None };
    let rows = crate::trainer::train(&cfg, &out, &opts)?;
    if let Some(r) = rows.last() {
        let map = |m: Option<f64>| m.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into());
        println!("{}: {} epochs, mAP VOC07 {}, VOC10 {}, {:.1}s wall; metrics in {}", out.display(), r.epoch, map(r.map_voc07), map(r.map_voc10), r.wall_s, out.join(crate::rundir::METRICS).display());
    }
    Ok(())
}

fn pretrain(a: PretrainArgs, progress: bool) -> Result<()> {
    let cfg = TrainConfig::load(&a.config, &a.overrides)?;
    let dir = a.pretrain_dir.unwrap_or_else(crate::pretrain::default_cache_dir);
    if a.ship {
        let to = crate::pretrain::ship(&cfg, &dir, &crate::pretrain::shipped_dir(), progress)?;
        println!("shipped: {} (commit it; the code stamp {} is part of its key)", to.display(), crate::pretrain::code_stamp());
        return Ok(());
    }
    if a.verify {
        let v = crate::pretrain::verify(&cfg, &dir, Some(&crate::pretrain::shipped_dir()), progress)?;
        println!("served ({}): {}", origin_name(v.served.origin), v.served.weights.display());
        println!("validation accuracy: served {:.4}, trained anew {:.4}", v.val_accuracy.0, v.val_accuracy.1);
        if v.identical() {
            println!("identical: all {} tensors equal, bit for bit", v.tensors);
        } else {
            println!("different: {} of {} tensors differ, max |difference| {:.3e}{}", v.differing, v.tensors, v.max_abs_diff, if v.missing.is_empty() { String::new() } else { format!(", {} names in one file only (e.g. {})", v.missing.len(), v.missing[0]) });
            println!("(bit-identical weights are expected only on the CPU that made the served ones; its pretrain.json names it)");
        }
        return Ok(());
    }
    let p = crate::pretrain::ensure(&cfg, &dir, progress)?;
    let rows = crate::pretrain::read_log(&p.log)?;
    println!("{} pre-trained backbone: {}", origin_name(p.origin), p.weights.display());
    println!("epoch  crops  loss    accuracy  val_accuracy  seconds");
    for r in &rows {
        println!("{:>5}  {:>5}  {:.4}  {:.3}     {:.3}         {:.1}", r.epoch, r.crops, r.loss, r.accuracy, r.val_accuracy, r.seconds);
    }
    println!("log: {}", p.log.display());
    Ok(())
}

fn origin_name(o: crate::pretrain::Origin) -> &'static str {
    match o {
        crate::pretrain::Origin::Cache => "cached",
        crate::pretrain::Origin::Shipped => "shipped",
        crate::pretrain::Origin::Trained => "new",
    }
}

/// `harness run --retime`: the flagged cells' timings measured again, one cell at a time, then
/// the report regenerated.
fn retime(g: &crate::harness::Grid, cache_dir: Option<&std::path::Path>) -> Result<()> {
    let (_, runs, _) = crate::report::load_runs(&g.results)?;
    let exe = std::env::current_exe().context("locating the harness executable")?;
    let flagged: Vec<(&crate::harness::Cell, String)> = g
        .cells
        .iter()
        .filter_map(|c| {
            let unit = crate::report::unit_of(c.split.as_ref().map(|s| s.index), c.seed);
            let r = runs.iter().find(|r| r.arm == c.arm && r.unit() == unit && r.state == crate::rundir::State::Done)?;
            r.timing_flag().map(|why| (c, why))
        })
        .collect();
    // a cell still training would both disturb the reruns and be disturbed by them
    for c in &g.cells {
        let dir = g.results.join(crate::harness::CELLS).join(&c.dir_name);
        if crate::harness::read_status(&dir).is_some_and(|s| s.state == crate::rundir::State::Running) && crate::rundir::try_lock(&dir).is_err() {
            bail!("{}: the cell is training now; retime when the grid's run has ended, on a quiet machine", dir.display());
        }
    }
    println!("{}: {} finished cells flagged for their timings", g.name, flagged.len());
    let mut kept = Vec::new();
    for (c, why) in &flagged {
        let dir = g.results.join(crate::harness::CELLS).join(&c.dir_name);
        println!("  {} (flagged: {why}): training again ...", c.dir_name);
        match crate::harness::retime_cell(&exe, &dir, &c.config.device, cache_dir) {
            Ok(words) => println!("  {}: {words}", c.dir_name),
            Err(e) => {
                println!("  {}: not retimed: {e:#}", c.dir_name);
                kept.push(format!("{}: {e:#}", c.dir_name));
            }
        }
    }
    let rep = crate::report::generate(&g.results)?;
    let (_, runs, _) = crate::report::load_runs(&g.results)?;
    let still = flagged.iter().filter(|(c, _)| runs.iter().any(|r| r.arm == c.arm && r.unit() == crate::report::unit_of(c.split.as_ref().map(|s| s.index), c.seed) && r.timing_flag().is_some())).count();
    println!("report: {} ({still} of the {} flagged cells are flagged still: run --retime again on a quieter machine)", rep.summary.display(), flagged.len());
    if !kept.is_empty() {
        bail!("{} of {} flagged cells kept their old timings:\n  {}", kept.len(), flagged.len(), kept.join("\n  "));
    }
    Ok(())
}

/// `--dry-run`: the cells, their cost, and the datasets still to be made.
fn dry_run(g: &crate::harness::Grid, calibrate: Option<usize>, cache_dir: Option<&std::path::Path>) -> Result<()> {
    println!("{}: {} cells in {}", g.name, g.cells.len(), g.results.display());
    for (root, plan) in &g.plans {
        let overlaps = if plan.overlap_checked { "" } else { "; no tile records (tiles.csv): images that share pixels, if any, are not kept apart unless the groups do it" };
        println!("  splits of {}: {} images pooled{overlaps}", root.display(), plan.groups.len());
        for s in &plan.splits {
            println!("    {}: {} training, {} test, {} left out of training for overlapping a test tile ({})", s.label, s.train.len(), s.test.len(), s.buffered.len(), s.name);
        }
    }
    for c in &g.cells {
        let split = c.split.as_ref().map(|s| format!("split {:<4}", s.label)).unwrap_or_default();
        println!("  {}  {:<40} {split}seed {:<4} {}", c.id, c.arm, c.seed, g.results.join(crate::harness::CELLS).join(&c.dir_name).display());
    }
    // the cost, from this grid's finished cells where it has some
    // (this grid's cells: a results folder of an earlier version of the grid has others)
    let estimate = crate::harness::status::read(&g.results).ok().and_then(|mut s| {
        s.cells.retain(|c| g.cells.iter().any(|x| c.dir.file_name().is_some_and(|n| n.to_string_lossy() == x.dir_name)));
        s.estimate()
    });
    match (calibrate, estimate) {
        (Some(n), _) => print_calibrated(g, n, cache_dir)?,
        (None, Some(e)) => println!("estimated cost: {} left of {} in all, one cell at a time (each arm's mean wall clock over the {} finished cells in {})", crate::fmt_duration(e.remaining_s), crate::fmt_duration(e.total_s), e.from_cells, g.results.display()),
        (None, None) => println!("no cost estimate: no cell of this grid has finished in {} yet (`--dry-run --calibrate` times a few iterations of each arm here for one; `harness status` gives one once a cell has)", g.results.display()),
    }
    // a proposals file the run would refuse: said now, not when the cell starts
    let mut missing: Vec<(&str, &std::path::Path)> = Vec::new();
    for c in &g.cells {
        for (key, f) in [("proposals.train_file", &c.config.proposals.train_file), ("proposals.test_file", &c.config.proposals.test_file)] {
            if let Some(f) = f.as_deref().filter(|f| !f.is_file() && !missing.iter().any(|m| m.1 == *f)) {
                missing.push((key, f));
            }
        }
    }
    for (key, f) in missing {
        eprintln!("warning: {key} = {} does not exist: the run will refuse to start until it does (harness proposals --out writes one)", f.display());
    }
    for root in g.missing_datasets() {
        let size = match root.file_name().and_then(|n| n.to_str()) {
            Some("tiny") => "tiny",
            Some("large") => "large",
            _ => "small",
        };
        eprintln!("warning: dataset.root = {} does not exist yet; make it (a generated dataset) with `harness make-dataset --out {} --size {size}` (with `--format coco` for the COCO layout), or point dataset.root at a VOC or COCO root", root.display(), root.display());
    }
    Ok(())
}

/// The cost of `g` from a timed calibration of each arm (`harness run --dry-run --calibrate`).
fn print_calibrated(g: &crate::harness::Grid, iterations: usize, cache_dir: Option<&std::path::Path>) -> Result<()> {
    use crate::harness::calibrate;
    let timings = calibrate::calibrate(g, iterations, cache_dir)?;
    for t in &timings {
        let mine = t.mine_s_per_image.map(|m| format!(", mining {:.1} ms/image", m * 1e3)).unwrap_or_default();
        println!("  calibration {}: {:.3} s/iteration, evaluation {:.1} ms/image{mine}", t.arm, t.s_per_iter, t.eval_s_per_image * 1e3);
    }
    let (left, total) = calibrate::estimate(g, &timings, &|c| crate::harness::is_done(&g.results.join(crate::harness::CELLS).join(&c.dir_name), c.epochs))?;
    println!(
        "estimated cost: {} left of {} in all, one cell at a time (from a timed calibration here: {} iterations of each arm from scratch weights, start-up {:.0} s a cell; pre-training a backbone not cached yet is not counted)",
        crate::fmt_duration(left),
        crate::fmt_duration(total),
        2 * iterations,
        timings.first().map_or(0.0, |t| t.overhead_s)
    );
    Ok(())
}

fn run_grid(a: RunArgs, progress: bool) -> Result<()> {
    if a.calibrate.is_some() {
        // the calibration trains on the data: a dataset still to make is said as the dry run says it
        let g = crate::harness::Grid::load_without_data(&a.grid, &a.overrides)?;
        if !g.missing_datasets().is_empty() {
            dry_run(&g, None, None)?;
            bail!("--calibrate trains each arm on its data: make the datasets above first");
        }
    }
    let mut g = if a.dry_run && a.calibrate.is_none() { crate::harness::Grid::load_without_data(&a.grid, &a.overrides)? } else { crate::harness::Grid::load(&a.grid, &a.overrides)? };
    if let Some(o) = a.out {
        g.results = o;
    }
    if a.dry_run {
        return dry_run(&g, a.calibrate, a.cache_dir.as_deref());
    }
    if a.retime {
        if a.executor == Executor::Slurm {
            bail!("--retime runs here, one cell at a time, to time them on one quiet machine; leave out --executor slurm");
        }
        return retime(&g, a.cache_dir.as_deref());
    }
    for from in &a.reuse {
        let copied = crate::harness::reuse(&g, from)?;
        println!("{}: {} cells copied from {} (the same cell ids), not trained again", g.name, copied.len(), from.display());
        for (cell, src) in copied {
            println!("  {cell} <- {}", src.display());
        }
    }
    if a.executor == Executor::Slurm {
        return submit(&g, a.slurm, a.force, a.cache_dir);
    }
    let opts = crate::harness::RunOptions { jobs: a.jobs, force: a.force, progress, cache_dir: a.cache_dir };
    let s = crate::harness::run(&g, &opts)?;
    let rep = crate::report::generate(&g.results)?;
    for n in &rep.notes {
        println!("{n}");
    }
    println!("{}: {} cells: {} run, {} already done, {} busy elsewhere, {} pre-empted, {} failed", g.name, g.cells.len(), s.done, s.skipped, s.busy, s.preempted, s.failed.len());
    for (cell, reason) in &s.failed {
        println!("  failed: {cell}: {reason}");
    }
    println!("report: {}", rep.summary.display());
    if !s.failed.is_empty() {
        bail!("{} of {} cells failed (see status.json and train.log in each)", s.failed.len(), g.cells.len());
    }
    if s.preempted > 0 {
        return Err(crate::rundir::Preempted { where_: format!("{} cells at their last iteration; rerun the same command to resume them", s.preempted) }.into());
    }
    Ok(())
}

/// `harness run --executor slurm`.
fn submit(g: &crate::harness::Grid, s: SlurmArgs, force: bool, cache_dir: Option<PathBuf>) -> Result<()> {
    let max_parallel = s.max_parallel;
    let opts = SlurmOptions {
        partition: s.partition,
        gpus_per_task: s.gpus_per_task,
        cpus_per_task: s.cpus_per_task,
        time: s.time,
        max_parallel,
        sbatch_args: s.sbatch_args,
        signal: s.signal,
        requeue: !s.no_requeue,
        force,
        cache_dir,
    };
    match crate::harness::slurm::submit(g, &opts)? {
        None => println!("{}: all {} cells are done; nothing submitted (report: harness report {})", g.name, g.cells.len(), g.results.display()),
        Some(sub) => {
            println!("{}: submitted array job {} ({} of {} cells, at most {max_parallel} at a time) and report job {} (afterany:{})", g.name, sub.array_job, sub.cells.len(), g.cells.len(), sub.report_job, sub.array_job);
            println!("watch: harness status {}", g.results.display());
            println!("logs:  {}/slurm/", g.results.display());
        }
    }
    Ok(())
}

fn cell(a: CellArgs) -> Result<()> {
    use crate::harness::CellOutcome;
    match crate::harness::run_one(&a.results, a.index, a.force, a.cache_dir.as_deref())? {
        CellOutcome::Done => Ok(()),
        CellOutcome::Busy => bail!("cell {} of {} is running in another process", a.index, a.results.display()),
        CellOutcome::Failed(reason) => bail!("cell {} of {} failed: {reason}", a.index, a.results.display()),
        CellOutcome::Preempted(p) => {
            if a.requeue {
                crate::harness::slurm::requeue_self()?;
                eprintln!("requeued: the cell resumes from its checkpoint");
            }
            Err(p.into())
        }
    }
}

fn report(results: &std::path::Path) -> Result<()> {
    let rep = crate::report::generate(results)?;
    for n in &rep.notes {
        println!("{n}");
    }
    println!("report: {}", rep.summary.display());
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let all = a.what == BenchWhat::All;
    if a.what == BenchWhat::Epoch {
        crate::bench::epoch(&a.config, a.epochs.unwrap_or(2))?;
    }
    if a.what == BenchWhat::Data {
        if a.sizes.iter().any(|&n| n < 8) {
            bail!("--sizes: each dataset needs at least 8 images (its test split)");
        }
        let epochs = a.epochs.unwrap_or(3);
        crate::bench::data(&crate::bench::DataBench { sizes: a.sizes.clone(), cache_mib: a.cache_mib, held_mib: a.held_mib, iters: a.iters.unwrap_or(100), epochs, stages: a.stages.clone() })?;
    }
    if a.what == BenchWhat::ClaimA {
        if a.replot {
            return crate::bench::replot_claim_a(&a.out);
        }
        crate::bench::claim_a(&a.out, a.iters.unwrap_or(5), &a.rois, &crate::bench::claim_a_widths(&a.fc, a.vgg16), a.vgg16.then_some(a.vgg16_rois.as_slice()), a.peer, a.rounds as usize)?;
    }
    if all || a.what == BenchWhat::Proposals {
        crate::bench::proposals(a.images)?;
    }
    if all || a.what == BenchWhat::Eval {
        crate::bench::eval()?;
        if a.coco {
            crate::bench::eval_coco(5000)?;
        }
    }
    if all || a.what == BenchWhat::Train {
        crate::bench::train(a.iters.unwrap_or(5), a.vgg16)?;
    }
    if all || a.what == BenchWhat::Samplers {
        let iters = if a.vgg16 { a.iters.unwrap_or(5).min(2) } else { a.iters.unwrap_or(5) };
        if a.fold_bn && a.vgg16 {
            anyhow::bail!("--fold-bn: VGG16 has no batch norm to fold; drop --vgg16");
        }
        if a.fold_bn && a.profile {
            anyhow::bail!("--fold-bn and --profile: profile one model at a time; drop one of them");
        }
        crate::bench::samplers(iters, &a.proposals, a.peer, a.vgg16, a.rounds as usize, a.fold_bn, a.profile, a.detector == "faster_rcnn")?;
    }
    Ok(())
}
