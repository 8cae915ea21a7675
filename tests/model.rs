//! The model stage: RoI pooling against the slow per-RoI reference (values
//! and gradients), box coding, IoU, NMS and the per-RoI losses, against hand
//! computations and brute force.

use ohem_harness::boxes::{iou, nms, BBox};
use ohem_harness::model::{box_coder, per_roi_losses, roi_pool};
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
    a.size() == b.size() && (a - b).abs().max().double_value(&[]) <= tol
}

fn random_rois(rng: &mut rand_chacha::ChaCha8Rng, n: usize, batch: i64, h: f32, w: f32) -> Tensor {
    let mut v = Vec::new();
    for _ in 0..n {
        let b = rng.random_range(0..batch) as f32;
        // some boxes run past the image, some are tiny
        let x1 = rng.random_range(-20.0..w);
        let y1 = rng.random_range(-20.0..h);
        let (bw, bh) = if rng.random::<f32>() < 0.2 { (rng.random_range(0.0..8.0), rng.random_range(0.0..8.0)) } else { (rng.random_range(8.0..w), rng.random_range(8.0..h)) };
        v.extend_from_slice(&[b, x1, y1, x1 + bw, y1 + bh]);
    }
    Tensor::from_slice(&v).view([n as i64, 5])
}

/// Values and input gradients of `pool` against the per-RoI reference, in double.
fn check_against_reference(name: &str, pool: &dyn Fn(&Tensor, &Tensor, i64, i64) -> Tensor) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    tch::manual_seed(3);
    for &(out, s) in &[(7, 2), (3, 3), (7, 1), (2, 4)] {
        let feats = Tensor::randn([2, 6, 9, 11], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let rois = random_rois(&mut rng, 40, 2, 9.0 * 16.0, 11.0 * 16.0);
        let weights = Tensor::randn([40, 6, out, out], (Kind::Double, tch::Device::Cpu));

        let fast = pool(&feats, &rois, out, s);
        (&fast * &weights).sum(Kind::Double).backward();
        let g_fast = feats.grad().copy();
        let _ = feats.grad().zero_();
        let slow = roi_pool::roi_pool_reference(&feats, &rois, out, s, 1.0 / 16.0);
        (&slow * &weights).sum(Kind::Double).backward();
        let g_slow = feats.grad().copy();

        assert_eq!(fast.size(), vec![40, 6, out, out]);
        let diff = (&fast - &slow).abs().max().double_value(&[]);
        assert!(close(&fast, &slow, 1e-9), "{name}: values differ by {diff} (out {out}, s {s})");
        assert!(close(&g_fast, &g_slow, 1e-9), "{name}: gradients differ (out {out}, s {s})");
        assert!(g_fast.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }
}

#[test]
fn roi_pool_matches_the_per_roi_reference_in_values_and_gradients() {
    check_against_reference("CPU kernel", &|f, r, out, s| roi_pool::roi_pool_kernel(f, r, out, s, 1.0 / 16.0));
    check_against_reference("tensor path", &|f, r, out, s| roi_pool::roi_pool_tensor(f, r, out, s, 1.0 / 16.0));
    check_against_reference("tensor path, small chunks", &|f, r, out, s| roi_pool::roi_pool_chunked(f, r, out, s, 1.0 / 16.0, 2000));
    check_against_reference("roi_pool (dispatch)", &|f, r, out, s| roi_pool::roi_pool(f, r, out, s, 1.0 / 16.0));
}

/// A float case at training size: features `[2, 64, 14, 18]` (requiring a gradient),
/// `n` random RoIs over a 224x288 image, and output weights `[n, 64, 7, 7]`.
fn float_case(seed: u64, n: usize) -> (Tensor, Tensor, Tensor) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    tch::manual_seed(seed as i64);
    let feats = Tensor::randn([2, 64, 14, 18], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let rois = random_rois(&mut rng, n, 2, 14.0 * 16.0, 18.0 * 16.0);
    let weights = Tensor::randn([n as i64, 64, 7, 7], (Kind::Float, tch::Device::Cpu));
    (feats, rois, weights)
}

/// The CPU kernel and the tensor path (what CUDA runs) agree in float, on a
/// training-sized input with thousands of RoIs, in values and gradients.
#[test]
fn roi_pool_kernel_and_tensor_path_agree() {
    let (feats, rois, weights) = float_case(5, 3000);
    let mut results = Vec::new();
    for kernel in [true, false] {
        let y = if kernel { roi_pool::roi_pool_kernel(&feats, &rois, 7, 2, 1.0 / 16.0) } else { roi_pool::roi_pool_tensor(&feats, &rois, 7, 2, 1.0 / 16.0) };
        (&y * &weights).sum(Kind::Float).backward();
        results.push((y.detach(), feats.grad().copy()));
        let _ = feats.grad().zero_();
    }
    let (a, b) = (&results[0], &results[1]);
    assert!(close(&a.0, &b.0, 1e-4), "values differ by {}", (&a.0 - &b.0).abs().max());
    // without a gradient (evaluation, OHEM's read-only pass) the kernel skips the arg-max; same values
    let no_grad = tch::no_grad(|| roi_pool::roi_pool_kernel(&feats, &rois, 7, 2, 1.0 / 16.0));
    assert!(no_grad.equal(&a.0), "the no-gradient forward differs");
    // Where two samples of a bin are within float rounding of each other, the two paths may
    // pick different arg-max samples and route that output's gradient to different taps, so
    // the gradients agree everywhere but at a few such cells.
    let scale = b.1.abs().max().double_value(&[]);
    let off = (&a.1 - &b.1).abs().gt(1e-4 * scale).sum(Kind::Int64).int64_value(&[]);
    // (in double, where near-ties vanish, both match the reference exactly: the test above)
    assert!(off * 1000 <= b.1.numel() as i64, "gradients differ in {off} of {} cells", b.1.numel());
}

/// The CPU kernel's backward gives the same bits whether an unselected RoI is left out or kept
/// with a zero gradient (masked OHEM keeps every RoI and zeroes the loss of the others): each
/// gradient cell receives the same non-zero terms in the same order. Float, with enough
/// channels to split them over threads.
#[test]
fn roi_pool_kernel_gradient_ignores_zero_gradient_rois_bit_for_bit() {
    let (feats, rois, weights) = float_case(9, 600);
    let keep: Vec<i64> = (0..600).filter(|i| i % 5 == 0 || i % 7 == 3).collect();
    let keep = Tensor::from_slice(&keep);
    let mask = Tensor::zeros([600, 1, 1, 1], (Kind::Float, tch::Device::Cpu)).index_fill(0, &keep, 1.0);
    let all = roi_pool::roi_pool_kernel(&feats, &rois, 7, 2, 1.0 / 16.0);
    (&all * (&weights * &mask)).sum(Kind::Float).backward();
    let masked = feats.grad().copy();
    let _ = feats.grad().zero_();
    let some = roi_pool::roi_pool_kernel(&feats, &rois.index_select(0, &keep), 7, 2, 1.0 / 16.0);
    (&some * weights.index_select(0, &keep)).sum(Kind::Float).backward();
    let subset = feats.grad().copy();
    assert!(some.equal(&all.index_select(0, &keep)), "the forward of a subset differs");
    assert!(masked.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(masked.equal(&subset), "gradients differ by {}", (&masked - &subset).abs().max());
}

#[test]
fn roi_pool_by_hand() {
    // a 2x2 feature map [[0, 1], [2, 3]]; a RoI covering it exactly (image px 0..31 at scale 1/16)
    let feats = Tensor::from_slice(&[0f32, 1., 2., 3.]).view([1, 1, 2, 2]);
    let roi = Tensor::from_slice(&[0f32, 0., 0., 31., 31.]).view([1, 5]);
    // one bin, one sample at the centre: the mean of the four cells
    let one = roi_pool::roi_pool(&feats, &roi, 1, 1, 1.0 / 16.0);
    assert!((one.double_value(&[0, 0, 0, 0]) - 1.5).abs() < 1e-6);
    // 2x2 bins, one sample each: exactly at the cell centres
    let four = roi_pool::roi_pool(&feats, &roi, 2, 1, 1.0 / 16.0).view([4]);
    assert!(close(&four, &Tensor::from_slice(&[0f32, 1., 2., 3.]), 1e-6), "{four}");
    // one bin, 2x2 samples at 0.5 and 1.5 cells: the max is the cell of value 3
    let max = roi_pool::roi_pool(&feats, &roi, 1, 2, 1.0 / 16.0);
    assert!((max.double_value(&[0, 0, 0, 0]) - 3.0).abs() < 1e-6);
    // a RoI in another image of the batch reads that image
    let feats2 = Tensor::cat(&[feats.shallow_clone(), &feats + 10.0], 0);
    let roi2 = Tensor::from_slice(&[1f32, 0., 0., 31., 31.]).view([1, 5]);
    assert!((roi_pool::roi_pool(&feats2, &roi2, 1, 1, 1.0 / 16.0).double_value(&[0, 0, 0, 0]) - 11.5).abs() < 1e-6);
}

#[test]
fn box_encoding_by_hand_and_round_trip() {
    // roi 10x10 at the origin; gt shifted right by 5 px, same size: dx = 0.5 -> 5 after /0.1
    let roi = Tensor::from_slice(&[0f32, 0., 9., 9.]).view([1, 4]);
    let gt = Tensor::from_slice(&[5f32, 0., 14., 9.]).view([1, 4]);
    let t = box_coder::encode(&roi, &gt);
    assert!(close(&t, &Tensor::from_slice(&[5f32, 0., 0., 0.]).view([1, 4]), 1e-5), "{t}");
    // gt twice as wide about the same centre: dw = ln 2 / 0.2
    let wide = Tensor::from_slice(&[-5f32, 0., 14., 9.]).view([1, 4]);
    let t = box_coder::encode(&roi, &wide);
    assert!((t.double_value(&[0, 2]) - 2f64.ln() / 0.2).abs() < 1e-5);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let rand_boxes = |rng: &mut rand_chacha::ChaCha8Rng, n| {
        let v: Vec<f32> = (0..n).flat_map(|_| {
            let (x, y) = (rng.random_range(0.0..200.0), rng.random_range(0.0..200.0));
            [x, y, x + rng.random_range(1.0..100.0), y + rng.random_range(1.0..100.0)]
        }).collect();
        Tensor::from_slice(&v).view([n as i64, 4])
    };
    let rois = rand_boxes(&mut rng, 50);
    let gts = rand_boxes(&mut rng, 50);
    let back = box_coder::decode(&rois, &box_coder::encode(&rois, &gts).unsqueeze(1)).squeeze_dim(1);
    assert!(close(&back, &gts, 1e-3));
}

#[test]
fn clip_and_iou_matrix_against_brute_force() {
    let b = Tensor::from_slice(&[-5f32, 3., 120., 50.]).view([1, 4]);
    assert!(close(&box_coder::clip(&b, 100, 40), &Tensor::from_slice(&[0f32, 3., 99., 39.]).view([1, 4]), 0.0));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mk = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| -> Vec<BBox> {
        (0..n).map(|_| {
            let (x, y) = (rng.random_range(0..60) as f32, rng.random_range(0..60) as f32);
            [x, y, x + rng.random_range(0..40) as f32, y + rng.random_range(0..40) as f32]
        }).collect()
    };
    let (a, b) = (mk(&mut rng, 30), mk(&mut rng, 7));
    let ta = Tensor::from_slice(&a.concat()).view([30, 4]);
    let tb = Tensor::from_slice(&b.concat()).view([7, 4]);
    let m = box_coder::iou_matrix(&ta, &tb);
    for i in 0..30 {
        for j in 0..7 {
            assert!((m.double_value(&[i as i64, j as i64]) - iou(&a[i], &b[j]) as f64).abs() < 1e-5);
        }
    }
}

/// Greedy NMS written from its definition: take the best remaining box, drop
/// every remaining box that overlaps it by more than the threshold, repeat.
fn nms_reference(boxes: &[BBox], scores: &[f32], t: f32) -> Vec<usize> {
    let mut left: Vec<usize> = (0..boxes.len()).collect();
    let mut keep = Vec::new();
    while !left.is_empty() {
        // highest score; ties to the lower index
        let best = *left.iter().max_by(|&&i, &&j| scores[i].total_cmp(&scores[j]).then(j.cmp(&i))).unwrap();
        keep.push(best);
        left.retain(|&i| i != best && iou(&boxes[i], &boxes[best]) <= t);
    }
    keep
}

#[test]
fn nms_against_brute_force() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..50 {
        let n = rng.random_range(0..40);
        let boxes: Vec<BBox> = (0..n).map(|_| {
            let (x, y) = (rng.random_range(0..50) as f32, rng.random_range(0..50) as f32);
            [x, y, x + rng.random_range(5..30) as f32, y + rng.random_range(5..30) as f32]
        }).collect();
        let scores: Vec<f32> = (0..n).map(|_| rng.random_range(0..20) as f32 / 20.0).collect();
        for t in [0.3, 0.5, 0.7] {
            assert_eq!(nms(&boxes, &scores, t), nms_reference(&boxes, &scores, t));
        }
    }
}

#[test]
fn per_roi_losses_by_hand() {
    // K = 2 classes; RoI 0 is class 1 with uniform logits, RoI 1 is background
    let logits = Tensor::from_slice(&[0f32, 0., 0., 2., 0., 0.]).view([2, 3]);
    let deltas = Tensor::from_slice(&[0.5f32, 0., 0., 2., 9., 9., 9., 9., 1., 1., 1., 1., 1., 1., 1., 1.]).view([2, 8]);
    let labels = Tensor::from_slice(&[1i64, 0]);
    let targets = Tensor::zeros([2, 4], (Kind::Float, tch::Device::Cpu));
    let (cls, loc) = per_roi_losses(&logits, &deltas, &labels, &targets, 2);
    // cross-entropy: ln 3; -log(e^2 / (e^2 + 2))
    let ce1 = -(2f64.exp() / (2f64.exp() + 2.0)).ln();
    assert!(close(&cls, &Tensor::from_slice(&[3f32.ln(), ce1 as f32]), 1e-6), "{cls}");
    // smooth L1 on class 1's slots [0.5, 0, 0, 2]: 0.5 * 0.25 + (2 - 0.5) = 1.625; background: 0
    assert!(close(&loc, &Tensor::from_slice(&[1.625f32, 0.]), 1e-6), "{loc}");
}

#[test]
fn vgg16_variables_carry_torchvision_names_and_shapes() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::model::{Backbone, FastRcnn, ModelConfig};
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _m = FastRcnn::new(&vs.root(), &ModelConfig { backbone: Backbone::Vgg16, ..Default::default() }, 20);
    let vars = vs.variables();
    // torchvision's vgg16 state_dict: conv layers at these indices of `features`, fc6/fc7 at classifier.0/.3
    let convs: [(usize, i64, i64); 13] = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256), (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)];
    for (i, cout, cin) in convs {
        assert_eq!(vars[&format!("features.{i}.weight")].size(), vec![cout, cin, 3, 3]);
        assert_eq!(vars[&format!("features.{i}.bias")].size(), vec![cout]);
    }
    assert_eq!(vars["classifier.0.weight"].size(), vec![4096, 25088]);
    assert_eq!(vars["classifier.3.weight"].size(), vec![4096, 4096]);
    assert_eq!(vars["cls_score.weight"].size(), vec![21, 4096]);
    assert_eq!(vars["bbox_pred.weight"].size(), vec![80, 4096]);
    assert_eq!(vars.len(), 13 * 2 + 4 * 2);
}

#[test]
fn weights_load_by_name_and_frozen_layers_stay_fixed() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::model::{Backbone, FastRcnn, ModelConfig};
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("w.safetensors");
    // a "pretrained" file holding only the backbone, as the vgg16 converter writes (here: small)
    let src = tch::nn::VarStore::new(tch::Device::Cpu);
    let _ = FastRcnn::new(&src.root(), &ModelConfig::default(), 3);
    let named: Vec<(String, Tensor)> = src.variables().into_iter().filter(|(n, _)| n.starts_with("features.")).collect();
    Tensor::write_safetensors(&named, &file).unwrap();
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let cfg = ModelConfig { weights: Some(file.clone()), ..Default::default() };
    let m = FastRcnn::new(&vs.root(), &cfg, 3);
    m.load_and_freeze(&mut vs).unwrap();
    for (n, t) in &named {
        assert!(close(&vs.variables()[n], t, 0.0), "{n} not loaded");
    }
    // a file with none of the model's variables is an error that names it
    let junk = t.path().join("junk.safetensors");
    Tensor::write_safetensors(&[("nothing", Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)))], &junk).unwrap();
    let mut vs2 = tch::nn::VarStore::new(tch::Device::Cpu);
    let m2 = FastRcnn::new(&vs2.root(), &ModelConfig { weights: Some(junk.clone()), ..Default::default() }, 3);
    let err = format!("{:#}", m2.load_and_freeze(&mut vs2).unwrap_err());
    assert!(err.contains("junk.safetensors"), "{err}");
    // vgg16 freezes conv1_x and conv2_x
    let vs3 = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut vs3 = vs3;
    let m3 = FastRcnn::new(&vs3.root(), &ModelConfig { backbone: Backbone::Vgg16, fc_dim: Some(8), ..Default::default() }, 2);
    m3.load_and_freeze(&mut vs3).unwrap();
    let v = vs3.variables();
    assert!(!v["features.0.weight"].requires_grad() && !v["features.7.bias"].requires_grad());
    assert!(v["features.10.weight"].requires_grad() && v["cls_score.weight"].requires_grad());
    // so autograd records nothing for conv1_x and conv2_x (an image needs no gradient): their
    // output, conv3_1's input, carries no graph, and running them under no_grad saves nothing
    let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
    let conv = |x: &Tensor, i: i64| x.conv2d(&v[&format!("features.{i}.weight")], Some(&v[&format!("features.{i}.bias")]), [1, 1], [1, 1], [1, 1], 1).relu();
    let prefix = conv(&conv(&conv(&conv(&x, 0), 2).max_pool2d_default(2), 5), 7).max_pool2d_default(2);
    assert!(!prefix.requires_grad());
    assert!(conv(&prefix, 10).requires_grad());
}

/// The benches build the network the trainer trains: the same constructor, and the same
/// frozen layers with random weights as with a weights file (small: batch norm; VGG16:
/// conv1_x and conv2_x).
#[test]
fn the_bench_trains_the_trainers_variables() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::bench::{bench_config, SMALL, VGG16};
    use ohem_harness::trainer::build_model;
    let trainable = |vs: &tch::nn::VarStore| -> Vec<String> {
        let mut v: Vec<String> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n).collect();
        v.sort();
        v
    };
    for yaml in [SMALL, VGG16] {
        let mut cfg = bench_config(yaml).unwrap();
        cfg.model.fc_dim = Some(64); // the head's width does not change what is frozen
        let (bench_vs, _) = build_model(&cfg, tch::Device::Cpu, 6, None).unwrap();
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("w.safetensors");
        let named: Vec<(String, Tensor)> = bench_vs.variables().into_iter().collect();
        Tensor::write_safetensors(&named, &file).unwrap();
        let mut with_weights = cfg.clone();
        with_weights.model.weights = Some(file.clone());
        let (train_vs, _) = build_model(&with_weights, tch::Device::Cpu, 6, Some(&file)).unwrap();
        assert_eq!(trainable(&bench_vs), trainable(&train_vs), "{:?}", cfg.model.backbone);
        let all = bench_vs.variables().len();
        let frozen: Vec<String> = bench_vs.variables().into_iter().filter(|(_, t)| !t.requires_grad()).map(|(n, _)| n).collect();
        assert!(!frozen.is_empty() && frozen.len() < all, "{:?}: {frozen:?}", cfg.model.backbone);
        if cfg.model.backbone == ohem_harness::model::Backbone::Vgg16 {
            // conv1_x and conv2_x: torchvision's features.0, .2, .5 and .7
            for i in [0, 2, 5, 7] {
                assert!(frozen.contains(&format!("features.{i}.weight")), "features.{i} trains: {frozen:?}");
            }
            assert!(!frozen.contains(&"features.10.weight".to_string()));
        } else {
            // batch norm (features.bnN.*) frozen, as the pre-trained trainer runs it; everything else trains
            assert!(frozen.iter().all(|n| n.starts_with("features.bn")) && trainable(&bench_vs).iter().all(|n| !n.starts_with("features.bn")), "{frozen:?}");
        }
    }
}

/// The focal loss's prior (RetinaNet, Sec. 4.1), on a softmax over K + 1: the background bias is
/// ln((1 - π) K / π), so with the other logits at 0 the background probability is
/// e^b / (e^b + K) = 1 - π. Other strategies keep Fast R-CNN's zero bias.
#[test]
fn the_focal_prior_starts_every_roi_at_background_probability_one_minus_pi() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::bench::{bench_config, SMALL};
    use ohem_harness::sampler::{FocalConfig, SamplerConfig};
    use ohem_harness::trainer::build_model;
    let k = 6usize;
    let mut cfg = bench_config(SMALL).unwrap();
    cfg.model.fc_dim = Some(64);
    let (vs, _) = build_model(&cfg, tch::Device::Cpu, k, None).unwrap();
    assert_eq!(vs.variables()["cls_score.bias"].abs().max().double_value(&[]), 0.0, "fixed ratio: zero bias");
    for pi in [0.01, 0.2] {
        cfg.sampler = SamplerConfig::Focal(FocalConfig { prior_prob: Some(pi), ..FocalConfig::default() });
        let (vs, _) = build_model(&cfg, tch::Device::Cpu, k, None).unwrap();
        let b = vs.variables()["cls_score.bias"].copy();
        let bias = |i: i64| b.double_value(&[i]);
        // by hand: K = 6, pi = 0.01 -> ln(0.99 * 6 / 0.01) = ln 594
        let want = ((1.0 - pi) * k as f64 / pi).ln();
        assert!((bias(0) - want).abs() < 1e-5, "background bias {} against {want}", bias(0));
        assert!((1..=k as i64).all(|i| bias(i) == 0.0), "object biases stay 0");
        let zeros = Tensor::zeros([1, (k + 1) as i64], (tch::Kind::Float, tch::Device::Cpu)) + &b;
        let p_bg = zeros.softmax(-1, tch::Kind::Float).double_value(&[0, 0]);
        assert!((p_bg - (1.0 - pi)).abs() < 1e-5, "p_bg {p_bg}");
    }
    cfg.sampler = SamplerConfig::Focal(FocalConfig { prior_prob: None, ..FocalConfig::default() });
    let (vs, _) = build_model(&cfg, tch::Device::Cpu, k, None).unwrap();
    assert_eq!(vs.variables()["cls_score.bias"].abs().max().double_value(&[]), 0.0, "prior_prob: null keeps the zero bias");
}

/// `harness bench samplers` takes a peak RSS per step kind in one process: the peak is reset
/// before each kind (/proc/self/clear_refs), so a later, smaller kind does not inherit an
/// earlier one's peak. Run in a child process of its own, where no other test allocates.
#[test]
fn peak_memory_is_taken_per_step_kind() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::bench::{measure_peak, reset_peak_rss};
    if std::env::var_os("OHEM_PEAK_CHILD").is_some() {
        if !reset_peak_rss() {
            // the kernel does not allow it: the bench must then print no figure
            let ((), m) = measure_peak(tch::Device::Cpu, || ());
            assert!(m.peak_mib.is_none() && m.to_string() == "peak RSS —");
            println!("peak checked: unsupported");
            return;
        }
        // 256 MiB touched and freed inside the measured closure
        let ((), big) = measure_peak(tch::Device::Cpu, || {
            let t = Tensor::ones([64 * 1024 * 1024], (Kind::Float, tch::Device::Cpu));
            assert_eq!(t.sum(Kind::Float).double_value(&[]), 64.0 * 1024.0 * 1024.0);
        });
        let d = big.above_start_mib.unwrap();
        assert!((240.0..=256.0 + 64.0).contains(&d), "a 256 MiB tensor raised the peak by {d} MiB");
        // a small step afterwards: without the reset its peak would still hold the 256 MiB
        let ((), small) = measure_peak(tch::Device::Cpu, || {
            let t = Tensor::ones([1024 * 1024], (Kind::Float, tch::Device::Cpu));
            let _ = t.sum(Kind::Float).double_value(&[]);
        });
        assert!(small.above_start_mib.unwrap() < 32.0, "small step: +{:?} MiB", small.above_start_mib);
        assert!(small.peak_mib.unwrap() < big.peak_mib.unwrap() - 200.0, "{small:?} against {big:?}");
        println!("peak checked: {big} then {small}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["model::peak_memory_is_taken_per_step_kind", "--exact", "--test-threads=1", "--nocapture"])
        .env("OHEM_PEAK_CHILD", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("peak checked"), "{text}");
}

/// The small backbone (stride 8, batch norm frozen) written out op by op,
/// out of place: conv, batch norm with running statistics, ReLU, max pools
/// after convs 0, 1, 3 (and not 5, stride 8).
fn small_backbone_reference(x: &Tensor, vars: &std::collections::HashMap<String, Tensor>) -> Tensor {
    let mut x = x.shallow_clone();
    for i in 0..8 {
        let v = |n: &str| vars[&format!("features.{n}")].shallow_clone();
        x = x.conv2d(&v(&format!("conv{i}.weight")), Some(&v(&format!("conv{i}.bias"))), [1, 1], [1, 1], [1, 1], 1);
        x = x.batch_norm(Some(&v(&format!("bn{i}.weight"))), Some(&v(&format!("bn{i}.bias"))), Some(&v(&format!("bn{i}.running_mean"))), Some(&v(&format!("bn{i}.running_var"))), false, 0.1, 1e-5, false);
        x = x.relu();
        if [0, 1, 3].contains(&i) {
            x = x.max_pool2d_default(2);
        }
    }
    x
}

/// A small-backbone detector with batch norm frozen, `fold_bn` as given, and
/// non-trivial batch-norm statistics and affine parameters (seeded).
fn small_frozen_bn(fold_bn: bool) -> (tch::nn::VarStore, ohem_harness::model::FastRcnn) {
    use ohem_harness::model::{FastRcnn, ModelConfig};
    tch::manual_seed(5);
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let cfg = ModelConfig { freeze_bn: Some(true), fold_bn, fc_dim: Some(32), ..Default::default() };
    let model = FastRcnn::new(&vs.root(), &cfg, 3);
    model.load_from_and_freeze(&mut vs, None).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.contains(".bn") {
                let (lo, hi) = if name.ends_with("running_var") { (0.3, 2.0) } else if name.ends_with("running_mean") { (-0.3, 0.3) } else if name.ends_with("weight") { (0.5, 1.5) } else { (-0.2, 0.2) };
                let _ = t.uniform_(lo, hi);
            }
        }
    });
    (vs, model)
}

/// Outputs and the conv variables' gradients of `features` for a fixed input
/// and a fixed random weighting of the outputs.
fn features_and_grads(model: &ohem_harness::model::FastRcnn, vs: &tch::nn::VarStore, x: &Tensor) -> (Tensor, Vec<(String, Tensor)>) {
    let y = model.features(x, true);
    tch::manual_seed(11);
    let w = Tensor::randn(y.size(), (Kind::Float, tch::Device::Cpu));
    let loss = (&y * w).sum(Kind::Float);
    let mut names: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, t)| n.starts_with("features.") && t.requires_grad()).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let grads = Tensor::run_backward(&[loss], &names.iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>(), false, false);
    (y, names.into_iter().map(|(n, _)| n).zip(grads).collect())
}

/// In-place ReLUs change no bit: the backbone's outputs and its conv
/// variables' gradients equal those of the op-by-op, out-of-place reference.
#[test]
fn the_backbone_with_in_place_relus_matches_the_out_of_place_reference_bit_for_bit() {
    let _rng = crate::util::torch_rng_lock();
    let (vs, model) = small_frozen_bn(false);
    tch::manual_seed(3);
    let x = Tensor::randn([2, 3, 40, 56], (Kind::Float, tch::Device::Cpu));
    let (y, grads) = features_and_grads(&model, &vs, &x);
    let vars = vs.variables();
    let r = small_backbone_reference(&x, &vars);
    assert!(y.equal(&r), "outputs differ: max {}", (&y - &r).abs().max().double_value(&[]));
    tch::manual_seed(11);
    let w = Tensor::randn(r.size(), (Kind::Float, tch::Device::Cpu));
    let ts: Vec<Tensor> = grads.iter().map(|(n, _)| vars[n].shallow_clone()).collect();
    let rg = Tensor::run_backward(&[(&r * w).sum(Kind::Float)], &ts, false, false);
    assert_eq!(grads.len(), 16, "8 conv weights and biases train; batch norm is frozen");
    for ((n, g), rg) in grads.iter().zip(&rg) {
        assert!(g.equal(rg), "{n}: gradients differ");
    }
}

/// Batch norm folded into the convolutions: the same outputs and gradients for
/// the same trainable variables (within float rounding), and a checkpoint of
/// the folded network loads into the unfolded one and gives its outputs.
#[test]
fn folded_batch_norm_gives_the_same_outputs_gradients_variables_and_checkpoints() {
    let _rng = crate::util::torch_rng_lock();
    let (vs, model) = small_frozen_bn(false);
    let (mut fvs, folded) = small_frozen_bn(true);
    let names = |v: &tch::nn::VarStore| {
        let mut n: Vec<(String, bool)> = v.variables().into_iter().map(|(n, t)| (n, t.requires_grad())).collect();
        n.sort();
        n
    };
    assert_eq!(names(&vs), names(&fvs), "the same variables, the same ones trained");
    tch::no_grad(|| {
        for (n, mut t) in fvs.variables() {
            t.copy_(&vs.variables()[&n]);
        }
    });
    tch::manual_seed(3);
    let x = Tensor::randn([2, 3, 40, 56], (Kind::Float, tch::Device::Cpu));
    let (y, g) = features_and_grads(&model, &vs, &x);
    let (fy, fg) = features_and_grads(&folded, &fvs, &x);
    let rel = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12);
    assert!(!fy.equal(&y), "folding is a different computation (else this test checks nothing)");
    assert!(rel(&fy, &y) < 1e-5, "outputs: relative difference {}", rel(&fy, &y));
    for ((n, a), (_, b)) in fg.iter().zip(&g) {
        assert!(rel(a, b) < 1e-5, "{n}: gradient relative difference {}", rel(a, b));
    }
    // eval mode folds too
    let (ye, fye) = (model.features(&x, false), folded.features(&x, false));
    assert!(rel(&fye, &ye) < 1e-5);

    // a checkpoint of the folded network is today's format: the unfolded weights
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("folded.safetensors");
    fvs.save(&file).unwrap();
    let (mut uvs, unfolded) = small_frozen_bn(false);
    uvs.load(&file).unwrap();
    assert!(unfolded.features(&x, false).equal(&ye), "the folded network's checkpoint loads unfolded and gives the unfolded outputs");
    fvs.load(&file).unwrap();
}
