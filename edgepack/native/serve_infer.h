// The two inference protocols of `edgepack-run serve`, decoded into arrays and encoded from arrays:
// POST /v1/infer ({"inputs": {"<name>": nested} | [nested, ...]}) and the Open Inference Protocol
// v2 (/v2/models/<name>/infer: JSON tensors or the binary tensor extension). The model call between
// them is serve.h's (one request, or a batch of them: serve_batch.h).
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_SERVE_INFER_H_
#define EDGEPACK_NATIVE_SERVE_INFER_H_

#include "serve_json.h"

namespace {

// What one inference request asks for.
struct InferRequest {
  std::vector<Array> inputs;        // in signature order, checked against nothing yet
  std::vector<std::string> wanted;  // v2 "outputs": the names asked for; empty: every output
  const std::string* id = nullptr;  // v2 "id" when it is a string (points into the decoded document)
  std::unique_ptr<JsonDocument> document;
};

const char* V2Datatype(const std::string& dtype) {
  static const std::map<std::string, const char*> names = {
      {"float16", "FP16"}, {"float32", "FP32"}, {"float64", "FP64"}, {"int8", "INT8"}, {"int32", "INT32"},
      {"int64", "INT64"}, {"uint8", "UINT8"}, {"bool", "BOOL"}};
  auto it = names.find(dtype);
  return it == names.end() ? "UNKNOWN" : it->second;
}

std::string JoinNames(const std::vector<TensorSpec>& specs) {
  std::string out;
  for (const TensorSpec& s : specs) out += (out.empty() ? "" : ", ") + s.name;
  return out;
}

std::string OutputName(const std::vector<TensorSpec>& outputs, size_t o) {
  return o < outputs.size() ? outputs[o].name : "output_" + std::to_string(o);
}

// POST /v1/infer's body: inputs by name or by position, as nested lists.
InferRequest DecodeV1(const std::string& body, const std::vector<TensorSpec>& specs) {
  InferRequest request;
  request.document = std::make_unique<JsonDocument>(body);
  const JsonDocument& doc = *request.document;
  const JsonNode* inputs = doc.Get(&doc.root(), "inputs");
  if (!inputs) Refuse(400, "the request has no \"inputs\"", "send {\"inputs\": {\"<name>\": [[...]]}}");
  if (const JsonNode* format = doc.Get(&doc.root(), "output_format")) {
    const std::string* text = doc.StringOf(format);
    if (!text || *text != "list") {
      Refuse(400, "output_format '" + (text ? *text : std::string("?")) + "' is not served by edgepack-run",
             "use list (npy in and out: the Python server)");
    }
  }
  std::vector<const JsonNode*> values;
  if (inputs->kind == JsonNode::kObject) {
    std::vector<std::string> unknown;
    const JsonNode* members = doc.Children(*inputs);
    for (uint32_t m = 0; m < inputs->size; ++m) {
      const std::string& key = doc.Text(members[2 * m]);
      bool known = std::any_of(specs.begin(), specs.end(), [&](const TensorSpec& s) { return s.name == key; });
      if (!known && std::find(unknown.begin(), unknown.end(), key) == unknown.end()) unknown.push_back(key);
    }
    std::string missing;
    for (const TensorSpec& spec : specs) {
      const JsonNode* v = doc.Get(inputs, spec.name.c_str());
      if (!v) missing += (missing.empty() ? "" : ", ") + spec.name;
      else values.push_back(v);
    }
    if (!unknown.empty() || !missing.empty()) {
      std::string unknown_text;
      for (const std::string& k : unknown) unknown_text += (unknown_text.empty() ? "" : ", ") + k;
      Refuse(400, "inputs must be exactly " + JoinNames(specs) + " (unknown: " + (unknown.empty() ? "none" : unknown_text) +
                      "; missing: " + (missing.empty() ? "none" : missing) + ")", "name every model input once");
    }
  } else if (inputs->kind == JsonNode::kArray) {
    if (inputs->size != specs.size()) {
      Refuse(400, "expected " + std::to_string(specs.size()) + " input(s) (" + JoinNames(specs) + "), got " +
                      std::to_string(inputs->size), "send one array per input, in signature order");
    }
    for (uint32_t k = 0; k < inputs->size; ++k) values.push_back(doc.Children(*inputs) + k);
  } else {
    Refuse(400, "\"inputs\" must be an object or a list", "send {\"inputs\": {\"<name>\": [[...]]}}");
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i]->kind == JsonNode::kObject) {
      Refuse(400, "input '" + specs[i].name + "' is an object (base64 .npy is served by the Python server)", "send nested lists");
    }
    request.inputs.push_back(ArrayFromJson(doc, *values[i], specs[i]));
  }
  return request;
}

// One v2 input's "shape": non-negative integers below 2^31; false when it is not one.
bool V2Shape(const JsonDocument& doc, const JsonNode* node, std::vector<int64_t>* shape, int64_t* count) {
  if (node == nullptr || node->kind != JsonNode::kArray) return false;
  *count = 1;
  const JsonNode* dims = doc.Children(*node);
  for (uint32_t d = 0; d < node->size; ++d) {
    if (dims[d].kind != JsonNode::kInt || dims[d].integer < 0 || dims[d].integer >= (int64_t(1) << 31)) return false;
    shape->push_back(dims[d].integer);
    *count = std::min<int64_t>(*count * dims[d].integer, int64_t(1) << 40);
  }
  return true;
}

// POST /v2/models/<name>/infer's body: a JSON header, then the binary inputs when `json_length`
// (the Inference-Header-Content-Length header) is given.
InferRequest DecodeV2(const std::string& request_body, const std::string& json_length, const std::vector<TensorSpec>& specs,
                      const std::vector<TensorSpec>& output_specs) {
  size_t header_size = request_body.size();
  if (!json_length.empty()) {
    char* end = nullptr;
    unsigned long long n = std::strtoull(json_length.c_str(), &end, 10);
    if (*end != '\0' || !std::isdigit(static_cast<unsigned char>(json_length[0])) || n > request_body.size()) {
      Refuse(400, "Inference-Header-Content-Length '" + json_length + "' does not fit the body", "send the JSON header's byte length");
    }
    header_size = size_t(n);
  }
  InferRequest request;
  request.document = std::make_unique<JsonDocument>(
      header_size == request_body.size() ? request_body : request_body.substr(0, header_size));
  const JsonDocument& doc = *request.document;
  const char* binary = request_body.data() + header_size;
  size_t binary_size = request_body.size() - header_size;
  const JsonNode* inputs = doc.Get(&doc.root(), "inputs");
  if (!inputs || inputs->kind != JsonNode::kArray) {
    Refuse(400, "the request has no \"inputs\" list", "send {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}");
  }
  std::map<std::string, const JsonNode*> by_name;
  for (uint32_t k = 0; k < inputs->size; ++k) {
    const JsonNode* tensor = doc.Children(*inputs) + k;
    const std::string* name = doc.StringOf(doc.Get(tensor, "name"));
    if (!name) Refuse(400, "an input has no \"name\"", "send one object per input with name, shape, datatype, data");
    by_name.emplace(*name, tensor);
  }
  std::string unknown, missing;
  for (const TensorSpec& spec : specs) {
    if (!by_name.count(spec.name)) missing += (missing.empty() ? "" : ", ") + spec.name;
  }
  for (const auto& [name, tensor] : by_name) {
    bool known = std::any_of(specs.begin(), specs.end(), [&](const TensorSpec& s) { return s.name == name; });
    if (!known) unknown += (unknown.empty() ? "" : ", ") + name;
  }
  if (!unknown.empty() || !missing.empty() || by_name.size() != inputs->size) {
    Refuse(400, "inputs must be exactly " + JoinNames(specs) + " (unknown: " + (unknown.empty() ? "none" : unknown) +
                    "; missing: " + (missing.empty() ? "none" : missing) + ")", "name every model input once");
  }
  size_t offset = 0;
  for (const TensorSpec& spec : specs) {
    const JsonNode* tensor = by_name.at(spec.name);
    std::vector<int64_t> shape;
    int64_t count = 1;
    if (!V2Shape(doc, doc.Get(tensor, "shape"), &shape, &count)) {
      Refuse(400, "input '" + spec.name + "' has no valid \"shape\"", "send \"shape\": " + ShapeText(spec.shape));
    }
    const std::string* datatype = doc.StringOf(doc.Get(tensor, "datatype"));
    std::string expected = V2Datatype(spec.dtype);
    if (!datatype || *datatype != expected) {
      Refuse(400, "input '" + spec.name + "' datatype is '" + (datatype ? *datatype : std::string()) + "', the model takes " +
                      expected, "send \"datatype\": \"" + expected + "\"");
    }
    const Dtype* dtype = DtypeByName(spec.dtype);
    const JsonNode* size = doc.Get(doc.Get(tensor, "parameters"), "binary_data_size");
    Array array;
    if (size) {
      if (size->kind != JsonNode::kInt || size->integer < 0 || offset + uint64_t(size->integer) > binary_size) {
        Refuse(400, "input '" + spec.name + "' binary_data_size runs past the body", "send the tensor bytes after the JSON header");
      }
      if (size->integer != count * dtype->size) {
        Refuse(400, "input '" + spec.name + "' has " + std::to_string(size->integer) + " bytes, shape " + ShapeText(shape) +
                        " needs " + std::to_string(count * dtype->size), "send the whole tensor");
      }
      array = Array{dtype, shape, std::vector<char>(binary + offset, binary + offset + size->integer)};
      offset += size_t(size->integer);
    } else {
      const JsonNode* data = doc.Get(tensor, "data");
      if (!data || data->kind != JsonNode::kArray) {
        Refuse(400, "input '" + spec.name + "' has no \"data\" list", "send the elements, flat in row-major order or nested");
      }
      array = ArrayFromJson(doc, *data, spec);
      if (NumElements(array.shape) != count) {
        Refuse(400, "input '" + spec.name + "' has " + std::to_string(NumElements(array.shape)) + " elements, shape " +
                        ShapeText(shape) + " needs " + std::to_string(count), "send one element per position of the shape");
      }
      array.shape = shape;
    }
    request.inputs.push_back(std::move(array));
  }
  if (offset != binary_size) {
    Refuse(400, std::to_string(binary_size - offset) + " bytes follow the last binary input", "send exactly the binary_data_size bytes");
  }
  if (const JsonNode* requested = doc.Get(&doc.root(), "outputs")) {
    bool ok = requested->kind == JsonNode::kArray;
    for (uint32_t k = 0; ok && k < requested->size; ++k) {
      const std::string* name = doc.StringOf(doc.Get(doc.Children(*requested) + k, "name"));
      std::string text = name ? *name : "";
      ok = std::any_of(output_specs.begin(), output_specs.end(), [&](const TensorSpec& s) { return s.name == text; });
      request.wanted.push_back(text);
    }
    if (!ok) Refuse(400, "\"outputs\" names an unknown output", "ask for some of the outputs in the model metadata");
  }
  request.id = doc.StringOf(doc.Get(&doc.root(), "id"));
  return request;
}

// The v1 answer without its closing brace (the caller adds latency_ms).
std::string EncodeV1(const std::string& name, const std::string& version, double model_ms, const std::vector<Array>& outputs,
                     const std::vector<TensorSpec>& output_specs) {
  std::string out = "{\"model\":" + JsonString(name) + ",\"version\":" + JsonString(version) + ",\"model_ms\":";
  AppendNumber(&out, std::round(model_ms * 1e4) / 1e4, 10);
  out += ",\"outputs\":{";
  for (size_t o = 0; o < outputs.size(); ++o) {
    out += (o ? "," : "") + JsonString(OutputName(output_specs, o)) + ":";
    AppendArray(&out, outputs[o], true);
  }
  return out + "}";
}

std::string EncodeV2(const std::string& name, const std::string& version, const InferRequest& request,
                     const std::vector<Array>& outputs, const std::vector<TensorSpec>& output_specs) {
  std::string out = "{\"model_name\":" + JsonString(name) + ",\"model_version\":" + JsonString(version);
  if (request.id) out += ",\"id\":" + JsonString(*request.id);
  out += ",\"outputs\":[";
  bool first = true;
  for (size_t o = 0; o < outputs.size(); ++o) {
    std::string output = OutputName(output_specs, o);
    if (!request.wanted.empty() && std::find(request.wanted.begin(), request.wanted.end(), output) == request.wanted.end()) continue;
    out += std::string(first ? "" : ",") + "{\"name\":" + JsonString(output) + ",\"datatype\":" +
           JsonString(V2Datatype(outputs[o].dtype->name)) + ",\"shape\":[";
    for (size_t d = 0; d < outputs[o].shape.size(); ++d) out += (d ? "," : "") + std::to_string(outputs[o].shape[d]);
    out += "],\"data\":";
    AppendArray(&out, outputs[o], false);
    out += "}";
    first = false;
  }
  return out + "]}";
}

}  // namespace

#endif  // EDGEPACK_NATIVE_SERVE_INFER_H_
