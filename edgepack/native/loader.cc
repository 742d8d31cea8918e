// edgepack-run: runs, verifies and benchmarks an edgepack bundle (docs/bundle-format.md) with the
// TVM runtime alone. Every failure ends as one line on stderr, `error: <problem>; <fix>`, and one
// of the exit codes of the bundle format.
#include <dlpack/dlpack.h>
#include <gnu/libc-version.h>
#include <limits.h>
#include <sys/auxv.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sha256.h"

namespace ffi = tvm::ffi;
namespace json = tvm::ffi::json;

namespace {

constexpr int64_t kSchemaVersion = 1;
constexpr int kPooledAllocator = 2;
enum ExitCode {
  kExitUser = 1,
  kExitUsage = 2,
  kExitIntegrity = 3,
  kExitVerify = 4,
  kExitInternal = 70
};

const char kUsage[] =
    "usage: edgepack-run run [--bundle DIR] --input X.npy [--input ...]\n"
    "                        (-o OUT.npy | --output-dir DIR)\n"
    "       edgepack-run verify [--bundle DIR]\n"
    "       edgepack-run bench [--bundle DIR] [--warmup N] [--runs N] [--input X.npy ...]\n"
    "The bundle defaults to the directory above the one holding this program.\n";

// A failure reported as one line; thrown anywhere, printed by main().
struct Failure {
  int code;
  std::string problem;
  std::string fix;
};

[[noreturn]] void Fail(int code, std::string problem, std::string fix) {
  throw Failure{code, std::move(problem), std::move(fix)};
}

// ---------------------------------------------------------------- arrays and .npy files

struct Dtype {
  const char* name;   // numpy / TVM name
  const char* descr;  // .npy descr; descr[1] is the kind: f, i, u or b
  int size;
};
const Dtype kDtypes[] = {{"float32", "<f4", 4}, {"float64", "<f8", 8}, {"float16", "<f2", 2},
                         {"int64", "<i8", 8},   {"int32", "<i4", 4},   {"int8", "|i1", 1},
                         {"uint8", "|u1", 1},   {"bool", "|b1", 1}};
const char kDtypeList[] = "float32, float64, float16, int64, int32, int8, uint8, bool";

const Dtype* DtypeByName(const std::string& name) {
  for (const Dtype& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const Dtype* DtypeByDescr(const std::string& descr) {
  for (const Dtype& d : kDtypes) {
    bool one_byte_alias =
        d.size == 1 && descr.size() == 3 && descr[0] == '<' && descr.substr(1) == d.descr + 1;
    if (descr == d.descr || one_byte_alias) return &d;
  }
  return nullptr;
}

struct Array {
  const Dtype* dtype;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Python's spelling of a shape tuple: (), (3,), (2, 3).
std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// The text following `'key':` in a .npy header dict, with leading spaces skipped.
std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) return "";
  at = header.find_first_not_of(' ', at + key.size() + 3);
  return at == std::string::npos ? "" : header.substr(at);
}

Array ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(kExitUser, "cannot read '" + path + "'", "check the path");
  auto bad = [&](const std::string& why) {
    Fail(kExitUser, "'" + path + "' is not a valid .npy file (" + why + ")",
         "write it with numpy.save");
  };
  unsigned char prefix[10];
  in.read(reinterpret_cast<char*>(prefix), 10);
  if (!in || std::memcmp(prefix, "\x93NUMPY", 6) != 0) bad("no .npy magic");
  uint32_t header_len = prefix[8] | (prefix[9] << 8);
  if (prefix[6] >= 2) {  // versions 2 and 3 use a 4-byte header length
    unsigned char high[2];
    in.read(reinterpret_cast<char*>(high), 2);
    header_len |= (uint32_t(high[0]) << 16) | (uint32_t(high[1]) << 24);
  }
  std::string header(header_len, '\0');
  in.read(&header[0], header_len);
  if (!in) bad("truncated header");

  std::string descr = HeaderValue(header, "descr");
  if (descr.empty() || descr[0] != '\'') bad("no descr");
  descr = descr.substr(1, descr.find('\'', 1) - 1);
  Array array{DtypeByDescr(descr), {}, {}};
  if (array.dtype == nullptr) {
    Fail(kExitUser, "'" + path + "' has unsupported dtype '" + descr + "'",
         std::string("save it as little-endian ") + kDtypeList);
  }
  std::string fortran = HeaderValue(header, "fortran_order");
  if (fortran.rfind("True", 0) == 0) {
    Fail(kExitUser, "'" + path + "' is stored in Fortran order",
         "save a C-ordered array: numpy.save(path, numpy.ascontiguousarray(a))");
  }
  std::string shape = HeaderValue(header, "shape");
  if (shape.empty() || shape[0] != '(' || shape.find(')') == std::string::npos) bad("no shape");
  std::istringstream dims(shape.substr(1, shape.find(')') - 1));
  for (std::string dim; std::getline(dims, dim, ',');) {
    if (dim.find_first_not_of(' ') == std::string::npos) {
      continue;  // after the trailing comma
    }
    char* end = nullptr;
    long long value = std::strtoll(dim.c_str(), &end, 10);
    if (value < 0 || end == dim.c_str()) bad("bad shape " + shape.substr(0, shape.find(')') + 1));
    array.shape.push_back(value);
  }
  array.data.resize(NumElements(array.shape) * array.dtype->size);
  in.read(array.data.data(), array.data.size());
  if (size_t(in.gcount()) != array.data.size()) bad("truncated data");
  return array;
}

void WriteNpy(const std::string& path, const Array& array) {
  std::string header = std::string("{'descr': '") + array.dtype->descr +
                       "', 'fortran_order': False, 'shape': " + ShapeText(array.shape) + ", }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // total length a multiple of 64
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const char prefix[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  uint16_t len = static_cast<uint16_t>(header.size());
  char len_bytes[2] = {char(len & 0xff), char(len >> 8)};
  out.write(prefix, 8).write(len_bytes, 2).write(header.data(), header.size());
  out.write(array.data.data(), array.data.size());
  if (!out) {
    Fail(kExitUser, "cannot write '" + path + "'",
         "check that its directory exists and is writable");
  }
}

double HalfToDouble(uint16_t h) {
  int exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
  double value = exponent == 0    ? std::ldexp(fraction, -24)
                 : exponent == 31 ? (fraction ? NAN : INFINITY)
                                  : std::ldexp(fraction | 0x400, exponent - 25);
  return (h & 0x8000) ? -value : value;
}

double ElementAt(const Array& array, int64_t i) {
  const char* p = array.data.data() + i * array.dtype->size;
  auto load = [p](auto value) {
    std::memcpy(&value, p, sizeof(value));
    return value;
  };
  switch (array.dtype->descr[1]) {
    case 'f':
      return array.dtype->size == 2   ? HalfToDouble(load(uint16_t()))
             : array.dtype->size == 4 ? load(float())
                                      : load(double());
    case 'i':
      return array.dtype->size == 1   ? load(int8_t())
             : array.dtype->size == 4 ? load(int32_t())
                                      : double(load(int64_t()));
    default:
      return load(uint8_t());
  }
}

// ---------------------------------------------------------------- manifest.json

struct TensorSpec {
  std::string name, dtype;
  std::vector<int64_t> shape;
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
  std::vector<std::string> param_names;
  double atol = 0, rtol = 0;
  std::vector<GoldenCase> golden;
  std::vector<FileEntry> files;
  // What the device must offer (manifest "requires"; absent in older bundles).
  std::string required_arch, required_glibc;
  std::vector<std::string> required_features;
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
    specs.push_back(spec);
  }
  return specs;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
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
  json::Value root = json::Parse(ReadFile(path), &parse_error);
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
  m.library = As<std::string>(Field(root, "library"), "library");
  json::Value params = Field(root, "params");
  m.params_file = As<std::string>(Field(params, "file"), "params.file");
  m.param_names = Strings(Field(params, "names"), "params.names");
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
  }
  return m;
}

// ---------------------------------------------------------------- integrity

std::string FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chunk(1 << 16);
  edgepack::Sha256 hash;
  while (in) {
    in.read(chunk.data(), chunk.size());
    hash.Update(chunk.data(), in.gcount());
  }
  return hash.HexDigest();
}

void CheckFiles(const std::string& bundle, const Manifest& m) {
  const std::string fix =
      "copy the whole bundle again, or rebuild it; files inside a bundle must not change";
  for (const FileEntry& file : m.files) {
    if (file.path.empty() || file.path[0] == '/' ||
        ("/" + file.path + "/").find("/../") != std::string::npos) {
      BadManifest("file path '" + file.path + "' leaves the bundle");
    }
    std::string path = bundle + "/" + file.path;
    struct stat info;
    if (stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
      Fail(kExitIntegrity, "bundle file '" + file.path + "' is missing", fix);
    }
    if (info.st_size != file.size) {
      Fail(kExitIntegrity,
           "bundle file '" + file.path + "' has " + std::to_string(info.st_size) +
               " bytes, manifest.json says " + std::to_string(file.size),
           fix);
    }
    if (FileSha256(path) != file.sha256) {
      Fail(kExitIntegrity,
           "bundle file '" + file.path + "' does not match its SHA-256 in manifest.json", fix);
    }
  }
}

// ---------------------------------------------------------------- compatibility gate

#if defined(__aarch64__)
constexpr const char* kThisArch = "aarch64";
constexpr uint16_t kThisElfMachine = 183;  // EM_AARCH64
#elif defined(__x86_64__)
constexpr const char* kThisArch = "x86_64";
constexpr uint16_t kThisElfMachine = 62;  // EM_X86_64
#else
constexpr const char* kThisArch = "unknown";
constexpr uint16_t kThisElfMachine = 0;
#endif

std::string ElfArch(uint16_t machine) {
  switch (machine) {
    case 62: return "x86_64";
    case 183: return "aarch64";
    case 40: return "arm (32-bit)";
    default: return "ELF machine " + std::to_string(machine);
  }
}

// Whether this CPU has a feature named as in /proc/cpuinfo (kernel hwcap names on Arm).
bool CpuHas(const std::string& feature) {
#if defined(__aarch64__)
  struct Bit { const char* name; int hwcap; unsigned long mask; };
  static const Bit kBits[] = {
      {"fp", AT_HWCAP, 1UL << 0},        {"asimd", AT_HWCAP, 1UL << 1},
      {"aes", AT_HWCAP, 1UL << 3},       {"crc32", AT_HWCAP, 1UL << 7},
      {"atomics", AT_HWCAP, 1UL << 8},   {"fphp", AT_HWCAP, 1UL << 9},
      {"asimdhp", AT_HWCAP, 1UL << 10},  {"asimdrdm", AT_HWCAP, 1UL << 12},
      {"asimddp", AT_HWCAP, 1UL << 20},  {"sve", AT_HWCAP, 1UL << 22},
      {"sve2", AT_HWCAP2, 1UL << 1},     {"i8mm", AT_HWCAP2, 1UL << 13},
      {"bf16", AT_HWCAP2, 1UL << 14},
  };
  for (const Bit& bit : kBits) {
    if (feature == bit.name) return (getauxval(bit.hwcap) & bit.mask) != 0;
  }
  return false;
#elif defined(__x86_64__)
  __builtin_cpu_init();
  if (feature == "avx2") return __builtin_cpu_supports("avx2");
  if (feature == "fma") return __builtin_cpu_supports("fma");
  if (feature == "avx512f") return __builtin_cpu_supports("avx512f");
  if (feature == "avx512_vnni" || feature == "avx512vnni") return __builtin_cpu_supports("avx512vnni");
  if (feature == "sse4_2") return __builtin_cpu_supports("sse4.2");
  return false;
#else
  return false;
#endif
}

std::vector<int> VersionParts(const std::string& text) {
  std::vector<int> parts;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, '.')) parts.push_back(std::atoi(part.c_str()));
  return parts;
}

// Refuses, before the library is loaded, a bundle this machine cannot run.
void CheckCompatibility(const std::string& bundle, const Manifest& m) {
  std::ifstream library(bundle + "/" + m.library, std::ios::binary);
  unsigned char header[20] = {0};
  library.read(reinterpret_cast<char*>(header), sizeof(header));
  if (library.gcount() < 20 || std::memcmp(header, "\x7f" "ELF", 4) != 0) {
    Fail(kExitIntegrity, "'" + m.library + "' is not an ELF shared library", "rebuild the bundle");
  }
  uint16_t machine = static_cast<uint16_t>(header[18] | (header[19] << 8));
  if (machine != kThisElfMachine) {
    Fail(kExitUser,
         "bundle is built for " + ElfArch(machine) + ", this machine is " + kThisArch,
         "run it on " + ElfArch(machine) + " hardware, or build it for a " + kThisArch + " target");
  }
  std::string missing;
  for (const std::string& feature : m.required_features) {
    if (!CpuHas(feature)) missing += (missing.empty() ? "" : ", ") + feature;
  }
  if (!missing.empty()) {
    Fail(kExitUser, "this CPU lacks " + missing + ", which the bundle's target requires",
         "build for a target without those features (see `edgepack targets`)");
  }
  if (!m.required_glibc.empty()) {
    std::string have = gnu_get_libc_version();
    if (VersionParts(have) < VersionParts(m.required_glibc)) {
      Fail(kExitUser, "bundle needs glibc " + m.required_glibc + ", this system has " + have,
           "update the device's OS, or build with a toolchain for an older glibc");
    }
  }
}

// ---------------------------------------------------------------- inputs

void CheckInputs(const std::vector<Array>& arrays, const std::vector<TensorSpec>& specs) {
  if (arrays.size() != specs.size()) {
    std::string names;
    for (const TensorSpec& s : specs) names += (names.empty() ? "" : ", ") + s.name;
    Fail(kExitUser,
         "the model takes " + std::to_string(specs.size()) + " input(s) (" + names + "), got " +
             std::to_string(arrays.size()),
         "pass one --input per model input, in this order: " + names);
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    const std::vector<int64_t>& got = arrays[i].shape;
    std::string what = "input '" + spec.name + "' ";
    std::string fix = "pass a " + spec.dtype + " array of shape " + ShapeText(spec.shape);
    if (spec.dtype != arrays[i].dtype->name) {
      Fail(kExitUser, what + "dtype: expected " + spec.dtype + ", got " + arrays[i].dtype->name,
           fix);
    }
    if (got.size() != spec.shape.size()) {
      Fail(kExitUser,
           what + "rank: expected " + std::to_string(spec.shape.size()) + ", got " +
               std::to_string(got.size()),
           fix);
    }
    for (size_t d = 0; d < got.size(); ++d) {
      if (got[d] != spec.shape[d]) {
        Fail(kExitUser,
             what + "dim " + std::to_string(d) + ": expected " + std::to_string(spec.shape[d]) +
                 ", got " + std::to_string(got[d]),
             fix);
      }
    }
  }
}

std::vector<Array> ReadArrays(const std::string& base, const std::vector<std::string>& paths) {
  std::vector<Array> arrays;
  for (const std::string& path : paths) arrays.push_back(ReadNpy(base + path));
  return arrays;
}

// ---------------------------------------------------------------- the TVM model

ffi::Function Global(const char* name) {
  std::optional<ffi::Function> f = ffi::Function::GetGlobal(name);
  if (!f) {
    Fail(kExitInternal, std::string("the TVM runtime has no function '") + name + "'",
         "ship the libtvm_runtime.so the bundle was built with");
  }
  return *f;
}

ffi::Function ModuleFunction(const ffi::Module& module, const char* name,
                             const std::string& library) {
  ffi::Optional<ffi::Function> f = module->GetFunction(name);
  if (!f) {
    Fail(kExitIntegrity, "'" + library + "' has no function '" + name + "'",
         "rebuild the bundle with `edgepack build`");
  }
  return *f;
}

ffi::Tensor ToTensor(const Array& array) {
  static ffi::Function alloc = Global("runtime.TVMTensorAllocWithScope");
  ffi::Tensor tensor = alloc(ffi::Shape(array.shape), ffi::StringToDLDataType(array.dtype->name),
                             DLDevice{kDLCPU, 0}, ffi::Optional<ffi::String>())
                           .cast<ffi::Tensor>();
  std::memcpy(tensor.data_ptr(), array.data.data(), array.data.size());
  return tensor;
}

Array FromTensor(const ffi::Tensor& tensor) {
  std::string dtype(ffi::DLDataTypeToString(tensor.dtype()));
  Array array{DtypeByName(dtype), {tensor.shape().begin(), tensor.shape().end()}, {}};
  if (array.dtype == nullptr || tensor.device().device_type != kDLCPU || !tensor.IsContiguous()) {
    Fail(kExitInternal, "the model returned a " + dtype + " tensor that cannot be saved as .npy",
         std::string("outputs must be contiguous CPU tensors of ") + kDtypeList);
  }
  array.data.resize(NumElements(array.shape) * array.dtype->size);
  std::memcpy(array.data.data(), static_cast<char*>(tensor.data_ptr()) + tensor.byte_offset(),
              array.data.size());
  return array;
}

class Model {
 public:
  Model(const std::string& bundle, const Manifest& m) {
    try {
      ffi::Module library = ffi::Module::LoadFromFile(bundle + "/" + m.library);
      ffi::Module vm =
          ModuleFunction(library, "vm_load_executable", m.library)().cast<ffi::Module>();
      ModuleFunction(vm, "vm_initialization", m.library)(int(kDLCPU), 0, kPooledAllocator);
      main_ = ModuleFunction(vm, "main", m.library);
      vm_ = vm;
    } catch (const ffi::Error& e) {
      Fail(kExitUser, "cannot load '" + m.library + "': " + e.message(),
           "run the bundle on a machine matching its target (see 'target' in manifest.json)");
    }
    ffi::Bytes bytes(ReadFile(bundle + "/" + m.params_file));
    auto table = Global("runtime.LoadParams")(bytes).cast<ffi::Map<ffi::String, ffi::Tensor>>();
    for (const std::string& name : m.param_names) {
      std::optional<ffi::Tensor> param = table.Get(name);
      if (!param) {
        Fail(kExitIntegrity, "'" + m.params_file + "' has no weight '" + name + "'",
             "rebuild the bundle with `edgepack build`");
      }
      params_.push_back(*param);
    }
  }

  // main(inputs..., params...) returns a tensor or a tuple (ffi::Array) of tensors.
  std::vector<ffi::Tensor> Run(const std::vector<ffi::Tensor>& inputs) const {
    std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
    args.insert(args.end(), params_.begin(), params_.end());
    ffi::Any result;
    main_.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    if (auto tensor = result.as<ffi::Tensor>()) return {*tensor};
    std::vector<ffi::Tensor> outputs;
    for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) {
      outputs.push_back(item.cast<ffi::Tensor>());
    }
    return outputs;
  }

 private:
  ffi::Optional<ffi::Module> vm_;  // keeps the VM alive behind main_
  ffi::Function main_;
  std::vector<ffi::Tensor> params_;
};

std::vector<ffi::Tensor> ToTensors(const std::vector<Array>& arrays) {
  std::vector<ffi::Tensor> tensors;
  for (const Array& array : arrays) tensors.push_back(ToTensor(array));
  return tensors;
}

// ---------------------------------------------------------------- commands

struct Options {
  std::string command, bundle, output, output_dir;
  std::vector<std::string> inputs;
  long warmup = 10, runs = 100;
};

long ParseCount(const std::string& option, const std::string& text, long minimum) {
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < minimum) {
    Fail(kExitUsage,
         option + " takes an integer >= " + std::to_string(minimum) + ", got '" + text + "'",
         "see edgepack-run --help");
  }
  return value;
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  opt.command = argc > 1 ? argv[1] : "";
  if (opt.command == "-h" || opt.command == "--help") {
    std::cout << kUsage;
    std::exit(0);
  }
  bool run = opt.command == "run", bench = opt.command == "bench";
  if (!run && !bench && opt.command != "verify") {
    Fail(kExitUsage,
         opt.command.empty() ? "no command given" : "unknown command '" + opt.command + "'",
         "use one of: run, verify, bench (see edgepack-run --help)");
  }
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i], inline_value;
    bool has_inline = arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos;
    if (has_inline) {
      inline_value = arg.substr(arg.find('=') + 1);
      arg = arg.substr(0, arg.find('='));
    }
    auto value = [&]() -> std::string {
      if (has_inline) return inline_value;
      if (i + 1 >= argc) {
        Fail(kExitUsage, "option " + arg + " needs a value", "see edgepack-run --help");
      }
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--bundle") {
      opt.bundle = value();
    } else if (arg == "--input" && (run || bench)) {
      opt.inputs.push_back(value());
    } else if ((arg == "-o" || arg == "--output") && run) {
      opt.output = value();
    } else if (arg == "--output-dir" && run) {
      opt.output_dir = value();
    } else if (arg == "--warmup" && bench) {
      opt.warmup = ParseCount(arg, value(), 0);
    } else if (arg == "--runs" && bench) {
      opt.runs = ParseCount(arg, value(), 1);
    } else {
      Fail(kExitUsage, "unknown option '" + arg + "' for '" + opt.command + "'",
           "see edgepack-run --help");
    }
  }
  if (run && opt.output.empty() == opt.output_dir.empty()) {
    Fail(kExitUsage, "'run' needs exactly one of -o OUT.npy and --output-dir DIR",
         "see edgepack-run --help");
  }
  return opt;
}

std::string DefaultBundle() {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  std::string path(exe, n > 0 ? n : 0);
  size_t runtime_dir = path.rfind('/');
  size_t bundle_dir = runtime_dir == std::string::npos || runtime_dir == 0
                          ? std::string::npos
                          : path.rfind('/', runtime_dir - 1);
  if (bundle_dir == std::string::npos) {
    Fail(kExitUsage, "cannot find the bundle from /proc/self/exe", "pass --bundle DIR");
  }
  return bundle_dir == 0 ? "/" : path.substr(0, bundle_dir);
}

int Run(const Options& opt, const std::string& bundle, const Manifest& m) {
  if (!opt.output.empty() && m.outputs.size() > 1) {
    Fail(kExitUsage,
         "the model has " + std::to_string(m.outputs.size()) + " outputs and -o writes one",
         "use --output-dir DIR to write output_<i>.npy for each");
  }
  std::vector<Array> inputs = ReadArrays("", opt.inputs);
  CheckInputs(inputs, m.inputs);
  std::vector<ffi::Tensor> outputs = Model(bundle, m).Run(ToTensors(inputs));
  if (!opt.output.empty()) {
    if (outputs.size() != 1) {
      Fail(kExitUsage, "the model returned " + std::to_string(outputs.size()) + " outputs",
           "use --output-dir DIR");
    }
    WriteNpy(opt.output, FromTensor(outputs[0]));
    return 0;
  }
  mkdir(opt.output_dir.c_str(), 0777);  // an existing directory is fine; WriteNpy reports the rest
  for (size_t i = 0; i < outputs.size(); ++i) {
    WriteNpy(opt.output_dir + "/output_" + std::to_string(i) + ".npy", FromTensor(outputs[i]));
  }
  return 0;
}

// Largest element-wise |got - ref|; `passed` when every element is within atol + rtol * |ref|.
struct Comparison {
  bool passed = true;
  double max_abs_err = 0;
};

Comparison Compare(const Array& got, const Array& ref, double atol, double rtol) {
  Comparison c;
  if (got.shape != ref.shape) return {false, INFINITY};
  for (int64_t i = 0, n = NumElements(ref.shape); i < n; ++i) {
    double g = ElementAt(got, i), r = ElementAt(ref, i), err;
    bool ok;
    if (std::isnan(g) || std::isnan(r) || std::isinf(g) || std::isinf(r)) {
      ok = g == r || (std::isnan(g) && std::isnan(r));
      err = ok ? 0 : INFINITY;
    } else {
      err = std::fabs(g - r);
      ok = err <= atol + rtol * std::fabs(r);
    }
    c.passed = c.passed && ok;
    c.max_abs_err = std::max(c.max_abs_err, err);
  }
  return c;
}

int Verify(const std::string& bundle, const Manifest& m) {
  if (m.golden.empty()) {
    Fail(kExitVerify, "the bundle has no golden cases", "rebuild the bundle with golden vectors");
  }
  Model model(bundle, m);
  int failed = 0, total = 0;
  std::string first_failure;
  for (size_t c = 0; c < m.golden.size(); ++c) {
    std::vector<Array> inputs = ReadArrays(bundle + "/", m.golden[c].inputs);
    CheckInputs(inputs, m.inputs);
    std::vector<ffi::Tensor> outputs = model.Run(ToTensors(inputs));
    std::vector<Array> refs = ReadArrays(bundle + "/", m.golden[c].outputs);
    for (size_t o = 0; o < std::max(outputs.size(), refs.size()); ++o) {
      Comparison cmp{false, INFINITY};
      if (o < outputs.size() && o < refs.size()) {
        cmp = Compare(FromTensor(outputs[o]), refs[o], m.atol, m.rtol);
      }
      std::string label = "case " + std::to_string(c) + " output " + std::to_string(o);
      if (o < m.outputs.size()) label += " '" + m.outputs[o].name + "'";
      std::printf("%s: max_abs_err %.3g %s\n", label.c_str(), cmp.max_abs_err,
                  cmp.passed ? "PASS" : "FAIL");
      ++total;
      if (!cmp.passed && failed++ == 0) first_failure = label;
    }
  }
  std::printf("verify: %d of %d outputs passed (atol %g, rtol %g)\n", total - failed, total, m.atol,
              m.rtol);
  if (failed > 0) {
    Fail(kExitVerify,
         std::to_string(failed) +
             " golden output(s) differ from the reference beyond tolerance (first: " +
             first_failure + ")",
         "check that this device matches the bundle's target, then rebuild with `edgepack build`");
  }
  return 0;
}

// Set by main() when it chose the thread count because TVM_NUM_THREADS was unset.
bool g_threads_defaulted = false;

// Threads the TVM runtime uses, and where that number came from.
std::pair<long, std::string> Threads() {
  if (const char* env = std::getenv("TVM_NUM_THREADS"); env && std::atol(env) > 0) {
    return {std::atol(env), g_threads_defaulted ? "all cores (TVM_NUM_THREADS unset)" : "TVM_NUM_THREADS"};
  }
  if (auto num_threads = ffi::Function::GetGlobal("runtime.NumThreads")) {
    return {(*num_threads)().cast<int>(), "runtime.NumThreads"};
  }
  return {long(std::thread::hardware_concurrency()), "hardware_concurrency"};
}

int Bench(const Options& opt, const std::string& bundle, const Manifest& m) {
  bool from_files = !opt.inputs.empty();
  if (!from_files && m.golden.empty()) {
    Fail(kExitUser, "the bundle has no golden inputs to benchmark with",
         "pass --input for each model input");
  }
  std::vector<Array> arrays =
      from_files ? ReadArrays("", opt.inputs) : ReadArrays(bundle + "/", m.golden[0].inputs);
  CheckInputs(arrays, m.inputs);
  Model model(bundle, m);
  std::vector<ffi::Tensor> inputs = ToTensors(arrays);
  for (long i = 0; i < opt.warmup; ++i) model.Run(inputs);
  std::vector<double> ms;
  for (long i = 0; i < opt.runs; ++i) {
    auto start = std::chrono::steady_clock::now();
    model.Run(inputs);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  size_t n = ms.size();  // percentiles by nearest rank
  auto percentile = [&](size_t p) { return ms[std::max<size_t>(1, (p * n + 99) / 100) - 1]; };
  double median = n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2;
  double mean = 0;
  for (double t : ms) mean += t / n;
  auto [threads, threads_source] = Threads();
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  std::printf("{\n  \"runs\": %ld,\n  \"warmup\": %ld,\n", opt.runs, opt.warmup);
  std::printf("  \"min_ms\": %.6f,\n  \"median_ms\": %.6f,\n", ms[0], median);
  std::printf("  \"p90_ms\": %.6f,\n  \"p99_ms\": %.6f,\n", percentile(90), percentile(99));
  std::printf("  \"mean_ms\": %.6f,\n  \"throughput_per_s\": %.3f,\n", mean,
              mean > 0 ? 1000.0 / mean : 0.0);
  std::printf("  \"threads\": %ld,\n  \"threads_source\": \"%s\",\n", threads,
              threads_source.c_str());
  std::printf("  \"peak_rss_kb\": %ld,\n  \"inputs_from\": \"%s\"\n}\n", usage.ru_maxrss,
              from_files ? "files" : "golden");
  return 0;
}

int Main(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  std::string bundle = opt.bundle.empty() ? DefaultBundle() : opt.bundle;
  Manifest manifest = ReadManifest(bundle);
  CheckFiles(bundle, manifest);
  CheckCompatibility(bundle, manifest);
  if (opt.command == "run") return Run(opt, bundle, manifest);
  if (opt.command == "verify") return Verify(bundle, manifest);
  return Bench(opt, bundle, manifest);
}

void PrintError(const std::string& problem, const std::string& fix) {
  std::string line = "error: " + problem + "; " + fix;
  std::replace(line.begin(), line.end(), '\n', ' ');
  std::fflush(stdout);
  std::fprintf(stderr, "%s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // TVM's runtime pool otherwise uses half the hardware threads on x86 (it assumes SMT pairs).
  if (std::getenv("TVM_NUM_THREADS") == nullptr && std::thread::hardware_concurrency() > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(std::thread::hardware_concurrency()).c_str(), 0);
    g_threads_defaulted = true;
  }
  const std::string report = "this is a bug; please report it with the bundle's manifest.json";
  try {
    return Main(argc, argv);
  } catch (const Failure& f) {
    PrintError(f.problem, f.fix);
    return f.code;
  } catch (const ffi::Error& e) {
    PrintError("TVM runtime " + e.kind() + ": " + e.message(), report);
  } catch (const std::exception& e) {
    PrintError(std::string("internal error: ") + e.what(), report);
  }
  return kExitInternal;
}
