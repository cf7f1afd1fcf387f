// Standalone timing harness of the decode GEMV kernels (csrc/gemv), no torch: for tuning the
// kernel itself, and for ncu / compute-sanitizer runs on one kernel at a time.
//
//   nvcc -O3 -arch=sm_90a -std=c++17 --expt-relaxed-constexpr -Icsrc -Ibenchmarks -lcublas -o gemv_lab benchmarks/gemv_lab.cu
//   ./gemv_lab [format M K N [splits]]     format: int4g128 int4g32 w8a16 w8a8 w8a16r w8a8r bf16
//                                          (w8a16r / w8a8r: the int8 formats on the (N, K) weight)
//
// With no arguments it runs the decode sweep (M in 1, 4, 16 on 8192x28672 and 4096x14336) and
// prints us, GB/s of weight bytes and the time of cuBLAS bf16 at the same shape, all in one run.
// Weights are random bytes (any int4 / int8 code is valid), scales small and finite; each launch
// reads a different copy of the weights (copies together > 4x the L2), so nothing is served
// from L2. Results are timings only: correctness is the tests' job (tests/test_gemv_cuda.py).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gemv/gemv_kernel.cuh"
#include "lab_common.cuh"

using namespace kernelswap::gemv;
using namespace lab;

namespace {

struct Weights {
  uint4* w;
  void* scales;
  void* zeros;
  int64_t bytes;  // what the kernel must read (codes + scales + zeros)
};

struct Case {
  std::string fmt;
  int M;
  int64_t K, N;
  int splits_override;
};

template <class F, int NT>
float time_format(const Case& c, int loads_bytes_a_batch, int groups_a_batch, bool with_zeros, int sms,
                  float* out_gbps) {
  const int64_t n_tiles = cdiv(c.N, kTileN), batches = cdiv(c.K, kBatchK);
  const int64_t w_bytes = n_tiles * batches * loads_bytes_a_batch;
  const int64_t s_count = groups_a_batch ? n_tiles * batches * groups_a_batch * 16 : c.N * 2;  // fp16 / fp32
  const int64_t per_copy = w_bytes + s_count * 2 + (with_zeros ? s_count : 0);
  const int copies = int(std::max<int64_t>(2, std::min<int64_t>(16, cdiv(kRotateBytes, per_copy))));
  std::vector<Weights> ws(copies);
  for (int i = 0; i < copies; ++i) {
    ws[i].w = dev_alloc<uint4>(w_bytes / 16);
    fill_bytes<<<1024, 256>>>(reinterpret_cast<uint8_t*>(ws[i].w), w_bytes, 17u + i);
    if (groups_a_batch) {
      ws[i].scales = dev_alloc<uint16_t>(s_count);
      fill_small<<<256, 256>>>(static_cast<uint16_t*>(ws[i].scales), s_count, 3u + i, false);
      ws[i].zeros = with_zeros ? dev_alloc<uint8_t>(s_count) : nullptr;
      if (with_zeros) fill_bytes<<<256, 256>>>(static_cast<uint8_t*>(ws[i].zeros), s_count, 5u + i);
    } else {
      ws[i].scales = dev_alloc<float>(c.N);
      CK(cudaMemset(ws[i].scales, 0, c.N * 4));
      ws[i].zeros = nullptr;
    }
    ws[i].bytes = groups_a_batch ? per_copy : w_bytes + c.N * 4;
  }
  using Act = BF16;
  auto* x = dev_alloc<uint16_t>(c.M * c.K);
  fill_small<<<256, 256>>>(x, c.M * c.K, 11u, true);
  auto* y = dev_alloc<uint16_t>(c.M * c.N);
  const int64_t n_blocks = cdiv(n_tiles, F::kWarps);
  const Plan p = plan_splits<F>(n_blocks, batches, c.M, 8 * NT, sms);
  int splits = p.splits, bps = p.batches_per_split, smem = p.smem;
  if (c.splits_override > 0) {
    bps = int(cdiv(batches, c.splits_override));
    splits = int(cdiv(batches, bps));
    smem = F::smem_bytes(bps * kBatchK, c.M, 8 * NT);
  }
  auto* counters = dev_alloc<int>(n_blocks);
  CK(cudaMemset(counters, 0, n_blocks * 4));
  void* wsp = dev_alloc<float>(int64_t(splits) * c.M * c.N);
  if (smem > 48 * 1024) CK(cudaFuncSetAttribute(gemv_kernel<Act, F, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  Args a{};
  a.x = x;
  a.bias = nullptr;
  a.out = y;
  a.ws = wsp;
  a.counters = counters;
  a.K = c.K;
  a.M = c.M;
  a.N = int(c.N);
  a.n_tiles = int(n_tiles);
  a.batches = int(batches);
  a.batches_per_split = bps;
  const dim3 grid{unsigned(n_blocks), unsigned(splits), 1u};
  auto launch = [&](int i) {
    a.w = ws[i % copies].w;
    a.scales = ws[i % copies].scales;
    a.zeros = ws[i % copies].zeros;
    gemv_kernel<Act, F, NT><<<grid, F::kWarps * 32, smem>>>(a);
  };
  const float us = time_launches(launch, copies);
  *out_gbps = float(ws[0].bytes) / (us * 1e-6f) / 1e9f;
  std::printf("  grid %lldx%d smem %d bps %d\n", (long long)n_blocks, splits, smem, bps);
  for (auto& w : ws) {
    cudaFree(w.w);
    cudaFree(w.scales);
    if (w.zeros) cudaFree(w.zeros);
  }
  cudaFree(x);
  cudaFree(y);
  cudaFree(counters);
  cudaFree(wsp);
  return us;
}

template <template <class> class Fmt, int NT>
float run_nt(const Case& c, int lb, int gb, bool z, int sms, float* gbps) {
  return time_format<Fmt<BF16>, NT>(c, lb, gb, z, sms, gbps);
}

template <class Act>
using I4g128 = Int4<Act, 128>;
template <class Act>
using I4g32 = Int4<Act, 32>;

template <template <class> class Fmt>
float run_fmt(const Case& c, int lb, int gb, bool z, int sms, float* gbps) {
  if (c.M <= 8) return run_nt<Fmt, 1>(c, lb, gb, z, sms, gbps);
  if (c.M <= 16) return run_nt<Fmt, 2>(c, lb, gb, z, sms, gbps);
  if (c.M <= 32) return run_nt<Fmt, 4>(c, lb, gb, z, sms, gbps);
  return run_nt<Fmt, 8>(c, lb, gb, z, sms, gbps);
}

float time_cublas(cublasHandle_t h, const Case& c, float* gbps) {
  const float us = time_cublas_bf16(h, c.M, c.K, c.N);
  *gbps = float(c.N * c.K * 2) / (us * 1e-6f) / 1e9f;
  return us;
}

float run_case(const Case& c, int sms, cublasHandle_t h, float* gbps) {
  if (c.fmt == "int4g128") return run_fmt<I4g128>(c, 4 * 512, 2, true, sms, gbps);
  if (c.fmt == "int4g32") return run_fmt<I4g32>(c, 4 * 512, 8, false, sms, gbps);
  if (c.fmt == "w8a16") return run_fmt<Int8W16>(c, 8 * 512, 0, false, sms, gbps);
  if (c.fmt == "w8a8") return run_fmt<Int8W8>(c, 8 * 512, 0, false, sms, gbps);
  // The row formats read an (N, K) int8 weight (K % 16 == 0); the buffer above is at least that.
  if (c.fmt == "w8a16r") return run_fmt<Int8W16Rows>(c, 8 * 512, 0, false, sms, gbps);
  if (c.fmt == "w8a8r") return run_fmt<Int8W8Rows>(c, 8 * 512, 0, false, sms, gbps);
  if (c.fmt == "bf16") return time_cublas(h, c, gbps);
  std::fprintf(stderr, "unknown format %s\n", c.fmt.c_str());
  std::exit(2);
}

float copy_bandwidth() {
  const int64_t n = 1LL << 30;
  void *a = nullptr, *b = nullptr;
  CK(cudaMalloc(&a, n));
  CK(cudaMalloc(&b, n));
  for (int i = 0; i < 3; ++i) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaEventRecord(e0));
  for (int i = 0; i < 10; ++i) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms = 0.f;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  cudaFree(a);
  cudaFree(b);
  return 2.f * n * 10 / (ms * 1e-3f) / 1e9f;
}

}  // namespace

int main(int argc, char** argv) {
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cublasHandle_t h;
  cublasCreate(&h);
  std::vector<Case> cases;
  if (argc >= 5) {
    cases.push_back({argv[1], std::atoi(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), argc > 5 ? std::atoi(argv[5]) : 0});
  } else {
    for (auto kn : {std::pair<int64_t, int64_t>{8192, 28672}, {4096, 14336}})
      for (int m : {1, 4, 16})
        for (const char* f : {"bf16", "int4g128", "int4g32", "w8a16", "w8a8"}) cases.push_back({f, m, kn.first, kn.second, 0});
  }
  const float bw = copy_bandwidth();
  std::printf("copy bandwidth %.0f GB/s, %d SMs\n", bw, sms);
  float bf16_us = 0.f;
  std::printf("%-9s %3s %6s %6s %9s %8s %6s %7s\n", "format", "M", "K", "N", "us", "GB/s", "%copy", "x_bf16");
  for (const auto& c : cases) {
    float gbps = 0.f;
    const float us = run_case(c, sms, h, &gbps);
    if (c.fmt == "bf16") bf16_us = us;
    std::printf("%-9s %3d %6lld %6lld %9.2f %8.0f %6.1f %7.3f\n", c.fmt.c_str(), c.M, (long long)c.K, (long long)c.N, us,
                gbps, 100.f * gbps / bw, bf16_us > 0 ? us / bf16_us : 0.f);
  }
  return 0;
}
