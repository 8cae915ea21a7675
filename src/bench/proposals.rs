//! `harness bench proposals`: selective search (fast mode, one thread) on
//! images of the generated default dataset, rendered in memory: the mean and
//! median milliseconds per image.

use std::time::Instant;

use anyhow::Result;

use crate::data::synth;
use crate::proposals::{self, SsParams};

pub fn proposals(n: usize) -> Result<()> {
    // Images of the generated default dataset (seed 0), rendered in memory.
    let mut ms = Vec::new();
    let mut px = 0usize;
    for i in 0..n {
        let (img, _) = synth::render_image(0, i as u64, "bench");
        px += (img.width() * img.height()) as usize;
        let p = SsParams::default();
        let t = Instant::now();
        let b = proposals::selective_search::selective_search(&img, p.mode, p.sigma, p.min_side, p.max_boxes);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(b);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "selective search (fast mode, one thread): {n} images of ~{:.0} px: mean {:.1} ms/image, median {:.1} ms",
        px as f64 / n as f64,
        ms.iter().sum::<f64>() / n as f64,
        ms[n / 2]
    );
    Ok(())
}
