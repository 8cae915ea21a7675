//! One integration test binary, a module per feature (ripgrep's layout).

mod cli;
mod dataset;
mod evaluation;
mod proposals;
mod util;
