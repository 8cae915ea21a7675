// libtorch's own profiler (the Kineto profiler that torch.profiler drives from
// Python), for `harness bench samplers --profile`: tch exposes neither the
// profiler nor record_function scopes. Called from src/bench/profile.rs.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <sstream>
#include <string>

namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

namespace {
// Runs f with stderr sent to /dev/null: Kineto prints a "USDT: ... profiler_start" line at every
// start and stop, which no log level silences.
template <typename F>
auto quietly(F f) -> decltype(f()) {
  fflush(stderr);
  int saved = dup(2), null = open("/dev/null", O_WRONLY);
  if (saved >= 0 && null >= 0) dup2(null, 2);
  struct Restore {
    int saved, null;
    ~Restore() {
      fflush(stderr);
      if (saved >= 0) { dup2(saved, 2); close(saved); }
      if (null >= 0) close(null);
    }
  } restore{saved, null};
  return f();
}
}  // namespace

// Starts recording every CPU op of this process (as torch.profiler.profile(activities=[CPU]) does);
// returns null, or a malloc'ed message.
extern "C" char* ohem_profiler_start() {
  try {
    ProfilerConfig config(ProfilerState::KINETO);
    std::set<ActivityType> activities{ActivityType::CPU};
    quietly([&] {
      prof::prepareProfiler(config, activities);
      prof::enableProfiler(config, activities);
    });
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// Stops the profiler; *events gets one line per recorded CPU event, "name\tthread\tstart_ns\tend_ns\n"
// (malloc'ed, free with ohem_free_message). Returns null, or a malloc'ed message.
extern "C" char* ohem_profiler_stop(char** events) {
  try {
    auto result = quietly([] { return prof::disableProfiler(); });
    std::ostringstream out;
    for (const auto& e : result->events()) {
      if (e.deviceType() != c10::DeviceType::CPU || e.isHiddenEvent()) continue;
      std::string name = e.name();
      for (auto& c : name)
        if (c == '\t' || c == '\n') c = ' ';
      out << name << '\t' << e.startThreadId() << '\t' << e.startNs() << '\t' << e.endNs() << '\n';
    }
    *events = strdup(out.str().c_str());
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// Opens a user scope named `name` (torch.profiler.record_function's C++ side); null when no
// profiler or other observer listens. Close it with ohem_scope_exit.
extern "C" void* ohem_scope_enter(const char* name) {
  auto rec = std::make_unique<at::RecordFunction>(at::RecordScope::USER_SCOPE);
  if (!rec->isActive()) return nullptr;
  rec->before(std::string(name));
  return rec.release();
}

extern "C" void ohem_scope_exit(void* rec) { delete static_cast<at::RecordFunction*>(rec); }

// libtorch's settings that decide which kernels run and how: its parallel info (intra- and
// inter-op threads, OpenMP, MKL, oneDNN versions and their thread counts, the environment
// variables that set them) and whether oneDNN (mkldnn) is enabled, as torch.__config__.parallel_info()
// and torch.backends.mkldnn.enabled give them in Python. Malloc'ed; free with ohem_free_message.
extern "C" char* ohem_torch_settings() {
  std::string s = at::get_parallel_info();
  s += "mkldnn enabled : ";
  s += at::globalContext().userEnabledMkldnn() ? "true" : "false";
  s += "\n";
  return strdup(s.c_str());
}
