//! Links the harness against the libtorch that scripts/setup-libtorch.sh installed.
//!
//! torch-sys links libtorch but puts no rpath into the final binaries, so they
//! would not find the shared libraries at run time. We add one. When the CUDA
//! libraries are present, `--no-as-needed -ltorch` keeps libtorch_cuda linked
//! even though no symbol of it is referenced directly; without it CUDA reports
//! as unavailable (tch-rs issue #980).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("LIBTORCH is not set: run scripts/setup-libtorch.sh (the README's commands do)");
    };
    let lib = libtorch.join("lib");
    if !lib.join("libtorch_cpu.so").exists() {
        panic!("{} holds no libtorch_cpu.so: run scripts/setup-libtorch.sh", lib.display());
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // The libtorch version, for run manifests.
    let version_py = libtorch.join("version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    let version = std::fs::read_to_string(&version_py)
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OHEM_LIBTORCH_VERSION={version}");
    // The CPU RoI-pooling kernel (csrc/roi_pool.cpp), the RNG states and the profiler's C++ side, against the same headers and ABI as torch-sys.
    println!("cargo:rerun-if-changed=csrc/roi_pool.cpp");
    println!("cargo:rerun-if-changed=csrc/rng_state.cpp");
    println!("cargo:rerun-if-changed=csrc/profiler.cpp");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .opt_level(3)
        .file("csrc/roi_pool.cpp")
        .file("csrc/rng_state.cpp")
        .file("csrc/profiler.cpp")
        .compile("ohem_kernels");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
}
