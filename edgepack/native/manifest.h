// Reading manifest.json (after the signature check) into a Manifest.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_MANIFEST_H_
#define EDGEPACK_NATIVE_MANIFEST_H_

namespace {

// Deepest [ / { nesting outside strings: the JSON parser recurses, so refuse absurd depths first.
void CheckNesting(const std::string& text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > 64) BadManifest("nests too deeply to be a manifest");
    } else if (c == ']' || c == '}') {
      --depth;
    }
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
  CheckNesting(text);
  json::Value root = json::Parse(text, &parse_error);
  if (!parse_error.empty()) BadManifest("not valid JSON (" + std::string(parse_error) + ")");
  int64_t version = As<int64_t>(Field(root, "schema_version"), "schema_version");
  if (version > kSchemaVersion) {
    Fail(kExitIntegrity,
         "bundle has schema_version " + std::to_string(version) +
             " but this loader supports schema_version " + std::to_string(kSchemaVersion),
         "run the bundle with its own runtime/edgepack-run or a newer edgepack");
  }
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
  std::optional<json::Value> requires_field = As<json::Object>(root, "manifest").Get(ffi::String("requires"));
  if (requires_field) {
    m.required_arch = As<std::string>(Field(*requires_field, "arch"), "requires.arch");
    m.required_glibc = As<std::string>(Field(*requires_field, "glibc"), "requires.glibc");
    m.required_features = Strings(Field(*requires_field, "cpu_features"), "requires.cpu_features");
    if (std::optional<json::Value> cuda = As<json::Object>(*requires_field, "requires").Get(ffi::String("cuda"))) {
      m.cuda_arch = As<std::string>(Field(*cuda, "gpu_arch"), "requires.cuda.gpu_arch");
      m.cuda_driver = As<std::string>(Field(*cuda, "driver"), "requires.cuda.driver");
      m.cuda_libraries = Strings(Field(*cuda, "libraries"), "requires.cuda.libraries");
    }
  }
  return m;
}

}  // namespace

#endif  // EDGEPACK_NATIVE_MANIFEST_H_
