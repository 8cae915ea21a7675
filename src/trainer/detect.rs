//! Inference: every proposal through the network, class-specific box
//! decoding, then per class a score threshold and NMS, and at most
//! `max_per_image` detections per image (py-faster-rcnn's `test_net`).
//!
//! Images go `test.images_per_batch` at a time: the backbone runs per image
//! (images differ in size, and padding would change the features at their
//! borders), RoI pooling per image, and the head once over the RoIs of all of
//! them; the per-class thresholds and NMS then run on the host, in parallel
//! over images. A batch gives the same detections as one image at a time
//! (tested).

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::batch::{prepare, ImageStore};
use crate::config::{InputConfig, TestConfig};
use crate::boxes::{nms, BBox};
use crate::eval::Detection;
use crate::model::{box_coder, roi_pool, FastRcnn};

/// Seconds spent in each stage of [`detect_timed`] (for the bench).
#[derive(Debug, Clone, Default)]
pub struct DetectTimes {
    /// Input transform and backbone.
    pub backbone: f64,
    pub roi_pool: f64,
    /// fc6/fc7, the two outputs, softmax and box decoding.
    pub head: f64,
    /// Thresholds, NMS and the cap per image, on the host.
    pub host: f64,
}

/// Detections per class (`[K]` lists) over all images of `store`, in VOC 1-based pixels.
pub fn detect(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device) -> anyhow::Result<Vec<Vec<Detection>>> {
    detect_timed(model, store, input, test, device, None)
}

/// [`detect`], adding each stage's seconds to `times` when given (which synchronises CUDA between stages).
pub fn detect_timed(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device, times: Option<&mut DetectTimes>) -> anyhow::Result<Vec<Vec<Detection>>> {
    detect_impl(model, store, input, test, device, times, &|| false)
}

/// [`detect`] that returns [`super::Stopped`] between two batches of images once `stop()` is
/// true (a pre-emption signal: the trainer checkpoints and exits, and evaluates on resume).
pub fn detect_until(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device, stop: &dyn Fn() -> bool) -> anyhow::Result<Vec<Vec<Detection>>> {
    detect_impl(model, store, input, test, device, None, stop)
}

fn detect_impl(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device, mut times: Option<&mut DetectTimes>, stop: &dyn Fn() -> bool) -> anyhow::Result<Vec<Vec<Detection>>> {
    let k = model.num_classes as usize;
    let timed = times.is_some();
    let mut clock = std::time::Instant::now();
    // seconds since the last call (0 when not timing)
    let mut lap = || {
        if !timed {
            return 0.0;
        }
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let s = clock.elapsed().as_secs_f64();
        clock = std::time::Instant::now();
        s
    };
    let mut t = DetectTimes::default();
    let mut out = vec![Vec::new(); k];
    let mut images = Vec::with_capacity(store.len());
    for i in 0..store.len() {
        if store.n_proposals(i)? > 0 {
            images.push(i);
        }
    }
    let groups: Vec<&[usize]> = images.chunks(test.images_per_batch.max(1)).collect();
    for (g, group) in groups.iter().enumerate() {
        if stop() {
            return Err(super::Stopped.into());
        }
        // the next group's images, decoded while this one runs (a split held in memory: nothing)
        if let Some(next) = groups.get(g + 1) {
            store.ahead(next);
        }
        // network: per-image backbone and RoI pooling, one head pass
        let (probs, boxes, sizes) = tch::no_grad(|| -> anyhow::Result<_> {
            let mut pooled = Vec::with_capacity(group.len());
            let mut boxes = Vec::with_capacity(group.len());
            let mut sizes = Vec::with_capacity(group.len());
            for &i in group.iter() {
                let ann = &store.anns[i];
                let p = prepare(store, i, input, false, device)?;
                let n = p.proposals.size()[0];
                let feats = model.features(&p.image.unsqueeze(0), false);
                t.backbone += lap();
                let rois = roi_pool::with_batch_index(0, &p.proposals); // [P, 5]
                pooled.push(model.pool(&feats, &rois));
                t.roi_pool += lap();
                boxes.push((p.proposals, p.scale, ann.width as i64, ann.height as i64));
                sizes.push(n);
            }
            let (logits, deltas) = model.head_from_pooled(&Tensor::cat(&pooled, 0), false); // [ΣP, K+1], [ΣP, 4K]
            let probs = logits.softmax(-1, Kind::Float).to_device(Device::Cpu);
            let deltas = deltas.split_with_sizes(&sizes, 0);
            let boxes: Vec<Tensor> = boxes
                .into_iter()
                .zip(deltas)
                .map(|((props, scale, w, h), d)| {
                    let n = props.size()[0];
                    let b = box_coder::decode(&props, &d.view([n, k as i64, 4])) / scale; // [P, K, 4]
                    box_coder::clip(&b, w, h).to_device(Device::Cpu)
                })
                .collect();
            t.head += lap();
            Ok((probs.split_with_sizes(&sizes, 0), boxes, sizes))
        })?;
        // host: per class, threshold and NMS; then the cap per image
        let host: Vec<(Vec<f32>, Vec<f32>)> = probs
            .iter()
            .zip(&boxes)
            .map(|(p, b)| (Vec::try_from(p.flatten(0, -1)).expect("probs to host"), Vec::try_from(b.flatten(0, -1)).expect("boxes to host")))
            .collect();
        let per_image: Vec<Vec<(usize, f32, BBox)>> = host.par_iter().zip(&sizes).map(|((probs, boxes), &n)| postprocess(probs, boxes, n as usize, k, test)).collect();
        for (&i, dets) in group.iter().zip(per_image) {
            for (c, score, bbox) in dets {
                out[c].push(Detection { image: i as u32, score, bbox });
            }
        }
        t.host += lap();
    }
    if let Some(times) = times.as_deref_mut() {
        times.backbone += t.backbone;
        times.roi_pool += t.roi_pool;
        times.head += t.head;
        times.host += t.host;
    }
    Ok(out)
}

/// One image's detections from its class probabilities `[n, K+1]` and boxes `[n, K, 4]` (0-based).
fn postprocess(probs: &[f32], boxes: &[f32], n: usize, k: usize, test: &TestConfig) -> Vec<(usize, f32, BBox)> {
    let mut per_image: Vec<(usize, f32, BBox)> = Vec::new();
    for c in 0..k {
        let mut cand_boxes = Vec::new();
        let mut cand_scores = Vec::new();
        for r in 0..n {
            let s = probs[r * (k + 1) + c + 1];
            if s >= test.score_thresh {
                let o = (r * k + c) * 4;
                cand_boxes.push([boxes[o] + 1.0, boxes[o + 1] + 1.0, boxes[o + 2] + 1.0, boxes[o + 3] + 1.0]);
                cand_scores.push(s);
            }
        }
        for j in nms(&cand_boxes, &cand_scores, test.nms) {
            per_image.push((c, cand_scores[j], cand_boxes[j]));
        }
    }
    if per_image.len() > test.max_per_image {
        per_image.sort_by(|a, b| b.1.total_cmp(&a.1));
        per_image.truncate(test.max_per_image);
    }
    per_image
}
