// Shared by every part of edgepack-run: includes, exit codes, and the one-line Failure.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_COMMON_H_
#define EDGEPACK_NATIVE_COMMON_H_
#include <dirent.h>
#include <dlfcn.h>
#include <dlpack/dlpack.h>
#include <gnu/libc-version.h>
#include <limits.h>
#include <sys/auxv.h>
#include <sys/resource.h>
#include <fcntl.h>
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
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
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

// Walks a command's options from argv[2] on, each `--name value` or `--name=value`; `help` names where
// the options are listed, for the one-line refusal of an option given without its value.
class OptionCursor {
 public:
  OptionCursor(int argc, char** argv, std::string help) : argc_(argc), argv_(argv), help_(std::move(help)) {}

  bool Next() {  // moves to the next option; false after the last
    if (++i_ >= argc_) return false;
    name_ = argv_[i_];
    size_t equals = name_.find('=');
    has_inline_ = name_.rfind("--", 0) == 0 && equals != std::string::npos;
    if (has_inline_) {
      inline_ = name_.substr(equals + 1);
      name_ = name_.substr(0, equals);
    }
    return true;
  }
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }  // e.g. "edgepack-run serve --help"
  std::string Value() {  // the option's value: after '=' or the next argument
    if (has_inline_) return inline_;
    if (i_ + 1 >= argc_) Fail(kExitUsage, "option " + name_ + " needs a value", "see " + help_);
    return argv_[++i_];
  }

 private:
  int argc_;
  char** argv_;
  std::string help_, name_, inline_;
  int i_ = 1;
  bool has_inline_ = false;
};

// The options every command shares: -h/--help (prints `usage`, exits 0), --bundle, --keyring and, when
// `device` is given, --device cpu|cuda. True when the cursor's option was one of them.
bool SharedOption(OptionCursor& args, const char* usage, std::string* bundle, std::string* keyring, std::string* device) {
  const std::string& arg = args.name();
  if (arg == "-h" || arg == "--help") {
    std::cout << usage;
    std::exit(0);
  } else if (arg == "--bundle") {
    *bundle = args.Value();
  } else if (arg == "--keyring") {
    *keyring = args.Value();
  } else if (arg == "--device" && device != nullptr) {
    *device = args.Value();
    if (*device != "cpu" && *device != "cuda") {
      Fail(kExitUsage, "--device takes cpu or cuda, got '" + *device + "'", "see " + args.help());
    }
  } else {
    return false;
  }
  return true;
}

// A whole file's bytes ("" when it cannot be read; callers check what they need first).
// The whole file in one buffer of its size (a stream's doubling buffer and its copy peaked at ~3x a weights file).
std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return std::string();
  std::streamoff size = in.tellg();
  if (size < 0) return std::string();
  std::string data(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(data.data(), size)) data.resize(static_cast<size_t>(in.gcount()));
  return data;
}

}  // namespace

#endif  // EDGEPACK_NATIVE_COMMON_H_
