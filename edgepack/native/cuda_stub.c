/* Build-machine-only stand-in for the NVIDIA driver library libcuda.so.1.
 *
 * TVM's libtvm_runtime_cuda.so links against libcuda.so.1; where no driver is installed the dynamic
 * loader refuses it, `import tvm` silently disables CUDA and relax.build embeds CUDA *source* only.
 * edgepack compiles this file into its cache and preloads it (soname libcuda.so.1) so that the
 * CUDA runtime module registers and NVRTC's cubins get embedded. Every entry point fails with
 * CUDA_ERROR_STUB_LIBRARY: nothing can run on a GPU through it, and it never ships in a bundle.
 * It deliberately has no cuInit, so a driver probe (dlsym "cuInit") tells it from a real driver.
 */
#include <stddef.h>

typedef int CUresult;
enum { CUDA_SUCCESS = 0, CUDA_ERROR_STUB_LIBRARY = 34 };

static const char kName[] = "CUDA_ERROR_STUB_LIBRARY";
static const char kText[] = "edgepack build stub of libcuda.so.1: no CUDA driver on this machine";

CUresult cuGetErrorName(CUresult error, const char** text) { (void)error; if (text) *text = kName; return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult error, const char** text) { (void)error; if (text) *text = kText; return CUDA_SUCCESS; }
CUresult cuDeviceGetName(char* name, int len, int device) { (void)device; if (name && len > 0) name[0] = '\0'; return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuFuncSetAttribute(void* func, int attribute, int value) { (void)func; (void)attribute; (void)value; return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuLaunchKernelEx(const void* config, void* func, void** params, void** extra) { (void)config; (void)func; (void)params; (void)extra; return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuModuleGetFunction(void** func, void* module, const char* name) { (void)func; (void)module; (void)name; return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuModuleLoadData(void** module, const void* image) { (void)module; (void)image; return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuModuleUnload(void* module) { (void)module; return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuTensorMapEncodeTiled(void* map, int dtype, unsigned rank, void* address, const void* dims,
                                const void* strides, const void* box, const void* element_strides,
                                int interleave, int swizzle, int l2, int fill) {
  (void)map; (void)dtype; (void)rank; (void)address; (void)dims; (void)strides; (void)box;
  (void)element_strides; (void)interleave; (void)swizzle; (void)l2; (void)fill;
  return CUDA_ERROR_STUB_LIBRARY;
}
