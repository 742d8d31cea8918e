// `edgepack-run generate`: token generation for language-model bundles (manifest "generator"):
// prefill the prompt into the bundle's KV cache, then decode one token at a time; greedy, or
// temperature / top-p sampling with a seed; stops after an EOS token or --max-new-tokens.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_GENERATE_H_
#define EDGEPACK_NATIVE_GENERATE_H_

#include <random>

namespace {

const char kGenerateUsage[] =
    "usage: edgepack-run generate [--bundle DIR] --prompt-ids 1,5,9 [--max-new-tokens N]\n"
    "                             [--temperature T] [--top-p P] [--seed S] [--keyring PATH]\n"
    "Prints the new token ids, space-separated, as they are made (language-model bundles only).\n";

struct GenerateOptions {
  std::string bundle, keyring, prompt_ids;
  long max_new_tokens = 32;
  double temperature = 0, top_p = 1;
  uint64_t seed = 0;
};

struct GeneratorSpec {
  int64_t max_seq_len = 0, vocab_size = 0;
  std::vector<int64_t> eos;
};

double ParseNumber(const std::string& option, const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(value)) {
    Fail(kExitUsage, option + " takes a number, got '" + text + "'", "see edgepack-run generate --help");
  }
  return value;
}

std::vector<int64_t> ParseIds(const std::string& text) {
  std::vector<int64_t> ids;
  std::string token;
  std::stringstream stream(text);
  while (std::getline(stream, token, ',')) {
    std::stringstream words(token);
    std::string word;
    while (words >> word) {
      char* end = nullptr;
      long long value = std::strtoll(word.c_str(), &end, 10);
      if (*end != '\0') {
        Fail(kExitUsage, "--prompt-ids '" + text + "' is not a list of integers", "pass e.g. --prompt-ids 1,5,9");
      }
      ids.push_back(value);
    }
  }
  return ids;
}

GenerateOptions ParseGenerateArgs(int argc, char** argv) {
  GenerateOptions opt;
  OptionCursor args(argc, argv, "edgepack-run generate --help");
  while (args.Next()) {
    const std::string& arg = args.name();
    auto value = [&args] { return args.Value(); };
    if (SharedOption(args, kGenerateUsage, &opt.bundle, &opt.keyring, nullptr)) {
      continue;
    } else if (arg == "--prompt-ids") {
      opt.prompt_ids = value();
    } else if (arg == "--max-new-tokens") {
      opt.max_new_tokens = static_cast<long>(ParseNumber(arg, value()));
    } else if (arg == "--temperature") {
      opt.temperature = ParseNumber(arg, value());
    } else if (arg == "--top-p") {
      opt.top_p = ParseNumber(arg, value());
    } else if (arg == "--seed") {
      opt.seed = static_cast<uint64_t>(ParseNumber(arg, value()));
    } else {
      Fail(kExitUsage, "unknown option '" + arg + "' for 'generate'", "see edgepack-run generate --help");
    }
  }
  if (opt.prompt_ids.empty()) Fail(kExitUsage, "no prompt given", "pass --prompt-ids 1,5,9");
  if (opt.max_new_tokens < 0) Fail(kExitUsage, "--max-new-tokens must be >= 0", "pass 0 or more");
  if (opt.temperature < 0 || !(opt.top_p > 0 && opt.top_p <= 1)) {
    Fail(kExitUsage, "temperature or top-p out of range", "use temperature >= 0 and 0 < top-p <= 1");
  }
  return opt;
}

// The manifest's "generator" entry (the manifest was already checked by ReadManifest).
GeneratorSpec ReadGenerator(const std::string& bundle) {
  ffi::String error;
  json::Value root = json::Parse(ManifestText(bundle, bundle + "/manifest.json"), &error);
  std::optional<json::Value> generator = As<json::Object>(root, "manifest").Get(ffi::String("generator"));
  if (!generator) {
    Fail(kExitUser, "bundle '" + bundle + "' is not a language model (no 'generator' in its manifest)",
         "build a model directory with config.json (see docs/llm.md)");
  }
  GeneratorSpec spec;
  spec.max_seq_len = As<int64_t>(Field(*generator, "max_seq_len"), "generator.max_seq_len");
  spec.vocab_size = As<int64_t>(Field(*generator, "vocab_size"), "generator.vocab_size");
  for (const ffi::Any& item : As<json::Array>(Field(*generator, "eos_token_ids"), "generator.eos_token_ids")) {
    spec.eos.push_back(As<int64_t>(item, "generator.eos_token_ids"));
  }
  return spec;
}

// Greedy (first maximum) at temperature 0; else a sample from the smallest set of most likely
// tokens whose probability reaches top_p, after dividing the logits by the temperature.
int64_t PickToken(const std::vector<float>& logits, double temperature, double top_p, std::mt19937_64* rng) {
  size_t best = std::max_element(logits.begin(), logits.end()) - logits.begin();
  if (temperature == 0) return static_cast<int64_t>(best);
  std::vector<double> probs(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) total += probs[i] = std::exp((logits[i] - logits[best]) / temperature);
  std::vector<size_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return probs[a] > probs[b]; });
  double cumulative = 0, kept = 0;
  size_t count = 0;
  while (count < order.size()) {
    cumulative += probs[order[count]] / total;
    kept += probs[order[count++]];
    if (cumulative >= top_p) break;
  }
  double draw = std::uniform_real_distribution<double>(0, kept)(*rng);
  for (size_t i = 0; i < count; ++i) {
    draw -= probs[order[i]];
    if (draw <= 0) return static_cast<int64_t>(order[i]);
  }
  return static_cast<int64_t>(order[count - 1]);
}

std::vector<float> LastLogits(const ffi::Any& result, int64_t vocab_size) {
  ffi::Tensor tensor = result.cast<ffi::Tensor>();
  std::vector<char> bytes(static_cast<size_t>(vocab_size) * sizeof(float));
  if (tensor.numel() != vocab_size) {
    Fail(kExitIntegrity, "the model returned " + std::to_string(tensor.numel()) + " logits, not " + std::to_string(vocab_size),
         "rebuild the bundle with `edgepack build`");
  }
  CopyToHost(tensor, &bytes);
  std::vector<float> logits(vocab_size);
  std::memcpy(logits.data(), bytes.data(), bytes.size());
  return logits;
}

ffi::Any CallWithParams(const ffi::Function& function, std::vector<ffi::AnyView> args, const Model& model) {
  args.insert(args.end(), model.params().begin(), model.params().end());
  ffi::Any result;
  function.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  return result;
}

int Generate(const GenerateOptions& opt, const std::string& bundle, const Manifest& m) {
  GeneratorSpec spec = ReadGenerator(bundle);
  std::vector<int64_t> prompt = ParseIds(opt.prompt_ids);
  if (prompt.empty()) Fail(kExitUsage, "the prompt is empty", "pass at least one token id");
  for (int64_t id : prompt) {
    if (id < 0 || id >= spec.vocab_size) {
      Fail(kExitUser, "token id " + std::to_string(id) + " is outside the vocabulary (0.." + std::to_string(spec.vocab_size - 1) + ")",
           "pass ids the model knows");
    }
  }
  if (static_cast<int64_t>(prompt.size()) + opt.max_new_tokens > spec.max_seq_len) {
    Fail(kExitUser, std::to_string(prompt.size()) + " prompt tokens + " + std::to_string(opt.max_new_tokens) +
                        " new tokens exceed the KV cache of " + std::to_string(spec.max_seq_len) + " positions",
         "shorten the prompt or --max-new-tokens, or rebuild with a larger --max-seq-len");
  }
  if (opt.max_new_tokens == 0) {
    std::printf("\n");
    return 0;
  }
  Model model(bundle, m);
  ffi::Function prefill = model.Function("prefill"), decode = model.Function("decode");
  ffi::Any cache = model.Function("create_cache")();
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  ffi::Tensor input = DeviceTensor(ffi::Shape({static_cast<int64_t>(ids.size())}), DLDataType{kDLInt, 32, 1}, ids.data(),
                                   ids.size() * sizeof(int32_t));
  std::vector<float> logits = LastLogits(CallWithParams(prefill, {input, cache}, model), spec.vocab_size);
  std::mt19937_64 rng(opt.seed);
  int64_t position = static_cast<int64_t>(prompt.size());
  for (long produced = 0; produced < opt.max_new_tokens; ++produced) {
    int64_t token = PickToken(logits, opt.temperature, opt.top_p, &rng);
    std::printf(produced ? " %lld" : "%lld", static_cast<long long>(token));
    std::fflush(stdout);
    if (std::find(spec.eos.begin(), spec.eos.end(), token) != spec.eos.end() || produced + 1 == opt.max_new_tokens) break;
    int32_t next = static_cast<int32_t>(token);
    ffi::Tensor step = DeviceTensor(ffi::Shape({1}), DLDataType{kDLInt, 32, 1}, &next, sizeof(next));
    logits = LastLogits(CallWithParams(decode, {step, cache, position}, model), spec.vocab_size);
    ++position;
  }
  std::printf("\n");
  return 0;
}

}  // namespace

#endif  // EDGEPACK_NATIVE_GENERATE_H_
