//! Named profiler scopes for the step's stages (`ohem::assign`, `ohem::loss`, ...),
//! as Python's `torch.profiler.record_function`: libtorch's `RecordFunction`
//! through `csrc/profiler.cpp`. They cost one check when no profiler runs, and
//! change no computation; `harness bench samplers --profile` groups the ops
//! inside them (`src/bench/profile.rs`).

use std::ffi::{c_char, c_void, CString};

extern "C" {
    fn ohem_scope_enter(name: *const c_char) -> *mut c_void;
    fn ohem_scope_exit(rec: *mut c_void);
}

/// A scope open until dropped.
pub struct Scope(*mut c_void);

impl Scope {
    pub fn new(name: &str) -> Scope {
        let c = CString::new(name).expect("a scope name without NUL");
        // SAFETY: the C++ side copies the name; the returned pointer (null when nothing listens) is closed once, in Drop.
        Scope(unsafe { ohem_scope_enter(c.as_ptr()) })
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a pointer from ohem_scope_enter, closed once.
            unsafe { ohem_scope_exit(self.0) };
        }
    }
}

/// Runs `f` inside the scope `name`.
pub fn scoped<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let _s = Scope::new(name);
    f()
}
