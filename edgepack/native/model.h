// Inputs, the TVM VM and the bundle's model (CPU or CUDA).
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_MODEL_H_
#define EDGEPACK_NATIVE_MODEL_H_

namespace {

// ---------------------------------------------------------------- inputs

// Arrays read from .npy files given their specs' dtypes (bfloat16 travels as uint16 bits; AsSpecDtype).
std::vector<Array> Typed(std::vector<Array> arrays, const std::vector<TensorSpec>& specs) {
  for (size_t i = 0; i < arrays.size() && i < specs.size(); ++i) AsSpecDtype(arrays[i], specs[i].dtype);
  return arrays;
}

void CheckInputs(const std::vector<Array>& arrays, const std::vector<TensorSpec>& specs) {
  if (arrays.size() != specs.size()) {
    std::string names;
    for (const TensorSpec& s : specs) names += (names.empty() ? "" : ", ") + s.name;
    Fail(kExitUser,
         "the model takes " + std::to_string(specs.size()) + " input(s) (" + names + "), got " +
             std::to_string(arrays.size()),
         "pass one --input per model input, in this order: " + names);
  }
  std::map<std::string, int64_t> bound;  // named axis -> the size the inputs gave it
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    const std::vector<int64_t>& got = arrays[i].shape;
    // the texts of a refusal are made only for one (the server checks every request)
    auto what = [&spec] { return "input '" + spec.name + "' "; };
    auto fix = [&spec] { return "pass a " + spec.dtype + " array of shape " + ShapeText(spec.shape); };
    if (spec.dtype != arrays[i].dtype->name) {
      Fail(kExitUser, what() + "dtype: expected " + spec.dtype + ", got " + arrays[i].dtype->name,
           fix());
    }
    if (got.size() != spec.shape.size()) {
      Fail(kExitUser,
           what() + "rank: expected " + std::to_string(spec.shape.size()) + ", got " +
               std::to_string(got.size()),
           fix());
    }
    for (size_t d = 0; d < got.size(); ++d) {
      if (!spec.dims.empty() && !spec.dims[d].empty()) {  // a named axis: any size in its range
        const std::string& name = spec.dims[d];
        auto axis = [&] { return what() + "dim " + std::to_string(d) + " (" + name + "): " + std::to_string(got[d]); };
        if (got[d] < spec.low[d] || got[d] > spec.high[d]) {
          std::string range = std::to_string(spec.low[d]) + ".." + std::to_string(spec.high[d]);
          Fail(kExitUser, axis() + " is outside the bundle's range " + range,
               "pass between " + std::to_string(spec.low[d]) + " and " + std::to_string(spec.high[d]) +
                   " along that axis (split larger inputs), or rebuild with --dim " + name + "=" +
                   std::to_string(spec.low[d]) + ".." + std::to_string(got[d]));
        }
        auto [it, fresh] = bound.emplace(name, got[d]);
        if (!fresh && it->second != got[d]) {
          Fail(kExitUser, axis() + ", but another input gave " + name + " = " + std::to_string(it->second),
               "give every axis named " + name + " the same size");
        }
        continue;
      }
      if (got[d] != spec.shape[d]) {
        Fail(kExitUser,
             what() + "dim " + std::to_string(d) + ": expected " + std::to_string(spec.shape[d]) +
                 ", got " + std::to_string(got[d]),
             fix());
      }
    }
  }
}

std::vector<Array> ReadArrays(const std::string& base, const std::vector<std::string>& paths) {
  std::vector<Array> arrays;
  for (const std::string& path : paths) arrays.push_back(ReadNpy(base + path));
  return arrays;
}

// Golden vectors: each file's bytes read once, checked against its digest, and parsed from those bytes.
std::vector<Array> ReadCheckedArrays(const std::string& bundle, const Manifest& m,
                                     const std::vector<std::string>& rels) {
  std::vector<Array> arrays;
  for (const std::string& rel : rels) arrays.push_back(ParseNpy(ReadChecked(bundle, m, rel), rel));
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
  std::string dir = PrivateDir();  // opened from checked private copies, never in place
  try {
    for (const std::string& name : names) {
      if (name.find('/') != std::string::npos) BadManifest("requires.cuda.libraries names a path: '" + name + "'");
      std::string copy = CopyChecked(bundle, m, "runtime/" + name, dir);
      if (dlopen(copy.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
        const char* why = dlerror();
        Fail(kExitUser, "cannot load runtime/" + name + ": " + (why ? why : "unknown error"),
             "check the NVIDIA driver (docs/cuda.md) and that the bundle was copied whole");
      }
    }
  } catch (...) {
    RemovePrivateDir(dir);
    throw;
  }
  RemovePrivateDir(dir);
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
  ffi::Tensor tensor = alloc(ffi::Shape(array.shape), ffi::StringToDLDataType(TvmName(array.dtype)),
                             DLDevice{kDLCPU, 0}, ffi::Optional<ffi::String>())
                           .cast<ffi::Tensor>();
  std::memcpy(tensor.data_ptr(), array.data.data(), array.data.size());
  return tensor;
}

// The Dtype of a TVM dtype: numbers directly, anything else by its name (nullptr: none of kDtypes).
const Dtype* DtypeOf(DLDataType type) {
  if (type.lanes == 1 && (type.code == kDLFloat || type.code == kDLInt || type.code == kDLUInt)) {
    char kind = type.code == kDLFloat ? 'f' : type.code == kDLInt ? 'i' : 'u';
    for (const Dtype& d : kDtypes) {
      if (d.descr[1] == kind && d.size * 8 == type.bits) return &d;
    }
  }
  return DtypeByName(std::string(ffi::DLDataTypeToString(type)));
}

Array FromTensor(const ffi::Tensor& tensor) {
  Array array{DtypeOf(tensor.dtype()), {tensor.shape().begin(), tensor.shape().end()}, {}};
  bool on_gpu = tensor.device().device_type == kDLCUDA;
  if (array.dtype == nullptr || (tensor.device().device_type != kDLCPU && !on_gpu) || !tensor.IsContiguous()) {
    std::string dtype(ffi::DLDataTypeToString(tensor.dtype()));
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
      library_ = m.library;
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
    ffi::Bytes bytes(std::move(data));  // taken over, not copied: weights are held twice at most while loading
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

  // Another function of the library (language models: prefill, decode, create_cache).
  ffi::Function Function(const char* name) const { return ModuleFunction(vm_.value(), name, library_); }
  const std::vector<ffi::Tensor>& params() const { return params_; }

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
  std::string library_;
  std::vector<ffi::Tensor> params_;
};

std::vector<ffi::Tensor> ToTensors(const std::vector<Array>& arrays) {
  std::vector<ffi::Tensor> tensors;
  for (const Array& array : arrays) {
    tensors.push_back(OnGpu() ? DeviceTensor(ffi::Shape(array.shape), ffi::StringToDLDataType(TvmName(array.dtype)),
                                             array.data.data(), array.data.size())
                              : ToTensor(array));
  }
  return tensors;
}

}  // namespace

#endif  // EDGEPACK_NATIVE_MODEL_H_
