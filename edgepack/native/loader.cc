// edgepack-run: runs, verifies and benchmarks an edgepack bundle (docs/bundle-format.md) with the
// TVM runtime alone. Every failure ends as one line on stderr, `error: <problem>; <fix>`, and one
// of the exit codes of the bundle format.
#include "common.h"
#include "npy.h"
#include "manifest_json.h"
#include "signature_check.h"
#include "manifest.h"
#include "integrity.h"
#include "compat.h"
#include "model.h"
#include "generate.h"
#include "serve.h"

namespace {

// ---------------------------------------------------------------- commands

struct Options {
  std::string command, bundle, output, output_dir, keyring;
  std::string device;  // --device cpu|cuda; empty: the bundle's own
  std::vector<std::string> inputs;
  long warmup = 10, runs = 100;
};

long ParseCount(const std::string& option, const std::string& text, long minimum) {
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < minimum) {
    Fail(kExitUsage,
         option + " takes an integer >= " + std::to_string(minimum) + ", got '" + text + "'",
         "see edgepack-run --help");
  }
  return value;
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  opt.command = argc > 1 ? argv[1] : "";
  if (opt.command == "-h" || opt.command == "--help") {
    std::cout << kUsage;
    std::exit(0);
  }
  bool run = opt.command == "run", bench = opt.command == "bench";
  if (!run && !bench && opt.command != "verify") {
    Fail(kExitUsage,
         opt.command.empty() ? "no command given" : "unknown command '" + opt.command + "'",
         "use one of: run, verify, bench (see edgepack-run --help)");
  }
  OptionCursor args(argc, argv, "edgepack-run --help");
  while (args.Next()) {
    const std::string& arg = args.name();
    auto value = [&args] { return args.Value(); };
    if (SharedOption(args, kUsage, &opt.bundle, &opt.keyring, &opt.device)) {
      continue;
    } else if (arg == "--input" && (run || bench)) {
      opt.inputs.push_back(value());
    } else if ((arg == "-o" || arg == "--output") && run) {
      opt.output = value();
    } else if (arg == "--output-dir" && run) {
      opt.output_dir = value();
    } else if (arg == "--warmup" && bench) {
      opt.warmup = ParseCount(arg, value(), 0);
    } else if (arg == "--runs" && bench) {
      opt.runs = ParseCount(arg, value(), 1);
    } else {
      Fail(kExitUsage, "unknown option '" + arg + "' for '" + opt.command + "'",
           "see edgepack-run --help");
    }
  }
  if (run && opt.output.empty() == opt.output_dir.empty()) {
    Fail(kExitUsage, "'run' needs exactly one of -o OUT.npy and --output-dir DIR",
         "see edgepack-run --help");
  }
  return opt;
}

std::string DefaultBundle() {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  std::string path(exe, n > 0 ? n : 0);
  size_t runtime_dir = path.rfind('/');
  size_t bundle_dir = runtime_dir == std::string::npos || runtime_dir == 0
                          ? std::string::npos
                          : path.rfind('/', runtime_dir - 1);
  if (bundle_dir == std::string::npos) {
    Fail(kExitUsage, "cannot find the bundle from /proc/self/exe", "pass --bundle DIR");
  }
  return bundle_dir == 0 ? "/" : path.substr(0, bundle_dir);
}

int Run(const Options& opt, const std::string& bundle, const Manifest& m) {
  if (!opt.output.empty() && m.outputs.size() > 1) {
    Fail(kExitUsage,
         "the model has " + std::to_string(m.outputs.size()) + " outputs and -o writes one",
         "use --output-dir DIR to write output_<i>.npy for each");
  }
  std::vector<Array> inputs = Typed(ReadArrays("", opt.inputs), m.inputs);
  CheckInputs(inputs, m.inputs);
  std::vector<ffi::Tensor> outputs = Model(bundle, m).Run(ToTensors(inputs));
  if (!opt.output.empty()) {
    if (outputs.size() != 1) {
      Fail(kExitUsage, "the model returned " + std::to_string(outputs.size()) + " outputs",
           "use --output-dir DIR");
    }
    WriteNpy(opt.output, FromTensor(outputs[0]));
    return 0;
  }
  bool created = mkdir(opt.output_dir.c_str(), 0777) == 0;  // an existing directory is fine
  std::vector<std::string> written;
  try {  // all or nothing: no half set of outputs, no directory made for them
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::string path = opt.output_dir + "/output_" + std::to_string(i) + ".npy";
      WriteNpy(path, FromTensor(outputs[i]));
      written.push_back(path);
    }
  } catch (...) {
    for (const std::string& path : written) unlink(path.c_str());
    if (created) rmdir(opt.output_dir.c_str());
    throw;
  }
  return 0;
}

// Largest element-wise |got - ref|; `passed` when every element is within atol + rtol * |ref|.
struct Comparison {
  bool passed = true;
  double max_abs_err = 0;
};

Comparison Compare(const Array& got, const Array& ref, double atol, double rtol) {
  Comparison c;
  if (got.shape != ref.shape) return {false, INFINITY};
  for (int64_t i = 0, n = NumElements(ref.shape); i < n; ++i) {
    double g = ElementAt(got, i), r = ElementAt(ref, i), err;
    bool ok;
    if (std::isnan(g) || std::isnan(r) || std::isinf(g) || std::isinf(r)) {
      ok = g == r || (std::isnan(g) && std::isnan(r));
      err = ok ? 0 : INFINITY;
    } else {
      err = std::fabs(g - r);
      ok = err <= atol + rtol * std::fabs(r);
    }
    c.passed = c.passed && ok;
    c.max_abs_err = std::max(c.max_abs_err, err);
  }
  return c;
}

int Verify(const std::string& bundle, const Manifest& m) {
  if (m.golden.empty()) {
    Fail(kExitVerify, "the bundle has no golden cases", "rebuild the bundle with golden vectors");
  }
  Model model(bundle, m);
  int failed = 0, total = 0;
  std::string first_failure;
  for (size_t c = 0; c < m.golden.size(); ++c) {
    std::vector<Array> inputs = Typed(ReadCheckedArrays(bundle, m, m.golden[c].inputs), m.inputs);
    CheckInputs(inputs, m.inputs);
    std::vector<ffi::Tensor> outputs = model.Run(ToTensors(inputs));
    std::vector<Array> refs = Typed(ReadCheckedArrays(bundle, m, m.golden[c].outputs), m.outputs);
    for (size_t o = 0; o < std::max(outputs.size(), refs.size()); ++o) {
      Comparison cmp{false, INFINITY};
      if (o < outputs.size() && o < refs.size()) {
        Array got = FromTensor(outputs[o]);
        if (o < m.outputs.size()) AsSpecDtype(got, m.outputs[o].dtype);  // float8, int4...: their containers
        cmp = Compare(got, refs[o], m.atol, m.rtol);
      }
      std::string label = "case " + std::to_string(c) + " output " + std::to_string(o);
      if (o < m.outputs.size()) label += " '" + m.outputs[o].name + "'";
      std::printf("%s: max_abs_err %.3g %s\n", label.c_str(), cmp.max_abs_err,
                  cmp.passed ? "PASS" : "FAIL");
      ++total;
      if (!cmp.passed && failed++ == 0) first_failure = label;
    }
  }
  std::printf("verify: %d of %d outputs passed (atol %g, rtol %g)\n", total - failed, total, m.atol,
              m.rtol);
  if (failed > 0) {
    Fail(kExitVerify,
         std::to_string(failed) +
             " golden output(s) differ from the reference beyond tolerance (first: " +
             first_failure + ")",
         "check that this device matches the bundle's target, then rebuild with `edgepack build`");
  }
  return 0;
}

// Set by main() when it chose the thread count because TVM_NUM_THREADS was unset.
bool g_threads_defaulted = false;

// Threads the TVM runtime uses, and where that number came from.
std::pair<long, std::string> Threads() {
  if (const char* env = std::getenv("TVM_NUM_THREADS"); env && std::atol(env) > 0) {
    return {std::atol(env), g_threads_defaulted ? "all cores (TVM_NUM_THREADS unset)" : "TVM_NUM_THREADS"};
  }
  if (auto num_threads = ffi::Function::GetGlobal("runtime.NumThreads")) {
    return {(*num_threads)().cast<int>(), "runtime.NumThreads"};
  }
  return {long(std::thread::hardware_concurrency()), "hardware_concurrency"};
}

int Bench(const Options& opt, const std::string& bundle, const Manifest& m) {
  bool from_files = !opt.inputs.empty();
  if (!from_files && m.golden.empty()) {
    Fail(kExitUser, "the bundle has no golden inputs to benchmark with",
         "pass --input for each model input");
  }
  std::vector<Array> arrays = Typed(
      from_files ? ReadArrays("", opt.inputs) : ReadCheckedArrays(bundle, m, m.golden[0].inputs), m.inputs);
  CheckInputs(arrays, m.inputs);
  Model model(bundle, m);
  std::vector<ffi::Tensor> inputs = ToTensors(arrays);
  for (long i = 0; i < opt.warmup; ++i) model.Run(inputs);
  std::vector<double> ms;
  for (long i = 0; i < opt.runs; ++i) {
    auto start = std::chrono::steady_clock::now();
    model.Run(inputs);
    SyncDevice();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  size_t n = ms.size();  // percentiles by nearest rank
  auto percentile = [&](size_t p) { return ms[std::max<size_t>(1, (p * n + 99) / 100) - 1]; };
  double median = n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2;
  double mean = 0;
  for (double t : ms) mean += t / n;
  auto [threads, threads_source] = Threads();
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  std::printf("{\n  \"runs\": %ld,\n  \"warmup\": %ld,\n", opt.runs, opt.warmup);
  std::printf("  \"min_ms\": %.6f,\n  \"median_ms\": %.6f,\n", ms[0], median);
  std::printf("  \"p90_ms\": %.6f,\n  \"p99_ms\": %.6f,\n", percentile(90), percentile(99));
  std::printf("  \"mean_ms\": %.6f,\n  \"throughput_per_s\": %.3f,\n", mean,
              mean > 0 ? 1000.0 / mean : 0.0);
  std::printf("  \"threads\": %ld,\n  \"threads_source\": \"%s\",\n", threads,
              threads_source.c_str());
  std::printf("  \"peak_rss_kb\": %ld,\n  \"inputs_from\": \"%s\",\n", usage.ru_maxrss,
              from_files ? "files" : "golden");
  // The timings above keep inputs on the device; on a GPU also time copies in and out.
  std::printf("  \"device\": \"%s\",\n  \"transfers_included\": false", OnGpu() ? "cuda" : "cpu");
  if (OnGpu()) {
    std::vector<double> e2e;
    for (long i = 0; i < opt.runs; ++i) {
      auto start = std::chrono::steady_clock::now();
      for (const ffi::Tensor& output : model.Run(ToTensors(arrays))) FromTensor(output);
      e2e.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(e2e.begin(), e2e.end());
    double e2e_median = n % 2 ? e2e[n / 2] : (e2e[n / 2 - 1] + e2e[n / 2]) / 2;
    std::printf(",\n  \"with_transfers_median_ms\": %.6f", e2e_median);
  }
  std::printf("\n}\n");
  return 0;
}

// The checks every command makes before a library is loaded: the keyring (flag, else $EDGEPACK_KEYRING),
// the manifest, every file's digest, no extra files, compatibility with this machine, then the device.
Manifest OpenChecked(const std::string& bundle, const std::string& keyring, const std::string& device) {
  const char* keyring_env = std::getenv("EDGEPACK_KEYRING");
  g_keyring = !keyring.empty() ? keyring : (keyring_env ? keyring_env : "");
  Manifest manifest = ReadManifest(bundle);
  CheckFiles(bundle, manifest);
  CheckNoExtraFiles(bundle, manifest);
  CheckCompatibility(bundle, manifest);
  SelectDevice(device, bundle, manifest);
  return manifest;
}

int Main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "serve") {  // serve.h: the bundle over HTTP
    ServeOptions serve = ParseServeArgs(argc, argv);
    std::string bundle = serve.bundle.empty() ? DefaultBundle() : serve.bundle;
    Manifest manifest = OpenChecked(bundle, serve.keyring, serve.device);
    return Serve(serve, bundle, manifest);
  }
  bool generate = argc > 1 && std::string(argv[1]) == "generate";  // language models (generate.h)
  GenerateOptions generation = generate ? ParseGenerateArgs(argc, argv) : GenerateOptions{};
  Options opt = generate ? Options{"generate", generation.bundle, "", "", generation.keyring} : ParseArgs(argc, argv);
  std::string bundle = opt.bundle.empty() ? DefaultBundle() : opt.bundle;
  Manifest manifest = OpenChecked(bundle, opt.keyring, opt.device);
  if (generate) return Generate(generation, bundle, manifest);
  if (opt.command == "run") return Run(opt, bundle, manifest);
  if (opt.command == "verify") return Verify(bundle, manifest);
  return Bench(opt, bundle, manifest);
}

void PrintError(const std::string& problem, const std::string& fix) {
  std::string line = "error: " + problem + "; " + fix;
  std::replace(line.begin(), line.end(), '\n', ' ');
  std::fflush(stdout);
  std::fprintf(stderr, "%s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // TVM's runtime pool otherwise uses half the hardware threads on x86 (it assumes SMT pairs).
  if (std::getenv("TVM_NUM_THREADS") == nullptr && std::thread::hardware_concurrency() > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(std::thread::hardware_concurrency()).c_str(), 0);
    g_threads_defaulted = true;
  }
  const std::string report = "this is a bug; please report it with the bundle's manifest.json";
  try {
    return Main(argc, argv);
  } catch (const Failure& f) {
    PrintError(f.problem, f.fix);
    return f.code;
  } catch (const ffi::Error& e) {
    PrintError("TVM runtime " + e.kind() + ": " + e.message(), report);
  } catch (const std::exception& e) {
    PrintError(std::string("internal error: ") + e.what(), report);
  }
  return kExitInternal;
}
