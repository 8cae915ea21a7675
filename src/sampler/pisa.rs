//! PISA, prime sample attention (Cao et al., CVPR 2020), as mmdetection's
//! `pisa_faster_rcnn` trains it:
//!
//! - **ScoreHLR negatives** (`ScoreHLRSampler`, k 0.5, bias 0): the read-only
//!   forward scores every background RoI (IoU in `[bg_thresh_lo, bg_thresh_hi)`).
//!   Those whose best foreground probability exceeds `score_thr` (0.05) are
//!   grouped by `nms_match` at `iou_thr` (0.5) on their predicted boxes, ranked
//!   by hierarchical local rank (first every group's top box, then every
//!   group's second, ..., by score within a level), and the top ones fill the
//!   negative quota; any shortfall is drawn at random from the rest. Rank `r`
//!   gets the classification weight `(u - r) / u` (`u` = max(quota, valid)),
//!   the random ones the lowest of those, then `(bias + (1 - bias) w)^k`, scaled
//!   so that the negatives' cross-entropy keeps its sum.
//! - **Positives** are drawn uniformly up to `fg_fraction` of B/N, as mmdetection's sampler does.
//! - **ISR-P** (k 2, bias 0) re-weights the positives' classification loss by
//!   their IoU-HLR, and **CARL** (k 1, bias 0.2) adds a score-weighted box loss
//!   ([`crate::model::loss`]); `isr_p: null` or `carl: null` turns either off.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::fixed_ratio::{background_mask, foreground};
use super::{hierarchical_ranks, host, host_boxes, nms_match, random_choice, ImageRois, Picked, RoiLosses, Sampler};
use crate::model::box_coder;
use crate::model::loss::{KBias, LossConfig};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PisaConfig {
    /// RoIs per minibatch of N images (B).
    pub batch_size: i64,
    pub fg_fraction: f64,
    pub fg_thresh: f64,
    pub bg_thresh_hi: f64,
    pub bg_thresh_lo: f64,
    /// ScoreHLR's exponent and bias on the negatives' weights.
    pub k: f64,
    pub bias: f64,
    /// Negatives scoring at most this (best foreground probability) are not ranked.
    pub score_thr: f64,
    /// `nms_match` IoU on the negatives' predicted boxes.
    pub iou_thr: f64,
    pub isr_p: Option<KBias>,
    pub carl: Option<KBias>,
}

impl Default for PisaConfig {
    fn default() -> Self {
        PisaConfig {
            batch_size: 128,
            fg_fraction: 0.25,
            fg_thresh: 0.5,
            bg_thresh_hi: 0.5,
            bg_thresh_lo: 0.0,
            k: 0.5,
            bias: 0.0,
            score_thr: 0.05,
            iou_thr: 0.5,
            isr_p: Some(KBias { k: 2.0, bias: 0.0 }),
            carl: Some(KBias { k: 1.0, bias: 0.2 }),
        }
    }
}

impl PisaConfig {
    pub fn check(&self) -> Result<()> {
        if self.batch_size < 1 {
            bail!("sampler.batch_size = {}: at least 1 RoI per minibatch", self.batch_size);
        }
        for (k, v) in [("fg_fraction", self.fg_fraction), ("fg_thresh", self.fg_thresh), ("bg_thresh_hi", self.bg_thresh_hi), ("bg_thresh_lo", self.bg_thresh_lo), ("bias", self.bias), ("score_thr", self.score_thr), ("iou_thr", self.iou_thr)] {
            if !(0.0..=1.0).contains(&v) {
                bail!("sampler.{k} = {v} is outside [0, 1]");
            }
        }
        if self.bg_thresh_lo > self.bg_thresh_hi || self.bg_thresh_hi > self.fg_thresh {
            bail!("sampler.bg_thresh_lo = {}, sampler.bg_thresh_hi = {} and sampler.fg_thresh = {}: need bg_thresh_lo <= bg_thresh_hi <= fg_thresh", self.bg_thresh_lo, self.bg_thresh_hi, self.fg_thresh);
        }
        for (name, kb) in [("k", Some(KBias { k: self.k, bias: self.bias })), ("isr_p", self.isr_p), ("carl", self.carl)] {
            if let Some(kb) = kb {
                if !(kb.k > 0.0 && kb.k.is_finite()) || !(0.0..=1.0).contains(&kb.bias) {
                    // (the top-level pair is sampler.k and sampler.bias; the others are sections)
                    let at = if name == "k" { "sampler.".to_string() } else { format!("sampler.{name}.") };
                    bail!("{at}k = {} and {at}bias = {}: k must be positive and bias in [0, 1]", kb.k, kb.bias);
                }
            }
        }
        Ok(())
    }
}

pub struct Pisa {
    cfg: PisaConfig,
}

impl Pisa {
    pub fn new(cfg: PisaConfig) -> Self {
        Pisa { cfg }
    }
}

impl Sampler for Pisa {
    fn select(&mut self, r: &ImageRois, losses: Option<&RoiLosses>, per_image: i64) -> Tensor {
        self.select_weighted(r, losses, per_image).idx
    }

    fn select_weighted(&mut self, r: &ImageRois, losses: Option<&RoiLosses>, per_image: i64) -> Picked {
        let l = losses.expect("PISA is given the read-only forward (needs_roi_losses)");
        let c = &self.cfg;
        let dev = r.rois.device();
        let fg = foreground(r, c.fg_thresh, c.fg_fraction, per_image);
        let n_fg = fg.size()[0];
        let neg = background_mask(r, (c.bg_thresh_lo, c.bg_thresh_hi)).logical_and(&r.labels.eq(0)).nonzero().squeeze_dim(1); // [M]
        let expected = ((per_image - n_fg).max(0)).min(neg.size()[0]) as usize;
        if expected == 0 {
            return Picked { weight: Some(Tensor::ones([n_fg], (Kind::Float, dev))), idx: fg };
        }
        // the read-only forward over the negatives: best foreground class, its score and predicted box
        let probs = l.logits.index_select(0, &neg).softmax(1, Kind::Float).narrow(1, 1, l.logits.size()[1] - 1); // [M, K]
        let (score, class) = probs.max_dim(1, false);
        let m = neg.size()[0];
        let deltas = l.deltas.index_select(0, &neg).view([m, -1, 4]).gather(1, &class.view([m, 1, 1]).expand([m, 1, 4], false), false); // [M, 1, 4]
        let boxes = host_boxes(&box_coder::decode(&r.rois.index_select(0, &neg), &deltas).squeeze_dim(1));
        let (score, ce, neg): (Vec<f32>, Vec<f32>, Vec<i64>) = (host(&score), host(&l.cls.index_select(0, &neg)), host(&neg));
        let (pick, w) = score_hlr(&boxes, &score, &ce, expected, c);
        let idx: Vec<i64> = pick.into_iter().map(|j| neg[j]).collect();
        let weight = Tensor::cat(&[Tensor::ones([n_fg], (Kind::Float, dev)), Tensor::from_slice(&w).to_device(dev)], 0);
        Picked { idx: Tensor::cat(&[fg, Tensor::from_slice(&idx).to_device(dev)], 0), weight: Some(weight) }
    }

    fn needs_roi_losses(&self) -> bool {
        true
    }

    fn loss(&self) -> LossConfig {
        LossConfig { isr_p: self.cfg.isr_p, carl: self.cfg.carl, ..LossConfig::default() }
    }
}

/// ScoreHLR on one image's negatives (their predicted boxes, best foreground
/// scores and cross-entropy losses): the `k` picked, as indices into them, and
/// their classification weights (see the module doc; mmdetection's
/// `ScoreHLRSampler._sample_neg`).
pub fn score_hlr(boxes: &[crate::boxes::BBox], score: &[f32], ce: &[f32], k: usize, c: &PisaConfig) -> (Vec<usize>, Vec<f32>) {
    let valid: Vec<usize> = (0..score.len()).filter(|&i| score[i] as f64 > c.score_thr).collect();
    if valid.is_empty() {
        let all: Vec<i64> = (0..score.len() as i64).collect();
        return (random_choice(&all, k).into_iter().map(|i| i as usize).collect(), vec![1.0; k]);
    }
    let sub = |v: &[f32]| valid.iter().map(|&i| v[i]).collect::<Vec<f32>>();
    let group = nms_match(&valid.iter().map(|&i| boxes[i]).collect::<Vec<_>>(), &sub(score), c.iou_thr);
    let rank = hierarchical_ranks(&group, &sub(score));
    let mut by_rank: Vec<usize> = (0..valid.len()).collect();
    by_rank.sort_by_key(|&j| rank[j]);
    let n_hlr = valid.len().min(k);
    let mut pick: Vec<usize> = by_rank[..n_hlr].iter().map(|&j| valid[j]).collect();
    let up = k.max(valid.len()) as f64;
    let mut w: Vec<f64> = (0..n_hlr).map(|r| (up - r as f64) / up).collect();
    if n_hlr < k {
        let invalid: Vec<i64> = (0..score.len()).filter(|&i| score[i] as f64 <= c.score_thr).map(|i| i as i64).collect();
        let lowest = w.iter().copied().fold(f64::INFINITY, f64::min);
        for i in random_choice(&invalid, k - n_hlr) {
            pick.push(i as usize);
            w.push(lowest);
        }
    }
    let w: Vec<f64> = w.into_iter().map(|w| (c.bias + (1.0 - c.bias) * w).powf(c.k)).collect();
    let (orig, new) = pick.iter().zip(&w).fold((0.0, 0.0), |(o, n), (&i, &wi)| (o + ce[i] as f64, n + ce[i] as f64 * wi));
    let ratio = if new > 0.0 { orig / new } else { 1.0 };
    (pick, w.into_iter().map(|w| (w * ratio) as f32).collect())
}
