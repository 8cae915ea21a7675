//! Box geometry shared by every stage: IoU, greedy NMS.
//!
//! Convention, everywhere in this crate: a box is `[x1, y1, x2, y2]` in the
//! PASCAL VOC pixel convention, 1-based and *inclusive*, so a box's width is
//! `x2 - x1 + 1`. Annotations, proposals, detections and the evaluation all use
//! it, which is what the VOC devkit does; the model converts to its own
//! continuous coordinates at its boundary.

/// `[x1, y1, x2, y2]`, 1-based inclusive pixels.
pub type BBox = [f32; 4];

/// Area with the inclusive (+1) convention. Degenerate boxes have area 0.
#[inline]
pub fn area(b: &BBox) -> f32 {
    (b[2] - b[0] + 1.0).max(0.0) * (b[3] - b[1] + 1.0).max(0.0)
}

/// Intersection over union with the inclusive (+1) convention of the VOC devkit.
#[inline]
pub fn iou(a: &BBox, b: &BBox) -> f32 {
    let iw = a[2].min(b[2]) - a[0].max(b[0]) + 1.0;
    let ih = a[3].min(b[3]) - a[1].max(b[1]) + 1.0;
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// IoU of every box in `a` against every box in `b`, row-major `[a.len(), b.len()]`.
pub fn iou_matrix(a: &[BBox], b: &[BBox]) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            out.push(iou(x, y));
        }
    }
    out
}

/// Greedy NMS: visits boxes by descending score and keeps a box unless it
/// overlaps an already kept box with IoU strictly greater than `thresh`.
/// Returns kept indices in descending score order; ties keep input order.
pub fn nms(boxes: &[BBox], scores: &[f32], thresh: f32) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "nms: boxes and scores differ in length");
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    let mut keep: Vec<usize> = Vec::new();
    for &i in &order {
        if keep.iter().all(|&k| iou(&boxes[k], &boxes[i]) <= thresh) {
            keep.push(i);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_hand_computed() {
        // (a, b, expected) with the +1 convention.
        let cases: &[(BBox, BBox, f32)] = &[
            ([1., 1., 10., 10.], [1., 1., 10., 10.], 1.0),
            ([1., 1., 10., 10.], [1., 1., 10., 5.], 0.5), // 50 / 100
            ([1., 1., 10., 10.], [11., 1., 20., 10.], 0.0), // touching, no shared pixel
            ([1., 1., 10., 10.], [10., 10., 19., 19.], 1.0 / 199.0), // one shared pixel
            ([1., 1., 4., 4.], [3., 3., 6., 6.], 4.0 / 28.0),
        ];
        for (a, b, want) in cases {
            assert!((iou(a, b) - want).abs() < 1e-6, "{a:?} {b:?}: {} != {want}", iou(a, b));
            assert!((iou(b, a) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn nms_hand_computed() {
        let boxes = [[1., 1., 10., 10.], [1., 1., 10., 9.], [20., 20., 30., 30.], [1., 1., 10., 5.]];
        let scores = [0.9, 0.8, 0.7, 0.95];
        // 3 (0.95) kept; 0 has IoU 0.5 with 3 -> kept at 0.5 (not > 0.5); 1 has IoU 0.9 with 0 -> dropped.
        assert_eq!(nms(&boxes, &scores, 0.5), vec![3, 0, 2]);
        assert_eq!(nms(&boxes, &scores, 0.4), vec![3, 2]);
        assert_eq!(nms(&boxes, &scores, 1.0), vec![3, 0, 1, 2]);
    }
}
