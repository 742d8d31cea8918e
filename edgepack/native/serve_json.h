// JSON for `edgepack-run serve`: strict request checks, tensors from nested lists, strict JSON out.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_SERVE_JSON_H_
#define EDGEPACK_NATIVE_SERVE_JSON_H_

namespace {

// kMaxJsonDepth (64) comes from manifest_json.h: one nesting limit for every JSON edgepack-run reads.
constexpr size_t kMaxIntDigits = 40;

// A request the server refuses: the HTTP status and `problem; fix`.
struct HttpError {
  int code;
  std::string problem, fix;
};

[[noreturn]] void Refuse(int code, std::string problem, std::string fix) {
  throw HttpError{code, std::move(problem), std::move(fix)};
}

// Refuses, before parsing, what the parser would take but JSON does not allow or what costs too much:
// nesting deeper than kMaxJsonDepth, integers longer than kMaxIntDigits, NaN/Infinity literals.
void ScanRequestJson(const std::string& text) {
  int depth = 0;
  size_t digits = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '"') {
      for (++i; i < text.size() && text[i] != '"'; ++i) {
        if (text[i] == '\\') ++i;
      }
      digits = 0;
      continue;
    }
    if (c >= '0' && c <= '9') {
      if (++digits > kMaxIntDigits) {
        Refuse(400, "the request holds a number of more than " + std::to_string(kMaxIntDigits) + " digits",
               "send integers of at most " + std::to_string(kMaxIntDigits) + " digits");
      }
      continue;
    }
    digits = 0;
    if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        Refuse(400, "the request JSON is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels",
               "send tensors as nested lists of their rank");
      }
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (std::isalpha(static_cast<unsigned char>(c))) {
      size_t end = i;
      while (end < text.size() && std::isalpha(static_cast<unsigned char>(text[end]))) ++end;
      std::string word = text.substr(i, end - i);
      bool exponent = (word == "e" || word == "E") && i > 0 && std::isdigit(static_cast<unsigned char>(text[i - 1]));
      if (word != "true" && word != "false" && word != "null" && !exponent) {
        Refuse(400, "the request body is not JSON (it holds " + word.substr(0, 16) + ")",
               "send finite numbers in strict JSON (non-finite inputs as base64 .npy)");
      }
      i = end - 1;
    }
  }
}

json::Value ParseRequestJson(const std::string& text) {
  ScanRequestJson(text);
  ffi::String error;
  json::Value value;
  try {
    value = json::Parse(text, &error);
  } catch (const ffi::Error& e) {
    Refuse(400, "the request body is not JSON (" + std::string(e.message()) + ")", "send a JSON object");
  }
  if (!error.empty()) {
    std::string detail(error);
    std::replace(detail.begin(), detail.end(), '\n', ' ');
    Refuse(400, "the request body is not JSON (" + detail + ")", "send a JSON object with \"inputs\"");
  }
  return value;
}

// ---------------------------------------------------------------- tensors from JSON

// Leaves of a nested list, in row-major order, with the shape of the nesting.
struct Leaves {
  std::vector<int64_t> shape;
  std::vector<json::Value> values;
};

void CollectLeaves(const json::Value& value, size_t level, Leaves* out, const std::string& name) {
  std::optional<json::Array> list = value.try_cast<json::Array>();
  if (level == out->shape.size()) {  // first visit at this depth fixes the dimension
    if (list) out->shape.push_back(int64_t(list->size()));
  }
  bool expect_list = level < out->shape.size();
  if (bool(list) != expect_list || (list && int64_t(list->size()) != out->shape[level])) {
    Refuse(400, "input '" + name + "' is a ragged list", "send a full array");
  }
  if (!list) {
    out->values.push_back(value);
    return;
  }
  for (const ffi::Any& item : *list) CollectLeaves(item, level + 1, out, name);
}

bool IsDtypeKind(const TensorSpec& spec, char kind) {
  const Dtype* d = DtypeByName(spec.dtype);
  return d != nullptr && d->descr[1] == kind;
}

void StoreElement(const Dtype* dtype, char* p, double value, int64_t integer, bool is_integer) {
  switch (dtype->descr[1]) {
    case 'f':
      if (dtype->size == 4) {
        float f = float(value);
        std::memcpy(p, &f, 4);
      } else if (dtype->size == 8) {
        std::memcpy(p, &value, 8);
      } else {  // float16: round to nearest through float's bits
        float f = float(value);
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        uint32_t sign = (bits >> 16) & 0x8000, exponent = (bits >> 23) & 0xff, mantissa = bits & 0x7fffff;
        uint16_t half;
        if (exponent == 0xff) half = uint16_t(sign | 0x7c00 | (mantissa ? 0x200 : 0));
        else if (int(exponent) - 127 + 15 >= 31) half = uint16_t(sign | 0x7c00);
        else if (int(exponent) - 127 + 15 <= 0) half = uint16_t(sign | uint32_t(std::lround(std::fabs(f) * 16777216.0)));
        else half = uint16_t(sign | ((exponent - 127 + 15) << 10) | ((mantissa + 0x1000) >> 13));
        std::memcpy(p, &half, 2);
      }
      return;
    case 'b':
      *p = value != 0;
      return;
    default: {
      int64_t v = is_integer ? integer : int64_t(value);
      std::memcpy(p, &v, dtype->size);  // little-endian: the low bytes
    }
  }
}

// One input from nested lists of numbers, cast like the Python server (numpy's same_kind casting).
Array ArrayFromJson(const json::Value& value, const TensorSpec& spec) {
  const Dtype* dtype = DtypeByName(spec.dtype);
  if (dtype == nullptr) Refuse(500, "the model input '" + spec.name + "' has dtype " + spec.dtype, "use the Python server");
  Leaves leaves;
  CollectLeaves(value, 0, &leaves, spec.name);
  Array array{dtype, leaves.shape, std::vector<char>(leaves.values.size() * dtype->size)};
  char kind = dtype->descr[1];
  for (size_t i = 0; i < leaves.values.size(); ++i) {
    const json::Value& leaf = leaves.values[i];
    std::optional<bool> boolean = leaf.type_index() == ffi::TypeIndex::kTVMFFIBool ? leaf.try_cast<bool>() : std::nullopt;
    std::optional<int64_t> integer = !boolean && leaf.type_index() == ffi::TypeIndex::kTVMFFIInt ? leaf.try_cast<int64_t>() : std::nullopt;
    std::optional<double> real = !boolean && !integer && leaf.type_index() == ffi::TypeIndex::kTVMFFIFloat ? leaf.try_cast<double>() : std::nullopt;
    if (!boolean && !integer && !real) {
      Refuse(400, "input '" + spec.name + "' is not a nested list of numbers",
             "send numbers of shape " + ShapeText(spec.shape));
    }
    if (kind == 'b' && !boolean) {
      Refuse(400, "input '" + spec.name + "' holds numbers, the model takes bool", "send true/false values");
    }
    if ((kind == 'i' || kind == 'u') && real) {
      Refuse(400, "input '" + spec.name + "' holds float64 values, the model takes " + spec.dtype, "send " + spec.dtype + " values");
    }
    if ((kind == 'i' || kind == 'u') && integer) {
      int bits = dtype->size * 8;
      int64_t low = kind == 'u' ? 0 : (bits == 64 ? INT64_MIN : -(int64_t(1) << (bits - 1)));
      int64_t high = kind == 'u' ? (bits == 64 ? INT64_MAX : (int64_t(1) << bits) - 1)
                                 : (bits == 64 ? INT64_MAX : (int64_t(1) << (bits - 1)) - 1);
      if (*integer < low || *integer > high) {
        Refuse(400, "input '" + spec.name + "' has values outside the " + spec.dtype + " range",
               "send values in [" + std::to_string(low) + ", " + std::to_string(high) + "]");
      }
    }
    double number = boolean ? double(*boolean) : integer ? double(*integer) : *real;
    StoreElement(dtype, array.data.data() + i * dtype->size, number, integer ? *integer : int64_t(number), bool(integer));
  }
  return array;
}

// ---------------------------------------------------------------- strict JSON out

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
      out += buffer;
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

// A number as strict JSON: NaN and infinities as the strings "NaN", "Infinity", "-Infinity".
void AppendNumber(std::string* out, double value, int digits) {
  if (std::isnan(value)) {
    *out += "\"NaN\"";
  } else if (std::isinf(value)) {
    *out += value > 0 ? "\"Infinity\"" : "\"-Infinity\"";
  } else {
    char buffer[40];
    std::snprintf(buffer, sizeof(buffer), "%.*g", digits, value);
    *out += buffer;
  }
}

void AppendElement(std::string* out, const Array& array, int64_t i) {
  char kind = array.dtype->descr[1];
  if (kind == 'b') {
    *out += array.data[i] ? "true" : "false";
  } else if (kind == 'f') {
    AppendNumber(out, ElementAt(array, i), array.dtype->size == 8 ? 17 : 9);
  } else if (array.dtype->size == 8) {
    int64_t v;
    std::memcpy(&v, array.data.data() + i * 8, 8);
    *out += std::to_string(v);
  } else {
    *out += std::to_string(int64_t(ElementAt(array, i)));
  }
}

// Elements flat (v2 "data") or nested by the shape (v1 "outputs").
void AppendArray(std::string* out, const Array& array, bool nested) {
  int64_t n = NumElements(array.shape);
  if (!nested || array.shape.empty()) {
    if (!nested) *out += '[';
    for (int64_t i = 0; i < n; ++i) {
      if (i) *out += ',';
      AppendElement(out, array, i);
    }
    if (!nested) *out += ']';
    return;
  }
  std::vector<int64_t> strides(array.shape.size(), 1);  // elements under one bracket of dimension d
  strides.back() = array.shape.back();
  for (size_t d = array.shape.size() - 1; d > 0; --d) strides[d - 1] = strides[d] * array.shape[d - 1];
  for (int64_t i = 0; i < n; ++i) {
    for (size_t d = 0; d < strides.size(); ++d) {
      if (i % strides[d] == 0) *out += '[';
    }
    AppendElement(out, array, i);
    int closes = 0;
    for (size_t d = strides.size(); d-- > 0;) {
      if ((i + 1) % strides[d] == 0) ++closes;
      else break;
    }
    out->append(closes, ']');
    if (i + 1 < n) *out += ',';
  }
  if (n == 0) {
    for (size_t d = 0; d < array.shape.size(); ++d) *out += '[';
    out->append(array.shape.size(), ']');
  }
}

}  // namespace

#endif  // EDGEPACK_NATIVE_SERVE_JSON_H_
