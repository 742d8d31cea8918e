// Request batching for `edgepack-run serve` (docs/deployment.md, "Batching"): on a bundle whose inputs
// and outputs all start with the same dynamic axis (docs/dynamic-shapes.md, e.g. --dim B=1..64),
// concurrent inference requests are stacked along that axis into one model call of at most the
// range's largest size, and the outputs are split back by rows. The first request waiting leads a
// batch: it waits up to --batch-window-ms for the other open connections to send theirs (an HTTP/1.1
// connection has one request at a time), so a lone client's requests never wait.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_SERVE_BATCH_H_
#define EDGEPACK_NATIVE_SERVE_BATCH_H_

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>

namespace {

constexpr double kDefaultBatchWindowMs = 2.0;

// The axis requests can be stacked along: the same named axis first in every input and output and
// nowhere else. Empty name: none (a static bundle, or one whose first axes differ).
struct BatchAxis {
  std::string name;
  int64_t max_rows = 0;
};

BatchAxis FindBatchAxis(const Manifest& m) {
  if (m.inputs.empty() || m.outputs.empty() || m.inputs[0].dims.empty() || m.inputs[0].dims[0].empty()) return {};
  const std::string& name = m.inputs[0].dims[0];
  for (const auto* specs : {&m.inputs, &m.outputs}) {
    for (const TensorSpec& spec : *specs) {
      if (spec.dims.empty() || spec.dims[0] != name) return {};
      if (std::count(spec.dims.begin() + 1, spec.dims.end(), name) != 0) return {};
    }
  }
  return {name, m.inputs[0].high[0]};
}

int64_t Rows(const std::vector<Array>& arrays) {
  return arrays.empty() || arrays[0].shape.empty() ? 1 : arrays[0].shape[0];
}

// Arrays of several requests stacked along axis 0 (each input's rows in request order).
std::vector<Array> Stack(const std::vector<const std::vector<Array>*>& parts) {
  std::vector<Array> stacked;
  for (size_t i = 0; i < parts[0]->size(); ++i) {
    Array array{(*parts[0])[i].dtype, (*parts[0])[i].shape, {}};
    array.shape[0] = 0;
    for (const std::vector<Array>* part : parts) {
      array.shape[0] += (*part)[i].shape[0];
      array.data.insert(array.data.end(), (*part)[i].data.begin(), (*part)[i].data.end());
    }
    stacked.push_back(std::move(array));
  }
  return stacked;
}

// Rows [first, first + rows) of every output.
std::vector<Array> Slice(const std::vector<Array>& outputs, int64_t first, int64_t rows) {
  std::vector<Array> out;
  for (const Array& array : outputs) {
    size_t row_bytes = size_t(NumElements(array.shape) / std::max<int64_t>(array.shape[0], 1)) * array.dtype->size;
    Array part{array.dtype, array.shape, {}};
    part.shape[0] = rows;
    part.data.assign(array.data.begin() + first * row_bytes, array.data.begin() + (first + rows) * row_bytes);
    out.push_back(std::move(part));
  }
  return out;
}

class Batcher {
 public:
  // One model call on stacked inputs; returns the outputs and sets the milliseconds it took.
  using Call = std::function<std::vector<Array>(const std::vector<Array>&, double*)>;

  // `clients`: how many connections could send a request now (those being served).
  Batcher(int64_t max_rows, double window_ms, Call call, std::function<long()> clients)
      : max_rows_(max_rows), window_(window_ms), call_(std::move(call)), clients_(std::move(clients)) {}

  // Runs checked `inputs` in one model call with whatever other requests are waiting; returns this
  // request's rows of the outputs and sets the call's milliseconds. Rethrows the call's failure.
  std::vector<Array> Submit(const std::vector<Array>& inputs, double* model_ms, int64_t* batch_rows) {
    Slot slot{&inputs, Rows(inputs)};
    std::unique_lock<std::mutex> lock(mutex_);
    pending_.push_back(&slot);
    changed_.notify_all();
    while (!slot.done) {
      if (!running_ && pending_.front() == &slot) Lead(&lock);
      else changed_.wait(lock);
    }
    if (slot.error) std::rethrow_exception(slot.error);
    *model_ms = slot.model_ms;
    *batch_rows = slot.batch_rows;
    return std::move(slot.outputs);
  }

  // The Prometheus families of the batcher (edgepack_batch_*, as runtime/edgepack_serve.py's), each
  // sample with `labels`.
  std::string Render(const std::string& axis, const std::string& labels) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out, name = "edgepack_batch_rows";
    out += "# HELP edgepack_batch_window_seconds Longest wait to gather requests into one call along axis " + axis +
           ".\n# TYPE edgepack_batch_window_seconds gauge\nedgepack_batch_window_seconds{" + labels + ",axis=\"" +
           PromLabel(axis) + "\"} " + PromNumber(window_ / 1000.0) + "\n";
    out += "# HELP edgepack_batch_requests_total Inference requests answered by the batcher's model calls.\n"
           "# TYPE edgepack_batch_requests_total counter\nedgepack_batch_requests_total{" + labels + "} " +
           PromNumber(double(requests_)) + "\n";
    out += "# HELP " + name + " Rows (along the batch axis) per model call of the batcher; _count is the calls.\n# TYPE " + name +
           " histogram\n";
    std::set<int64_t> bounds;
    for (int64_t b = 1;; b *= 2) {
      bounds.insert(std::min(b, max_rows_));
      if (b >= max_rows_) break;
    }
    for (int64_t bound : bounds) {
      long count = 0;
      for (const auto& [rows, calls] : by_rows_) count += rows <= bound ? calls : 0;
      out += name + "_bucket{" + labels + ",le=\"" + std::to_string(bound) + "\"} " + std::to_string(count) + "\n";
    }
    out += name + "_bucket{" + labels + ",le=\"+Inf\"} " + std::to_string(calls_) + "\n";
    out += name + "_sum{" + labels + "} " + std::to_string(rows_sum_) + "\n" + name + "_count{" + labels + "} " +
           std::to_string(calls_) + "\n";
    return out;
  }

 private:
  struct Slot {
    const std::vector<Array>* inputs;
    int64_t rows;
    bool done = false;
    std::vector<Array> outputs;
    double model_ms = 0;
    int64_t batch_rows = 0;
    std::exception_ptr error;
  };

  // Whether `a` and `b` can share a call: the same shape after the batch axis for every input.
  static bool Compatible(const Slot& a, const Slot& b) {
    for (size_t i = 0; i < a.inputs->size(); ++i) {
      const std::vector<int64_t>& x = (*a.inputs)[i].shape;
      const std::vector<int64_t>& y = (*b.inputs)[i].shape;
      if (x.size() != y.size() || !std::equal(x.begin() + 1, x.end(), y.begin() + 1)) return false;
    }
    return true;
  }

  // The first pending request gathers a batch, runs it unlocked, and hands every member its rows.
  void Lead(std::unique_lock<std::mutex>* lock) {
    running_ = true;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(window_);
    auto pending_rows = [this] {
      int64_t rows = 0;
      for (const Slot* s : pending_) rows += s->rows;
      return rows;
    };
    while (long(pending_.size()) < clients_() && pending_rows() < max_rows_ &&
           changed_.wait_until(*lock, deadline) != std::cv_status::timeout) {
    }
    std::vector<Slot*> batch;
    int64_t rows = 0;
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (rows + (*it)->rows <= max_rows_ && (batch.empty() || Compatible(*batch[0], **it))) {
        rows += (*it)->rows;
        batch.push_back(*it);
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    lock->unlock();
    try {
      std::vector<const std::vector<Array>*> parts;
      for (const Slot* s : batch) parts.push_back(s->inputs);
      double ms = 0;
      std::vector<Array> outputs = call_(batch.size() == 1 ? *batch[0]->inputs : Stack(parts), &ms);
      for (const Array& output : outputs) {
        if (output.shape.empty() || output.shape[0] != rows) {
          Fail(kExitInternal, "the model returned " + std::to_string(output.shape.empty() ? 0 : output.shape[0]) +
                                  " rows for a batch of " + std::to_string(rows), "start the server with --batch-window-ms 0");
        }
      }
      int64_t first = 0;
      for (Slot* s : batch) {
        s->outputs = batch.size() == 1 ? std::move(outputs) : Slice(outputs, first, s->rows);
        s->model_ms = ms;
        s->batch_rows = rows;
        first += s->rows;
      }
    } catch (...) {
      for (Slot* s : batch) s->error = std::current_exception();
    }
    lock->lock();
    ++calls_;
    requests_ += long(batch.size());
    rows_sum_ += rows;
    ++by_rows_[rows];
    for (Slot* s : batch) s->done = true;
    running_ = false;
    changed_.notify_all();
  }

  int64_t max_rows_;
  double window_;
  Call call_;
  std::function<long()> clients_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Slot*> pending_;
  long calls_ = 0, requests_ = 0, rows_sum_ = 0;
  std::map<int64_t, long> by_rows_;  // model calls by their rows
  bool running_ = false;
};

}  // namespace

#endif  // EDGEPACK_NATIVE_SERVE_BATCH_H_
