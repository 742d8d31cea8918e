// Reading manifest.json (after the signature check) into a Manifest.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_MANIFEST_H_
#define EDGEPACK_NATIVE_MANIFEST_H_

namespace {

// The dtypes a manifest may name (as runtime/edgepack_format.py's _DTYPES).
const char* const kManifestDtypes[] = {"float32", "float64", "float16", "int64",  "int32",  "int16",
                                       "int8",    "uint64",  "uint32",  "uint16", "uint8",  "bool",
                                       "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                                       "float8_e5m2fnuz", "float4_e2m1fn", "float8_e8m0fnu", "int4", "uint4", "int2",
                                       "uint2"};

// Refuses a path in `files` that leaves the bundle or names the manifest or its signature.
void CheckFilePath(const std::string& rel) {
  if (rel.empty() || rel[0] == '/' || rel.find('\\') != std::string::npos ||
      rel.find('\0') != std::string::npos || ("/" + rel + "/").find("/../") != std::string::npos ||
      rel == "manifest.json" || rel == kSignatureFile) {
    BadManifest("file path '" + rel + "' leaves the bundle or names the manifest");
  }
}

// Every file the loader opens (library, params, golden vectors) is listed in `files`, so it is
// digest-checked before use; otherwise refused before anything is opened.
void CheckUsedFilesListed(const Manifest& m) {
  std::vector<std::string> used = {m.library, m.params_file};
  for (const GoldenCase& c : m.golden) {
    used.insert(used.end(), c.inputs.begin(), c.inputs.end());
    used.insert(used.end(), c.outputs.begin(), c.outputs.end());
  }
  std::sort(used.begin(), used.end());
  for (const std::string& rel : used) {
    bool listed = std::any_of(m.files.begin(), m.files.end(), [&](const FileEntry& f) { return f.path == rel; });
    if (!listed) BadManifest("'" + rel + "' is used but not listed in 'files'");
  }
}

Manifest ReadManifest(const std::string& bundle) {
  struct stat info;
  if (stat(bundle.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    Fail(kExitUser, "bundle directory '" + bundle + "' does not exist",
         "pass --bundle DIR naming an unpacked bundle");
  }
  std::string path = bundle + "/manifest.json";
  if (access(path.c_str(), R_OK) != 0) {
    Fail(kExitIntegrity, "'" + bundle + "' has no manifest.json",
         "pass --bundle DIR naming an unpacked bundle");
  }
  ffi::String parse_error;
  std::string text = ManifestText(bundle, path);
  if (std::string problem = StrictJson(text).Problem(); !problem.empty()) BadManifest(problem);
  json::Value root = json::Parse(text, &parse_error);
  if (!parse_error.empty()) BadManifest("not valid JSON (" + std::string(parse_error) + ")");
  int64_t version = As<int64_t>(Field(root, "schema_version"), "schema_version");
  if (version > kSchemaVersion) {
    Fail(kExitIntegrity,
         "bundle has schema_version " + std::to_string(version) +
             " but this loader supports schema_version " + std::to_string(kSchemaVersion),
         "run the bundle with its own runtime/edgepack-run or a newer edgepack");
  }
  for (const char* key : {"name", "version"}) {  // they name directories on devices
    std::string value = As<std::string>(Field(root, key), key);
    bool plain = !value.empty() && value != "." && value != ".." &&
                 std::none_of(value.begin(), value.end(), [](char c) { return c == '/' || (unsigned char)c < 32 || c == 127; });
    if (!plain) BadManifest(std::string("'") + key + "' must be a non-empty name without '/', NUL or control characters");
  }
  As<std::string>(Field(Field(root, "target"), "arch"), "target.arch");
  Manifest m;
  m.inputs = Specs(Field(root, "inputs"), "inputs");
  m.outputs = Specs(Field(root, "outputs"), "outputs");
  ApplyDimRanges(m.inputs, root);
  ApplyDimRanges(m.outputs, root);
  m.library = As<std::string>(Field(root, "library"), "library");
  json::Value params = Field(root, "params");
  m.params_file = As<std::string>(Field(params, "file"), "params.file");
  m.param_names = Strings(Field(params, "names"), "params.names");
  std::optional<json::Value> encoding = As<json::Object>(params, "params").Get(ffi::String("encoding"));
  if (encoding) m.params_encoding = As<std::string>(*encoding, "params.encoding");
  json::Value golden = Field(root, "golden");
  m.atol = As<double>(Field(golden, "atol"), "golden.atol");
  m.rtol = As<double>(Field(golden, "rtol"), "golden.rtol");
  for (const ffi::Any& item : As<json::Array>(Field(golden, "cases"), "golden.cases")) {
    m.golden.push_back({Strings(Field(item, "inputs"), "golden inputs"),
                        Strings(Field(item, "outputs"), "golden outputs")});
  }
  for (const auto& [path_any, entry] : As<json::Object>(Field(root, "files"), "files")) {
    m.files.push_back({As<std::string>(path_any, "files"),
                       As<std::string>(Field(entry, "sha256"), "sha256"),
                       As<int64_t>(Field(entry, "size"), "size")});
  }
  std::sort(m.files.begin(), m.files.end(), [](auto& a, auto& b) { return a.path < b.path; });
  if (m.files.empty()) BadManifest("'files' lists no files");
  for (const FileEntry& file : m.files) CheckFilePath(file.path);
  for (const auto* specs : {&m.inputs, &m.outputs}) {
    for (const TensorSpec& spec : *specs) {
      bool known = std::any_of(std::begin(kManifestDtypes), std::end(kManifestDtypes),
                               [&](const char* name) { return spec.dtype == name; });
      bool sizes = std::all_of(spec.shape.begin(), spec.shape.end(), [](int64_t d) { return d >= 0; });
      if (!known || !sizes) BadManifest("tensor '" + spec.name + "' needs a known dtype and a shape of ints >= 0");
    }
  }
  CheckUsedFilesListed(m);
  std::optional<json::Value> requires_field = As<json::Object>(root, "manifest").Get(ffi::String("requires"));
  if (requires_field) {
    json::Object fields = As<json::Object>(*requires_field, "requires");
    if (std::optional<json::Value> arch = fields.Get(ffi::String("arch"))) m.required_arch = As<std::string>(*arch, "requires.arch");
    if (std::optional<json::Value> glibc = fields.Get(ffi::String("glibc"))) m.required_glibc = As<std::string>(*glibc, "requires.glibc");
    if (std::optional<json::Value> features = fields.Get(ffi::String("cpu_features"))) {
      m.required_features = Strings(*features, "requires.cpu_features");
    }
    if (std::optional<json::Value> cuda = fields.Get(ffi::String("cuda"))) {
      m.cuda_arch = As<std::string>(Field(*cuda, "gpu_arch"), "requires.cuda.gpu_arch");
      m.cuda_driver = As<std::string>(Field(*cuda, "driver"), "requires.cuda.driver");
      m.cuda_libraries = Strings(Field(*cuda, "libraries"), "requires.cuda.libraries");
    }
  }
  return m;
}

}  // namespace

#endif  // EDGEPACK_NATIVE_MANIFEST_H_
