//! The project's benchmarks (`harness bench`): figures, never assertions.
//! Speed-ups are ratios measured in the same run, since these machines are noisy.
//!
//! One file per benchmark; what they share is in `common.rs`, the PyTorch peer
//! that some of them time beside ours in `peer.rs`, and the op-by-op profile of
//! `bench samplers --profile` in `profile.rs`.

mod claim_a;
mod common;
mod data;
mod epoch;
mod eval;
mod peer;
pub mod profile;
mod proposals;
mod samplers;
mod train;

pub use claim_a::{claim_a, claim_a_ratio, claim_a_widths, correct_series, replot_claim_a, series_findings, ClaimAPoint};
pub use common::{bench_config, cuda_state, machine_line, measure_peak, median, peak_rss_mib, reset_peak_rss, rss_mib, PeakMemory, SMALL, VGG16};
pub use data::{data, DataBench};
pub use epoch::epoch;
pub use eval::{eval, eval_coco};
pub use proposals::proposals;
pub use samplers::samplers;
pub use train::{random_rois, train};
