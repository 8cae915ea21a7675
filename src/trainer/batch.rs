//! The input side of the trainer: images and proposals held in memory, and
//! the per-iteration transform (horizontal flip, rescale so the shorter side
//! is `scale` with the longer side capped at `max_size`, mean/std
//! normalisation), as tensor operations on the training device.

use anyhow::Result;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::config::InputConfig;
use crate::boxes::BBox;
use crate::data::{Annotation, Dataset};

/// Proposals at least this far inside a COCO crowd region (intersection over
/// the proposal's area) are not trained on: Detectron's `CROWD_FILTER_THRESH`.
pub const CROWD_IOF: f64 = 0.7;

/// One split, decoded once.
pub struct ImageStore {
    pub anns: Vec<Annotation>,
    /// `[3, H, W]` uint8 on the CPU.
    images: Vec<Tensor>,
    /// `[P, 4]` float, 0-based pixels of the original image.
    proposals: Vec<Tensor>,
    /// `[G, 4]` ground truth neither difficult nor crowd, 0-based; `[G]` labels in 1..=K.
    gt: Vec<(Tensor, Tensor)>,
}

/// VOC 1-based boxes → `[n, 4]` 0-based.
fn to_tensor(boxes: &[BBox]) -> Tensor {
    let flat: Vec<f32> = boxes.iter().flat_map(|b| b.map(|v| v - 1.0)).collect();
    Tensor::from_slice(&flat).view([boxes.len() as i64, 4])
}

impl ImageStore {
    pub fn load(ds: &Dataset, anns: Vec<Annotation>, proposals: Vec<Vec<BBox>>) -> Result<Self> {
        let images: Vec<image::RgbImage> = anns.par_iter().map(|a| ds.load_image(a)).collect::<Result<_, _>>()?;
        Ok(Self::from_parts(anns, &images, &proposals))
    }

    /// A store from decoded images and their proposals (VOC 1-based boxes).
    pub fn from_parts(anns: Vec<Annotation>, images: &[image::RgbImage], proposals: &[Vec<BBox>]) -> Self {
        let images = images
            .iter()
            .map(|img| {
                let (w, h) = (img.width() as i64, img.height() as i64);
                Tensor::from_slice(img.as_raw()).view([h, w, 3]).permute([2, 0, 1]).contiguous()
            })
            .collect();
        let proposals = proposals.iter().map(|p| to_tensor(p)).collect();
        let gt = anns
            .iter()
            .map(|a| {
                let keep: Vec<&crate::data::Object> = a.objects.iter().filter(|o| !o.difficult && !o.crowd).collect();
                let boxes: Vec<BBox> = keep.iter().map(|o| o.bbox).collect();
                let labels: Vec<i64> = keep.iter().map(|o| o.class as i64 + 1).collect();
                (to_tensor(&boxes), Tensor::from_slice(&labels))
            })
            .collect();
        ImageStore { anns, images, proposals, gt }
    }

    /// Keeps the images whose annotation passes `keep`; returns how many were dropped.
    pub fn keep_where(&mut self, keep: impl Fn(&Annotation) -> bool) -> usize {
        let flags: Vec<bool> = self.anns.iter().map(&keep).collect();
        let before = self.anns.len();
        let mut it = flags.iter();
        self.anns.retain(|_| *it.next().expect("one flag per image"));
        for v in [&mut self.images, &mut self.proposals] {
            let mut it = flags.iter();
            v.retain(|_| *it.next().expect("one flag per image"));
        }
        let mut it = flags.iter();
        self.gt.retain(|_| *it.next().expect("one flag per image"));
        before - self.anns.len()
    }

    pub fn len(&self) -> usize {
        self.anns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anns.is_empty()
    }

    /// `[P]` each proposal's best IoU with a difficult box of image `i` (0 when
    /// it has none), in the original image's pixels (IoU does not change with the scale).
    pub fn difficult_iou(&self, i: usize) -> Tensor {
        let boxes: Vec<BBox> = self.anns[i].objects.iter().filter(|o| o.difficult).map(|o| o.bbox).collect();
        let p = &self.proposals[i];
        if boxes.is_empty() {
            return Tensor::zeros([p.size()[0]], (tch::Kind::Float, p.device()));
        }
        crate::model::box_coder::iou_matrix(p, &to_tensor(&boxes)).amax([1], false)
    }

    /// Drops the proposals that lie at least `thresh` inside a crowd region
    /// (intersection over the proposal's area, Detectron's `CROWD_FILTER_THRESH`),
    /// so that no sampler takes them as foreground or background. Returns how many.
    pub fn drop_crowd_proposals(&mut self, thresh: f64) -> i64 {
        let mut dropped = 0;
        for (a, p) in self.anns.iter().zip(self.proposals.iter_mut()) {
            let crowd: Vec<BBox> = a.objects.iter().filter(|o| o.crowd).map(|o| o.bbox).collect();
            if crowd.is_empty() || p.size()[0] == 0 {
                continue;
            }
            let c = to_tensor(&crowd);
            let col = |t: &Tensor, k: i64| t.select(1, k);
            let (px1, py1, px2, py2) = (col(p, 0).unsqueeze(1), col(p, 1).unsqueeze(1), col(p, 2).unsqueeze(1), col(p, 3).unsqueeze(1));
            let (cx1, cy1, cx2, cy2) = (col(&c, 0).unsqueeze(0), col(&c, 1).unsqueeze(0), col(&c, 2).unsqueeze(0), col(&c, 3).unsqueeze(0));
            // inclusive pixels, as crate::boxes
            let iw = (px2.minimum(&cx2) - px1.maximum(&cx1) + 1.0).clamp_min(0.0);
            let ih = (py2.minimum(&cy2) - py1.maximum(&cy1) + 1.0).clamp_min(0.0);
            let area = (&px2 - &px1 + 1.0) * (&py2 - &py1 + 1.0);
            let iof = (iw * ih / area).amax([1], false);
            let keep = iof.lt(thresh).nonzero().squeeze_dim(1);
            dropped += p.size()[0] - keep.size()[0];
            *p = p.index_select(0, &keep);
        }
        dropped
    }

    pub fn n_proposals(&self, i: usize) -> i64 {
        self.proposals[i].size()[0]
    }
}

/// One image ready for the network.
pub struct Prepared {
    pub index: usize,
    /// `[3, h, w]` normalised float.
    pub image: Tensor,
    /// Input-size over original-size factor.
    pub scale: f64,
    /// `[P, 4]` proposals in input pixels.
    pub proposals: Tensor,
    /// `[G, 4]` ground truth in input pixels and `[G]` labels.
    pub gt: Tensor,
    pub gt_labels: Tensor,
}

fn flip_boxes(b: &Tensor, w: i64) -> Tensor {
    let x1 = (w - 1) as f64 - b.select(1, 2);
    let x2 = (w - 1) as f64 - b.select(1, 0);
    Tensor::stack(&[x1, b.select(1, 1), x2, b.select(1, 3)], 1)
}

pub fn prepare(store: &ImageStore, i: usize, cfg: &InputConfig, flip: bool, device: Device) -> Prepared {
    let raw = store.images[i].to_device(device); // [3, H, W] u8
    let (_, h, w) = raw.size3().expect("[3, H, W]");
    let mean = Tensor::from_slice(&cfg.pixel_mean.map(|v| v as f32)).to_device(device).view([3, 1, 1]);
    let std = Tensor::from_slice(&cfg.pixel_std.map(|v| v as f32)).to_device(device).view([3, 1, 1]);
    let mut img = (raw.to_kind(Kind::Float) - mean) / std; // [3, H, W]
    let (mut props, mut gt) = (store.proposals[i].to_device(device), store.gt[i].0.to_device(device));
    if flip {
        img = img.flip([2]);
        props = flip_boxes(&props, w);
        gt = flip_boxes(&gt, w);
    }
    let s = cfg.scale_for(h, w);
    let (nh, nw) = ((h as f64 * s).round() as i64, (w as f64 * s).round() as i64);
    let image = img.unsqueeze(0).upsample_bilinear2d([nh, nw], false, None, None).squeeze_dim(0); // [3, nh, nw]
    Prepared { index: i, image, scale: s, proposals: props * s, gt: gt * s, gt_labels: store.gt[i].1.to_device(device) }
}

/// Zero-pads images to a common size: `[N, 3, Hmax, Wmax]`.
pub fn collate(batch: &[Prepared]) -> Tensor {
    let hmax = batch.iter().map(|p| p.image.size()[1]).max().unwrap_or(1);
    let wmax = batch.iter().map(|p| p.image.size()[2]).max().unwrap_or(1);
    let padded: Vec<Tensor> = batch
        .iter()
        .map(|p| {
            let (_, h, w) = p.image.size3().expect("[3, h, w]");
            p.image.constant_pad_nd([0, wmax - w, 0, hmax - h])
        })
        .collect();
    Tensor::stack(&padded, 0)
}
