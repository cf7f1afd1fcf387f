// Standalone timing harness of sm_90a CUTLASS GEMM tile configs (csrc/sm90), no torch at run time:
// the dense int8 / e4m3 GEMMs (sm90::GemmOf) and the weight-only mixed-input GEMMs
// (sm90::MixedGemmOf) under other tiles, clusters and schedules than the shipped ones, each timed
// next to the shipped config and cuBLAS bf16 at the same shape, in one run. For choosing configs;
// correctness is the tests' job (each variant's output is only compared with the shipped config's,
// to catch a config that computes something else).
//
//   bash benchmarks/gemm_lab.sh OUT_DIR      builds OUT_DIR/gemm_lab (the variants compile in parallel)
//   ./gemm_lab [kind ...]                    kind: int8 fp8 mixed_i8 mixed_u4 (default: all)
//
// Prints a CSV (kind, variant, shipped, M, K, N, us, bf16_us, x_bf16, TFLOP/s, max |diff| against the
// shipped config / max |shipped|). Operands are hash-filled; the weight is not rotated (from the M
// swept here the GEMMs are bound by math, not by the weight read). Each variant is a GemmOf /
// MixedGemmOf instantiation compiled in the part GEMM_LAB_PART of GEMM_LAB_PARTS (its index mod the
// parts); the part -1 holds the registry and main.
#include "lab_common.cuh"
#include "sm90/gemm_mixed_sm90.cuh"

#include <cstring>
#include <string>
#include <vector>

#ifndef GEMM_LAB_PART
#define GEMM_LAB_PART -1
#endif
#ifndef GEMM_LAB_PARTS
#define GEMM_LAB_PARTS 1
#endif

namespace lab {

using namespace cute;
using kernelswap::DType;
using kernelswap::GemmProblem;
namespace sm90 = kernelswap::sm90;

enum class Kind { kInt8, kFp8, kMixedI8, kMixedU4 };
inline const char* kind_name(Kind k) {
  return k == Kind::kInt8 ? "int8" : k == Kind::kFp8 ? "fp8" : k == Kind::kMixedI8 ? "mixed_i8" : "mixed_u4";
}

// A workspace from cudaMalloc, freed with this object (the lab's GemmProblem::workspace).
struct LabWorkspace {
  void* ptr = nullptr;
  static void* alloc(void* self, size_t bytes) {
    auto* w = static_cast<LabWorkspace*>(self);
    if (bytes) w->ptr = dev_alloc<uint8_t>(int64_t(bytes));
    return w->ptr;
  }
  ~LabWorkspace() { if (ptr) cudaFree(ptr); }
};

// Set a CUTLASS device GEMM up for args with the project's own set-up (kernelswap::set_up_cutlass:
// can_implement, workspace, initialize) and time `reps` launches (after 2); -1 with the reason when
// it cannot run.
template <class Device>
float time_device(const typename Device::Arguments& args, GemmProblem p, int reps, std::string* why) {
  LabWorkspace ws;
  p.workspace = kernelswap::Workspace{&LabWorkspace::alloc, &ws};
  Device gemm;
  try {
    kernelswap::set_up_cutlass("gemm_lab", args, p, gemm);
  } catch (const std::exception& e) {
    *why = e.what();
    return -1.f;
  }
  return time_launches([&](int) { gemm.run(nullptr); }, 1, reps);
}

template <class G>
float time_dense(const GemmProblem& p, int reps, std::string* why) {
  return time_device<typename G::Device>(sm90::arguments<G>(p), p, reps, why);
}
template <class G>
float time_mixed(const GemmProblem& p, int reps, std::string* why) {
  return time_device<typename G::Device>(sm90::mixed_arguments<G>(p), p, reps, why);
}

struct Variant {
  const char* name;
  Kind kind;
  bool shipped;  // the config kernelswap._C ships for this kind at large M
  float (*time)(const GemmProblem&, int reps, std::string* why);
};
std::vector<Variant>& registry();
struct Register {
  explicit Register(Variant v) { registry().push_back(v); }
};

template <class TileT, class ClusterT, class KernelT, class EpiT>
struct Cfg {
  using Tile = TileT;
  using Cluster = ClusterT;
  using Kernel = KernelT;
  using Epi = EpiT;
};
namespace gk = cutlass::gemm;
using PP = gk::KernelTmaWarpSpecializedPingpong;
using CO = gk::KernelTmaWarpSpecializedCooperative;
using CO_FA = gk::KernelTmaWarpSpecializedCooperativeFP8FastAccum;
using ECO = cutlass::epilogue::TmaWarpSpecializedCooperative;
using C11 = Shape<_1, _1, _1>;
using C21 = Shape<_2, _1, _1>;
using C12 = Shape<_1, _2, _1>;

#define LAB_DENSE(ID, KIND, IN, SHIPPED, ...) \
  static Register lab_reg_##ID{{#ID, KIND, SHIPPED, &time_dense<sm90::GemmOf<false, IN, DType::kBF16, __VA_ARGS__>>}};
#define LAB_MIXED(ID, KIND, W, SHIPPED, ...) \
  static Register lab_reg_##ID{{#ID, KIND, SHIPPED, &time_mixed<sm90::MixedGemmOf<W, DType::kBF16, __VA_ARGS__>>}};
#define LAB_PART(i) ((i) % GEMM_LAB_PARTS == GEMM_LAB_PART)

// Variant names: tile (weight rows x tokens x K), schedule, cluster. "shipped" marks the config _C
// ships now (benchmarks/results/gemm_lab.csv was run when e4m3's was the 2x1 cluster, c21).
#if LAB_PART(0)
LAB_DENSE(i8_128x128x128_pp_c21, Kind::kInt8, DType::kI8, true, sm90::Config<false, DType::kI8, sm90::Tiles::kLarge>)
#endif
#if LAB_PART(1)
LAB_DENSE(i8_128x256x128_co_c21, Kind::kInt8, DType::kI8, false, Cfg<Shape<_128, _256, _128>, C21, CO, ECO>)
#endif
#if LAB_PART(2)
LAB_DENSE(i8_256x128x128_co_c12, Kind::kInt8, DType::kI8, false, Cfg<Shape<_256, _128, _128>, C12, CO, ECO>)
#endif
#if LAB_PART(3)
LAB_DENSE(i8_128x256x128_co_c12, Kind::kInt8, DType::kI8, false, Cfg<Shape<_128, _256, _128>, C12, CO, ECO>)
#endif
#if LAB_PART(4)
LAB_DENSE(f8_128x128x128_co_c21, Kind::kFp8, DType::kE4M3, false, Cfg<Shape<_128, _128, _128>, C21, CO, ECO>)
#endif
#if LAB_PART(5)
LAB_DENSE(f8_128x128x128_co_c12, Kind::kFp8, DType::kE4M3, true, sm90::Config<false, DType::kE4M3, sm90::Tiles::kLarge>)
#endif
#if LAB_PART(6)
LAB_DENSE(f8_128x256x128_cofast_c21, Kind::kFp8, DType::kE4M3, false, Cfg<Shape<_128, _256, _128>, C21, CO_FA, ECO>)
#endif
#if LAB_PART(7)
LAB_DENSE(f8_128x128x128_ppfast_c21, Kind::kFp8, DType::kE4M3, false, sm90::Config<false, DType::kE4M3, sm90::Tiles::kLargeFastAccum>)
#endif
#if LAB_PART(8)
LAB_MIXED(m8_128x256x64_co_c11, Kind::kMixedI8, DType::kI8, true, sm90::MixedConfig<sm90::Tiles::kLarge>)
#endif
#if LAB_PART(9)
LAB_MIXED(m8_128x256x64_co_c21, Kind::kMixedI8, DType::kI8, false, Cfg<Shape<_128, _256, _64>, C21, CO, ECO>)
#endif
#if LAB_PART(10)
LAB_MIXED(m8_128x256x128_co_c11, Kind::kMixedI8, DType::kI8, false, Cfg<Shape<_128, _256, _128>, C11, CO, ECO>)
#endif
#if LAB_PART(11)
LAB_MIXED(m8_128x128x64_co_c11, Kind::kMixedI8, DType::kI8, false, sm90::MixedConfig<sm90::Tiles::kSmall>)
#endif
#if LAB_PART(12)
LAB_MIXED(m4_128x256x64_co_c11, Kind::kMixedU4, DType::kU4, true, sm90::MixedConfig<sm90::Tiles::kLarge>)
#endif
#if LAB_PART(13)
LAB_MIXED(m4_128x256x64_co_c21, Kind::kMixedU4, DType::kU4, false, Cfg<Shape<_128, _256, _64>, C21, CO, ECO>)
#endif
#if LAB_PART(14)
LAB_MIXED(m4_128x256x128_co_c11, Kind::kMixedU4, DType::kU4, false, Cfg<Shape<_128, _256, _128>, C11, CO, ECO>)
#endif
#if LAB_PART(15)
LAB_MIXED(m4_128x128x64_co_c11, Kind::kMixedU4, DType::kU4, false, sm90::MixedConfig<sm90::Tiles::kSmall>)
#endif

}  // namespace lab

#if GEMM_LAB_PART == -1
namespace lab {

std::vector<Variant>& registry() {
  static std::vector<Variant> r;
  return r;
}

// max |a - b| / max |b| over n bf16 values (b: the shipped config's output).
__global__ void rel_diff(const __nv_bfloat16* a, const __nv_bfloat16* b, int64_t n, float* out /* [2] */) {
  float d = 0.f, m = 0.f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = __bfloat162float(a[i]), y = __bfloat162float(b[i]);
    d = fmaxf(d, isnan(x) != isnan(y) ? INFINITY : fabsf(x - y));
    m = fmaxf(m, fabsf(y));
  }
  atomicMax(reinterpret_cast<int*>(out), __float_as_int(d));  // non-negative floats order as ints
  atomicMax(reinterpret_cast<int*>(out + 1), __float_as_int(m));
}

struct Buffers {  // the operands of one (M, K, N), every kind's
  void *w8, *w4, *x8, *xbf, *out, *ref;
  float *x_scale, *w_scale, *bias, *gscale, *gzero;
  int M, K, N, group;
};

Buffers make(int M, int K, int N, int group) {
  Buffers b{};
  b.M = M, b.K = K, b.N = N, b.group = group;
  const int64_t nk = int64_t(N) * K, mk = int64_t(M) * K, mn = int64_t(M) * N, g = int64_t(K / group) * N;
  b.w8 = dev_alloc<uint8_t>(nk);
  b.w4 = dev_alloc<uint8_t>(nk / 2);
  b.x8 = dev_alloc<uint8_t>(mk);
  b.xbf = dev_alloc<uint16_t>(mk);
  b.out = dev_alloc<uint16_t>(mn);
  b.ref = dev_alloc<uint16_t>(mn);
  b.x_scale = dev_alloc<float>(M);
  b.w_scale = dev_alloc<float>(N);
  b.bias = dev_alloc<float>(N);
  b.gscale = dev_alloc<float>(g);
  b.gzero = dev_alloc<float>(g);
  fill_bytes<<<1024, 256>>>(static_cast<uint8_t*>(b.w4), nk / 2, 5u);
  fill_small<<<1024, 256>>>(static_cast<uint16_t*>(b.xbf), mk, 11u, true);
  fill_float<<<256, 256>>>(b.x_scale, M, 3u, 1e-3f, 2e-3f);
  fill_float<<<256, 256>>>(b.w_scale, N, 4u, 1e-3f, 2e-3f);
  fill_float<<<256, 256>>>(b.bias, N, 6u, -0.1f, 0.1f);
  fill_float<<<256, 256>>>(b.gscale, g, 8u, 1e-3f, 2e-3f);
  fill_float<<<256, 256>>>(b.gzero, g, 9u, -8e-3f, -4e-3f);
  CK(cudaGetLastError());
  return b;
}

void fill_8bit(const Buffers& b, Kind k) {  // int8: any byte; e4m3: no NaN codes
  const uint8_t mask = k == Kind::kFp8 ? 0x77 : 0xFF;
  fill_bytes<<<1024, 256>>>(static_cast<uint8_t*>(b.w8), int64_t(b.N) * b.K, 17u, mask);
  fill_bytes<<<1024, 256>>>(static_cast<uint8_t*>(b.x8), int64_t(b.M) * b.K, 19u, mask);
  CK(cudaGetLastError());
}

void release(Buffers& b) {
  for (void* p : {b.w8, b.w4, b.x8, b.xbf, b.out, b.ref}) cudaFree(p);
  for (float* p : {b.x_scale, b.w_scale, b.bias, b.gscale, b.gzero}) cudaFree(p);
}

GemmProblem problem(const Buffers& b, Kind k, void* out) {
  GemmProblem p{};
  const bool mixed = k == Kind::kMixedI8 || k == Kind::kMixedU4;
  p.w = k == Kind::kMixedU4 ? b.w4 : b.w8;
  p.x = mixed ? b.xbf : b.x8;
  p.x_scale = b.x_scale;
  p.w_scale = b.w_scale;
  p.bias = b.bias;
  p.out = out;
  p.M = b.M, p.N = b.N, p.K = b.K;
  p.device = 0;
  p.group_scale = b.gscale;
  p.group_zero = b.gzero;
  p.group_size = b.group;
  return p;
}

float diff_vs(const Buffers& b) {
  float* d = dev_alloc<float>(2);
  CK(cudaMemset(d, 0, 8));
  rel_diff<<<512, 256>>>(static_cast<const __nv_bfloat16*>(b.out), static_cast<const __nv_bfloat16*>(b.ref),
                         int64_t(b.M) * b.N, d);
  float h[2];
  CK(cudaMemcpy(h, d, 8, cudaMemcpyDeviceToHost));
  cudaFree(d);
  return h[1] > 0 ? h[0] / h[1] : h[0];
}

}  // namespace lab

int main(int argc, char** argv) {
  using namespace lab;
  std::vector<std::string> kinds(argv + 1, argv + argc);
  auto wanted = [&](Kind k) {
    if (kinds.empty()) return true;
    for (auto& s : kinds) if (s == kind_name(k)) return true;
    return false;
  };
  cublasHandle_t h;
  cublasCreate(&h);
  struct Shape3 { int M, K, N; };
  // P1 / P5 (4096x8192x8192) and the never-slower sweep's two layers at its large M.
  std::vector<Shape3> shapes = {{4096, 8192, 8192}};
  for (int m : {128, 512, 2048, 8192}) shapes.push_back({m, 4096, 14336});
  for (int m : {512, 2048, 8192}) shapes.push_back({m, 8192, 28672});
  std::printf("kind,variant,shipped,M,K,N,us,bf16_us,x_bf16,tflops,diff_vs_shipped\n");
  for (const auto& s : shapes) {
    const int reps = int(std::max(5.0, std::min(50.0, 2e13 / (2.0 * s.M * s.K * double(s.N)))));
    const float bf16 = time_cublas_bf16(h, s.M, s.K, s.N, reps);
    Buffers b = make(s.M, s.K, s.N, 128);
    for (Kind k : {Kind::kInt8, Kind::kFp8, Kind::kMixedI8, Kind::kMixedU4}) {
      if (!wanted(k) || ((k == Kind::kInt8 || k == Kind::kFp8) && s.M < 512)) continue;
      fill_8bit(b, k);
      const Variant* shipped = nullptr;
      for (const auto& v : registry()) if (v.kind == k && v.shipped) shipped = &v;
      std::string why;
      if (shipped) shipped->time(problem(b, k, b.ref), 1, &why);  // the reference output
      for (const auto& v : registry()) {
        if (v.kind != k) continue;
        CK(cudaMemset(b.out, 0xFF, int64_t(s.M) * s.N * 2));
        why.clear();
        const float us = v.time(problem(b, k, b.out), reps, &why);
        const cudaError_t err = cudaGetLastError();
        if (us < 0 || err != cudaSuccess) {
          std::printf("%s,%s,%d,%d,%d,%d,,%.2f,,,%s\n", kind_name(k), v.name, int(v.shipped), s.M, s.K, s.N, bf16,
                      err != cudaSuccess ? cudaGetErrorString(err) : why.c_str());
          continue;
        }
        const double tflops = 2.0 * s.M * s.K * double(s.N) / (us * 1e-6) / 1e12;
        std::printf("%s,%s,%d,%d,%d,%d,%.2f,%.2f,%.4f,%.0f,%.3g\n", kind_name(k), v.name, int(v.shipped), s.M, s.K,
                    s.N, us, bf16, us / bf16, tflops, shipped ? diff_vs(b) : -1.f);
        std::fflush(stdout);
      }
    }
    release(b);
  }
  return 0;
}
#endif
