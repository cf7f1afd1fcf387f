// kernelswap._C as a Python module: the raw runs (csrc/raw_entry.h) as METH_FASTCALL functions.
//
// A layer's per-layout runner (python/kernelswap/ops/_raw.py) makes one raw run per call. Through
// ctypes that call converts five c_void_p arguments: 0.44 us of host time on the development CPU
// (a run that returns at once); as a plain Python function of five ints, 0.07 us. The ops and
// the ctypes entry points are unchanged: torch.ops.load_library still loads this file, and
// _raw.py imports it as a module only to get these two functions (falling back to ctypes if a
// _C without them is found).
//
// Python limited API (3.10), as the rest of the extension is built for one wheel per platform.
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#include <Python.h>

extern "C" {
int kernelswap_gemv_run(const void* plan, const void* x, void* out, void* ws, void* stream);
int kernelswap_gemm_run(const void* plan, const void* x, void* out, void* scratch, void* stream);
}

namespace {

using RawRun = int (*)(const void*, const void*, void*, void*, void*);

// run(plan, x, out, scratch, stream) -> int: the ints are addresses (scratch may be None); the
// result is the raw run's return code. The GIL stays held: a run only enqueues work.
template <RawRun Run>
PyObject* run(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 5) {
    PyErr_SetString(PyExc_TypeError, "kernelswap._C run: expects (plan, x, out, scratch, stream) as ints");
    return nullptr;
  }
  void* p[5];
  for (int i = 0; i < 5; ++i) {
    if (args[i] == Py_None) {
      p[i] = nullptr;
      continue;
    }
    p[i] = PyLong_AsVoidPtr(args[i]);
    if (p[i] == nullptr && PyErr_Occurred()) return nullptr;
  }
  return PyLong_FromLong(Run(p[0], p[1], p[2], p[3], p[4]));
}

PyMethodDef methods[] = {
    {"gemv_run", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&run<&kernelswap_gemv_run>)),
     METH_FASTCALL, "kernelswap_gemv_run(plan, x, out, ws, stream) -> int (csrc/gemv/gemv_raw.cu)"},
    {"gemm_run", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&run<&kernelswap_gemm_run>)),
     METH_FASTCALL, "kernelswap_gemm_run(plan, x, out, scratch, stream) -> int (csrc/sm90_gemm_ops.cu)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "kernelswap._C",
                      "kernelswap's CUDA extension; its ops are registered with torch.ops.kernelswap", -1,
                      methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
