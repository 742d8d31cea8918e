// Input drift for `edgepack-run serve`, computed exactly as runtime/edgepack_serve.py does:
// running mean/std per input, and per input and feature the population stability index (PSI) of the
// values served against the bundle's golden inputs, when those are real data (golden.origin "user").
// Features: the elements of one sample (every axis after the first); over 256 of them, the channels
// of axis 1. Bins: up to 10, cut at the baseline's deciles. PSI = sum (a - e) ln(a / e), proportions
// floored at 1e-4, reported once a feature has seen kMinDriftSamples values.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_SERVE_DRIFT_H_
#define EDGEPACK_NATIVE_SERVE_DRIFT_H_

#include <array>

namespace {

constexpr double kDefaultDriftThreshold = 0.25;
constexpr long kMinDriftSamples = 20;
constexpr int kMaxFeatures = 256;
const std::array<double, 13> kLatencyBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                0.1,    0.25,  0.5,    1.0,   2.5,   5.0};

std::string PromLabel(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

// Prometheus numbers: Python's repr for floats (shortest round-trip), NaN, +Inf, -Inf.
std::string PromNumber(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[40];
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    std::snprintf(buffer, sizeof(buffer), "%.0f", value);
    return buffer;
  }
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", digits, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

struct RunningStats {
  long count = 0, nonfinite = 0;
  double mean = 0, m2 = 0;
  void Add(double value) {
    if (!std::isfinite(value)) {
      ++nonfinite;
      return;
    }
    ++count;
    double delta = value - mean;
    mean += delta / double(count);
    m2 += delta * (value - mean);
  }
  double Std() const { return count ? std::sqrt(m2 / double(count)) : NAN; }
};

// Which feature each element of a sample of `shape` belongs to, and how many features there are.
struct FeatureMap {
  int64_t per_sample = 1, inner = 1, features = 1;
  explicit FeatureMap(const std::vector<int64_t>& shape) {
    for (size_t d = shape.size() >= 2 ? 1 : 0; d < shape.size(); ++d) per_sample *= std::max<int64_t>(shape[d], 1);
    features = per_sample;
    if (features > kMaxFeatures && shape.size() >= 2) {
      features = std::max<int64_t>(shape[1], 1);
      inner = per_sample / features;
    }
  }
  int64_t Of(int64_t flat) const { return (flat % per_sample) / inner % features; }
};

class Drift {
 public:
  Drift(const Manifest& m, const std::string& bundle, double threshold) : threshold_(threshold) {
    json::Value root = json::Parse(ReadFile(bundle + "/manifest.json"));
    std::string origin;
    if (auto object = root.try_cast<json::Object>()) {
      if (auto golden = object->Get(ffi::String("golden"))) {
        if (auto g = golden->try_cast<json::Object>()) {
          if (auto o = g->Get(ffi::String("origin"))) origin = o->try_cast<std::string>().value_or("");
        }
      }
    }
    baseline_ = origin == "user";
    for (const TensorSpec& spec : m.inputs) {
      names_.push_back(spec.name);
      maps_.emplace_back(spec.shape);
    }
    live_.resize(names_.size());
    golden_.resize(names_.size());
    edges_.resize(names_.size());
    expected_.resize(names_.size());
    counts_.resize(names_.size());
    std::vector<std::vector<std::vector<double>>> values(names_.size());
    for (size_t i = 0; i < names_.size(); ++i) values[i].resize(maps_[i].features);
    for (const GoldenCase& c : m.golden) {
      std::vector<Array> arrays = ReadArrays(bundle + "/", c.inputs);
      for (size_t i = 0; i < arrays.size() && i < names_.size(); ++i) {
        for (int64_t e = 0, n = NumElements(arrays[i].shape); e < n; ++e) {
          double v = ElementAt(arrays[i], e);
          golden_[i].Add(v);
          if (std::isfinite(v)) values[i][maps_[i].Of(e)].push_back(v);
        }
      }
    }
    for (size_t i = 0; i < names_.size(); ++i) {
      edges_[i].resize(maps_[i].features);
      expected_[i].resize(maps_[i].features);
      counts_[i].resize(maps_[i].features);
      for (int64_t f = 0; f < maps_[i].features; ++f) {
        std::vector<double>& v = values[i][f];
        std::sort(v.begin(), v.end());
        std::vector<double>& edges = edges_[i][f];
        for (size_t k = 1; k < 10 && !v.empty(); ++k) {
          double edge = v[k * v.size() / 10];
          if (edge > v.front() && (edges.empty() || edge > edges.back())) edges.push_back(edge);
        }
        expected_[i][f].assign(edges.size() + 1, 0.0);
        counts_[i][f].assign(edges.size() + 1, 0);
        for (double x : v) expected_[i][f][Bin(edges, x)] += 1.0 / double(v.size());
      }
    }
  }

  void Add(const std::vector<Array>& arrays) {
    for (size_t i = 0; i < arrays.size() && i < names_.size(); ++i) {
      for (int64_t e = 0, n = NumElements(arrays[i].shape); e < n; ++e) {
        double v = ElementAt(arrays[i], e);
        live_[i].Add(v);
        if (std::isfinite(v)) counts_[i][maps_[i].Of(e)][Bin(edges_[i][maps_[i].Of(e)], v)] += 1;
      }
    }
  }

  // PSI of one feature; NaN without a baseline or before kMinDriftSamples values.
  double Psi(size_t i, int64_t f) const {
    const std::vector<long>& counts = counts_[i][f];
    long total = 0;
    for (long c : counts) total += c;
    if (!baseline_ || total < kMinDriftSamples || expected_[i][f].size() < 2) return NAN;
    double psi = 0;
    for (size_t b = 0; b < counts.size(); ++b) {
      double a = std::max(double(counts[b]) / double(total), 1e-4), e = std::max(expected_[i][f][b], 1e-4);
      psi += (a - e) * std::log(a / e);
    }
    return psi;
  }

  // "x[0] (psi 1.2), x[3] (psi 0.4)" for every feature over the threshold; "" when none.
  std::string DriftingText() const {
    std::string out;
    for (size_t i = 0; i < names_.size(); ++i) {
      for (int64_t f = 0; f < maps_[i].features; ++f) {
        double psi = Psi(i, f);
        if (psi > threshold_) {
          char buffer[32];
          std::snprintf(buffer, sizeof(buffer), "%.3g", psi);
          out += (out.empty() ? "" : ", ") + names_[i] + "[" + std::to_string(f) + "] (psi " + buffer + ")";
        }
      }
    }
    return out;
  }

  std::string DriftingJson() const {
    std::string out = "{";
    bool first_input = true;
    for (size_t i = 0; i < names_.size(); ++i) {
      std::string features;
      for (int64_t f = 0; f < maps_[i].features; ++f) {
        if (Psi(i, f) > threshold_) features += (features.empty() ? "" : ",") + std::to_string(f);
      }
      if (features.empty()) continue;
      out += (first_input ? "" : ",") + JsonString(names_[i]) + ":[" + features + "]";
      first_input = false;
    }
    return out + "}";
  }

  std::string Render(const std::string& labels) const {
    std::string out;
    auto family = [&](const char* name, const char* kind, const char* help) {
      out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + kind + "\n";
    };
    auto line = [&](const char* name, size_t i, double value, const std::string& extra = "") {
      out += std::string(name) + "{" + labels + ",input=\"" + PromLabel(names_[i]) + "\"" + extra + "} " + PromNumber(value) + "\n";
    };
    struct Gauge {
      const char* name;
      const char* help;
      int which;
    };
    const Gauge gauges[] = {
        {"edgepack_input_mean", "Running mean of every finite element of an input since start.", 0},
        {"edgepack_input_std", "Running standard deviation of an input since start.", 1},
        {"edgepack_input_golden_mean", "Mean of the bundle's golden inputs.", 2},
        {"edgepack_input_golden_std", "Standard deviation of the bundle's golden inputs.", 3},
        {"edgepack_input_drift", "|running mean - golden mean| / golden std (input drift).", 4}};
    for (const Gauge& g : gauges) {
      family(g.name, "gauge", g.help);
      for (size_t i = 0; i < names_.size(); ++i) {
        const RunningStats &s = live_[i], &gs = golden_[i];
        double value = g.which == 0   ? (s.count ? s.mean : NAN)
                       : g.which == 1 ? s.Std()
                       : g.which == 2 ? (gs.count ? gs.mean : NAN)
                       : g.which == 3 ? gs.Std()
                       : (!s.count || !gs.count) ? NAN
                                                 : std::fabs(s.mean - gs.mean) / (gs.Std() > 0 ? gs.Std() : 1.0);
        line(g.name, i, value);
      }
    }
    family("edgepack_input_values_total", "counter", "Finite input elements seen since start.");
    for (size_t i = 0; i < names_.size(); ++i) line("edgepack_input_values_total", i, double(live_[i].count));
    family("edgepack_input_nonfinite_total", "counter", "NaN or infinite input elements seen since start.");
    for (size_t i = 0; i < names_.size(); ++i) line("edgepack_input_nonfinite_total", i, double(live_[i].nonfinite));
    family("edgepack_input_drift_baseline", "gauge",
           "1 when the bundle's golden inputs are real data (golden.origin user) and serve as the PSI baseline; 0: no baseline.");
    for (size_t i = 0; i < names_.size(); ++i) line("edgepack_input_drift_baseline", i, baseline_ ? 1 : 0);
    family("edgepack_input_psi", "gauge", "Population stability index of a feature against the golden inputs (NaN: no baseline or too few values).");
    for (size_t i = 0; i < names_.size(); ++i) {
      for (int64_t f = 0; f < maps_[i].features; ++f) line("edgepack_input_psi", i, Psi(i, f), ",feature=\"" + std::to_string(f) + "\"");
    }
    family("edgepack_drift_threshold", "gauge", "PSI above which a feature is reported as drifting.");
    out += "edgepack_drift_threshold{" + labels + "} " + PromNumber(threshold_) + "\n";
    return out;
  }

 private:
  static size_t Bin(const std::vector<double>& edges, double v) {
    return size_t(std::upper_bound(edges.begin(), edges.end(), v) - edges.begin());
  }

  double threshold_;
  bool baseline_ = false;
  std::vector<std::string> names_;
  std::vector<FeatureMap> maps_;
  std::vector<RunningStats> live_, golden_;
  std::vector<std::vector<std::vector<double>>> edges_, expected_;
  std::vector<std::vector<std::vector<long>>> counts_;
};

}  // namespace

#endif  // EDGEPACK_NATIVE_SERVE_DRIFT_H_
