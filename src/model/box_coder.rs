//! Box regression targets, as whole-tensor operations (py-faster-rcnn's
//! `bbox_transform`): boxes are 0-based inclusive pixels (`width = x2 - x1 + 1`),
//! targets are `(dx, dy, dw, dh)` divided by the stds `(0.1, 0.1, 0.2, 0.2)`
//! (means are 0).

use tch::{Kind, Tensor};

pub const BBOX_STDS: [f64; 4] = [0.1, 0.1, 0.2, 0.2];

fn stds(device: tch::Device) -> Tensor {
    Tensor::from_slice(&BBOX_STDS.map(|v| v as f32)).to_device(device)
}

fn centre_size(b: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let w = b.select(1, 2) - b.select(1, 0) + 1.0;
    let h = b.select(1, 3) - b.select(1, 1) + 1.0;
    let cx = b.select(1, 0) + &w * 0.5;
    let cy = b.select(1, 1) + &h * 0.5;
    (cx, cy, w, h)
}

/// `rois`, `gt`: `[R, 4]` -> normalised targets `[R, 4]`.
pub fn encode(rois: &Tensor, gt: &Tensor) -> Tensor {
    let (ex, ey, ew, eh) = centre_size(rois);
    let (gx, gy, gw, gh) = centre_size(gt);
    let t = Tensor::stack(&[(gx - &ex) / &ew, (gy - &ey) / &eh, (gw / ew).log(), (gh / eh).log()], 1);
    t / stds(rois.device()).unsqueeze(0)
}

/// `rois`: `[R, 4]`, `deltas`: `[R, K, 4]` normalised -> boxes `[R, K, 4]`.
pub fn decode(rois: &Tensor, deltas: &Tensor) -> Tensor {
    let d = deltas * stds(rois.device()).view([1, 1, 4]);
    let (cx, cy, w, h) = centre_size(&rois.to_kind(Kind::Float));
    let (cx, cy, w, h) = (cx.unsqueeze(1), cy.unsqueeze(1), w.unsqueeze(1), h.unsqueeze(1));
    // Clamp dw, dh as Detectron does (log(1000/16)), so exp never overflows.
    let clamp = (1000.0f64 / 16.0).ln();
    let pcx = d.select(2, 0) * &w + cx;
    let pcy = d.select(2, 1) * &h + cy;
    let pw = d.select(2, 2).clamp_max(clamp).exp() * w;
    let ph = d.select(2, 3).clamp_max(clamp).exp() * h;
    Tensor::stack(&[&pcx - &pw * 0.5, &pcy - &ph * 0.5, &pcx + &pw * 0.5 - 1.0, &pcy + &ph * 0.5 - 1.0], 2)
}

/// Clips `[..., 4]` boxes to a `width x height` image (0-based pixels).
pub fn clip(boxes: &Tensor, width: i64, height: i64) -> Tensor {
    let x1 = boxes.select(-1, 0).clamp(0.0, (width - 1) as f64);
    let y1 = boxes.select(-1, 1).clamp(0.0, (height - 1) as f64);
    let x2 = boxes.select(-1, 2).clamp(0.0, (width - 1) as f64);
    let y2 = boxes.select(-1, 3).clamp(0.0, (height - 1) as f64);
    Tensor::stack(&[x1, y1, x2, y2], -1)
}

/// IoU matrix `[A, B]` with the +1 convention, by broadcasting.
pub fn iou_matrix(a: &Tensor, b: &Tensor) -> Tensor {
    let area = |t: &Tensor| (t.select(1, 2) - t.select(1, 0) + 1.0) * (t.select(1, 3) - t.select(1, 1) + 1.0);
    let (aa, ab) = (area(a), area(b));
    let ix1 = a.select(1, 0).unsqueeze(1).maximum(&b.select(1, 0).unsqueeze(0));
    let iy1 = a.select(1, 1).unsqueeze(1).maximum(&b.select(1, 1).unsqueeze(0));
    let ix2 = a.select(1, 2).unsqueeze(1).minimum(&b.select(1, 2).unsqueeze(0));
    let iy2 = a.select(1, 3).unsqueeze(1).minimum(&b.select(1, 3).unsqueeze(0));
    let inter = (ix2 - ix1 + 1.0).clamp_min(0.0) * (iy2 - iy1 + 1.0).clamp_min(0.0);
    let union = aa.unsqueeze(1) + ab.unsqueeze(0) - &inter;
    inter / union.clamp_min(1e-6)
}

/// IoU of paired boxes `a[i]`, `b[i]` (`[R, 4]` each) → `[R]`, with the +1 convention.
pub fn aligned_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let area = |t: &Tensor| (t.select(1, 2) - t.select(1, 0) + 1.0).clamp_min(0.0) * (t.select(1, 3) - t.select(1, 1) + 1.0).clamp_min(0.0);
    let iw = (a.select(1, 2).minimum(&b.select(1, 2)) - a.select(1, 0).maximum(&b.select(1, 0)) + 1.0).clamp_min(0.0);
    let ih = (a.select(1, 3).minimum(&b.select(1, 3)) - a.select(1, 1).maximum(&b.select(1, 1)) + 1.0).clamp_min(0.0);
    let inter = iw * ih;
    &inter / (area(a) + area(b) - &inter).clamp_min(1e-6)
}
