//! Convolutional backbones (stride 8 or 16) and their fc6/fc7 layers.
//!
//! `vgg16` follows torchvision's layer layout, so weights converted from
//! torchvision (`scripts/convert_vgg16.py`) load by name: `features.<i>` for
//! conv1_1 ... conv5_3 (the last max pool is dropped, stride 16), and
//! `classifier.0` / `classifier.3` for fc6 / fc7. conv1_x and conv2_x stay
//! frozen, as in Fast R-CNN.
//!
//! `small` is a VGG-style network sized for 2 CPU cores: 8 convs of 16-128
//! channels with batch norm and 3 max pools (stride 8, the default) or 4
//! (stride 16), and fc6/fc7 of `fc_dim` units. It starts from the shared
//! pre-trained weights ([`crate::pretrain`]) or from scratch.

use tch::nn::{self, ModuleT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    Small,
    Vgg16,
}

impl Backbone {
    /// Channels of the feature map.
    pub fn channels(self) -> i64 {
        match self {
            Backbone::Small => 128,
            Backbone::Vgg16 => 512,
        }
    }
    /// Feature stride when the config does not set one.
    pub fn default_stride(self) -> i64 {
        match self {
            Backbone::Small => 8,
            Backbone::Vgg16 => 16,
        }
    }
    /// fc6/fc7 width when the config does not set one.
    pub fn default_fc_dim(self) -> i64 {
        match self {
            Backbone::Small => 512,
            Backbone::Vgg16 => 4096,
        }
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 3, nn::ConvConfig { padding: 1, ..Default::default() })
}

/// Batch norm's ε (torch's default, set explicitly because folding needs it).
pub const BN_EPS: f64 = 1e-5;

/// ReLU on a fresh activation, in place.
fn relu_in_place(x: &tch::Tensor) -> tch::Tensor {
    let mut y = x.shallow_clone();
    y.relu_()
}

/// A 3×3 convolution (padding 1) followed by batch norm with running statistics,
/// as one convolution: w' = w·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β. The
/// folded weights are computed from the variables at every call, so gradients
/// reach `c.ws` and `c.bs` (through the scale) and checkpoints keep the
/// unfolded weights.
pub fn conv_bn_folded(x: &tch::Tensor, c: &nn::Conv2D, bn: &nn::BatchNorm) -> tch::Tensor {
    let scale = (&bn.running_var + BN_EPS).rsqrt();
    let scale = match &bn.ws {
        Some(g) => scale * g,
        None => scale,
    };
    let w = &c.ws * scale.view([-1, 1, 1, 1]);
    let b = match &c.bs {
        Some(b) => (b - &bn.running_mean) * &scale,
        None => -&bn.running_mean * &scale,
    };
    let b = match &bn.bs {
        Some(beta) => b + beta,
        None => b,
    };
    x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1)
}

/// The convolutional trunk. Returns the module and the names of its frozen variables' prefixes.
///
/// `freeze_bn`: batch norm always uses its running statistics (eval mode, in
/// training too) and its affine parameters are frozen, as detection
/// fine-tuning from a pre-trained backbone does with N = 2 images per batch.
///
/// `stride` 8 (small only) drops the small backbone's last max pool.
///
/// `fold_bn` (small, with `freeze_bn`): each batch norm folded into its
/// convolution at every forward ([`conv_bn_folded`]).
///
/// ReLUs are in place, as torchvision's: none of the ops before them keeps its
/// output for the backward (convolution, linear and batch norm keep their
/// inputs), so autograd allows it, and the numbers are the same bits.
pub fn features(p: &nn::Path, backbone: Backbone, freeze_bn: bool, stride: i64, fold_bn: bool) -> (nn::SequentialT, Vec<String>) {
    match backbone {
        Backbone::Small => {
            let f = p / "features";
            let mut s = nn::seq_t();
            let mut frozen = Vec::new();
            // (in, out, pool after)
            let plan = [(3, 16, true), (16, 32, true), (32, 64, false), (64, 64, true), (64, 128, false), (128, 128, true), (128, 128, false), (128, 128, false)];
            for (i, (cin, cout, pool)) in plan.into_iter().enumerate() {
                let bn = nn::batch_norm2d(&f / format!("bn{i}"), cout, nn::BatchNormConfig { eps: BN_EPS, ..Default::default() });
                let c = conv(&f / format!("conv{i}"), cin, cout);
                s = if fold_bn && freeze_bn {
                    s.add_fn(move |x| conv_bn_folded(x, &c, &bn))
                } else {
                    s.add(c).add_fn_t(move |x, train| bn.forward_t(x, train && !freeze_bn))
                };
                s = s.add_fn(relu_in_place);
                if freeze_bn {
                    frozen.push(format!("features.bn{i}."));
                }
                if pool && !(stride == 8 && i == 5) {
                    s = s.add_fn(|x| x.max_pool2d_default(2));
                }
            }
            (s, frozen)
        }
        Backbone::Vgg16 => {
            let f = p / "features";
            let mut s = nn::seq_t();
            let mut idx = 0;
            let mut cin = 3;
            // conv blocks of torchvision's vgg16 ("D" configuration); no pool after block 5
            let blocks: [(i64, usize); 5] = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)];
            for (b, (cout, n)) in blocks.into_iter().enumerate() {
                for _ in 0..n {
                    s = s.add(conv(&f / idx.to_string(), cin, cout)).add_fn(relu_in_place);
                    cin = cout;
                    idx += 2;
                }
                if b < 4 {
                    s = s.add_fn(|x| x.max_pool2d_default(2));
                    idx += 1;
                }
            }
            // conv1_1, conv1_2, conv2_1, conv2_2 are frozen
            (s, ["0", "2", "5", "7"].iter().map(|i| format!("features.{i}.")).collect())
        }
    }
}

/// fc6 and fc7 (ReLU, dropout), named as torchvision's classifier.0 and .3 for vgg16.
pub fn fc_layers(p: &nn::Path, backbone: Backbone, in_dim: i64, fc_dim: i64, dropout: f64) -> nn::SequentialT {
    let (p6, p7) = match backbone {
        Backbone::Vgg16 => (p / "classifier" / "0", p / "classifier" / "3"),
        Backbone::Small => (p / "fc6", p / "fc7"),
    };
    nn::seq_t()
        .add(nn::linear(p6, in_dim, fc_dim, Default::default()))
        .add_fn(relu_in_place)
        .add_fn_t(move |x, train| x.dropout(dropout, train))
        .add(nn::linear(p7, fc_dim, fc_dim, Default::default()))
        .add_fn(relu_in_place)
        .add_fn_t(move |x, train| x.dropout(dropout, train))
}

/// Runs a module in train or eval mode.
pub fn run(m: &nn::SequentialT, x: &tch::Tensor, train: bool) -> tch::Tensor {
    m.forward_t(x, train)
}
