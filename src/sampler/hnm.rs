//! Offline hard-negative mining (bootstrapping, as in R-CNN / DPM).
//!
//! Training runs on minibatches of fixed ratios: up to `fg_fraction` of B/N
//! foreground RoIs, up to `hard_fraction` hard negatives drawn from a cache,
//! and random background RoIs (IoU in `[bg_thresh_lo, bg_thresh_hi)`) for
//! `random_fraction` plus whatever the hard quota left unfilled. Every
//! `mine_every_epochs` epochs (or `mine_every_iters` iterations) training
//! stops, the model is frozen and every training image's proposals are scored
//! (a full forward under `no_grad`), and the cache is rebuilt from the false
//! positives:
//! - `fp_rule: topk` (the default): the `fp_topk` background RoIs of highest
//!   loss per image;
//! - `fp_rule: score`: background RoIs whose highest foreground probability is
//!   at least `fp_score_thresh` (R-CNN's rule for an SVM score; with a softmax
//!   that is still learning, an absolute threshold of 0.5 can mine nothing).
//!
//! The default, `topk` with `fp_topk` = 64 = twice the hard quota per image
//! (`hard_fraction` × B/N = 32), is R-CNN/DPM bootstrapping made scale-free:
//! what is hard is ranked against the model's own scores of that image, so the
//! cache is full from the first round whatever the calibration of the softmax,
//! and the sampler still draws its 32 from a choice of 64.
//!
//! `cache: replace` keeps only the new false positives; `accumulate` also keeps
//! old entries the current model still gets wrong (under `score`: still above
//! the threshold; under `topk`: at least as hard as the k-th new one), so easy
//! negatives are dropped either way. Each image keeps at most
//! `cache_cap_per_image` entries, the hardest first. Before the first mining
//! round the sampler is the fixed-ratio one. The trainer logs the mining time
//! apart from the training time: the stall is what is being measured.

use std::time::Instant;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::{fixed_ratio, host, sample_where, ImageRois, Miner, MiningStats, Progress, RoiLosses, Sampler};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FpRule {
    Score,
    Topk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePolicy {
    Replace,
    Accumulate,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HnmConfig {
    /// RoIs per minibatch of N images (B).
    pub batch_size: i64,
    /// Share of B/N for foreground RoIs (`pos_fraction` is read as the same key).
    #[serde(alias = "pos_fraction")]
    pub fg_fraction: f64,
    pub hard_fraction: f64,
    pub random_fraction: f64,
    pub fg_thresh: f64,
    pub bg_thresh_hi: f64,
    pub bg_thresh_lo: f64,
    /// Mine every K epochs (from the start of epoch K on) ...
    pub mine_every_epochs: Option<usize>,
    /// ... or every M iterations. Exactly one of the two is set.
    pub mine_every_iters: Option<usize>,
    pub fp_rule: FpRule,
    pub fp_score_thresh: f64,
    pub fp_topk: usize,
    pub cache: CachePolicy,
    pub cache_cap_per_image: usize,
}

impl Default for HnmConfig {
    fn default() -> Self {
        HnmConfig {
            batch_size: 128,
            fg_fraction: 0.25,
            hard_fraction: 0.5,
            random_fraction: 0.25,
            fg_thresh: 0.5,
            bg_thresh_hi: 0.5,
            bg_thresh_lo: 0.0,
            mine_every_epochs: Some(1),
            mine_every_iters: None,
            fp_rule: FpRule::Topk,
            fp_score_thresh: 0.5,
            fp_topk: 64,
            cache: CachePolicy::Replace,
            cache_cap_per_image: 64,
        }
    }
}

impl HnmConfig {
    pub fn check(&self) -> Result<()> {
        if self.batch_size < 1 {
            bail!("sampler.batch_size = {}: at least 1 RoI per minibatch", self.batch_size);
        }
        for (k, v) in [("fg_fraction", self.fg_fraction), ("hard_fraction", self.hard_fraction), ("random_fraction", self.random_fraction), ("fg_thresh", self.fg_thresh), ("bg_thresh_hi", self.bg_thresh_hi), ("bg_thresh_lo", self.bg_thresh_lo), ("fp_score_thresh", self.fp_score_thresh)] {
            if !(0.0..=1.0).contains(&v) {
                bail!("sampler.{k} = {v} is outside [0, 1]");
            }
        }
        let sum = self.fg_fraction + self.hard_fraction + self.random_fraction;
        if sum > 1.0 + 1e-9 {
            bail!("sampler.fg_fraction = {}, sampler.hard_fraction = {} and sampler.random_fraction = {} sum to {sum}, which exceeds 1", self.fg_fraction, self.hard_fraction, self.random_fraction);
        }
        if self.bg_thresh_lo > self.bg_thresh_hi || self.bg_thresh_hi > self.fg_thresh {
            bail!("sampler.bg_thresh_lo = {}, sampler.bg_thresh_hi = {} and sampler.fg_thresh = {}: need bg_thresh_lo <= bg_thresh_hi <= fg_thresh", self.bg_thresh_lo, self.bg_thresh_hi, self.fg_thresh);
        }
        match (self.mine_every_epochs, self.mine_every_iters) {
            (Some(0), _) => bail!("sampler.mine_every_epochs = 0: at least 1"),
            (_, Some(0)) => bail!("sampler.mine_every_iters = 0: at least 1"),
            (e, i) if e.is_some() == i.is_some() => {
                let text = |v: Option<usize>| v.map_or("null".to_string(), |v| v.to_string());
                bail!("sampler.mine_every_epochs = {} and sampler.mine_every_iters = {}: set exactly one of them (the other to null)", text(e), text(i))
            }
            _ => {}
        }
        if self.fp_topk == 0 || self.cache_cap_per_image == 0 {
            bail!("sampler.fp_topk = {} and sampler.cache_cap_per_image = {}: each must be at least 1", self.fp_topk, self.cache_cap_per_image);
        }
        Ok(())
    }
}

/// The mined state: per training image, proposal indices of hard negatives, hardest first.
/// Where the scored proposals were not the image's given ones (Faster R-CNN: the RPN's of that
/// round), `boxes` holds the same entries' boxes, 0-based pixels of the original image, for the
/// trainer to add to the image's RoIs ([`Sampler::mined_rois`]); the indices then only count.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HnmState {
    pub rounds: usize,
    pub cache: Vec<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boxes: Vec<Vec<[f32; 4]>>,
}

pub struct Hnm {
    cfg: HnmConfig,
    pub state: HnmState,
}

impl Hnm {
    pub fn new(cfg: HnmConfig) -> Self {
        Hnm { cfg, state: HnmState::default() }
    }

    fn due(&self, at: Progress) -> bool {
        match (self.cfg.mine_every_epochs, self.cfg.mine_every_iters) {
            (Some(k), _) => at.iter_in_epoch == 0 && at.epoch > 0 && at.epoch % k == 0,
            (_, Some(m)) => at.iteration > 0 && at.iteration % m == 0,
            _ => false,
        }
    }

    /// Rebuilds the cache from the frozen model's scores of every training
    /// image; reports what it mined (`seconds` left 0).
    pub fn update_cache(&mut self, scores: &[super::ImageScores]) -> MiningStats {
        let mut round = self.begin_round();
        for s in scores {
            self.add_image(&mut round, s);
        }
        self.end_round(round)
    }

    /// A mining round with nothing scored yet.
    pub fn begin_round(&self) -> Round {
        Round { cache: vec![Vec::new(); self.state.cache.len()], ..Round::default() }
    }

    /// Whether the cache holds boxes rather than proposal indices (see [`HnmState`]).
    fn mines_boxes(&self) -> bool {
        !self.state.boxes.is_empty()
    }

    /// Adds one image's scores to a round: its cache entries and its share of the round's
    /// figures. Only the entries are kept (at most `cache_cap_per_image` indices an image),
    /// so a round's memory does not grow with the images' proposals.
    pub fn add_image(&self, r: &mut Round, s: &super::ImageScores) {
        r.rep.images += 1;
        let labels: Vec<i64> = host(&s.labels);
        let iou: Vec<f32> = host(&s.max_iou);
        let diff: Vec<f32> = host(&s.difficult_iou);
        let place = |i: usize| [iou[i] as f64, (diff[i] >= 0.5) as u8 as f64, (iou[i] < 0.1 && diff[i] < 0.1) as u8 as f64];
        let fg: Vec<f32> = host(&s.fg_score);
        let loss: Vec<f32> = host(&s.loss);
        let is_bg = |i: usize| labels[i] == 0 && (iou[i] as f64) < self.cfg.bg_thresh_hi && (iou[i] as f64) >= self.cfg.bg_thresh_lo;
        let hardness: &[f32] = match self.cfg.fp_rule {
            FpRule::Score => &fg,
            FpRule::Topk => &loss,
        };
        let mut bg: Vec<usize> = (0..labels.len()).filter(|&i| is_bg(i)).collect();
        bg.sort_by(|&a, &b| hardness[b].total_cmp(&hardness[a]).then(a.cmp(&b)));
        // new false positives, and the bar an old cache entry must still clear
        let (new, bar): (Vec<usize>, f32) = match self.cfg.fp_rule {
            FpRule::Score => {
                let t = self.cfg.fp_score_thresh as f32;
                (bg.iter().copied().filter(|&i| fg[i] >= t).collect(), t)
            }
            FpRule::Topk => {
                let top: Vec<usize> = bg.iter().copied().take(self.cfg.fp_topk).collect();
                let floor = top.last().map(|&i| loss[i]).unwrap_or(f32::INFINITY);
                (top, floor)
            }
        };
        let still_hard = |i: usize| hardness[i] >= bar;
        r.rep.negatives += bg.len();
        r.loss_all += bg.iter().map(|&i| loss[i] as f64).sum::<f64>();
        r.fg_all += bg.iter().map(|&i| fg[i] as f64).sum::<f64>();
        for &i in &bg {
            r.place_all.iter_mut().zip(place(i)).for_each(|(a, v)| *a += v);
        }
        // another round's proposals (Faster R-CNN) cannot be rescored: no old entries then
        let old = self.state.cache.get(s.image).filter(|_| s.boxes.is_none());
        if self.state.rounds > 0 && s.boxes.is_none() {
            if let Some(old) = old {
                let old: Vec<usize> = old.iter().map(|&i| i as usize).filter(|&i| i < labels.len() && is_bg(i)).collect();
                r.prev_total += old.len();
                r.prev_hard += old.iter().filter(|&&i| still_hard(i)).count();
            }
        }
        let mut entries: Vec<usize> = new;
        if self.cfg.cache == CachePolicy::Accumulate {
            for &i in old.into_iter().flatten() {
                let i = i as usize;
                if i < labels.len() && is_bg(i) && still_hard(i) && !entries.contains(&i) {
                    entries.push(i);
                }
            }
        }
        entries.sort_by(|&a, &b| hardness[b].total_cmp(&hardness[a]).then(a.cmp(&b)));
        entries.truncate(self.cfg.cache_cap_per_image);
        r.rep.mined += entries.len();
        r.rep.empty_images += entries.is_empty() as usize;
        r.loss_mined += entries.iter().map(|&i| loss[i] as f64).sum::<f64>();
        r.fg_mined += entries.iter().map(|&i| fg[i] as f64).sum::<f64>();
        for &i in &entries {
            r.place_mined.iter_mut().zip(place(i)).for_each(|(a, v)| *a += v);
        }
        if s.image >= r.cache.len() {
            r.cache.resize(s.image + 1, Vec::new());
        }
        if let Some(b) = &s.boxes {
            let b = super::host_boxes(b);
            if s.image >= r.boxes.len() {
                r.boxes.resize(s.image + 1, Vec::new());
            }
            r.boxes[s.image] = entries.iter().map(|&i| b[i]).collect();
        }
        r.cache[s.image] = entries.into_iter().map(|i| i as i64).collect();
    }

    /// Ends a round: the new cache replaces the old, and the round's figures.
    pub fn end_round(&mut self, r: Round) -> MiningStats {
        let mut rep = r.rep;
        let mean = |sum: f64, n: usize| (n > 0).then(|| sum / n as f64);
        rep.mined_loss = mean(r.loss_mined, rep.mined);
        rep.mined_fg_score = mean(r.fg_mined, rep.mined);
        rep.random_loss = mean(r.loss_all, rep.negatives);
        rep.random_fg_score = mean(r.fg_all, rep.negatives);
        rep.prev_still_hard = mean(r.prev_hard as f64, r.prev_total);
        [rep.mined_gt_iou, rep.mined_on_difficult, rep.mined_no_box] = r.place_mined.map(|v| mean(v, rep.mined));
        [rep.random_gt_iou, rep.random_on_difficult, rep.random_no_box] = r.place_all.map(|v| mean(v, rep.negatives));
        if !r.boxes.is_empty() {
            let mut boxes = r.boxes;
            boxes.resize(r.cache.len(), Vec::new());
            self.state.boxes = boxes;
        }
        self.state.cache = r.cache;
        self.state.rounds += 1;
        rep
    }
}

/// A mining round in progress ([`Hnm::begin_round`]): the new cache, and the sums behind the round's figures.
#[derive(Debug, Default)]
pub struct Round {
    cache: Vec<Vec<i64>>,
    /// The entries' boxes, when the scored proposals were not the given ones.
    boxes: Vec<Vec<[f32; 4]>>,
    rep: MiningStats,
    loss_all: f64,
    fg_all: f64,
    loss_mined: f64,
    fg_mined: f64,
    prev_total: usize,
    prev_hard: usize,
    /// Sum of best IoU with a labelled box, count on a difficult box, count touching no box: all negatives / mined.
    place_all: [f64; 3],
    place_mined: [f64; 3],
}

impl Sampler for Hnm {
    fn select(&mut self, r: &ImageRois, _: Option<&RoiLosses>, per_image: i64) -> Tensor {
        let (k, c) = (per_image, &self.cfg);
        let bg = (c.bg_thresh_lo, c.bg_thresh_hi);
        if self.state.rounds == 0 {
            // before the first mining round: the fixed-ratio sampler
            return fixed_ratio::pick(r, c.fg_thresh, c.fg_fraction, bg, k);
        }
        let pos = fixed_ratio::foreground(r, c.fg_thresh, c.fg_fraction, k);
        let bg_mask = fixed_ratio::background_mask(r, bg);
        let n_pos = pos.size()[0];
        let dev = r.max_iou.device();
        let cached: Vec<i64> = if self.mines_boxes() {
            // the cached boxes came in as the image's last proposals
            (r.n_proposals - r.n_mined..r.n_proposals).collect()
        } else {
            let cached = self.state.cache.get(r.image).cloned().unwrap_or_default();
            cached.into_iter().filter(|&i| i < r.n_proposals).collect()
        };
        let in_cache = Tensor::zeros_like(&bg_mask).index_fill(0, &Tensor::from_slice(&cached).to_device(dev), 1).to_kind(Kind::Bool);
        let hard_quota = fixed_ratio::quota(c.hard_fraction, k).min(k - n_pos);
        let hard = sample_where(&in_cache.logical_and(&bg_mask), hard_quota);
        let random_quota = (fixed_ratio::quota(c.random_fraction, k) + hard_quota - hard.size()[0]).min(k - n_pos - hard.size()[0]);
        let rest = bg_mask.index_fill(0, &hard, 0);
        let random = sample_where(&rest, random_quota.max(0));
        Tensor::cat(&[pos, hard, random], 0)
    }

    fn before_iteration(&mut self, at: Progress, miner: &mut dyn Miner) -> Result<Option<MiningStats>> {
        if !self.due(at) {
            return Ok(None);
        }
        let t = Instant::now();
        let mut round = self.begin_round();
        miner.score_each(&mut |s| {
            self.add_image(&mut round, &s);
            Ok(())
        })?;
        let rep = self.end_round(round);
        Ok(Some(MiningStats { seconds: t.elapsed().as_secs_f64(), ..rep }))
    }

    fn is_due(&self, at: Progress) -> bool {
        self.due(at)
    }

    fn mined_rois(&self, image: usize) -> Option<Tensor> {
        let b = self.state.boxes.get(image).filter(|b| !b.is_empty())?;
        Some(Tensor::from_slice(&b.iter().flatten().copied().collect::<Vec<f32>>()).view([-1, 4]))
    }

    fn cache_size(&self) -> usize {
        self.state.cache.iter().map(Vec::len).sum()
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("state serialises")
    }

    fn restore(&mut self, v: serde_json::Value) -> Result<()> {
        self.state = serde_json::from_value(v)?;
        Ok(())
    }
}
