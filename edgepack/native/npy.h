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
};
const Dtype kDtypes[] = {{"float32", "<f4", 4}, {"float64", "<f8", 8}, {"float16", "<f2", 2},
                         {"int64", "<i8", 8},   {"int32", "<i4", 4},   {"int8", "|i1", 1},
                         {"uint8", "|u1", 1},   {"bool", "|b1", 1},    {"int16", "<i2", 2},
                         {"uint16", "<u2", 2},  {"uint32", "<u4", 4},  {"uint64", "<u8", 8}};
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
