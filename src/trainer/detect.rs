//! Inference: every proposal through the network, class-specific box
//! decoding, then per class a score threshold and NMS, and at most
//! `max_per_image` detections per image (py-faster-rcnn's `test_net`).

use tch::{Device, Kind};

use super::batch::{prepare, ImageStore};
use super::config::{InputConfig, TestConfig};
use crate::boxes::{nms, BBox};
use crate::eval::Detection;
use crate::model::{box_coder, roi_pool, FastRcnn};

/// Detections per class (`[K]` lists) over all images of `store`, in VOC 1-based pixels.
pub fn detect(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device) -> Vec<Vec<Detection>> {
    let k = model.num_classes as usize;
    let mut out = vec![Vec::new(); k];
    for i in 0..store.len() {
        let ann = &store.anns[i];
        let p = prepare(store, i, input, false, device);
        let n = p.proposals.size()[0];
        if n == 0 {
            continue;
        }
        let (probs, boxes) = tch::no_grad(|| {
            let feats = model.features(&p.image.unsqueeze(0), false);
            let rois = roi_pool::with_batch_index(0, &p.proposals); // [P, 5]
            let (logits, deltas) = model.head(&feats, &rois, false);
            let probs = logits.softmax(-1, Kind::Float); // [P, K+1]
            let boxes = box_coder::decode(&p.proposals, &deltas.view([n, k as i64, 4])) / p.scale; // [P, K, 4]
            let boxes = box_coder::clip(&boxes, ann.width as i64, ann.height as i64);
            (probs.to_device(Device::Cpu), boxes.to_device(Device::Cpu))
        });
        let probs: Vec<f32> = Vec::try_from(probs.flatten(0, -1)).expect("probs to host");
        let boxes: Vec<f32> = Vec::try_from(boxes.flatten(0, -1)).expect("boxes to host");
        let mut per_image: Vec<(usize, f32, BBox)> = Vec::new();
        for c in 0..k {
            let mut cand_boxes = Vec::new();
            let mut cand_scores = Vec::new();
            for r in 0..n as usize {
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
        for (c, score, bbox) in per_image {
            out[c].push(Detection { image_id: ann.id.clone(), score, bbox });
        }
    }
    out
}
