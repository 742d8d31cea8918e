// `edgepack-run serve`: the bundle over HTTP without Python (docs/deployment.md, "Serving and monitoring").
// The same routes, metrics, log records and limits as runtime/edgepack_serve.py: POST /v1/infer,
// GET /healthz, /metrics, /v1/model, and the Open Inference Protocol v2 (/v2/health/ready|live,
// /v2/models/<name>[/ready|/infer]). HTTP is cpp-httplib (third_party/cpp-httplib/README).
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_SERVE_H_
#define EDGEPACK_NATIVE_SERVE_H_

#include <fcntl.h>
#include <signal.h>

#include <atomic>
#include <map>
#include <mutex>

#include "third_party/cpp-httplib/httplib.h"
#include "serve_infer.h"
#include "serve_drift.h"
#include "serve_batch.h"

namespace {

const char kServeUsage[] =
    "usage: edgepack-run serve [--bundle DIR] [--keyring PATH] [--device cpu|cuda] [--host 127.0.0.1]\n"
    "                          [--port 8080] [--log FILE|-] [--status-file FILE] [--max-body-mb 64]\n"
    "                          [--max-connections 64] [--timeout 10] [--drift-threshold 0.25]\n"
    "                          [--batch-window-ms 2]\n"
    "Serves POST /v1/infer, /v2/models/<name>/infer, GET /healthz, /metrics, /v1/model, /v2/... until SIGTERM.\n"
    "On a bundle with a dynamic batch axis, concurrent requests are run as one call of up to the axis's\n"
    "largest size, gathered for at most --batch-window-ms (0: one call per request).\n";

struct ServeOptions {
  std::string bundle, keyring, device, host = "127.0.0.1", log, status_file;
  long port = 8080, max_connections = 64;
  double max_body_mb = 64, timeout_s = 10, drift_threshold = kDefaultDriftThreshold, batch_window_ms = kDefaultBatchWindowMs;
};

double ParsePositive(const std::string& option, const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(value > 0) || std::isinf(value)) {
    Fail(kExitUsage, option + " takes a positive number, got '" + text + "'", "see edgepack-run serve --help");
  }
  return value;
}

double ParseNonNegative(const std::string& option, const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(value >= 0) || std::isinf(value)) {
    Fail(kExitUsage, option + " takes a number >= 0, got '" + text + "'", "see edgepack-run serve --help");
  }
  return value;
}

ServeOptions ParseServeArgs(int argc, char** argv) {
  ServeOptions opt;
  OptionCursor args(argc, argv, "edgepack-run serve --help");
  while (args.Next()) {
    const std::string& arg = args.name();
    auto value = [&args] { return args.Value(); };
    if (SharedOption(args, kServeUsage, &opt.bundle, &opt.keyring, &opt.device)) {
      continue;
    } else if (arg == "--host") {
      opt.host = value();
    } else if (arg == "--port") {
      std::string text = value();
      char* end = nullptr;
      opt.port = std::strtol(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || opt.port < 0 || opt.port > 65535) {
        Fail(kExitUsage, "--port takes 0..65535, got '" + text + "'", "see edgepack-run serve --help");
      }
    } else if (arg == "--log") {
      opt.log = value();
    } else if (arg == "--status-file") {
      opt.status_file = value();
    } else if (arg == "--max-body-mb") {
      opt.max_body_mb = ParsePositive(arg, value());
    } else if (arg == "--max-connections") {
      opt.max_connections = long(ParsePositive(arg, value()));
    } else if (arg == "--timeout") {
      opt.timeout_s = ParsePositive(arg, value());
    } else if (arg == "--drift-threshold") {
      opt.drift_threshold = ParsePositive(arg, value());
    } else if (arg == "--batch-window-ms") {
      opt.batch_window_ms = ParseNonNegative(arg, value());
    } else {
      Fail(kExitUsage, "unknown option '" + arg + "' for 'serve'", "see edgepack-run serve --help");
    }
  }
  return opt;
}

std::string UtcNow() {
  auto now = std::chrono::system_clock::now();
  std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  long ms = long(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm;
  gmtime_r(&seconds, &tm);
  char buffer[40];
  std::snprintf(buffer, sizeof(buffer), "%04d-%02d-%02dT%02d:%02d:%02d.%03ld+00:00", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buffer;
}

// One JSON object per line, each appended with one write(2); a failed write is counted, never thrown.
class JsonLog {
 public:
  explicit JsonLog(const std::string& path) : path_(path) {
    fd_ = path.empty() ? 2 : open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      Fail(kExitUser, "cannot open the log '" + path + "' (" + std::strerror(errno) + ")", "pass --log FILE or --log -");
    }
  }
  ~JsonLog() {
    if (!path_.empty()) close(fd_);
  }
  // `fields` is the inside of a JSON object without braces ("\"a\":1,\"b\":2").
  void Write(const std::string& fields) {
    std::string line = "{\"time\":" + JsonString(UtcNow()) + "," + fields + "}\n";
    std::lock_guard<std::mutex> lock(mutex_);
    ssize_t n = write(fd_, line.data(), line.size());
    if (n == ssize_t(line.size())) return;
    last_error_ = n < 0 ? std::strerror(errno) : "short write";
    ++failures_;
  }
  long failures() const { return failures_; }
  std::string last_error() {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_error_;
  }

 private:
  std::string path_, last_error_;
  int fd_;
  std::mutex mutex_;
  std::atomic<long> failures_{0};
};

// Connections served at once are bounded; one more is answered 503 (Retry-After) by a short-lived
// thread that reads at most its request line and headers under the read timeout.
std::atomic<long> g_active_connections{0}, g_refused_connections{0};
thread_local bool t_refuse = false;

class BoundedThreads : public httplib::TaskQueue {
 public:
  explicit BoundedThreads(long max) : max_(max) {}
  void enqueue(std::function<void()> fn) override {
    bool refuse = g_active_connections.fetch_add(1) >= max_;
    if (refuse) {
      g_active_connections.fetch_sub(1);
      g_refused_connections.fetch_add(1);
    }
    std::thread([fn, refuse] {
      t_refuse = refuse;
      fn();
      if (!refuse) g_active_connections.fetch_sub(1);
    }).detach();
  }
  void shutdown() override {
    for (int i = 0; i < 100 && g_active_connections.load() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

 private:
  long max_;
};

// What one request did, written to the log after its answer was sent.
thread_local std::string t_log_record;

class ServeApp {
 public:
  ServeApp(const std::string& bundle, const Manifest& m, const ServeOptions& opt, JsonLog* log)
      : manifest_(m), log_(log), model_(bundle, m), drift_(m, bundle, opt.drift_threshold), axis_(FindBatchAxis(m)) {
    if (!axis_.name.empty() && opt.batch_window_ms > 0) {
      batcher_ = std::make_unique<Batcher>(axis_.max_rows, opt.batch_window_ms,
                                           [this](const std::vector<Array>& inputs, double* ms) { return Call(inputs, ms); },
                                           [] { return g_active_connections.load(); });
    }
    json::Value root = json::Parse(ReadFile(bundle + "/manifest.json"));
    name_ = LabelField(root, "name");
    version_ = LabelField(root, "version");
    std::optional<json::Object> object = root.try_cast<json::Object>();
    std::optional<ffi::Any> target = object ? object->Get(ffi::String("target")) : std::nullopt;
    target_ = target ? LabelField(*target, "name") : "unknown";
    if (target_.empty()) target_ = "unknown";
  }

  const std::string& name() const { return name_; }
  const std::string& version() const { return version_; }
  JsonLog* log() { return log_; }

  std::string Health() {
    std::vector<std::string> problems;
    if (log_->failures()) {
      problems.push_back(std::to_string(log_->failures()) + " log write(s) failed (" + log_->last_error() + ")");
    }
    std::string drifting = drift_.DriftingText();
    if (!drifting.empty()) problems.push_back("drifting: " + drifting);
    std::string out = "{\"status\":" + JsonString(problems.empty() ? "ok" : drifting.empty() || log_->failures() ? "degraded" : "drifting") +
                      ",\"model\":" + JsonString(name_) + ",\"version\":" + JsonString(version_);
    if (!drifting.empty()) out += ",\"drifting\":" + drift_.DriftingJson();
    if (!problems.empty()) {
      out += ",\"problems\":[";
      for (size_t i = 0; i < problems.size(); ++i) out += (i ? "," : "") + JsonString(problems[i]);
      out += "]";
    }
    return out + "}";
  }

  std::string Tensors(const std::vector<TensorSpec>& specs, bool v2) const {
    std::string out = "[";
    for (size_t i = 0; i < specs.size(); ++i) {
      out += (i ? "," : "") + std::string("{\"name\":") + JsonString(specs[i].name) + ",\"" + (v2 ? "datatype" : "dtype") +
             "\":" + JsonString(v2 ? V2Datatype(specs[i].dtype) : specs[i].dtype) + ",\"shape\":[";
      for (size_t d = 0; d < specs[i].shape.size(); ++d) out += (d ? "," : "") + std::to_string(specs[i].shape[d]);
      out += "]}";
    }
    return out + "]";
  }

  std::string Describe() const {
    return "{\"model\":" + JsonString(name_) + ",\"version\":" + JsonString(version_) + ",\"target\":" + JsonString(target_) +
           ",\"inputs\":" + Tensors(manifest_.inputs, false) + ",\"outputs\":" + Tensors(manifest_.outputs, false) + "}";
  }

  std::string V2Metadata() const {
    return "{\"name\":" + JsonString(name_) + ",\"versions\":[" + JsonString(version_) + "],\"platform\":\"edgepack\",\"inputs\":" +
           Tensors(manifest_.inputs, true) + ",\"outputs\":" + Tensors(manifest_.outputs, true) + "}";
  }

  // One model call (of one request or a batch).
  std::vector<Array> Call(const std::vector<Array>& arrays, double* model_ms) {
    std::lock_guard<std::mutex> lock(model_mutex_);  // one model call at a time: the VM is not shared
    auto start = std::chrono::steady_clock::now();
    std::vector<Array> outputs;
    for (const ffi::Tensor& tensor : model_.Run(ToTensors(arrays))) outputs.push_back(FromTensor(tensor));
    *model_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return outputs;
  }

  // Checks a request's inputs (400 when they do not fit) and runs them, alone or in a batch.
  // `batch_rows`: the rows of the batched call it was part of (0: batching is off).
  std::vector<Array> Run(const std::vector<Array>& arrays, double* model_ms, int64_t* batch_rows) {
    try {
      CheckInputs(arrays, manifest_.inputs);
    } catch (const Failure& f) {
      Refuse(400, f.problem, f.fix);
    }
    return batcher_ ? batcher_->Submit(arrays, model_ms, batch_rows) : Call(arrays, model_ms);
  }

  // "batch_axis": ..., "batch_max_rows": ... for the started log line; "" when requests are not batched.
  std::string BatchingFields(double window_ms) const {
    if (!batcher_) return "";
    std::string out = "\"batch_axis\":" + JsonString(axis_.name) + ",\"batch_max_rows\":" + std::to_string(axis_.max_rows) +
                      ",\"batch_window_ms\":";
    AppendNumber(&out, window_ms, 10);
    return out;
  }

  // POST /v1/infer or /v2/models/<name>/infer: decoded, run, encoded (serve_infer.h); `arrays` gets the inputs.
  std::string Infer(bool v1, const std::string& body, const std::string& json_length, double* model_ms,
                    std::vector<Array>* arrays, int64_t* batch_rows) {
    InferRequest request = v1 ? DecodeV1(body, manifest_.inputs) : DecodeV2(body, json_length, manifest_.inputs, manifest_.outputs);
    std::vector<Array> outputs = Run(request.inputs, model_ms, batch_rows);
    std::string answer = v1 ? EncodeV1(name_, version_, *model_ms, outputs, manifest_.outputs)
                            : EncodeV2(name_, version_, request, outputs, manifest_.outputs);
    *arrays = std::move(request.inputs);
    return answer;
  }

  Drift& drift() { return drift_; }
  std::mutex& metrics_mutex() { return metrics_mutex_; }

  // Counts, histogram and drift of one answered inference request.
  void Observe(int code, double seconds, const std::vector<Array>* arrays) {
    std::lock_guard<std::mutex> lock(metrics_mutex_);
    codes_[code] += 1;
    latency_sum_ += seconds;
    latency_count_ += 1;
    for (size_t b = 0; b < kLatencyBuckets.size(); ++b) {
      if (seconds <= kLatencyBuckets[b]) buckets_[b] += 1;
    }
    if (arrays != nullptr) drift_.Add(*arrays);
  }

  std::string Metrics() {
    std::lock_guard<std::mutex> lock(metrics_mutex_);
    std::string labels = "model=\"" + PromLabel(name_) + "\",version=\"" + PromLabel(version_) + "\"";
    std::string out;
    auto family = [&](const std::string& name, const char* kind, const char* help) {
      out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + kind + "\n";
    };
    auto line = [&](const std::string& name, double value, const std::string& extra = "") {
      out += name + "{" + labels + (extra.empty() ? "" : "," + extra) + "} " + PromNumber(value) + "\n";
    };
    family("edgepack_model_info", "gauge", "The model this server runs (always 1).");
    line("edgepack_model_info", 1, "target=\"" + PromLabel(target_) + "\"");
    family("edgepack_start_time_seconds", "gauge", "Unix time the server started.");
    line("edgepack_start_time_seconds", started_);
    family("edgepack_requests_total", "counter", "Inference requests (/v1 and /v2) answered, by HTTP status code.");
    long errors = 0;
    for (const auto& [code, count] : codes_) {
      line("edgepack_requests_total", double(count), "code=\"" + std::to_string(code) + "\"");
      if (code >= 400) errors += count;
    }
    family("edgepack_request_errors_total", "counter", "Inference requests answered with an error (4xx or 5xx).");
    line("edgepack_request_errors_total", double(errors));
    family("edgepack_log_write_failures_total", "counter", "Log records that could not be written (the answer was sent).");
    line("edgepack_log_write_failures_total", double(log_->failures()));
    family("edgepack_connections_refused_total", "counter", "Connections answered 503 because --max-connections were busy.");
    line("edgepack_connections_refused_total", double(g_refused_connections.load()));
    std::string h = "edgepack_request_latency_seconds";
    family(h, "histogram", "Time to answer one inference request (decode, model call, encode).");
    for (size_t b = 0; b < kLatencyBuckets.size(); ++b) line(h + "_bucket", double(buckets_[b]), "le=\"" + PromNumber(kLatencyBuckets[b]) + "\"");
    line(h + "_bucket", double(latency_count_), "le=\"+Inf\"");
    line(h + "_sum", latency_sum_);
    line(h + "_count", double(latency_count_));
    if (batcher_) out += batcher_->Render(axis_.name, labels);
    out += drift_.Render(labels);
    return out;
  }

 private:
  static std::string LabelField(const json::Value& object, const char* key) {
    std::optional<json::Object> map = object.try_cast<json::Object>();
    std::optional<ffi::Any> value = map ? map->Get(ffi::String(key)) : std::nullopt;
    if (!value) return "";
    if (std::optional<std::string> text = value->try_cast<std::string>()) return *text;
    return std::string(json::Stringify(*value));
  }

  const Manifest& manifest_;
  JsonLog* log_;
  Model model_;
  Drift drift_;
  BatchAxis axis_;
  std::unique_ptr<Batcher> batcher_;  // null: one model call per request
  std::string name_, version_, target_;
  std::mutex model_mutex_, metrics_mutex_;
  std::map<int, long> codes_ = {{200, 0}};
  std::array<long, 13> buckets_{};

  double latency_sum_ = 0;
  long latency_count_ = 0;
  double started_ = double(std::time(nullptr));
};

std::string LogFields(const ServeApp& app, const std::string& rest) {
  return "\"model\":" + JsonString(app.name()) + ",\"version\":" + JsonString(app.version()) + (rest.empty() ? "" : "," + rest);
}

// <model>/logs/ when the bundle is a version in a device store (<model>/versions/<version>/, <model>/state.json).
std::string StoreLogDir(const std::string& bundle) {
  char resolved[PATH_MAX];
  if (realpath(bundle.c_str(), resolved) == nullptr) return "";
  std::string path = resolved;
  size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return "";
  std::string versions = path.substr(0, slash);
  size_t up = versions.rfind('/');
  if (up == std::string::npos || versions.substr(up + 1) != "versions") return "";
  std::string model_dir = versions.substr(0, up);
  struct stat info;
  if (stat((model_dir + "/state.json").c_str(), &info) != 0 || !S_ISREG(info.st_mode)) return "";
  return model_dir + "/logs";
}

bool WriteStatusFile(const std::string& path, const std::string& text) {
  std::string temp = path + "." + std::to_string(getpid()) + ".tmp";
  int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == ssize_t(text.size());
  ok = close(fd) == 0 && ok;
  if (ok && rename(temp.c_str(), path.c_str()) == 0) return true;
  unlink(temp.c_str());
  return false;
}

void RemoveStatusFile(const std::string& path) {
  std::string text = ReadFile(path);
  if (text.find("\"pid\": " + std::to_string(getpid()) + ",") != std::string::npos) unlink(path.c_str());
}

bool IsInferencePath(const std::string& path, const std::string& model) {
  return path == "/v1/infer" || path == "/v2/models/" + model + "/infer";
}

int Serve(const ServeOptions& opt, const std::string& bundle, const Manifest& m) {
  std::string unserved;  // as the Python server: bfloat16 and the types carried in bytes
  std::vector<std::string> types;
  for (const auto* specs : {&m.inputs, &m.outputs}) {
    for (const TensorSpec& spec : *specs) {
      const Dtype* dtype = DtypeByName(spec.dtype);
      if (dtype == nullptr || (spec.dtype != "bfloat16" && dtype->container == nullptr)) continue;
      unserved += (unserved.empty() ? "" : ", ") + spec.name;
      if (std::find(types.begin(), types.end(), spec.dtype) == types.end()) types.push_back(spec.dtype);
    }
  }
  if (!unserved.empty()) {
    std::string names;
    for (const std::string& type : types) names += (names.empty() ? "" : ", ") + type;
    Fail(kExitUser, "the server does not carry " + names + " tensors yet (" + unserved + ")",
         "run the bundle with `run`, or cast them to float32 in the model");
  }
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);  // every thread started below inherits the mask
  signal(SIGPIPE, SIG_IGN);

  std::string store_logs = StoreLogDir(bundle);
  std::string log_path = opt.log == "-" ? "" : !opt.log.empty() ? opt.log : "";
  std::string status_path = opt.status_file;
  ServeApp* app_ptr = nullptr;
  std::unique_ptr<JsonLog> log;
  if (opt.log.empty() && !store_logs.empty()) {
    mkdir(store_logs.c_str(), 0755);
  }
  std::unique_ptr<ServeApp> app;
  {
    // the version is only known from the manifest; the store's log name needs it
    std::string version;
    json::Value root = json::Parse(ReadFile(bundle + "/manifest.json"));
    if (auto object = root.try_cast<json::Object>()) {
      if (auto v = object->Get(ffi::String("version"))) version = v->try_cast<std::string>().value_or("");
    }
    if (opt.log.empty() && !store_logs.empty()) log_path = store_logs + "/" + version + ".jsonl";
    if (status_path.empty() && !store_logs.empty()) status_path = store_logs + "/serve.json";
  }
  log = std::make_unique<JsonLog>(log_path);
  app = std::make_unique<ServeApp>(bundle, m, opt, log.get());
  app_ptr = app.get();

  httplib::Server server;
  size_t max_body = size_t(opt.max_body_mb * 1048576.0);
  long timeout_s = long(opt.timeout_s), timeout_us = long((opt.timeout_s - double(timeout_s)) * 1e6);
  server.set_read_timeout(timeout_s, timeout_us);
  server.set_write_timeout(timeout_s, timeout_us);
  server.set_keep_alive_timeout(std::max<long>(1, std::lround(opt.timeout_s)));
  server.set_keep_alive_max_count(1000);
  server.set_payload_max_length(max_body);
  server.set_tcp_nodelay(true);
  long max_connections = opt.max_connections;
  server.new_task_queue = [max_connections] { return new BoundedThreads(max_connections); };

  auto send_json = [](httplib::Response& res, int code, const std::string& body) {
    res.status = code;
    res.set_content(body, "application/json");
  };
  auto error_body = [](const std::string& text) { return "{\"error\":" + JsonString(text) + "}"; };

  // Inference requests: counted, logged (after the answer is sent), never dependent on the log.
  auto finish = [app_ptr, send_json, error_body](httplib::Response& res, int code, const std::string& answer,
                                                 const std::string& error, double seconds, double model_ms,
                                                 const std::vector<Array>* arrays, bool v1, int64_t batch_rows) {
    app_ptr->Observe(code, seconds, code == 200 ? arrays : nullptr);
    double latency_ms = std::round(seconds * 1e7) / 1e4;
    if (code == 200 && v1) {
      std::string body = answer;
      body += ",\"latency_ms\":";
      AppendNumber(&body, latency_ms, 10);
      send_json(res, 200, body + "}");
    } else if (code == 200) {
      send_json(res, 200, answer);
    } else {
      send_json(res, code, error_body(error));
    }
    std::string record = "\"status\":" + JsonString(code == 200 ? "ok" : "error") + ",\"code\":" + std::to_string(code) +
                         ",\"latency_ms\":";
    AppendNumber(&record, latency_ms, 10);
    record += std::string(",\"route\":") + (v1 ? "\"v1\"" : "\"v2\"");
    if (model_ms >= 0) {
      record += ",\"model_ms\":";
      AppendNumber(&record, std::round(model_ms * 1e4) / 1e4, 10);
    }
    if (batch_rows > 0) record += ",\"batch_rows\":" + std::to_string(batch_rows);
    if (!error.empty()) record += ",\"error\":" + JsonString(error);
    t_log_record = LogFields(*app_ptr, record);
  };

  server.set_pre_routing_handler([app_ptr, max_body, send_json, error_body, finish](const httplib::Request& req,
                                                                                    httplib::Response& res) {
    if (t_refuse) {
      res.set_header("Retry-After", "1");
      res.set_header("Connection", "close");
      send_json(res, 503, error_body("the server is busy; retry after 1 s"));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (req.method == "POST" && IsInferencePath(req.path, app_ptr->name())) {
      bool v1 = req.path == "/v1/infer";
      if (!req.has_header("Content-Length")) {
        res.set_header("Connection", "close");
        finish(res, 411, "", "the request has no Content-Length; send the body with a Content-Length header", 0, -1, nullptr, v1, 0);
        return httplib::Server::HandlerResponse::Handled;
      }
      std::string length = req.get_header_value("Content-Length");
      if (length.empty() || length.find_first_not_of("0123456789") != std::string::npos || length.size() > 18 ||
          std::stoull(length) > max_body) {
        res.set_header("Connection", "close");
        finish(res, 413, "", "the request body has " + length + " bytes, more than " + std::to_string(max_body) +
                                 "; send fewer inputs per request, or start the server with a larger --max-body-mb",
               0, -1, nullptr, v1, 0);
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  auto infer = [app_ptr, finish](const httplib::Request& req, httplib::Response& res, bool v1) {
    auto start = std::chrono::steady_clock::now();
    double model_ms = -1;
    std::vector<Array> arrays;
    int64_t batch_rows = 0;
    std::string answer, error;
    int code = 200;
    try {
      answer = app_ptr->Infer(v1, req.body, v1 ? std::string() : req.get_header_value("Inference-Header-Content-Length"),
                              &model_ms, &arrays, &batch_rows);
    } catch (const HttpError& e) {
      code = e.code;
      error = e.problem + "; " + e.fix;
    } catch (const Failure& f) {
      code = 500;
      error = "inference failed (" + f.problem + "); " + f.fix;
    } catch (const std::exception& e) {
      code = 500;
      error = std::string("inference failed (") + e.what() + ")";
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    finish(res, code, answer, error, seconds, model_ms, &arrays, v1, batch_rows);
  };
  server.set_logger([app_ptr](const httplib::Request&, const httplib::Response&) {
    if (!t_log_record.empty()) {
      app_ptr->log()->Write(t_log_record);
      t_log_record.clear();
    }
  });

  const std::string model = app_ptr->name();
  server.Get("/healthz", [app_ptr, send_json](const httplib::Request&, httplib::Response& res) { send_json(res, 200, app_ptr->Health()); });
  server.Get("/metrics", [app_ptr](const httplib::Request&, httplib::Response& res) {
    res.set_content(app_ptr->Metrics(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/v1/model", [app_ptr, send_json](const httplib::Request&, httplib::Response& res) { send_json(res, 200, app_ptr->Describe()); });
  server.Get("/v2/health/ready", [send_json](const httplib::Request&, httplib::Response& res) { send_json(res, 200, "{\"ready\":true}"); });
  server.Get("/v2/health/live", [send_json](const httplib::Request&, httplib::Response& res) { send_json(res, 200, "{\"live\":true}"); });
  server.Get("/v2", [app_ptr, send_json](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, "{\"name\":\"edgepack\",\"version\":" + JsonString(app_ptr->version()) + ",\"extensions\":[\"binary_tensor_data\"]}");
  });
  server.Post("/v1/infer", [infer](const httplib::Request& req, httplib::Response& res) { infer(req, res, true); });
  // /v2/models/<name>[/versions/<version>][/ready|/infer]
  const char* v2_route = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?)";
  auto v2_target = [app_ptr, send_json, error_body](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != app_ptr->name()) {
      send_json(res, 404, error_body("unknown model '" + std::string(req.matches[1]) + "'; this server runs '" + app_ptr->name() + "'"));
      return false;
    }
    if (req.matches[2].matched && req.matches[2] != app_ptr->version()) {
      send_json(res, 404, error_body("unknown version; this server runs " + app_ptr->name() + " " + app_ptr->version()));
      return false;
    }
    return true;
  };
  server.Get(v2_route, [app_ptr, send_json, error_body, v2_target](const httplib::Request& req, httplib::Response& res) {
    if (!v2_target(req, res)) return;
    if (req.matches[3] == "/ready") send_json(res, 200, "{\"name\":" + JsonString(app_ptr->name()) + ",\"ready\":true}");
    else if (req.matches[3] == "/infer") send_json(res, 405, error_body("use POST for " + req.path));
    else send_json(res, 200, app_ptr->V2Metadata());
  });
  server.Post(v2_route, [send_json, error_body, v2_target, infer](const httplib::Request& req, httplib::Response& res) {
    if (!v2_target(req, res)) return;
    if (req.matches[3] == "/infer") infer(req, res, false);
    else send_json(res, 404, error_body("no such path '" + req.path + "'; use POST " + req.path + "/infer"));
  });
  server.Get("/v1/infer", [send_json, error_body](const httplib::Request&, httplib::Response& res) {
    send_json(res, 405, error_body("use POST for /v1/infer"));
  });
  std::string help = "use POST /v1/infer or /v2/models/" + model + "/infer, GET /healthz, /metrics, /v1/model or /v2/models/" + model;
  server.Get(".*", [send_json, error_body, help](const httplib::Request& req, httplib::Response& res) {
    send_json(res, 404, error_body("no such path '" + req.path + "'; " + help));
  });
  server.Post(".*", [send_json, error_body, help](const httplib::Request& req, httplib::Response& res) {
    send_json(res, 404, error_body("no such path '" + req.path + "'; " + help));
  });

  int port = opt.port == 0 ? server.bind_to_any_port(opt.host) : (server.bind_to_port(opt.host, int(opt.port)) ? int(opt.port) : -1);
  if (port < 0) {
    Fail(kExitUser, "cannot listen on " + opt.host + ":" + std::to_string(opt.port) + " (" + std::strerror(errno) + ")",
         "pass another --port or --host");
  }
  std::string url = opt.host.find(':') != std::string::npos ? "http://[" + opt.host + "]:" + std::to_string(port)
                                                             : "http://" + opt.host + ":" + std::to_string(port);
  if (!status_path.empty()) {
    char resolved[PATH_MAX];
    std::string bundle_path = realpath(bundle.c_str(), resolved) ? resolved : bundle;
    WriteStatusFile(status_path, "{\n  \"url\": " + JsonString(url) + ",\n  \"pid\": " + std::to_string(getpid()) +
                                     ",\n  \"model\": " + JsonString(app_ptr->name()) + ",\n  \"version\": " +
                                     JsonString(app_ptr->version()) + ",\n  \"bundle\": " + JsonString(bundle_path) +
                                     ",\n  \"log\": " + (log_path.empty() ? "null" : JsonString(log_path)) +
                                     ",\n  \"started\": " + JsonString(UtcNow()) + ",\n  \"server\": \"edgepack-run\"\n}\n");
  }
  std::string batching = app_ptr->BatchingFields(opt.batch_window_ms);
  log->Write(LogFields(*app_ptr, "\"status\":\"started\",\"url\":" + JsonString(url) + (batching.empty() ? "" : "," + batching)));
  std::printf("serving %s %s at %s\n", app_ptr->name().c_str(), app_ptr->version().c_str(), url.c_str());
  std::fflush(stdout);

  std::thread stopper([&server, stop_signals] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    server.stop();
  });
  stopper.detach();
  server.listen_after_bind();
  log->Write(LogFields(*app_ptr, "\"status\":\"stopped\""));
  if (!status_path.empty()) RemoveStatusFile(status_path);
  std::fflush(stdout);
  std::_Exit(0);  // connection threads are detached; do not run destructors under them
}

}  // namespace

#endif  // EDGEPACK_NATIVE_SERVE_H_
