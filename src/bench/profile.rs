//! Where a training step's time goes, op by op (`harness bench samplers --profile`).
//!
//! Our side records with libtorch's own profiler (`csrc/profiler.cpp`, the
//! Kineto profiler that `torch.profiler` drives in Python); the peer's side
//! (`scripts/bench_peer.py --profile`) records with `torch.profiler` and sends
//! its raw events. Both go through the same classification here, so that a
//! row of the table means the same ops on both sides. The step marks its
//! stages with [`crate::trainer::scope`]'s scopes, the peer with
//! `record_function` scopes of the same names.
//!
//! Each event's *self* time (its duration less its children's) is charged to
//! one family. The family is found from the event and its enclosing events,
//! innermost first: the first that names a kind of work (a convolution, a
//! `ConvolutionBackward0` node of the autograd engine, a `ohem::loss` scope)
//! decides, so that an allocation inside a convolution is the convolution's.
//! Only an event with no such enclosing event falls into the generic families,
//! by its own name (copies and layout, allocation, other ops). The time of the
//! step spent in no op at all (our Rust, the peer's Python) is "host code".

use std::ffi::{c_char, CStr};

use anyhow::{anyhow, Result};

/// One recorded op or scope: name, thread, start and end in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub thread: u64,
    pub start_us: f64,
    pub end_us: f64,
}

extern "C" {
    fn ohem_profiler_start() -> *mut c_char;
    fn ohem_profiler_stop(events: *mut *mut c_char) -> *mut c_char;
    fn ohem_free_message(m: *mut c_char);
    fn ohem_torch_settings() -> *mut c_char;
}

/// libtorch's parallel info and oneDNN switch (`csrc/profiler.cpp`), to compare with the peer's.
pub fn torch_settings() -> String {
    // SAFETY: a malloc'ed NUL-terminated string, freed by take_message.
    take_message(unsafe { ohem_torch_settings() })
}

/// The lines of `ours` and `peer`'s settings that differ (ignoring surrounding space), as `(ours, peer)`.
pub fn settings_differences(ours: &str, peer: &str) -> Vec<(String, String)> {
    let lines = |s: &str| s.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect::<Vec<_>>();
    let (a, b) = (lines(ours), lines(peer));
    let mut out: Vec<(String, String)> = a.iter().filter(|l| !b.contains(l)).map(|l| (l.clone(), String::new())).collect();
    for l in b.iter().filter(|l| !a.contains(l)) {
        match out.iter_mut().find(|(o, p)| p.is_empty() && o.split(':').next() == l.split(':').next() && o.contains(':')) {
            Some(slot) => slot.1 = l.clone(),
            None => out.push((String::new(), l.clone())),
        }
    }
    out
}

fn take_message(m: *mut c_char) -> String {
    // SAFETY: a non-null message is a NUL-terminated string that the C++ side malloc'ed.
    let s = unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned();
    unsafe { ohem_free_message(m) };
    s
}

/// Runs `f` under libtorch's profiler (CPU ops of this process); returns its result and the events.
pub fn record<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<Event>)> {
    // SAFETY: plain calls into csrc/profiler.cpp; messages are freed by take_message.
    let err = unsafe { ohem_profiler_start() };
    if !err.is_null() {
        return Err(anyhow!("starting libtorch's profiler: {}", take_message(err)));
    }
    let out = f();
    let mut text: *mut c_char = std::ptr::null_mut();
    let err = unsafe { ohem_profiler_stop(&mut text) };
    if !err.is_null() {
        return Err(anyhow!("stopping libtorch's profiler: {}", take_message(err)));
    }
    let text = take_message(text);
    Ok((out?, parse_events(&text, 1e-3)?))
}

/// Lines of `name\tthread\tstart\tend`, times multiplied by `to_us`.
fn parse_events(text: &str, to_us: f64) -> Result<Vec<Event>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
            match (f.len(), num(1), num(2), num(3)) {
                (4, Some(t), Some(s), Some(e)) => Ok(Event { name: f[0].to_string(), thread: t as u64, start_us: s * to_us, end_us: e * to_us }),
                _ => Err(anyhow!("a profiler event line that is not name, thread, start, end: {l:?}")),
            }
        })
        .collect()
}

/// How a name matches a rule.
enum Pat {
    Exact(&'static str),
    Prefix(&'static str),
    Contains(&'static str),
}

impl Pat {
    fn matches(&self, name: &str) -> bool {
        match self {
            Pat::Exact(p) => name == *p,
            Pat::Prefix(p) => name.starts_with(p),
            Pat::Contains(p) => name.contains(p),
        }
    }
}

use Pat::{Contains, Exact, Prefix};

/// The families that name a kind of work; an event or any event enclosing it decides (innermost first).
/// The autograd engine wraps each backward node as `autograd::engine::evaluate_function: <Node>`.
const WORK: &[(&str, &[Pat])] = &[
    ("convolution forward", &[Exact("aten::conv2d"), Exact("aten::convolution"), Exact("aten::_convolution"), Prefix("aten::mkldnn_convolution"), Prefix("aten::_slow_conv2d_forward"), Prefix("aten::thnn_conv2d"), Prefix("aten::cudnn_convolution")]),
    ("convolution backward", &[Prefix("aten::convolution_backward"), Prefix("aten::_slow_conv2d_backward"), Contains("ConvolutionBackward"), Prefix("aten::mkldnn_convolution_backward")]),
    ("linear (fc)", &[Exact("aten::linear"), Exact("aten::addmm"), Exact("aten::mm"), Exact("aten::matmul"), Contains("AddmmBackward"), Contains("MmBackward")]),
    ("max pool", &[Prefix("aten::max_pool2d"), Contains("MaxPool2DWithIndicesBackward")]),
    ("batch norm", &[Prefix("aten::batch_norm"), Prefix("aten::_batch_norm"), Prefix("aten::native_batch_norm"), Prefix("aten::_native_batch_norm"), Contains("BatchNormBackward")]),
    ("ReLU", &[Prefix("aten::relu"), Exact("aten::threshold_backward"), Contains("ReluBackward"), Contains("ThresholdBackward")]),
    ("RoI pooling", &[Prefix("ohem::roi_pool"), Prefix("torchvision::roi_pool"), Prefix("torchvision::_roi_pool_backward"), Contains("RoiPoolFn"), Contains("RoIPoolFunction"), Contains("RoiPoolBackward")]),
    ("loss", &[Exact("ohem::loss"), Prefix("aten::cross_entropy"), Prefix("aten::log_softmax"), Prefix("aten::_log_softmax"), Prefix("aten::nll_loss"), Prefix("aten::smooth_l1_loss"), Contains("LogSoftmaxBackward"), Contains("NllLossBackward"), Contains("SmoothL1LossBackward")]),
    ("sampling and targets", &[Exact("ohem::assign"), Exact("ohem::select"), Prefix("torchvision::nms")]),
    // Faster R-CNN: the RPN's anchors, targets, sampling, losses and proposal filtering, ours
    // with its NMS (host code); the RPN's convolutions go to the convolution families, and the
    // peer's NMS (torchvision::nms, an op of its own) to sampling and targets
    ("region proposals (RPN)", &[Exact("ohem::rpn")]),
    ("SGD update", &[Exact("ohem::sgd"), Prefix("Optimizer.step"), Prefix("Optimizer.zero_grad"), Contains("AccumulateGrad")]),
    ("step statistics", &[Exact("ohem::stats")]),
];

/// By the event's own name, when no enclosing event names a kind of work.
const GENERIC: &[(&str, &[Pat])] = &[
    (
        "copies and layout",
        &[
            Exact("aten::copy_"), Exact("aten::clone"), Exact("aten::contiguous"), Exact("aten::cat"), Exact("aten::stack"), Prefix("aten::index"), Exact("aten::gather"),
            Exact("aten::constant_pad_nd"), Exact("aten::to"), Exact("aten::_to_copy"), Exact("aten::permute"), Exact("aten::transpose"), Exact("aten::t"),
            Exact("aten::view"), Exact("aten::reshape"), Exact("aten::_reshape_alias"), Exact("aten::flatten"), Exact("aten::narrow"), Exact("aten::slice"),
            Exact("aten::select"), Exact("aten::expand"), Prefix("aten::squeeze"), Prefix("aten::unsqueeze"), Exact("aten::split_with_sizes"), Exact("aten::as_strided"),
            Exact("aten::detach"), Exact("aten::detach_"), Exact("detach"), Exact("aten::alias"), Exact("aten::lift_fresh"),
            Contains("CatBackward"), Contains("IndexSelectBackward"), Contains("IndexBackward"), Contains("ViewBackward"), Contains("ReshapeAliasBackward"), Contains("TBackward"),
        ],
    ),
    ("allocation", &[Prefix("aten::empty"), Prefix("aten::zeros"), Prefix("aten::ones"), Exact("aten::full"), Exact("aten::resize_"), Exact("aten::fill_"), Exact("aten::zero_")]),
];

/// The rows of the table, in order; the last two take what no rule names and the time outside every op.
pub const OTHER_OPS: &str = "other ops";
pub const HOST: &str = "host code (no op)";

pub fn families() -> Vec<&'static str> {
    WORK.iter().chain(GENERIC).map(|f| f.0).chain([OTHER_OPS, HOST]).collect()
}

fn family_of(rules: &[(&'static str, &[Pat])], name: &str) -> Option<&'static str> {
    rules.iter().find(|(_, pats)| pats.iter().any(|p| p.matches(name))).map(|f| f.0)
}

/// Seconds per family (in [`families`]' order) over the events of `iters` steps that took `wall_s` in all.
pub fn breakdown(events: &[Event], wall_s: f64) -> Vec<(&'static str, f64)> {
    // Per thread, the nesting: sort by start (longest first at a tie), keep a stack of open events.
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| {
        let (ea, eb) = (&events[a], &events[b]);
        ea.thread.cmp(&eb.thread).then(ea.start_us.total_cmp(&eb.start_us)).then(eb.end_us.total_cmp(&ea.end_us))
    });
    let mut parent: Vec<Option<usize>> = vec![None; events.len()];
    let mut child_us = vec![0.0f64; events.len()];
    let mut stack: Vec<usize> = Vec::new();
    let mut roots: Vec<(f64, f64)> = Vec::new();
    let mut thread = None;
    for &i in &order {
        let e = &events[i];
        if thread != Some(e.thread) {
            stack.clear();
            thread = Some(e.thread);
        }
        while let Some(&top) = stack.last() {
            if events[top].end_us >= e.end_us && events[top].start_us <= e.start_us {
                break;
            }
            stack.pop();
        }
        match stack.last() {
            Some(&top) => {
                parent[i] = Some(top);
                child_us[top] += e.end_us - e.start_us;
            }
            None => roots.push((e.start_us, e.end_us)),
        }
        stack.push(i);
    }
    let names = families();
    let mut secs = vec![0.0f64; names.len()];
    let slot = |f: &str| names.iter().position(|n| *n == f).expect("a listed family");
    for (i, e) in events.iter().enumerate() {
        let self_us = (e.end_us - e.start_us - child_us[i]).max(0.0);
        let mut fam = None;
        let mut at = Some(i);
        while let (None, Some(j)) = (fam, at) {
            fam = family_of(WORK, &events[j].name);
            at = parent[j];
        }
        let fam = fam.or_else(|| family_of(GENERIC, &e.name)).unwrap_or(OTHER_OPS);
        secs[slot(fam)] += self_us * 1e-6;
    }
    // Host code: the wall time that no top-level event covers (the union of the roots, all threads).
    roots.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut covered, mut reach) = (0.0f64, f64::NEG_INFINITY);
    for (s, e) in roots {
        let s = s.max(reach);
        if e > s {
            covered += e - s;
        }
        reach = reach.max(e);
    }
    secs[slot(HOST)] = (wall_s - covered * 1e-6).max(0.0);
    names.into_iter().zip(secs).collect()
}

/// The peer's events as `bench_peer.py --profile` sends them: `[[name, thread, start_us, end_us], ...]`.
pub fn peer_events(v: &serde_json::Value) -> Result<Vec<Event>> {
    let list = v.as_array().ok_or_else(|| anyhow!("the peer's profile events are not a list"))?;
    list.iter()
        .map(|e| {
            let f = e.as_array().filter(|f| f.len() == 4).ok_or_else(|| anyhow!("a peer profile event that is not [name, thread, start, end]: {e}"))?;
            let num = |i: usize| f[i].as_f64().ok_or_else(|| anyhow!("a peer profile event with a non-number field: {e}"));
            Ok(Event { name: f[0].as_str().unwrap_or_default().to_string(), thread: num(1)? as u64, start_us: num(2)?, end_us: num(3)? })
        })
        .collect()
}

/// One table: per family, ours and (when given) the peer's seconds per iteration, and the difference.
pub fn table(title: &str, ours: &[(&'static str, f64)], peer: Option<&[(&'static str, f64)]>, iters: f64) -> String {
    let mut s = format!("  {title}\n");
    let total = |b: &[(&str, f64)]| b.iter().map(|f| f.1).sum::<f64>();
    let ms = |v: f64| v * 1e3 / iters;
    match peer {
        Some(p) => {
            s += &format!("    {:<24} {:>10} {:>7} {:>10} {:>7} {:>11}\n", "family", "ours ms", "share", "peer ms", "share", "ours - peer");
            let (to, tp) = (total(ours), total(p));
            for ((name, o), (_, q)) in ours.iter().zip(p) {
                s += &format!("    {:<24} {:>10.1} {:>6.1}% {:>10.1} {:>6.1}% {:>+11.1}\n", name, ms(*o), 100.0 * o / to, ms(*q), 100.0 * q / tp, ms(o - q));
            }
            s += &format!("    {:<24} {:>10.1} {:>7} {:>10.1} {:>7} {:>+11.1}\n", "step (wall)", ms(to), "", ms(tp), "", ms(to - tp));
        }
        None => {
            s += &format!("    {:<24} {:>10} {:>7}\n", "family", "ours ms", "share");
            let to = total(ours);
            for (name, o) in ours {
                s += &format!("    {:<24} {:>10.1} {:>6.1}%\n", name, ms(*o), 100.0 * o / to);
            }
            s += &format!("    {:<24} {:>10.1}\n", "step (wall)", ms(to));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, start: f64, end: f64) -> Event {
        Event { name: name.into(), thread: 1, start_us: start, end_us: end }
    }

    fn get(b: &[(&str, f64)], f: &str) -> f64 {
        b.iter().find(|x| x.0 == f).unwrap().1
    }

    #[test]
    fn self_time_goes_to_the_innermost_family_that_names_the_work() {
        // A step of 100 us: a convolution (30 us, an allocation of 5 inside it), a loss scope
        // (20 us, with an index_select of 4 and a log_softmax of 6 inside), a bare cat of 10 us,
        // a backward node with its kernel inside, and 25 us that no op covers.
        let events = vec![
            ev("aten::conv2d", 0.0, 30.0),
            ev("aten::mkldnn_convolution", 2.0, 28.0),
            ev("aten::empty", 3.0, 8.0),
            ev("ohem::loss", 30.0, 50.0),
            ev("aten::index_select", 31.0, 35.0),
            ev("aten::log_softmax", 36.0, 42.0),
            ev("aten::cat", 50.0, 60.0),
            ev("autograd::engine::evaluate_function: ConvolutionBackward0", 60.0, 75.0),
            ev("aten::convolution_backward", 61.0, 74.0),
        ];
        let b = breakdown(&events, 100e-6);
        let us = |f: &str| (get(&b, f) * 1e6 * 1000.0).round() / 1000.0;
        assert_eq!(us("convolution forward"), 30.0, "the allocation inside the convolution is the convolution's");
        assert_eq!(us("loss"), 20.0, "everything inside the loss scope, its copy included");
        assert_eq!(us("copies and layout"), 10.0);
        assert_eq!(us("convolution backward"), 15.0);
        assert_eq!(us(HOST), 25.0);
        assert_eq!(us("allocation"), 0.0);
        let total: f64 = b.iter().map(|f| f.1).sum();
        assert!((total - 100e-6).abs() < 1e-12, "the families add up to the wall time: {total}");
    }

    #[test]
    fn threads_nest_separately_and_unknown_ops_are_other() {
        let mut a = ev("aten::foo", 0.0, 10.0);
        a.thread = 1;
        let mut b = ev("aten::empty", 2.0, 4.0);
        b.thread = 2; // on another thread: not inside aten::foo
        let r = breakdown(&[a, b], 10e-6);
        assert!((get(&r, OTHER_OPS) - 10e-6).abs() < 1e-12);
        assert!((get(&r, "allocation") - 2e-6).abs() < 1e-12);
        assert!(get(&r, HOST).abs() < 1e-12, "the union of the roots covers the wall");
    }

    #[test]
    fn settings_differences_pair_lines_by_key() {
        let ours = "ATen/Parallel:\n\tat::get_num_threads() : 2\nmkldnn enabled : true\n";
        let peer = "ATen/Parallel:\n\tat::get_num_threads() : 4\nmkldnn enabled : true\nOMP_NUM_THREADS : 4\n";
        assert_eq!(
            settings_differences(ours, peer),
            vec![("at::get_num_threads() : 2".to_string(), "at::get_num_threads() : 4".to_string()), (String::new(), "OMP_NUM_THREADS : 4".to_string())]
        );
        assert!(settings_differences(ours, ours).is_empty());
    }

    #[test]
    fn event_lines_parse_and_bad_ones_are_refused() {
        let e = parse_events("aten::mm\t7\t1000\t3000\n", 1e-3).unwrap();
        assert_eq!(e, vec![Event { name: "aten::mm".into(), thread: 7, start_us: 1.0, end_us: 3.0 }]);
        assert!(parse_events("aten::mm\t7\t1000\n", 1e-3).is_err());
        let peer = peer_events(&serde_json::json!([["aten::mm", 3, 1.5, 2.5]])).unwrap();
        assert_eq!(peer[0].end_us, 2.5);
        assert!(peer_events(&serde_json::json!([["aten::mm", 3]])).is_err());
    }
}
