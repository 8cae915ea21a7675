// The state of libtorch's default random generators, for exact mid-epoch
// resume: tch can seed them but not read or restore them. Called from
// src/trainer/resume.rs.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <cstring>
#include <mutex>

using at::Tensor;

namespace {
at::Generator generator(int cuda, int64_t index) {
  return cuda ? at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)))
              : at::globalContext().defaultGenerator(at::Device(at::kCPU));
}
}  // namespace

// *result gets the generator's state (a uint8 tensor); returns null, or a malloc'ed message.
extern "C" char* ohem_rng_get_state(Tensor** result, int cuda, int64_t index) {
  try {
    auto g = generator(cuda, index);
    std::lock_guard<std::mutex> lock(g.mutex());
    *result = new Tensor(g.get_state());
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// Restores a state that ohem_rng_get_state returned; returns null, or a malloc'ed message.
extern "C" char* ohem_rng_set_state(const Tensor* state, int cuda, int64_t index) {
  try {
    auto g = generator(cuda, index);
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(*state);
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}
