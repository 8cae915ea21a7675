//! One integration test binary, a module per feature (ripgrep's layout).

mod cli;
mod coco;
mod dataset;
mod docs;
mod evaluation;
mod balance;
mod groups;
mod harness;
mod layers;
mod model;
mod sampler;
mod slurm;
mod stats;
mod strategies;
mod tensorboard;
mod trainer;
mod pretrain;
mod proposals;
mod rpn;
mod rundir;
mod util;
