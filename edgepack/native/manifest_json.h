// manifest.json's types and the strict JSON field readers.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_MANIFEST_JSON_H_
#define EDGEPACK_NATIVE_MANIFEST_JSON_H_

namespace {

// ---------------------------------------------------------------- manifest.json

struct TensorSpec {
  std::string name, dtype;
  std::vector<int64_t> shape;       // a named axis: its smallest size
  std::vector<std::string> dims;    // per axis: a dimension name ("" when fixed); empty when all are fixed
  std::vector<int64_t> low, high;   // per named axis: its range (manifest "dim_ranges")
};
struct GoldenCase {
  std::vector<std::string> inputs, outputs;
};
struct FileEntry {
  std::string path, sha256;
  int64_t size;
};
struct Manifest {
  std::vector<TensorSpec> inputs, outputs;
  std::string library, params_file;
  std::string params_encoding;  // "" (params.bin) or "sparse-words-v1" (params.sparse)
  std::vector<std::string> param_names;
  double atol = 0, rtol = 0;
  std::vector<GoldenCase> golden;
  std::vector<FileEntry> files;
  // What the device must offer (manifest "requires"; absent in older bundles).
  std::string required_arch, required_glibc;
  std::vector<std::string> required_features;
  // requires.cuda (CUDA targets): GPU arch, CUDA driver floor, runtime/ libraries to dlopen
  std::string cuda_arch, cuda_driver;
  std::vector<std::string> cuda_libraries;
};

[[noreturn]] void BadManifest(const std::string& what) {
  Fail(kExitIntegrity, "manifest.json: " + what, "rebuild the bundle with `edgepack build`");
}

template <typename T>
T As(const json::Value& value, const std::string& what) {
  std::optional<T> result = value.try_cast<T>();
  if (!result) BadManifest("'" + what + "' has the wrong type");
  return *result;
}

json::Value Field(const json::Value& object, const std::string& key) {
  std::optional<json::Object> map = object.try_cast<json::Object>();
  std::optional<json::Value> value = map ? map->Get(ffi::String(key)) : std::nullopt;
  if (!value) BadManifest("missing field '" + key + "'");
  return *value;
}

std::vector<std::string> Strings(const json::Value& value, const std::string& what) {
  std::vector<std::string> out;
  for (const ffi::Any& item : As<json::Array>(value, what)) {
    out.push_back(As<std::string>(item, what));
  }
  return out;
}

std::vector<TensorSpec> Specs(const json::Value& value, const std::string& what) {
  std::vector<TensorSpec> specs;
  for (const ffi::Any& item : As<json::Array>(value, what)) {
    TensorSpec spec{As<std::string>(Field(item, "name"), "name"),
                    As<std::string>(Field(item, "dtype"), "dtype"),
                    {}};
    for (const ffi::Any& dim : As<json::Array>(Field(item, "shape"), "shape")) {
      spec.shape.push_back(As<int64_t>(dim, "shape"));
    }
    if (std::optional<json::Value> dims = As<json::Object>(item, what).Get(ffi::String("dims"))) {
      for (const ffi::Any& dim : As<json::Array>(*dims, "dims")) {
        spec.dims.push_back(dim.type_index() == ffi::TypeIndex::kTVMFFINone ? "" : As<std::string>(dim, "dims"));
      }
      if (spec.dims.size() != spec.shape.size()) BadManifest("'dims' of '" + spec.name + "' needs one entry per axis");
    }
    specs.push_back(spec);
  }
  return specs;
}

// The ranges of named axes ("dim_ranges": {name: [smallest, largest]}) into each spec's low/high.
void ApplyDimRanges(std::vector<TensorSpec>& specs, const json::Value& root) {
  std::optional<json::Value> ranges = As<json::Object>(root, "manifest").Get(ffi::String("dim_ranges"));
  for (TensorSpec& spec : specs) {
    for (const std::string& name : spec.dims) {
      int64_t low = 0, high = 0;
      if (!name.empty()) {
        std::optional<json::Value> range =
            ranges ? As<json::Object>(*ranges, "dim_ranges").Get(ffi::String(name)) : std::nullopt;
        if (!range) BadManifest("dimension '" + name + "' has no entry in 'dim_ranges'");
        json::Array bounds = As<json::Array>(*range, "dim_ranges");
        if (bounds.size() != 2) BadManifest("'dim_ranges' entry '" + name + "' needs [smallest, largest]");
        low = As<int64_t>(bounds[0], "dim_ranges");
        high = As<int64_t>(bounds[1], "dim_ranges");
        if (low < 1 || low > high) BadManifest("'dim_ranges' entry '" + name + "' is not 1 <= smallest <= largest");
      }
      spec.low.push_back(low);
      spec.high.push_back(high);
    }
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

#endif  // EDGEPACK_NATIVE_MANIFEST_JSON_H_
