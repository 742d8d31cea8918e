// The compatibility gate: architecture, CPU features, glibc, before anything is loaded.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_COMPAT_H_
#define EDGEPACK_NATIVE_COMPAT_H_

namespace {

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
  if (feature == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (feature == "avx512cd") return __builtin_cpu_supports("avx512cd");
  if (feature == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (feature == "avx512vl") return __builtin_cpu_supports("avx512vl");
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

}  // namespace

#endif  // EDGEPACK_NATIVE_COMPAT_H_
