// edgepack-run: runs, verifies and benchmarks an edgepack bundle (docs/bundle-format.md) with the
// TVM runtime alone. Every failure ends as one line on stderr, `error: <problem>; <fix>`, and one
// of the exit codes of the bundle format.
#include <dirent.h>
#include <dlfcn.h>
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
#include "sparse_params.h"

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
    "Every command takes --device cpu|cuda (default: the bundle's target; cuda runs on GPU 0).\n"
    "Every command takes --keyring PATH (default $EDGEPACK_KEYRING): trusted ed25519 .pub keys;\n"
    "with one, only bundles whose manifest.sig.json verifies against them are loaded.\n"
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

// ---------------------------------------------------------------- signatures (docs/security.md)
// With a keyring (--keyring or $EDGEPACK_KEYRING: a PEM .pub file or a directory of them, never
// taken from the bundle), manifest.sig.json must carry an ed25519 signature by a trusted key over
// the exact bytes of manifest.json (a DSSE envelope), checked before the manifest is parsed. The
// ed25519 check is OpenSSL 3's, reached with dlopen from the device's own libcrypto.so.3 at a
// system path (never one inside the bundle), so nothing is linked or hand-written here.

#if defined(__aarch64__)
constexpr const char* kMultiarch = "aarch64";
#else
constexpr const char* kMultiarch = "x86_64";
#endif

std::string g_keyring;  // set by Main() from --keyring or $EDGEPACK_KEYRING; empty: no signature check

const char kPayloadType[] = "application/vnd.edgepack.manifest+json";
const char kSignatureFile[] = "manifest.sig.json";
constexpr size_t kMaxManifestBytes = size_t(16) << 20;

// Strict base64 (standard alphabet, '=' padding only at the end); whitespace is skipped when asked.
bool Base64Decode(const std::string& text, std::string* out, bool skip_space) {
  out->clear();
  uint32_t acc = 0;
  int bits = 0, pad = 0;
  for (char c : text) {
    if (skip_space && (c == ' ' || c == '\n' || c == '\r' || c == '\t')) continue;
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=') { ++pad; continue; }
    else return false;
    if (pad) return false;  // data after padding
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(char((acc >> bits) & 0xff));
    }
  }
  return pad <= 2 && (bits / 2 == pad || (bits == 0 && pad == 0));
}

std::string HexSha256(const std::string& data) {
  edgepack::Sha256 hash;
  hash.Update(data.data(), data.size());
  return hash.HexDigest();
}

// DSSE pre-authentication encoding: "DSSEv1 <len> <type> <len> <payload>".
std::string Pae(const std::string& type, const std::string& payload) {
  return "DSSEv1 " + std::to_string(type.size()) + " " + type + " " + std::to_string(payload.size()) +
         " " + payload;
}

// {keyid (SHA-256 of the raw key, hex), raw 32-byte ed25519 key} from PEM PUBLIC KEY blocks.
std::vector<std::pair<std::string, std::string>> ParsePublicKeys(const std::string& text,
                                                                 const std::string& where) {
  static const char kBegin[] = "-----BEGIN PUBLIC KEY-----", kEnd[] = "-----END PUBLIC KEY-----";
  static const unsigned char kPrefix[12] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03,
                                            0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};
  std::vector<std::pair<std::string, std::string>> keys;
  for (size_t at = text.find(kBegin); at != std::string::npos; at = text.find(kBegin, at)) {
    at += sizeof(kBegin) - 1;
    size_t end = text.find(kEnd, at);
    std::string der;
    if (end == std::string::npos || !Base64Decode(text.substr(at, end - at), &der, true) ||
        der.size() != 44 || std::memcmp(der.data(), kPrefix, 12) != 0) {
      Fail(kExitUser, "keyring file '" + where + "' holds a public key that is not ed25519",
           "put only keys made by `edgepack keygen` (NAME.pub) in the keyring");
    }
    keys.push_back({HexSha256(der.substr(12)), der.substr(12)});
  }
  return keys;
}

std::vector<std::pair<std::string, std::string>> LoadKeyring(const std::string& path) {
  struct stat info;
  std::vector<std::string> sources;
  if (stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) {
    if (DIR* dir = opendir(path.c_str())) {
      while (dirent* entry = readdir(dir)) {
        std::string name = entry->d_name;
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".pub") == 0) {
          sources.push_back(path + "/" + name);
        }
      }
      closedir(dir);
    }
    std::sort(sources.begin(), sources.end());
  } else if (stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode)) {
    sources.push_back(path);
  } else {
    Fail(kExitUser, "keyring '" + path + "' does not exist",
         "pass --keyring with a .pub file or a directory of .pub files made by `edgepack keygen`");
  }
  std::vector<std::pair<std::string, std::string>> keys;
  for (const std::string& source : sources) {
    for (auto& key : ParsePublicKeys(ReadFile(source), source)) keys.push_back(key);
  }
  if (keys.empty()) {
    Fail(kExitUser, "keyring '" + path + "' holds no ed25519 public keys",
         "add a .pub file made by `edgepack keygen`");
  }
  return keys;
}

// OpenSSL 3's ed25519 verification through dlopen: declared here, no headers needed.
bool Ed25519Verify(const std::string& key, const std::string& sig, const std::string& message) {
  using NewRawPublicKey = void* (*)(int, void*, const unsigned char*, size_t);
  using MdCtxNew = void* (*)();
  using DigestVerifyInit = int (*)(void*, void**, const void*, void*, void*);
  using DigestVerify = int (*)(void*, const unsigned char*, size_t, const unsigned char*, size_t);
  using Free = void (*)(void*);
  constexpr int kEvpPkeyEd25519 = 1087;  // NID_ED25519
  static void* handle = [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("EDGEPACK_LIBCRYPTO"); env && *env) candidates.push_back(env);
    const std::string arch_dirs[] = {"/usr/lib/" + std::string(kMultiarch) + "-linux-gnu",
                                     "/lib/" + std::string(kMultiarch) + "-linux-gnu", "/usr/lib64",
                                     "/lib64", "/usr/lib", "/lib", "/usr/local/lib"};
    for (const std::string& dir : arch_dirs) candidates.push_back(dir + "/libcrypto.so.3");
    for (const std::string& candidate : candidates) {
      if (access(candidate.c_str(), R_OK) != 0) continue;
      if (void* h = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    }
    return static_cast<void*>(nullptr);
  }();
  const std::string fix =
      "install OpenSSL 3 on the device (Debian/Ubuntu: apt-get install libssl3), or set "
      "EDGEPACK_LIBCRYPTO to its libcrypto.so.3";
  if (handle == nullptr) {
    Fail(kExitUser, "a keyring is configured but libcrypto.so.3 (OpenSSL 3) was not found", fix);
  }
  auto new_key = reinterpret_cast<NewRawPublicKey>(dlsym(handle, "EVP_PKEY_new_raw_public_key"));
  auto ctx_new = reinterpret_cast<MdCtxNew>(dlsym(handle, "EVP_MD_CTX_new"));
  auto verify_init = reinterpret_cast<DigestVerifyInit>(dlsym(handle, "EVP_DigestVerifyInit"));
  auto verify = reinterpret_cast<DigestVerify>(dlsym(handle, "EVP_DigestVerify"));
  auto ctx_free = reinterpret_cast<Free>(dlsym(handle, "EVP_MD_CTX_free"));
  auto key_free = reinterpret_cast<Free>(dlsym(handle, "EVP_PKEY_free"));
  if (!new_key || !ctx_new || !verify_init || !verify || !ctx_free || !key_free) {
    Fail(kExitUser, "the device's libcrypto.so.3 lacks the EVP ed25519 functions", fix);
  }
  void* pkey = new_key(kEvpPkeyEd25519, nullptr,
                       reinterpret_cast<const unsigned char*>(key.data()), key.size());
  void* ctx = ctx_new();
  bool ok = pkey && ctx && verify_init(ctx, nullptr, nullptr, nullptr, pkey) == 1 &&
            verify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                   reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
  if (ctx) ctx_free(ctx);
  if (pkey) key_free(pkey);
  return ok;
}

std::string ReadLimited(const std::string& path) {
  struct stat info;
  if (stat(path.c_str(), &info) == 0 && size_t(info.st_size) > kMaxManifestBytes) {
    Fail(kExitIntegrity, "'" + path + "' is larger than 16 MiB", "rebuild the bundle");
  }
  return ReadFile(path);
}

// The bytes of manifest.json; with a keyring, only after its signature checked out.
std::string ManifestText(const std::string& bundle, const std::string& path) {
  if (g_keyring.empty()) return ReadLimited(path);
  auto keys = LoadKeyring(g_keyring);
  const std::string envelope_path = bundle + "/" + kSignatureFile;
  const std::string resign = "sign it again with `edgepack sign BUNDLE KEY`";
  if (access(envelope_path.c_str(), R_OK) != 0) {
    Fail(kExitIntegrity,
         "bundle '" + bundle + "' is not signed (" + kSignatureFile +
             " is missing) and this device only accepts signed bundles",
         "sign it with `edgepack sign BUNDLE KEY` using a key in the device's keyring");
  }
  ffi::String parse_error;
  json::Value envelope = json::Parse(ReadLimited(envelope_path), &parse_error);
  auto bad = [&](const std::string& what) {
    Fail(kExitIntegrity, std::string(kSignatureFile) + ": " + what, resign);
  };
  if (!parse_error.empty()) bad("not valid JSON");
  std::optional<json::Object> object = envelope.try_cast<json::Object>();
  if (!object) bad("not a JSON object");
  auto text_field = [&](const json::Object& o, const char* key) {
    std::optional<json::Value> value = o.Get(ffi::String(key));
    std::optional<std::string> text = value ? value->try_cast<std::string>() : std::nullopt;
    if (!text) bad(std::string("needs a '") + key + "' string");
    return *text;
  };
  if (text_field(*object, "payloadType") != kPayloadType) {
    bad(std::string("payloadType is not '") + kPayloadType + "'");
  }
  std::string payload;
  if (!Base64Decode(text_field(*object, "payload"), &payload, false)) bad("payload is not base64");
  std::optional<json::Value> signatures_value = object->Get(ffi::String("signatures"));
  std::optional<json::Array> signatures =
      signatures_value ? signatures_value->try_cast<json::Array>() : std::nullopt;
  if (!signatures || signatures->empty()) bad("needs a non-empty 'signatures' list");
  const std::string message = Pae(kPayloadType, payload);
  bool trusted = false, verified = false;
  for (const ffi::Any& item : *signatures) {
    std::optional<json::Object> entry = item.try_cast<json::Object>();
    if (!entry) bad("a signature is not an object");
    std::string keyid = text_field(*entry, "keyid"), sig;
    if (!Base64Decode(text_field(*entry, "sig"), &sig, false)) bad("a signature is not base64");
    for (const auto& [id, key] : keys) {
      if (id != keyid) continue;
      trusted = true;
      verified = verified || Ed25519Verify(key, sig, message);
    }
  }
  if (!trusted) {
    Fail(kExitIntegrity, "bundle '" + bundle + "' is signed only by keys this device does not trust",
         "sign it with a key whose .pub is in the device's keyring");
  }
  if (!verified) {
    Fail(kExitIntegrity, "the signature of bundle '" + bundle + "' does not verify",
         "the manifest or its signature was modified; copy the bundle again or " + resign);
  }
  if (ReadLimited(path) != payload) {
    Fail(kExitIntegrity, "'" + path + "' is not the manifest that was signed",
         "copy the bundle again, or " + resign);
  }
  return payload;
}

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

// ---------------------------------------------------------------- nothing unlisted, exactly the checked bytes

// Refuses a bundle holding a file or link that manifest.json does not list.
void CheckNoExtraFiles(const std::string& bundle, const Manifest& m) {
  std::vector<std::string> pending = {""};
  while (!pending.empty()) {
    std::string rel_dir = pending.back();
    pending.pop_back();
    DIR* dir = opendir((bundle + "/" + rel_dir).c_str());
    if (dir == nullptr) continue;
    std::vector<std::string> names;
    while (dirent* entry = readdir(dir)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(dir);
    for (const std::string& name : names) {
      std::string rel = rel_dir.empty() ? name : rel_dir + "/" + name;
      struct stat info;
      if (lstat((bundle + "/" + rel).c_str(), &info) == 0 && S_ISDIR(info.st_mode)) {
        pending.push_back(rel);
        continue;
      }
      bool listed = rel == "manifest.json" || rel == kSignatureFile ||
                    std::any_of(m.files.begin(), m.files.end(),
                                [&](const FileEntry& f) { return f.path == rel; });
      if (!listed) {
        Fail(kExitIntegrity, "bundle holds '" + rel + "', which manifest.json does not list",
             "remove it, or copy the bundle again from its source");
      }
    }
  }
}

const FileEntry& ListedFile(const Manifest& m, const std::string& rel) {
  for (const FileEntry& f : m.files) {
    if (f.path == rel) return f;
  }
  BadManifest("'" + rel + "' is used but not listed in 'files'");
}

[[noreturn]] void ChangedAfterCheck(const std::string& rel) {
  Fail(kExitIntegrity, "bundle file '" + rel + "' changed after it was checked",
       "something is modifying the bundle; copy it again");
}

// A bundle file's bytes, read once and checked against its manifest entry.
std::string ReadChecked(const std::string& bundle, const Manifest& m, const std::string& rel) {
  const FileEntry& entry = ListedFile(m, rel);
  std::string data = ReadFile(bundle + "/" + rel);
  if (int64_t(data.size()) != entry.size || HexSha256(data) != entry.sha256) ChangedAfterCheck(rel);
  return data;
}

// Loads the model library from a copy in a fresh 0700 directory, hashed while copying, so a file
// swapped after the digest check cannot run. $TMPDIR (default /tmp) must allow mapping code.
ffi::Module LoadLibraryCopy(const std::string& bundle, const Manifest& m) {
  const FileEntry& entry = ListedFile(m, m.library);
  const char* tmp = std::getenv("TMPDIR");
  std::string dir_template = std::string(tmp && *tmp ? tmp : "/tmp") + "/edgepack-load-XXXXXX";
  std::vector<char> dir_buffer(dir_template.begin(), dir_template.end());
  dir_buffer.push_back('\0');
  if (mkdtemp(dir_buffer.data()) == nullptr) {
    Fail(kExitUser, "cannot create a private directory under " + dir_template.substr(0, dir_template.rfind('/')),
         "set TMPDIR to a writable directory that allows executables");
  }
  std::string dir = dir_buffer.data();
  std::string copy = dir + "/" + m.library.substr(m.library.rfind('/') + 1);
  auto cleanup = [&] {
    unlink(copy.c_str());
    rmdir(dir.c_str());
  };
  std::ifstream in(bundle + "/" + m.library, std::ios::binary);
  std::ofstream out(copy, std::ios::binary | std::ios::trunc);
  std::vector<char> chunk(1 << 16);
  edgepack::Sha256 hash;
  int64_t size = 0;
  while (in) {
    in.read(chunk.data(), chunk.size());
    hash.Update(chunk.data(), in.gcount());
    out.write(chunk.data(), in.gcount());
    size += in.gcount();
  }
  out.close();
  if (!out) {
    cleanup();
    Fail(kExitUser, "cannot copy '" + m.library + "' to " + dir + " for loading",
         "set TMPDIR to a writable directory with free space");
  }
  if (size != entry.size || hash.HexDigest() != entry.sha256) {
    cleanup();
    ChangedAfterCheck(m.library);
  }
  try {
    ffi::Module module = ffi::Module::LoadFromFile(copy);
    cleanup();  // the mapping stays valid after the file is gone
    return module;
  } catch (...) {
    cleanup();
    throw;
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

// ---------------------------------------------------------------- CUDA devices (docs/cuda.md)
// A bundle for a CUDA target (manifest requires.cuda) runs its kernels on GPU 0. The NVIDIA driver
// (libcuda.so.1) is the device's own; libcudart and TVM's CUDA runtime module ship in runtime/ and
// are opened with dlopen only here, so CPU bundles never need them.

DLDevice g_device{kDLCPU, 0};  // where inputs, weights and kernels live; set by SelectDevice()

bool OnGpu() { return g_device.device_type != kDLCPU; }

// Whether a GPU of compute capability major.minor runs cubins for `arch`: sm_XY needs the same X
// and a minor >= Y; sm_XYa / sm_XYf need exactly X.Y.
bool GpuRunsArch(const std::string& arch, int major, int minor) {
  std::string digits = arch.size() > 3 ? arch.substr(3) : "";
  bool exact = !digits.empty() && (digits.back() == 'a' || digits.back() == 'f');
  if (exact) digits.pop_back();
  if (digits.size() < 2) return false;
  int want_major = std::atoi(digits.substr(0, digits.size() - 1).c_str());
  int want_minor = digits.back() - '0';
  return major == want_major && (exact ? minor == want_minor : minor >= want_minor);
}

// Refuses, before anything is loaded, a machine whose driver or GPU cannot run the bundle's code.
void CheckCudaDevice(const Manifest& m) {
  const std::string fix = "run it on a machine with an NVIDIA GPU for " + m.cuda_arch +
                          " and a CUDA " + m.cuda_driver +
                          "+ driver (docs/cuda.md), or build the model for a CPU target";
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  if (driver == nullptr) {
    Fail(kExitUser, "no CUDA driver: libcuda.so.1 is not installed on this machine", fix);
  }
  auto get_version = reinterpret_cast<int (*)(int*)>(dlsym(driver, "cuDriverGetVersion"));
  auto init = reinterpret_cast<int (*)(unsigned)>(dlsym(driver, "cuInit"));
  auto get_count = reinterpret_cast<int (*)(int*)>(dlsym(driver, "cuDeviceGetCount"));
  auto get_attribute = reinterpret_cast<int (*)(int*, int, int)>(dlsym(driver, "cuDeviceGetAttribute"));
  if (!get_version || !init || !get_count || !get_attribute) {
    Fail(kExitUser, "no CUDA driver: the libcuda.so.1 found is not NVIDIA's driver", fix);
  }
  int version = 0;
  get_version(&version);
  std::vector<int> need = VersionParts(m.cuda_driver);
  int needed = (need.empty() ? 0 : need[0] * 1000) + (need.size() > 1 ? need[1] * 10 : 0);
  if (version < needed) {
    Fail(kExitUser,
         "the CUDA driver here supports CUDA " + std::to_string(version / 1000) + "." +
             std::to_string(version % 1000 / 10) + ", the bundle needs CUDA " + m.cuda_driver +
             " or newer",
         "install an NVIDIA driver for CUDA " + m.cuda_driver + "+ (docs/cuda.md)");
  }
  int status = init(0), count = 0;
  if (status != 0 || get_count(&count) != 0 || count < 1) {
    Fail(kExitUser,
         "no GPU: the CUDA driver finds no usable device (cuInit error " + std::to_string(status) + ")",
         fix);
  }
  int major = 0, minor = 0;
  get_attribute(&major, 75, 0);  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
  get_attribute(&minor, 76, 0);  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
  if (!GpuRunsArch(m.cuda_arch, major, minor)) {
    Fail(kExitUser,
         "GPU 0 has compute capability " + std::to_string(major) + "." + std::to_string(minor) +
             ", the bundle's GPU code is for " + m.cuda_arch,
         "build for this GPU's arch (e.g. --target cuda-sm" + std::to_string(major * 10 + minor) +
             ", see docs/cuda.md)");
  }
}

// Opens the shipped CUDA runtime (libcudart first, then TVM's CUDA module, which registers the
// cuda device and the loader of the library's embedded cubins).
void LoadCudaRuntime(const std::string& bundle, const Manifest& m) {
  std::vector<std::string> names = m.cuda_libraries;
  std::stable_partition(names.begin(), names.end(),
                        [](const std::string& name) { return name.rfind("libtvm", 0) != 0; });
  for (const std::string& name : names) {
    std::string path = bundle + "/runtime/" + name;
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      const char* why = dlerror();
      Fail(kExitUser, "cannot load runtime/" + name + ": " + (why ? why : "unknown error"),
           "check the NVIDIA driver (docs/cuda.md) and that the bundle was copied whole");
    }
  }
}

// `--device cpu|cuda` (default: the bundle's own): checks and loads what a GPU run needs.
void SelectDevice(const std::string& requested, const std::string& bundle, const Manifest& m) {
  std::string device = !requested.empty() ? requested : (m.cuda_arch.empty() ? "cpu" : "cuda");
  if (device == "cpu" && !m.cuda_arch.empty()) {
    Fail(kExitUsage, "the bundle's kernels are GPU code (" + m.cuda_arch + "), the CPU cannot run them",
         "drop --device cpu, or build the model for a CPU target");
  }
  if (device == "cuda" && m.cuda_arch.empty()) {
    Fail(kExitUsage, "the bundle holds no GPU code (it was built for a CPU target)",
         "drop --device cuda, or build it with --target cuda (docs/cuda.md)");
  }
  if (device == "cuda") {
    CheckCudaDevice(m);
    LoadCudaRuntime(bundle, m);
    g_device = DLDevice{kDLCUDA, 0};
  }
}

// Waits for the GPU's queued work (kernels run asynchronously); nothing to wait for on the CPU.
void SyncDevice() {
  if (!OnGpu()) return;
  static ffi::Function sync = Global("runtime.Device_StreamSync");
  sync(g_device, static_cast<void*>(nullptr));
}

// A tensor of `shape`/`dtype` on the bundle's device holding `bytes` (copied host -> device).
ffi::Tensor DeviceTensor(const ffi::Shape& shape, DLDataType dtype, const void* bytes, size_t size) {
  static ffi::Function alloc = Global("runtime.TVMTensorAllocWithScope");
  static ffi::Function copy_from = Global("runtime.TVMTensorCopyFromBytes");
  ffi::Tensor tensor = alloc(shape, dtype, g_device, ffi::Optional<ffi::String>()).cast<ffi::Tensor>();
  copy_from(tensor, const_cast<void*>(bytes), static_cast<int64_t>(size));
  return tensor;
}

// A host tensor (e.g. a weight from params.bin) moved to the device, once.
ffi::Tensor OnDevice(const ffi::Tensor& host) {
  if (!OnGpu()) return host;
  size_t size = ffi::GetDataSize(static_cast<size_t>(host.numel()), host.dtype());
  return DeviceTensor(host.shape(), host.dtype(), static_cast<char*>(host.data_ptr()) + host.byte_offset(), size);
}

// Copies a GPU output into `array` (device -> host, synchronous).
void CopyToHost(const ffi::Tensor& tensor, std::vector<char>* data) {
  static ffi::Function copy_to = Global("runtime.TVMTensorCopyToBytes");
  copy_to(tensor, static_cast<void*>(data->data()), static_cast<int64_t>(data->size()));
}

// Initializes the VM on the bundle's device; the host CPU comes last for a GPU.
void InitializeVm(const ffi::Function& vm_initialization) {
  if (OnGpu()) {
    vm_initialization(int(g_device.device_type), int(g_device.device_id), kPooledAllocator, int(kDLCPU), 0,
                      kPooledAllocator);
  } else {
    vm_initialization(int(kDLCPU), 0, kPooledAllocator);
  }
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
  bool on_gpu = tensor.device().device_type == kDLCUDA;
  if (array.dtype == nullptr || (tensor.device().device_type != kDLCPU && !on_gpu) || !tensor.IsContiguous()) {
    Fail(kExitInternal, "the model returned a " + dtype + " tensor that cannot be saved as .npy",
         std::string("outputs must be contiguous CPU tensors of ") + kDtypeList);
  }
  array.data.resize(NumElements(array.shape) * array.dtype->size);
  if (on_gpu) {  // device -> host
    CopyToHost(tensor, &array.data);
    return array;
  }
  std::memcpy(array.data.data(), static_cast<char*>(tensor.data_ptr()) + tensor.byte_offset(),
              array.data.size());
  return array;
}

class Model {
 public:
  Model(const std::string& bundle, const Manifest& m) {
    try {
      ffi::Module library = LoadLibraryCopy(bundle, m);
      ffi::Module vm =
          ModuleFunction(library, "vm_load_executable", m.library)().cast<ffi::Module>();
      InitializeVm(ModuleFunction(vm, "vm_initialization", m.library));
      main_ = ModuleFunction(vm, "main", m.library);
      vm_ = vm;
    } catch (const ffi::Error& e) {
      Fail(kExitUser, "cannot load '" + m.library + "': " + e.message(),
           "run the bundle on a machine matching its target (see 'target' in manifest.json)");
    }
    std::string data = ReadChecked(bundle, m, m.params_file);
    if (!m.params_encoding.empty()) {  // params.sparse: decoded in memory to the params.bin bytes
      std::string error;
      if (m.params_encoding != edgepack::kSparseParamsEncoding) {
        Fail(kExitIntegrity, "params encoding '" + m.params_encoding + "' is unknown to this loader",
             "run the bundle with its own runtime/edgepack-run");
      }
      if (!edgepack::DecodeSparseParams(data, &data, &error)) {
        Fail(kExitIntegrity, "'" + m.params_file + "': " + error, "copy the bundle again or rebuild it");
      }
    }
    ffi::Bytes bytes(data);
    auto table = Global("runtime.LoadParams")(bytes).cast<ffi::Map<ffi::String, ffi::Tensor>>();
    for (const std::string& name : m.param_names) {
      std::optional<ffi::Tensor> param = table.Get(name);
      if (!param) {
        Fail(kExitIntegrity, "'" + m.params_file + "' has no weight '" + name + "'",
             "rebuild the bundle with `edgepack build`");
      }
      params_.push_back(OnDevice(*param));
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
  for (const Array& array : arrays) {
    tensors.push_back(OnGpu() ? DeviceTensor(ffi::Shape(array.shape), ffi::StringToDLDataType(array.dtype->name),
                                             array.data.data(), array.data.size())
                              : ToTensor(array));
  }
  return tensors;
}

// ---------------------------------------------------------------- commands

struct Options {
  std::string command, bundle, output, output_dir, keyring;
  std::string device;  // --device cpu|cuda; empty: the bundle's own
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
    } else if (arg == "--keyring") {
      opt.keyring = value();
    } else if (arg == "--device") {
      opt.device = value();
      if (opt.device != "cpu" && opt.device != "cuda") {
        Fail(kExitUsage, "--device takes cpu or cuda, got '" + opt.device + "'", "see edgepack-run --help");
      }
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
    SyncDevice();
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
  std::printf("  \"peak_rss_kb\": %ld,\n  \"inputs_from\": \"%s\",\n", usage.ru_maxrss,
              from_files ? "files" : "golden");
  // The timings above keep inputs on the device; on a GPU also time copies in and out.
  std::printf("  \"device\": \"%s\",\n  \"transfers_included\": false", OnGpu() ? "cuda" : "cpu");
  if (OnGpu()) {
    std::vector<double> e2e;
    for (long i = 0; i < opt.runs; ++i) {
      auto start = std::chrono::steady_clock::now();
      for (const ffi::Tensor& output : model.Run(ToTensors(arrays))) FromTensor(output);
      e2e.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(e2e.begin(), e2e.end());
    double e2e_median = n % 2 ? e2e[n / 2] : (e2e[n / 2 - 1] + e2e[n / 2]) / 2;
    std::printf(",\n  \"with_transfers_median_ms\": %.6f", e2e_median);
  }
  std::printf("\n}\n");
  return 0;
}

int Main(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  std::string bundle = opt.bundle.empty() ? DefaultBundle() : opt.bundle;
  const char* keyring_env = std::getenv("EDGEPACK_KEYRING");
  g_keyring = !opt.keyring.empty() ? opt.keyring : (keyring_env ? keyring_env : "");
  Manifest manifest = ReadManifest(bundle);
  CheckFiles(bundle, manifest);
  CheckNoExtraFiles(bundle, manifest);
  CheckCompatibility(bundle, manifest);
  SelectDevice(opt.device, bundle, manifest);
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
