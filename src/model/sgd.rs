//! SGD with momentum and weight decay, PyTorch's update rule
//! (`d = g + wd·p; buf = μ·buf + d` (buf = d at the first step); `p -= lr·buf`),
//! written out so that the momentum buffers can be checkpointed with the
//! weights and a resumed run continues exactly where it stopped.

use std::path::Path;

use anyhow::{Context, Result};
use tch::{nn, Tensor};

pub struct Sgd {
    /// (name, parameter, momentum buffer once the first step has run)
    params: Vec<(String, Tensor, Option<Tensor>)>,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Sgd {
    /// Every variable of `vs` that requires a gradient, in name order.
    pub fn new(vs: &nn::VarStore, momentum: f64, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor, Option<Tensor>)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n, t, None)).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Sgd { params, momentum, weight_decay }
    }

    /// Applies one update with the gradients of the last backward pass, then clears them.
    /// In place, without temporaries: the gradient becomes `d` (`g += wd·p`), the buffer
    /// `μ·buf + d`, and `p += (−lr)·buf`, each an `addcmul_` with a 0-dim scalar.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for (_, p, buf) in &mut self.params {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                let scalar = |v: f64| Tensor::from(v as f32).to_kind(p.kind()).to_device(p.device());
                if self.weight_decay != 0.0 {
                    let _ = g.addcmul_(p, &scalar(self.weight_decay));
                }
                let upd = if self.momentum != 0.0 {
                    match buf {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(self.momentum).g_add_(&g);
                            b.shallow_clone()
                        }
                        None => {
                            let b = g.copy();
                            *buf = Some(b.shallow_clone());
                            b
                        }
                    }
                } else {
                    g.shallow_clone()
                };
                let _ = p.addcmul_(&upd, &scalar(-lr));
                let _ = g.zero_();
            }
        });
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(&str, &Tensor)> = self.params.iter().filter_map(|(n, _, b)| b.as_ref().map(|b| (n.as_str(), b))).collect();
        Tensor::write_safetensors(&named, path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
        for (name, t) in saved {
            if let Some((_, p, buf)) = self.params.iter_mut().find(|(n, _, _)| *n == name) {
                *buf = Some(t.to_device(p.device()));
            }
        }
        Ok(())
    }
}
