// RoI max pooling over bilinear samples, as a CPU kernel with a C++ autograd
// function. Same definition as the tensor path in src/model/roi_pool.rs (and
// its per-RoI reference): every RoI is split into out x out bins, each bin is
// sampled bilinearly on an s x s sub-grid (zero outside the map), and the bin
// takes the max over its samples. The gradient flows to the 4 taps of the
// arg-max sample.
//
// The features are read channels-last, so the innermost loop of both passes
// runs over contiguous channels. The output and its gradient keep the
// [R, C, out, out] layout that the head flattens: each RoI is transposed
// through a small buffer inside the kernel (8 x 8 blocks in AVX2 registers),
// in cache and in parallel, rather than by a whole-tensor copy before or
// after it. The forward splits RoIs over threads; the backward splits
// channels, so no two threads write one gradient cell.
// Built by build.rs (cc) against the libtorch headers that torch-sys uses.

#include <torch/autograd.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// Runs f(begin, end) over [0, n) in up to at::get_num_threads() contiguous pieces.
template <typename F>
void parallel(int64_t n, int64_t min_piece, const F& f) {
  int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / std::max<int64_t>(min_piece, 1)));
  if (threads <= 1) {
    f(0, n);
    return;
  }
  std::vector<std::thread> pool;
  int64_t piece = (n + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    int64_t b = t * piece, e = std::min(n, b + piece);
    if (b < e) pool.emplace_back([&f, b, e] { f(b, e); });
  }
  f(0, std::min(n, piece));
  for (auto& th : pool) th.join();
}

// The two taps (index, weight) of a sample at position p (feature cells, centre i + 0.5) on an axis of n cells.
struct Taps {
  int64_t i0, i1;
  double w0, w1;
};

inline Taps taps(double p, int64_t n) {
  double q = p - 0.5;
  double f = std::floor(q);
  int64_t i0 = (int64_t)f;
  double a = q - f;
  Taps t{i0, i0 + 1, 1.0 - a, a};
  if (t.i0 < 0 || t.i0 >= n) { t.i0 = 0; t.w0 = 0.0; }
  if (t.i1 < 0 || t.i1 >= n) { t.i1 = 0; t.w1 = 0.0; }
  return t;
}

// Sample positions along one axis of one RoI: s * out of them, bin-major here (bin i, sub k).
inline void positions(double lo, double hi, int64_t out, int64_t s, double scale, std::vector<double>& pos) {
  double start = lo * scale;
  double extent = std::max((hi + 1.0) * scale - start, 1.0);
  pos.resize(out * s);
  for (int64_t i = 0; i < out; ++i)
    for (int64_t k = 0; k < s; ++k) pos[i * s + k] = start + extent * ((double)(i * s + k) + 0.5) / (double)(out * s);
}

#if defined(__x86_64__) && defined(__GNUC__)
// out[j * out_stride + i] = in[i * in_stride + j] for i < rows, j < cols, in 8 x 8
// blocks transposed in AVX2 registers (the rest element by element). A call, not
// inlined: only the AVX2 paths below make it.
__attribute__((target("avx2"), noinline)) void transpose_avx2(const float* in, float* out, int64_t rows, int64_t cols, int64_t in_stride, int64_t out_stride) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) {
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      const float* a = in + i * in_stride + j;
      __m256 r0 = _mm256_loadu_ps(a), r1 = _mm256_loadu_ps(a + in_stride), r2 = _mm256_loadu_ps(a + 2 * in_stride), r3 = _mm256_loadu_ps(a + 3 * in_stride);
      __m256 r4 = _mm256_loadu_ps(a + 4 * in_stride), r5 = _mm256_loadu_ps(a + 5 * in_stride), r6 = _mm256_loadu_ps(a + 6 * in_stride), r7 = _mm256_loadu_ps(a + 7 * in_stride);
      __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5), t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
      __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
      __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
      __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
      float* b = out + j * out_stride + i;  // column j of the block becomes row j
      _mm256_storeu_ps(b, _mm256_permute2f128_ps(s0, s4, 0x20));
      _mm256_storeu_ps(b + out_stride, _mm256_permute2f128_ps(s1, s5, 0x20));
      _mm256_storeu_ps(b + 2 * out_stride, _mm256_permute2f128_ps(s2, s6, 0x20));
      _mm256_storeu_ps(b + 3 * out_stride, _mm256_permute2f128_ps(s3, s7, 0x20));
      _mm256_storeu_ps(b + 4 * out_stride, _mm256_permute2f128_ps(s0, s4, 0x31));
      _mm256_storeu_ps(b + 5 * out_stride, _mm256_permute2f128_ps(s1, s5, 0x31));
      _mm256_storeu_ps(b + 6 * out_stride, _mm256_permute2f128_ps(s2, s6, 0x31));
      _mm256_storeu_ps(b + 7 * out_stride, _mm256_permute2f128_ps(s3, s7, 0x31));
    }
    for (; j < cols; ++j)
      for (int64_t k = i; k < i + 8; ++k) out[j * out_stride + k] = in[k * in_stride + j];
  }
  for (; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * out_stride + i] = in[i * in_stride + j];
}
#endif

// out[j * out_stride + i] = in[i * in_stride + j]: with AVX2 in registers for float, else element by element.
template <typename T, bool AVX2>
__attribute__((always_inline)) inline void transpose(const T* in, T* out, int64_t rows, int64_t cols, int64_t in_stride, int64_t out_stride) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (AVX2 && std::is_same_v<T, float>) {
    transpose_avx2(in, out, rows, cols, in_stride, out_stride);
    return;
  }
#endif
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * out_stride + i] = in[i * in_stride + j];
}

// RoIs r0..r1 of the forward: y [R, C, out, out] (each RoI computed
// channels-last in a buffer, then transposed), arg [R, out, out, C]. Always
// inlined, so that it is compiled for the instruction set of each caller
// below (baseline x86-64, or AVX2 with FMA).
template <typename T, bool ARG, bool AVX2>
__attribute__((always_inline)) inline void forward_range(const T* f, const T* rois, T* y, T* arg, int64_t H, int64_t W, int64_t C, int64_t out, int64_t s, double scale, int64_t r0, int64_t r1) {
    std::vector<double> px, py;
    std::vector<T> buf(out * out * C);  // one RoI's output, bin-major [out, out, C]
    for (int64_t r = r0; r < r1; ++r) {
      const T* roi = rois + r * 5;
      const T* fb = f + (int64_t)roi[0] * H * W * C;
      positions(roi[1], roi[3], out, s, scale, px);
      positions(roi[2], roi[4], out, s, scale, py);
      for (int64_t by = 0; by < out; ++by)
        for (int64_t bx = 0; bx < out; ++bx) {
          T* __restrict yo = buf.data() + (by * out + bx) * C;
          T* __restrict ao = ARG ? arg + ((r * out + by) * out + bx) * C : nullptr;
          for (int64_t ky = 0; ky < s; ++ky) {
            Taps ty = taps(py[by * s + ky], H);
            for (int64_t kx = 0; kx < s; ++kx) {
              Taps tx = taps(px[bx * s + kx], W);
              const T* __restrict p00 = fb + (ty.i0 * W + tx.i0) * C;
              const T* __restrict p01 = fb + (ty.i0 * W + tx.i1) * C;
              const T* __restrict p10 = fb + (ty.i1 * W + tx.i0) * C;
              const T* __restrict p11 = fb + (ty.i1 * W + tx.i1) * C;
              const T w00 = ty.w0 * tx.w0, w01 = ty.w0 * tx.w1, w10 = ty.w1 * tx.w0, w11 = ty.w1 * tx.w1;
              const T k = (T)(ky * s + kx);
              if (k == 0) {
                for (int64_t c = 0; c < C; ++c) yo[c] = w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c];
                if constexpr (ARG)
                  for (int64_t c = 0; c < C; ++c) ao[c] = 0;
              } else if constexpr (ARG) {
                for (int64_t c = 0; c < C; ++c) {
                  T v = w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c];
                  bool gt = v > yo[c];
                  ao[c] = gt ? k : ao[c];
                  yo[c] = gt ? v : yo[c];
                }
              } else {
                for (int64_t c = 0; c < C; ++c) {
                  T v = w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c];
                  yo[c] = v > yo[c] ? v : yo[c];
                }
              }
            }
          }
        }
      // into y's layout [C, out, out], while the buffer is in cache
      transpose<T, AVX2>(buf.data(), y + r * C * out * out, out * out, C, C, out * out);
    }
}

inline bool has_avx2_fma() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

// ARG: also record, per output, which sample was the max (for the backward).
// RoIs are split over threads; the loops run with AVX2 and FMA where the CPU has them.
template <typename T, bool ARG>
void forward_kernel(const T* f, const T* rois, T* y, T* arg, int64_t R, int64_t H, int64_t W, int64_t C, int64_t out, int64_t s, double scale) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (has_avx2_fma()) {
    parallel(R, 8, [&](int64_t r0, int64_t r1) __attribute__((target("avx2,fma"))) { forward_range<T, ARG, true>(f, rois, y, arg, H, W, C, out, s, scale, r0, r1); });
    return;
  }
#endif
  parallel(R, 8, [&](int64_t r0, int64_t r1) { forward_range<T, ARG, false>(f, rois, y, arg, H, W, C, out, s, scale, r0, r1); });
}

// Channels c0..c1 of the backward, g [R, C, out, out]: the arg-max sample's 4 taps get the
// output's gradient. Per bin and sample k, the gradient of the channels whose
// arg-max is k (zero for the others) goes to each of k's 4 taps in turn, in
// loops without data-dependent addresses, which vectorise. Adding zero changes
// no value, and a channel has one arg-max, so every gradient cell receives the
// same non-zero terms in the same order as one scattered add per channel
// would give (RoIs, then bins, then the taps 00, 01, 10, 11): the same bits.
// A product and a sum are rounded apart (never fused into one FMA), as in
// that scalar form. Bins whose gradient is zero in these channels (masked
// OHEM's unselected RoIs) are skipped. Always inlined, as forward_range is,
// for each instruction set.
template <typename T, bool AVX2>
__attribute__((always_inline)) inline void backward_range(const T* g, const T* rois, const T* arg, T* gf, int64_t R, int64_t H, int64_t W, int64_t C, int64_t out, int64_t s, double scale, int64_t c0, int64_t c1) {
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    const int64_t n = c1 - c0, bins = out * out;
    std::vector<double> px, py;
    std::vector<T> gk_buf(n), gr_buf(bins * n);
    T* __restrict gk = gk_buf.data() - c0;  // gk[c] for c in c0..c1
    for (int64_t r = 0; r < R; ++r) {
      const T* roi = rois + r * 5;
      T* gb = gf + (int64_t)roi[0] * H * W * C;
      positions(roi[1], roi[3], out, s, scale, px);
      positions(roi[2], roi[4], out, s, scale, py);
      // this RoI's gradient for channels c0..c1, bin-major: gr_buf[bin * n + c - c0]
      transpose<T, AVX2>(g + (r * C + c0) * bins, gr_buf.data(), n, bins, bins, n);
      for (int64_t by = 0; by < out; ++by)
        for (int64_t bx = 0; bx < out; ++bx) {
          const T* __restrict go = gr_buf.data() + (by * out + bx) * n - c0;
          const T* __restrict ao = arg + ((r * out + by) * out + bx) * C;
          // any non-zero gradient? (an OR of the bits without the sign: a loop that vectorises)
          U bits = 0;
          for (int64_t c = c0; c < c1; ++c) {
            U b;
            std::memcpy(&b, &go[c], sizeof(T));
            bits |= b << 1;
          }
          if (bits == 0) continue;
          for (int64_t ky = 0; ky < s; ++ky) {
            Taps ty = taps(py[by * s + ky], H);
            for (int64_t kx = 0; kx < s; ++kx) {
              Taps tx = taps(px[bx * s + kx], W);
              const T k = (T)(ky * s + kx);
              for (int64_t c = c0; c < c1; ++c) gk[c] = ao[c] == k ? go[c] : (T)0;
              // zero-weight taps (outside the map) add nothing, wherever they point
              const int64_t cells[4] = {ty.i0 * W + tx.i0, ty.i0 * W + tx.i1, ty.i1 * W + tx.i0, ty.i1 * W + tx.i1};
              const T ws[4] = {(T)(ty.w0 * tx.w0), (T)(ty.w0 * tx.w1), (T)(ty.w1 * tx.w0), (T)(ty.w1 * tx.w1)};
              for (int t = 0; t < 4; ++t) {
                T* __restrict p = gb + cells[t] * C;
                const T w = ws[t];
                for (int64_t c = c0; c < c1; ++c) {
                  T prod = gk[c] * w;
                  p[c] = p[c] + prod;
                }
              }
            }
          }
        }
    }
}

// Channels are split over threads, so no two threads write one gradient cell
// and each cell's sum runs in the same order whatever the thread count. AVX2
// without FMA: the compiler has no fused multiply-add to contract into (the
// forward's target has one, and uses it).
template <typename T>
void backward_kernel(const T* g, const T* rois, const T* arg, T* gf, int64_t R, int64_t H, int64_t W, int64_t C, int64_t out, int64_t s, double scale) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (has_avx2_fma()) {
    parallel(C, 16, [&](int64_t c0, int64_t c1) __attribute__((target("avx2"))) { backward_range<T, true>(g, rois, arg, gf, R, H, W, C, out, s, scale, c0, c1); });
    return;
  }
#endif
  parallel(C, 16, [&](int64_t c0, int64_t c1) { backward_range<T, false>(g, rois, arg, gf, R, H, W, C, out, s, scale, c0, c1); });
}

// Checks the inputs; returns the features channels-last [N, H, W, C] and the RoIs in their precision.
std::pair<Tensor, Tensor> prepare(const Tensor& feats, const Tensor& rois, int64_t out, int64_t s) {
  TORCH_CHECK(feats.device().is_cpu() && feats.dim() == 4, "roi_pool kernel: features must be [N, C, H, W] on the CPU");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "roi_pool kernel: rois must be [R, 5]");
  TORCH_CHECK(s >= 1 && s <= 8 && out >= 1, "roi_pool kernel: bad sizes");
  auto f = feats.detach().permute({0, 2, 3, 1}).contiguous();
  auto r = rois.detach().to(feats.scalar_type()).contiguous();
  auto b = r.select(1, 0);
  TORCH_CHECK(r.size(0) == 0 || (b.min().item<double>() >= 0 && b.max().item<double>() < feats.size(0)), "roi_pool kernel: batch index out of range");
  return {f, r};
}

// The forward alone, when no gradient is wanted (evaluation, OHEM's read-only pass, mining).
Tensor forward_only(const Tensor& feats, const Tensor& rois, int64_t out, int64_t s, double scale) {
  auto [f, r] = prepare(feats, rois, out, s);
  int64_t C = feats.size(1), H = feats.size(2), W = feats.size(3), R = rois.size(0);
  auto y = at::empty({R, C, out, out}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "roi_pool_forward", [&] {
    forward_kernel<scalar_t, false>(f.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), nullptr, R, H, W, C, out, s, scale);
  });
  return y;
}

struct RoiPoolFn : public torch::autograd::Function<RoiPoolFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& feats, const Tensor& rois, int64_t out, int64_t s, double scale) {
    auto [f, r] = prepare(feats, rois, out, s);
    int64_t N = feats.size(0), C = feats.size(1), H = feats.size(2), W = feats.size(3), R = rois.size(0);
    auto y = at::empty({R, C, out, out}, f.options());
    auto arg = at::empty({R, out, out, C}, f.options());  // the arg-max sample, in the features' type so the loops vectorise
    AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "roi_pool_forward", [&] {
      forward_kernel<scalar_t, true>(f.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), arg.data_ptr<scalar_t>(), R, H, W, C, out, s, scale);
    });
    ctx->save_for_backward({r, arg});
    ctx->saved_data["N"] = N;
    ctx->saved_data["H"] = H;
    ctx->saved_data["W"] = W;
    ctx->saved_data["out"] = out;
    ctx->saved_data["s"] = s;
    ctx->saved_data["scale"] = scale;
    return y;  // [R, C, out, out]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto r = saved[0];
    auto arg = saved[1];
    int64_t N = ctx->saved_data["N"].toInt(), H = ctx->saved_data["H"].toInt(), W = ctx->saved_data["W"].toInt();
    int64_t out = ctx->saved_data["out"].toInt(), s = ctx->saved_data["s"].toInt();
    double scale = ctx->saved_data["scale"].toDouble();
    auto g = grads[0].contiguous();  // [R, C, out, out]
    int64_t R = g.size(0), C = g.size(1);
    auto gf = at::zeros({N, H, W, C}, g.options());
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "roi_pool_backward", [&] {
      backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), arg.data_ptr<scalar_t>(), gf.data_ptr<scalar_t>(), R, H, W, C, out, s, scale);
    });
    return {gf.permute({0, 3, 1, 2}), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

// C entry point for Rust. `feats` and `rois` are torch::Tensor pointers as tch
// holds them; on success *result gets a new tensor and the return is null, on
// failure the return is a malloc'ed message for the caller to free.
extern "C" char* ohem_roi_pool_cpu(Tensor** result, const Tensor* feats, const Tensor* rois, int64_t out, int64_t s, double scale) {
  try {
    bool grad = at::GradMode::is_enabled() && feats->requires_grad();
    *result = new Tensor(grad ? RoiPoolFn::apply(*feats, *rois, out, s, scale) : forward_only(*feats, *rois, out, s, scale));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

extern "C" void ohem_free_message(char* m) { free(m); }
