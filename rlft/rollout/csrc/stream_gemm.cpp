// Float32 GEMMs for a few rows (decoding) that stream the weights at the memory's read rate.
//
// Why: at 8 rows, decoding multiplies each weight once per step, so a step costs the time to read the weights.
// MKL's packed GEMM reads them at ~0.55-0.65 of what a plain sum over memory reads (measured on SmolLM2-135M's
// step, 2 cores); this kernel reads each weight as one sequential stream per block of 16 output features, with
// software prefetch, and reaches the sum's rate. See rlft/rollout/stream_gemm.py.
//
// Layout (`pack`): weight (N, K) -> (ceil(N / 16), K, 16), zero-padded: block b holds output features
// 16b..16b+15, k-major, so each k is one 64-byte line of 16 weights.
//
// Built without ISA flags: the kernels carry their own target attribute and `supported` checks the CPU at run
// time, so the module loads on any x86-64 CPU and says where it cannot run.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

constexpr int64_t kBlock = 16;     // output features per block: one AVX-512 register of float32
// lines ahead per stream (2 KB); measured: two streams per thread with 32 reached the sum's rate, one stream
// with 0, 16 or 64 did not
constexpr int64_t kPrefetch = 32;

// The kernel: `R` rows of x (row stride K) times one block at `w`, or two adjacent blocks (`Two`: two streams,
// what it takes for one core to reach the memory's rate); bias added, the valid `width0` / `width1` features of
// each block stored (the last block may be partly padding).
using Kernel = void (*)(const float*, int64_t, const float*, float*, int64_t, const float*, int, int);

// 2 x 8 accumulators + 2 weight registers fit AVX-512's 32 registers; more rows take more passes.
constexpr int kAvx512Rows = 8;

template <int R, bool Two>
__attribute__((target("avx512f"))) void avx512_kernel(const float* x, int64_t K, const float* w, float* out,
                                                      int64_t ldo, const float* bias, int width0, int width1) {
  __m512 acc0[R], acc1[R];
  const float* w1 = w + K * kBlock;
  for (int r = 0; r < R; ++r) {
    acc0[r] = _mm512_setzero_ps();
    if (Two) acc1[r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(w + (k + kPrefetch) * kBlock), _MM_HINT_T0);
    if (Two) _mm_prefetch(reinterpret_cast<const char*>(w1 + (k + kPrefetch) * kBlock), _MM_HINT_T0);
    const __m512 v0 = _mm512_loadu_ps(w + k * kBlock);
    const __m512 v1 = Two ? _mm512_loadu_ps(w1 + k * kBlock) : v0;
    for (int r = 0; r < R; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r * K + k]);
      acc0[r] = _mm512_fmadd_ps(xr, v0, acc0[r]);
      if (Two) acc1[r] = _mm512_fmadd_ps(xr, v1, acc1[r]);
    }
  }
  const __mmask16 mask0 = static_cast<__mmask16>((1u << width0) - 1);
  const __mmask16 mask1 = static_cast<__mmask16>((1u << width1) - 1);
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(mask0, bias) : _mm512_setzero_ps();
  const __m512 b1 = (Two && bias) ? _mm512_maskz_loadu_ps(mask1, bias + kBlock) : _mm512_setzero_ps();
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(out + r * ldo, mask0, _mm512_add_ps(acc0[r], b0));
    if (Two) _mm512_mask_storeu_ps(out + r * ldo + kBlock, mask1, _mm512_add_ps(acc1[r], b1));
  }
}

template <bool Two>
Kernel avx512_for(int rows) {
  switch (rows) {
    case 1: return avx512_kernel<1, Two>;
    case 2: return avx512_kernel<2, Two>;
    case 3: return avx512_kernel<3, Two>;
    case 4: return avx512_kernel<4, Two>;
    case 5: return avx512_kernel<5, Two>;
    case 6: return avx512_kernel<6, Two>;
    case 7: return avx512_kernel<7, Two>;
    default: return avx512_kernel<8, Two>;
  }
}

bool cpu_has_avx512() {  // asked once: `linear` checks it at every call
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}

// 16 x 16 float32 transpose in registers: r[i] holds row i on entry, column i on return.
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {  // 32-bit elements of row pairs
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 64-bit elements: 4 x 4 blocks transposed within each 128-bit lane
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  for (int i = 0; i < 4; ++i) {  // then the 128-bit lanes of rows i, i + 4, i + 8, i + 12
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// One block: `rows` (<= 16) rows of w (row stride K) -> out (K, 16), k-major, lanes past `rows` zero. Tiles of
// 16 x 16 transposed in registers; stores that bypass the cache where `out` is 64-byte aligned (the packed copy
// is far larger than the cache and is next read by a GEMM, not now): measured on SmolLM2-135M's weights
// (2 threads) 26 ms against 63-66 ms for torch's transposing copy and 36 ms for a plain copy of the same bytes.
__attribute__((target("avx512f"))) void pack_block(const float* w, int64_t rows, int64_t K, float* out,
                                                   bool aligned) {
  __m512 r[16];
  for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
    const int width = static_cast<int>(std::min<int64_t>(kBlock, K - k0));
    const __mmask16 mask = static_cast<__mmask16>((1u << width) - 1);
    for (int i = 0; i < 16; ++i)
      r[i] = i < rows ? _mm512_maskz_loadu_ps(mask, w + i * K + k0) : _mm512_setzero_ps();
    transpose16(r);
    for (int j = 0; j < width; ++j) {
      if (aligned) {
        _mm512_stream_ps(out + (k0 + j) * kBlock, r[j]);
      } else {
        _mm512_storeu_ps(out + (k0 + j) * kBlock, r[j]);
      }
    }
  }
  _mm_sfence();  // the streaming stores are weakly ordered: done before the GEMM that reads them
}

}  // namespace

// Whether this CPU runs the kernel (AVX-512F); where not, callers keep a library GEMM.
bool supported() { return cpu_has_avx512(); }

// Writes `weight` (n, K) into blocks [first, first + ceil(n / 16)) of `packed` (blocks, K, 16), the layout
// `pack` returns; lanes past n are zero. `pack_concatenated` (stream_gemm.py) packs q|k|v side by side with it.
void pack_into(const torch::Tensor& weight_in, torch::Tensor& packed, int64_t first) {
  TORCH_CHECK(cpu_has_avx512(), "stream_gemm.pack: this CPU has no AVX-512F");
  TORCH_CHECK(weight_in.dim() == 2 && weight_in.scalar_type() == torch::kFloat32 && weight_in.device().is_cpu(),
              "stream_gemm.pack: a 2-D float32 CPU weight, got ", weight_in.sizes(), " ", weight_in.scalar_type());
  const auto weight = weight_in.contiguous();
  const int64_t n = weight.size(0), k = weight.size(1), blocks = (n + kBlock - 1) / kBlock;
  TORCH_CHECK(packed.dim() == 3 && packed.size(1) == k && packed.size(2) == kBlock && packed.is_contiguous() &&
              packed.scalar_type() == torch::kFloat32 && packed.device().is_cpu(),
              "stream_gemm.pack_into: `packed` must be a contiguous float32 (blocks, ", k, ", 16) tensor, got ",
              packed.sizes(), " ", packed.scalar_type());
  TORCH_CHECK(first >= 0 && first + blocks <= packed.size(0), "stream_gemm.pack_into: blocks ", first, "..",
              first + blocks, " of a weight of ", n, " rows do not fit ", packed.size(0), " blocks");
  const float* w = weight.data_ptr<float>();
  float* out = packed.data_ptr<float>() + first * k * kBlock;
  const bool aligned = reinterpret_cast<uintptr_t>(out) % 64 == 0;  // every block then starts on a 64-byte line
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      pack_block(w + b * kBlock * k, std::min<int64_t>(kBlock, n - b * kBlock), k, out + b * k * kBlock, aligned);
  });
}

torch::Tensor pack(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat32 && weight.device().is_cpu(),
              "stream_gemm.pack: a 2-D float32 CPU weight, got ", weight.sizes(), " ", weight.scalar_type());
  auto packed = torch::empty({(weight.size(0) + kBlock - 1) / kBlock, weight.size(1), kBlock}, weight.options());
  pack_into(weight, packed, 0);
  return packed;
}

// x (M, K) @ weight.T + bias -> (M, N), `packed` = pack(weight).
torch::Tensor linear(const torch::Tensor& x_in, const torch::Tensor& packed, int64_t n,
                     const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(cpu_has_avx512(), "stream_gemm.linear: this CPU has no AVX-512F");
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == torch::kFloat32 && x_in.device().is_cpu(),
              "stream_gemm.linear: x must be 2-D float32 on CPU, got ", x_in.sizes(), " ", x_in.scalar_type());
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kBlock && packed.is_contiguous() &&
              packed.scalar_type() == torch::kFloat32 && packed.device().is_cpu(),
              "stream_gemm.linear: `packed` must come from stream_gemm.pack");
  const int64_t rows = x_in.size(0), k = x_in.size(1), blocks = packed.size(0);
  TORCH_CHECK(packed.size(1) == k, "stream_gemm.linear: x has ", k, " features, the weight ", packed.size(1));
  TORCH_CHECK(n > (blocks - 1) * kBlock && n <= blocks * kBlock, "stream_gemm.linear: n=", n,
              " does not match ", blocks, " blocks");
  TORCH_CHECK(!bias.has_value() || (bias->numel() == n && bias->scalar_type() == torch::kFloat32 &&
                                    bias->is_contiguous() && bias->device().is_cpu()),
              "stream_gemm.linear: bias must be a contiguous float32 vector of ", n);
  const auto x = x_in.contiguous();
  auto out = torch::empty({rows, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  // threads split pairs of blocks: contiguous ranges of the packed weight, one read of each per call
  at::parallel_for(0, (blocks + 1) / 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t block = 2 * pair, n0 = block * kBlock;
      const bool two = block + 1 < blocks;
      const int width0 = static_cast<int>(std::min<int64_t>(kBlock, n - n0));
      const int width1 = two ? static_cast<int>(std::min<int64_t>(kBlock, n - n0 - kBlock)) : 0;
      const float* w = wp + block * k * kBlock;
      // rows past the first pass reuse the blocks from the core's own cache
      for (int64_t r0 = 0; r0 < rows; r0 += kAvx512Rows) {
        const int r = static_cast<int>(std::min<int64_t>(kAvx512Rows, rows - r0));
        const Kernel kernel = two ? avx512_for<true>(r) : avx512_for<false>(r);
        kernel(xp + r0 * k, k, w, op + r0 * n + n0, n, bp ? bp + n0 : nullptr, width0, width1);
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported, "whether this CPU runs the kernel (AVX-512F)");
  m.def("pack", &pack, "weight (N, K) -> the blocked layout `linear` streams");
  m.def("pack_into", &pack_into, "weight (n, K) -> blocks first.. of a packed (blocks, K, 16) tensor",
        pybind11::arg("weight"), pybind11::arg("packed"), pybind11::arg("first"));
  // without the GIL: other Python threads run while a GEMM streams (it touches no Python object)
  m.def("linear", &linear, "x (M, K) @ weight.T + bias from the packed weight", pybind11::arg("x"),
        pybind11::arg("packed"), pybind11::arg("n"), pybind11::arg("bias") = pybind11::none(),
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
