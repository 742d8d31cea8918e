// JSON for `edgepack-run serve`: tensors from nested lists (request_json.h reads the body), strict JSON out.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_SERVE_JSON_H_
#define EDGEPACK_NATIVE_SERVE_JSON_H_

#include "request_json.h"

namespace {

// Whether `node` is a nested list of full rectangular shape `shape` from dimension `level` on;
// counts its leaves into `*leaves`.
bool Rectangular(const JsonDocument& doc, const JsonNode& node, size_t level, const std::vector<int64_t>& shape,
                 int64_t* leaves) {
  bool list = node.kind == JsonNode::kArray;
  if (list != (level < shape.size()) || (list && int64_t(node.size) != shape[level])) return false;
  if (!list) {
    ++*leaves;
    return true;
  }
  const JsonNode* items = doc.Children(node);
  for (uint32_t k = 0; k < node.size; ++k) {
    if (!Rectangular(doc, items[k], level + 1, shape, leaves)) return false;
  }
  return true;
}

// The leaves of a rectangular nested list, in row-major order.
void Leaves(const JsonDocument& doc, const JsonNode& node, std::vector<const JsonNode*>* out) {
  if (node.kind != JsonNode::kArray) {
    out->push_back(&node);
    return;
  }
  const JsonNode* items = doc.Children(node);
  for (uint32_t k = 0; k < node.size; ++k) Leaves(doc, items[k], out);
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
// The shape is that of the first items at each depth; every other list must match it.
Array ArrayFromJson(const JsonDocument& doc, const JsonNode& value, const TensorSpec& spec) {
  const Dtype* dtype = DtypeByName(spec.dtype);
  if (dtype == nullptr) Refuse(500, "the model input '" + spec.name + "' has dtype " + spec.dtype, "use the Python server");
  std::vector<int64_t> shape;
  for (const JsonNode* node = &value; node->kind == JsonNode::kArray; node = doc.Children(*node)) {
    shape.push_back(int64_t(node->size));
    if (node->size == 0) break;
  }
  int64_t count = 0;
  if (!Rectangular(doc, value, 0, shape, &count)) Refuse(400, "input '" + spec.name + "' is a ragged list", "send a full array");
  std::vector<const JsonNode*> leaves;
  leaves.reserve(size_t(count));
  Leaves(doc, value, &leaves);
  Array array{dtype, shape, std::vector<char>(leaves.size() * dtype->size)};
  char kind = dtype->descr[1];
  for (size_t i = 0; i < leaves.size(); ++i) {
    const JsonNode& leaf = *leaves[i];
    bool boolean = leaf.kind == JsonNode::kBool, integer = leaf.kind == JsonNode::kInt, real = leaf.kind == JsonNode::kFloat;
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
      if (leaf.integer < low || leaf.integer > high) {
        Refuse(400, "input '" + spec.name + "' has values outside the " + spec.dtype + " range",
               "send values in [" + std::to_string(low) + ", " + std::to_string(high) + "]");
      }
    }
    double number = boolean ? double(leaf.boolean) : integer ? double(leaf.integer) : leaf.real;
    StoreElement(dtype, array.data.data() + i * dtype->size, number, integer ? leaf.integer : int64_t(number), integer);
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
    char buffer[40];  // printf's %.<digits>g, without printf
    std::to_chars_result r = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::general, digits);
    out->append(buffer, r.ptr);
  }
}

void AppendElement(std::string* out, const Array& array, int64_t i) {
  char kind = array.dtype->descr[1];
  if (kind == 'b') {
    *out += array.data[i] ? "true" : "false";
  } else if (kind == 'f') {
    AppendNumber(out, ElementAt(array, i), array.dtype->size == 8 ? 17 : 9);
  } else {
    char buffer[24];
    std::to_chars_result r{buffer, std::errc()};
    if (array.dtype->size == 8 && kind == 'u') {
      uint64_t v;
      std::memcpy(&v, array.data.data() + i * 8, 8);
      r = std::to_chars(buffer, buffer + sizeof(buffer), v);
    } else if (array.dtype->size == 8) {
      int64_t v;
      std::memcpy(&v, array.data.data() + i * 8, 8);
      r = std::to_chars(buffer, buffer + sizeof(buffer), v);
    } else {
      r = std::to_chars(buffer, buffer + sizeof(buffer), int64_t(ElementAt(array, i)));
    }
    out->append(buffer, r.ptr);
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
