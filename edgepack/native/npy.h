// Arrays and .npy files: the only tensor format edgepack-run reads and writes.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_NPY_H_
#define EDGEPACK_NATIVE_NPY_H_

namespace {

// ---------------------------------------------------------------- arrays and .npy files

struct Dtype {
  const char* name;   // numpy / TVM name
  const char* descr;  // .npy descr; descr[1] is the kind: f, i, u or b
  int size;
  const char* container = nullptr;  // float8, int4...: the TVM dtype the model takes them in (and .npy files hold)
};
const Dtype kDtypes[] = {{"float32", "<f4", 4}, {"float64", "<f8", 8}, {"float16", "<f2", 2},
                         {"int64", "<i8", 8},   {"int32", "<i4", 4},   {"int8", "|i1", 1},
                         {"uint8", "|u1", 1},   {"bool", "|b1", 1},    {"int16", "<i2", 2},
                         {"uint16", "<u2", 2},  {"uint32", "<u4", 4},  {"uint64", "<u8", 8},
                         // .npy files carry bfloat16 as its raw bits ("<u2", read as uint16 first:
                         // AsSpecDtype gives them the manifest's dtype)
                         {"bfloat16", "<u2", 2},
                         // carried in bytes (frontends/low_precision.py): floats as raw bits, integers by value
                         {"float8_e4m3fn", "|u1", 1, "uint8"},  {"float8_e4m3fnuz", "|u1", 1, "uint8"},
                         {"float8_e5m2", "|u1", 1, "uint8"},    {"float8_e5m2fnuz", "|u1", 1, "uint8"},
                         {"float4_e2m1fn", "|u1", 1, "uint8"},  {"float8_e8m0fnu", "|u1", 1, "uint8"},
                         {"int4", "|i1", 1, "int8"},            {"uint4", "|u1", 1, "uint8"},
                         {"int2", "|i1", 1, "int8"},            {"uint2", "|u1", 1, "uint8"}};
const char kDtypeList[] =
    "float32, float64, float16, int64, int32, int16, int8, uint64, uint32, uint16, uint8, bool";

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

// The .npy header dict, read strictly (the same grammar as runtime/edgepack_format.py's parse_npy):
// exactly the keys 'descr' (a quoted string), 'fortran_order' (True/False) and 'shape' (a tuple of
// decimal ints), each once, in any order; spaces, tabs and newlines between tokens.
struct NpyHeader {
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
};

bool ParseNpyHeader(const std::string& h, NpyHeader* out, std::string* why) {
  size_t i = 0;
  auto space = [&] { while (i < h.size() && (h[i] == ' ' || h[i] == '\t' || h[i] == '\n' || h[i] == '\r')) ++i; };
  auto eat = [&](char c) {
    space();
    if (i < h.size() && h[i] == c) { ++i; return true; }
    return false;
  };
  auto quoted = [&](std::string* text) {
    space();
    if (i >= h.size() || h[i] != '\'') return false;
    size_t close = h.find('\'', i + 1);
    if (close == std::string::npos) return false;
    *text = h.substr(i + 1, close - i - 1);
    i = close + 1;
    return text->find('\\') == std::string::npos;
  };
  bool seen[3] = {false, false, false};
  if (!eat('{')) return *why = "header is not a dict", false;
  while (!eat('}')) {
    std::string key;
    if (!quoted(&key) || !eat(':')) return *why = "header is not a dict of quoted keys", false;
    int index = key == "descr" ? 0 : key == "fortran_order" ? 1 : key == "shape" ? 2 : -1;
    if (index < 0) return *why = "header has an unknown key '" + key + "'", false;
    if (seen[index]) return *why = "header repeats the key '" + key + "'", false;
    seen[index] = true;
    space();
    if (index == 0) {
      if (!quoted(&out->descr)) return *why = "descr is not a quoted string", false;
    } else if (index == 1) {
      if (h.compare(i, 4, "True") == 0) { out->fortran = true; i += 4; }
      else if (h.compare(i, 5, "False") == 0) { out->fortran = false; i += 5; }
      else return *why = "fortran_order is not True or False", false;
    } else {
      if (!eat('(')) return *why = "shape is not a tuple", false;
      bool comma = false;
      while (!eat(')')) {
        space();
        size_t start = i;
        while (i < h.size() && h[i] >= '0' && h[i] <= '9') ++i;
        if (i == start || i - start > 18) return *why = "shape holds something other than a dimension", false;
        out->shape.push_back(std::strtoll(h.substr(start, i - start).c_str(), nullptr, 10));
        comma = eat(',');
        if (!comma && !eat(')')) return *why = "shape is not a tuple", false;
        if (!comma) break;
      }
      if (out->shape.size() == 1 && !comma) return *why = "shape is not a tuple", false;
    }
    if (!eat(',')) {
      if (!eat('}')) return *why = "header is not a dict", false;
      break;
    }
  }
  space();
  if (i != h.size()) return *why = "extra text after the header", false;
  if (!seen[0] || !seen[1] || !seen[2]) return *why = "header lacks descr, fortran_order or shape", false;
  return true;
}

// Parses .npy bytes (`what` names them in errors): strict header, known dtype, data exactly as long
// as the shape says (no trust in the header's sizes before they are checked against the bytes).
Array ParseNpy(const std::string& bytes, const std::string& what) {
  auto bad = [&](const std::string& why) {
    Fail(kExitUser, "'" + what + "' is not a readable .npy file (" + why + ")",
         "write it with numpy.save");
  };
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < 10 || std::memcmp(b, "\x93NUMPY", 6) != 0) bad("no .npy magic");
  if (b[6] < 1 || b[6] > 3 || b[7] != 0) bad("unknown .npy version");
  size_t prefix = b[6] == 1 ? 10 : 12;
  if (bytes.size() < prefix) bad("truncated header");
  uint64_t header_len = b[8] | (b[9] << 8);
  if (b[6] >= 2) header_len |= (uint64_t(b[10]) << 16) | (uint64_t(b[11]) << 24);
  if (header_len > bytes.size() - prefix) bad("truncated header");
  NpyHeader header;
  std::string why;
  if (!ParseNpyHeader(bytes.substr(prefix, header_len), &header, &why)) bad(why);
  Array array{DtypeByDescr(header.descr), header.shape, {}};
  if (array.dtype == nullptr) {
    Fail(kExitUser, "'" + what + "' is not a readable .npy file (unsupported dtype '" + header.descr + "')",
         std::string("save it as little-endian ") + kDtypeList +
             " (bfloat16: its raw bits, numpy.save(path, a.view(numpy.uint16)); float8: a.view(numpy.uint8); "
             "int4: a.astype(numpy.int8))");
  }
  if (header.fortran) {
    Fail(kExitUser, "'" + what + "' is stored in Fortran order",
         "save a C-ordered array: numpy.save(path, numpy.ascontiguousarray(a))");
  }
  uint64_t size = uint64_t(array.dtype->size);
  for (int64_t d : array.shape) {
    if (__builtin_mul_overflow(size, uint64_t(d), &size)) bad("shape " + ShapeText(array.shape) + " is too large");
  }
  uint64_t available = bytes.size() - prefix - header_len;
  if (size > available) bad("truncated data: shape " + ShapeText(array.shape) + " needs " + std::to_string(size) + " bytes");
  if (size < available) bad("extra bytes after the data");
  array.data.assign(bytes.begin() + prefix + header_len, bytes.end());
  return array;
}

Array ReadNpy(const std::string& path) {
  struct stat info;
  std::ifstream in(path, std::ios::binary);
  if (!in || stat(path.c_str(), &info) != 0) Fail(kExitUser, "cannot read '" + path + "'", "check the path");
  if (!S_ISREG(info.st_mode)) Fail(kExitUser, "'" + path + "' is not a regular file", "pass a .npy file written with numpy.save");
  return ParseNpy(ReadFile(path), path);
}

// Writes all of `data` to `fd`; false (errno set) on any short or failed write.
bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    data += n;
    size -= size_t(n);
  }
  return true;
}

// Writes an .npy atomically: a temporary file beside `path`, every write, fsync and close checked,
// then renamed over `path`. On failure nothing is left behind and one line names the file and why.
void WriteNpy(const std::string& path, const Array& array) {
  std::string header = std::string("{'descr': '") + array.dtype->descr +
                       "', 'fortran_order': False, 'shape': " + ShapeText(array.shape) + ", }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // total length a multiple of 64
  header += '\n';
  const char prefix[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  uint16_t len = static_cast<uint16_t>(header.size());
  std::string head(prefix, 8);
  head += char(len & 0xff);
  head += char(len >> 8);
  head += header;
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string temp = (slash == std::string::npos ? "" : dir) + "." + name + ".XXXXXX";
  std::vector<char> temp_buffer(temp.begin(), temp.end());
  temp_buffer.push_back('\0');
  auto fail = [&](int error) {
    Fail(kExitUser, "cannot write '" + path + "' (" + std::strerror(error) + ")",
         "free space on that disk or choose another output path");
  };
  int fd = mkstemp(temp_buffer.data());
  if (fd < 0) fail(errno);
  temp = temp_buffer.data();
  mode_t mask = umask(0);
  umask(mask);
  bool ok = fchmod(fd, 0666 & ~mask) == 0 && WriteAll(fd, head.data(), head.size()) &&
            WriteAll(fd, array.data.data(), array.data.size()) && fsync(fd) == 0;
  int error = errno;
  if (close(fd) != 0 && ok) {
    ok = false;
    error = errno;
  }
  if (ok && rename(temp.c_str(), path.c_str()) != 0) {
    ok = false;
    error = errno;
  }
  if (!ok) {
    unlink(temp.c_str());
    fail(error);
  }
}

double HalfToDouble(uint16_t h) {
  int exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
  double value = exponent == 0    ? std::ldexp(fraction, -24)
                 : exponent == 31 ? (fraction ? NAN : INFINITY)
                                  : std::ldexp(fraction | 0x400, exponent - 25);
  return (h & 0x8000) ? -value : value;
}

bool IsBfloat16(const Dtype* dtype) { return std::string(dtype->name) == "bfloat16"; }

// The TVM dtype of an array's bytes: a carried type's container, else its own name.
const char* TvmName(const Dtype* dtype) { return dtype->container ? dtype->container : dtype->name; }

// `array` (raw bits or values read from a .npy, or returned by the model) given the manifest's dtype: uint16
// bits of a bfloat16 tensor, the container of a carried type (int4...: values outside its range are refused).
void AsSpecDtype(Array& array, const std::string& dtype) {
  const Dtype* spec = DtypeByName(dtype);
  if (spec == nullptr || spec == array.dtype) return;
  std::string holds(array.dtype->name);
  if (dtype == "bfloat16" && holds == "uint16") array.dtype = spec;
  if (spec->container == nullptr || holds != spec->container) return;
  int bits = dtype == "int4" || dtype == "uint4" ? 4 : dtype == "int2" || dtype == "uint2" ? 2 : 0;
  if (bits > 0) {
    bool is_signed = dtype[0] == 'i';
    int low = is_signed ? -(1 << (bits - 1)) : 0, high = is_signed ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
    for (char byte : array.data) {
      int value = is_signed ? int(int8_t(byte)) : int(uint8_t(byte));
      if (value < low || value > high) {
        Fail(kExitUser, "a " + dtype + " tensor holds values outside " + std::to_string(low) + ".." + std::to_string(high),
             "store " + dtype + " values one per byte as " + spec->container + ", within that range");
      }
    }
  }
  array.dtype = spec;
}

// The value of a float carried as raw bits (ml_dtypes' float8 and float4 encodings).
double MinifloatToDouble(const std::string& name, uint8_t bits) {
  if (name == "float8_e8m0fnu") return bits == 0xFF ? NAN : std::ldexp(1.0, int(bits) - 127);
  bool e4m3 = name.rfind("float8_e4m3", 0) == 0, fnuz = name.size() > 4 && name.substr(name.size() - 4) == "fnuz";
  bool e2m1 = name == "float4_e2m1fn";
  int mantissa_bits = e2m1 ? 1 : e4m3 ? 3 : 2, exponent_bits = e2m1 ? 2 : e4m3 ? 4 : 5;
  int bias = e2m1 ? 1 : (e4m3 ? 7 : 15) + (fnuz ? 1 : 0);
  int sign_shift = mantissa_bits + exponent_bits, top = (1 << exponent_bits) - 1;
  if (fnuz && bits == 0x80) return NAN;
  int exponent = (bits >> mantissa_bits) & top, mantissa = bits & ((1 << mantissa_bits) - 1);
  bool negative = (bits >> sign_shift) & 1;
  double value;
  if (!fnuz && !e2m1 && e4m3 && exponent == top && mantissa == (1 << mantissa_bits) - 1) return NAN;
  if (!fnuz && !e2m1 && !e4m3 && exponent == top) {
    if (mantissa) return NAN;
    value = INFINITY;
  } else if (exponent == 0) {
    value = std::ldexp(mantissa, 1 - bias - mantissa_bits);
  } else {
    value = std::ldexp(mantissa | (1 << mantissa_bits), exponent - bias - mantissa_bits);
  }
  return negative ? -value : value;
}

double ElementAt(const Array& array, int64_t i) {
  const char* p = array.data.data() + i * array.dtype->size;
  auto load = [p](auto value) {
    std::memcpy(&value, p, sizeof(value));
    return value;
  };
  if (IsBfloat16(array.dtype)) {  // the high half of a float32
    uint32_t bits = uint32_t(load(uint16_t())) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }
  if (array.dtype->container && array.dtype->name[0] == 'f') return MinifloatToDouble(array.dtype->name, load(uint8_t()));
  switch (array.dtype->descr[1]) {
    case 'f':
      return array.dtype->size == 2   ? HalfToDouble(load(uint16_t()))
             : array.dtype->size == 4 ? load(float())
                                      : load(double());
    case 'i':
      return array.dtype->size == 1   ? load(int8_t())
             : array.dtype->size == 2 ? load(int16_t())
             : array.dtype->size == 4 ? load(int32_t())
                                      : double(load(int64_t()));
    default:  // u and b
      return array.dtype->size == 1   ? load(uint8_t())
             : array.dtype->size == 2 ? load(uint16_t())
             : array.dtype->size == 4 ? load(uint32_t())
                                      : double(load(uint64_t()));
  }
}

}  // namespace

#endif  // EDGEPACK_NATIVE_NPY_H_
