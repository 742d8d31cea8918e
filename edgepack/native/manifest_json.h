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

// ---------------------------------------------------------------- strict JSON, as the Python loader reads it
// TVM's JSON parser takes the last of duplicate keys, accepts bytes that are not UTF-8 and recurses
// without a limit. Every JSON text edgepack-run reads passes this check first, so both loaders
// refuse the same texts: RFC 8259 grammar, strict UTF-8, unique keys (compared after unescaping),
// no NaN/Infinity, nesting at most kMaxJsonDepth (the same limit as runtime/edgepack_format.py).

constexpr int kMaxJsonDepth = 64;

// Whether `text` is well-formed UTF-8: shortest forms only, no surrogates, nothing above U+10FFFF.
bool ValidUtf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  while (i < n) {
    uint64_t word;
    if (i + 8 <= n && (std::memcpy(&word, s + i, 8), (word & 0x8080808080808080ull) == 0)) {  // eight ASCII bytes
      i += 8;
      continue;
    }
    unsigned char c = s[i];
    int extra;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) { extra = 1; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { extra = 2; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { extra = 3; cp = c & 0x07; }
    else return false;
    if (i + extra >= n) return false;
    for (int k = 1; k <= extra; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

// The value of one hexadecimal digit, or -1.
int HexValue(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

// Appends code point `cp` as UTF-8 (lone surrogates too: they still compare as themselves).
void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {  // lone surrogates too: they still compare as themselves
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

class StrictJson {
 public:
  explicit StrictJson(const std::string& text) : s_(text) {}

  // "" when the text is acceptable, else the problem.
  std::string Problem() {
    if (!ValidUtf8(s_)) return "not valid UTF-8";
    Space();
    if (!Value(1)) return error_;
    Space();
    if (i_ != s_.size()) return "not valid JSON (extra data at byte " + std::to_string(i_) + ")";
    return "";
  }

 private:
  bool Err(const std::string& what) {
    if (error_.empty()) error_ = what;
    return false;
  }
  bool Syntax() { return Err("not valid JSON (at byte " + std::to_string(i_) + ")"); }
  void Space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool Literal(const char* word) {
    size_t len = std::strlen(word);
    if (s_.compare(i_, len, word) != 0) return Syntax();
    i_ += len;
    return true;
  }
  bool Digits() {
    size_t start = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    return i_ > start || Syntax();
  }
  bool Number() {
    if (s_[i_] == '-') ++i_;
    if (i_ < s_.size() && s_[i_] == '0') {
      ++i_;
    } else if (!Digits()) {
      return false;
    }
    if (i_ < s_.size() && s_[i_] == '.' && (++i_, !Digits())) return false;
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!Digits()) return false;
    }
    return true;
  }
  bool Hex4(uint32_t* cp) {
    if (i_ + 4 > s_.size()) return Syntax();
    *cp = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_++];
      int v = HexValue(c);
      if (v < 0) return Syntax();
      *cp = (*cp << 4) | uint32_t(v);
    }
    return true;
  }
  // A string starting at '"'; its unescaped text goes to `out`.
  bool String(std::string* out) {
    ++i_;
    while (i_ < s_.size()) {
      unsigned char c = s_[i_];
      if (c == '"') {
        ++i_;
        return true;
      }
      if (c < 0x20) return Syntax();
      if (c != '\\') {
        out->push_back(char(c));
        ++i_;
        continue;
      }
      if (++i_ >= s_.size()) return Syntax();
      char e = s_[i_++];
      const char* simple = std::strchr("\"\\/bfnrt", e);
      if (e != 0 && simple != nullptr) {
        out->push_back("\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"]);
        continue;
      }
      if (e != 'u') return Syntax();
      uint32_t cp;
      if (!Hex4(&cp)) return false;
      if (cp >= 0xD800 && cp <= 0xDBFF && s_.compare(i_, 2, "\\u") == 0) {
        size_t mark = i_;
        i_ += 2;
        uint32_t low;
        if (!Hex4(&low)) return false;
        if (low >= 0xDC00 && low <= 0xDFFF) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else {
          i_ = mark;
        }
      }
      AppendUtf8(cp, out);
    }
    return Syntax();
  }
  bool Value(int depth) {
    if (i_ >= s_.size()) return Syntax();
    char c = s_[i_];
    if (c == '{' || c == '[') {
      if (depth > kMaxJsonDepth) return Err("nests too deeply");
      ++i_;
      Space();
      char close = c == '{' ? '}' : ']';
      if (i_ < s_.size() && s_[i_] == close) {
        ++i_;
        return true;
      }
      std::set<std::string> keys;
      while (true) {
        if (c == '{') {
          std::string key;
          if (i_ >= s_.size() || s_[i_] != '"' || !String(&key)) return Syntax();
          if (!keys.insert(key).second) return Err("duplicate key '" + key + "'");
          Space();
          if (i_ >= s_.size() || s_[i_] != ':') return Syntax();
          ++i_;
          Space();
        }
        if (!Value(depth + 1)) return false;
        Space();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          Space();
          continue;
        }
        if (i_ < s_.size() && s_[i_] == close) {
          ++i_;
          return true;
        }
        return Syntax();
      }
    }
    if (c == '"') {
      std::string ignored;
      return String(&ignored);
    }
    if (c == 't') return Literal("true");
    if (c == 'f') return Literal("false");
    if (c == 'n') return Literal("null");
    if (c == '-' || (c >= '0' && c <= '9')) return Number();
    return Syntax();
  }

  const std::string& s_;
  size_t i_ = 0;
  std::string error_;
};

}  // namespace

#endif  // EDGEPACK_NATIVE_MANIFEST_JSON_H_
