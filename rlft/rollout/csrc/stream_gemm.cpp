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

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstring>
#include <type_traits>

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

namespace {

// out (rows, n) = x (rows, k) @ weight.T + bias, `packed` = pack(weight) with `blocks` blocks; out's row stride n.
void linear_into(const float* xp, int64_t rows, int64_t k, const float* wp, int64_t blocks, int64_t n,
                 const float* bp, float* op) {
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
}

void check_packed(const torch::Tensor& packed, int64_t k, int64_t n, const char* what) {
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kBlock && packed.is_contiguous() &&
              packed.scalar_type() == torch::kFloat32 && packed.device().is_cpu(),
              "stream_gemm: `", what, "` must come from stream_gemm.pack");
  const int64_t blocks = packed.size(0);
  TORCH_CHECK(packed.size(1) == k, "stream_gemm: `", what, "` takes ", packed.size(1), " features, not ", k);
  TORCH_CHECK(n > (blocks - 1) * kBlock && n <= blocks * kBlock, "stream_gemm: n=", n, " does not match ", blocks,
              " blocks of `", what, "`");
}

void check_vector(const c10::optional<torch::Tensor>& v, int64_t n, const char* what) {
  TORCH_CHECK(!v.has_value() || (v->numel() == n && v->scalar_type() == torch::kFloat32 && v->is_contiguous() &&
                                 v->device().is_cpu()),
              "stream_gemm: `", what, "` must be a contiguous float32 vector of ", n);
}

const float* data_or_null(const c10::optional<torch::Tensor>& v) {
  return v.has_value() ? v->data_ptr<float>() : nullptr;
}

}  // namespace

// x (M, K) @ weight.T + bias -> (M, N), `packed` = pack(weight).
torch::Tensor linear(const torch::Tensor& x_in, const torch::Tensor& packed, int64_t n,
                     const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(cpu_has_avx512(), "stream_gemm.linear: this CPU has no AVX-512F");
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == torch::kFloat32 && x_in.device().is_cpu(),
              "stream_gemm.linear: x must be 2-D float32 on CPU, got ", x_in.sizes(), " ", x_in.scalar_type());
  const int64_t rows = x_in.size(0), k = x_in.size(1);
  check_packed(packed, k, n, "packed");
  check_vector(bias, n, "bias");
  const auto x = x_in.contiguous();
  auto out = torch::empty({rows, n}, x.options());
  linear_into(x.data_ptr<float>(), rows, k, packed.data_ptr<float>(), packed.size(0), n, data_or_null(bias),
              out.data_ptr<float>());
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// A whole decoding step of a Llama-family model (one new token per row) in one call: `Decoder`.
//
// Why: with the GEMMs streaming at the memory's rate, a SmolLM2-135M fp32 step at 8 rows spent ~10 of its ~29 ms
// outside them: ~30 torch ops per layer from Python (RMSNorm, rotary, cache writes, SDPA, SiLU, residuals), each a
// few microseconds of dispatch for a few microseconds of work, and SDPA ~80 us per call on one query token
// (profiled: docs/benchmarks.md, sixteenth session). Here each layer is its GEMMs plus plain loops over the rows.
// fp32: the streaming GEMMs above. bf16 (autocast over fp32 weights): oneDNN's GEMMs on the step's bf16-packed
// weights, rounding to bf16 where autocast does (projection inputs and outputs, the cache, attention's query and
// probabilities, SiLU); residuals and norms in fp32. llama_step.py holds the same math in torch ops; its tests
// compare both with the HF forward.
namespace {

// e^x for 16 floats: x = n ln2 + r, |r| <= ln2 / 2, e^r by Cephes' expf polynomial (~1 ulp), scaled by 2^n.
// Below -87.3 (e^x under float's normal range) 0: softmax's -inf mask entries give exactly 0, as in torch.
__attribute__((target("avx512f"))) inline __m512 exp_ps(__m512 x) {
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_LT_OQ);
  const __m512 c = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72284f)), _mm512_set1_ps(-87.33654f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), c);  // ln2 in two parts: r exact to float
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512 e = _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), _mm512_scalef_ps(y, n));
  return _mm512_mask_mov_ps(e, nan, x);
}

inline __mmask16 tail_mask(int64_t width) {
  return static_cast<__mmask16>(width >= kBlock ? 0xffff : (1u << width) - 1);
}

__attribute__((target("avx512f"))) void exp_block(const float* in, float* out, int64_t width) {
  const __mmask16 m = tail_mask(width);
  _mm512_mask_storeu_ps(out, m, exp_ps(_mm512_maskz_loadu_ps(m, in)));
}

// bfloat16 <-> float32 for 16 values (AVX-512F only: no BW/VL masked 16-bit loads, so partial vectors go through
// a small buffer). Rounding to the nearest bf16, ties to even, NaN kept: what torch's casts do.
__attribute__((target("avx512f"))) inline __m512 load16(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}

__attribute__((target("avx512f"))) inline __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  __m256i raw;
  if (m == 0xffff) {
    raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  } else {
    alignas(32) uint16_t part[16] = {0};
    for (int i = 0; i < 16; ++i)
      if ((m >> i) & 1) part[i] = p[i].x;
    raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(part));
  }
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

__attribute__((target("avx512f"))) inline __m512i bf16_bits(__m512 v) {  // the bf16 in each 32-bit lane's low half
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0));
}

__attribute__((target("avx512f"))) inline __m512 round_bf16(__m512 v) {  // to bf16 and back
  return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(v), 16));
}

__attribute__((target("avx512f"))) inline void store16(float* p, __mmask16 m, __m512 v) {
  _mm512_mask_storeu_ps(p, m, v);
}

__attribute__((target("avx512f"))) inline void store16(c10::BFloat16* p, __mmask16 m, __m512 v) {
  const __m256i packed = _mm512_cvtepi32_epi16(bf16_bits(v));
  if (m == 0xffff) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), packed);
  } else {
    alignas(32) uint16_t part[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(part), packed);
    for (int i = 0; i < 16; ++i)
      if ((m >> i) & 1) p[i].x = part[i];
  }
}

__attribute__((target("avx512f"))) void round_to_bf16(float* x, int64_t n) {  // in place, kept in float32
  for (int64_t i = 0; i < n; i += kBlock) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, round_bf16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

template <typename From, typename To>
__attribute__((target("avx512f"))) void convert(const From* in, To* out, int64_t n) {
  for (int64_t i = 0; i < n; i += kBlock) {
    const __mmask16 m = tail_mask(n - i);
    store16(out + i, m, load16(in + i, m));
  }
}

// HF's Llama RMSNorm of one row: weight * (x * rsqrt(mean(x^2) + eps)); `round_mid`: the normed x rounded to bf16
// before the weight multiplies it (a bf16 input's norm: HF casts back to the input dtype there).
__attribute__((target("avx512f"))) void rms_norm_row(const float* x, const float* weight, int64_t n, float eps,
                                                     float* out, bool round_mid = false) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kBlock) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float scale = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(n) + eps);
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < n; i += kBlock) {
    const __mmask16 m = tail_mask(n - i);
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), s);
    if (round_mid) v = round_bf16(v);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, weight + i), v));
  }
}

// Rotary embedding of one head in place: x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1).
void rotate_head(float* x, const float* cos, const float* sin, int64_t dim) {
  const int64_t half = dim / 2;
  float rotated[512];
  for (int64_t i = 0; i < half; ++i) {
    rotated[i] = -x[i + half];
    rotated[i + half] = x[i];
  }
  for (int64_t i = 0; i < dim; ++i) x[i] = x[i] * cos[i] + rotated[i] * sin[i];
}

// One query head against `length` cached positions: softmax(q.K^T * scale + mask) V -> out (dim). bf16 caches
// (`T`): the probabilities multiply V rounded to bf16 and normalised by the sum of the unrounded ones, as torch's
// CPU flash attention does for bf16.
template <typename T>
__attribute__((target("avx512f"))) void attend(const float* q, const T* keys, const T* values, const float* mask,
                                               int64_t length, int64_t dim, float scale, float* scores, float* out) {
  constexpr bool kBf16 = std::is_same<T, c10::BFloat16>::value;
  float top = -INFINITY;
  for (int64_t t = 0; t < length; ++t) {
    const T* k = keys + t * dim;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += kBlock) {
      const __mmask16 m = tail_mask(dim - i);
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), load16(k + i, m), acc);
    }
    scores[t] = _mm512_reduce_add_ps(acc) * scale + mask[t];
    top = std::max(top, scores[t]);
  }
  __m512 total = _mm512_setzero_ps();
  const __m512 shift = _mm512_set1_ps(top);
  for (int64_t t = 0; t < length; t += kBlock) {
    const __mmask16 m = tail_mask(length - t);
    const __m512 p = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + t), shift)));
    total = _mm512_add_ps(total, p);
    _mm512_mask_storeu_ps(scores + t, m, kBf16 ? round_bf16(p) : p);
  }
  const float inverse = 1.0f / _mm512_reduce_add_ps(total);
  for (int64_t i = 0; i < dim; i += kBlock) {
    const __mmask16 m = tail_mask(dim - i);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t t = 0; t < length; ++t)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(scores[t]), load16(values + t * dim + i, m), acc);
    acc = _mm512_mul_ps(acc, _mm512_set1_ps(inverse));
    _mm512_mask_storeu_ps(out + i, m, kBf16 ? round_bf16(acc) : acc);
  }
}

// out = silu(gate) * up for one row, silu(g) = g / (1 + e^-g); `round_silu`: silu's output rounded to bf16 (a bf16
// gate's SiLU), the product left to the next projection's input rounding.
__attribute__((target("avx512f"))) void silu_mul_row(const float* gate, const float* up, int64_t n, float* out,
                                                     bool round_silu) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += kBlock) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    if (round_silu) silu = round_bf16(silu);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

// oneDNN's GEMM on a weight packed by `torch.ops.mkldnn._reorder_linear_weight`: what llama_step.py's bf16 `_Linear`
// calls (`torch.ops.mkldnn._linear_pointwise`), through the dispatcher.
torch::Tensor onednn_linear(const torch::Tensor& x, const torch::Tensor& packed,
                            const c10::optional<torch::Tensor>& bias) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack{x, packed, bias.has_value() ? c10::IValue(*bias) : c10::IValue(),
                                 std::string("none"), c10::List<c10::optional<c10::Scalar>>(), std::string("")};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

struct Projection {  // a packed weight, its output features and its bias (or none)
  torch::Tensor packed;
  int64_t n = 0;
  c10::optional<torch::Tensor> bias;
};

struct Layer {
  torch::Tensor input_norm, post_norm;
  c10::optional<torch::Tensor> q_norm, k_norm;  // Qwen3: per-head RMSNorm of q and k before the rotation
  Projection qkv, o, gate_up, down;
};

}  // namespace

// The model's weights, packed for `linear` (fp32; `pack` / `pack_into`) or for oneDNN (bf16), q|k|v and gate|up
// merged, held for the calls of `step`.
class Decoder {
 public:
  Decoder(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate, double eps,
          double qk_eps, bool bf16)
      : hidden_(hidden), heads_(heads), kv_heads_(kv_heads), dim_(head_dim), intermediate_(intermediate),
        eps_(static_cast<float>(eps)), qk_eps_(static_cast<float>(qk_eps)), bf16_(bf16) {
    TORCH_CHECK(cpu_has_avx512(), "stream_gemm.Decoder: this CPU has no AVX-512F");
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, "stream_gemm.Decoder: ", heads,
                " query heads do not group under ", kv_heads, " key/value heads");
    TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= 512, "stream_gemm.Decoder: head_dim ", head_dim,
                " (even, at most 512)");
  }

  void add_layer(const torch::Tensor& input_norm, const torch::Tensor& qkv, const c10::optional<torch::Tensor>& qkv_bias,
                 const c10::optional<torch::Tensor>& q_norm, const c10::optional<torch::Tensor>& k_norm,
                 const torch::Tensor& o, const c10::optional<torch::Tensor>& o_bias, const torch::Tensor& post_norm,
                 const torch::Tensor& gate_up, const c10::optional<torch::Tensor>& gate_up_bias,
                 const torch::Tensor& down, const c10::optional<torch::Tensor>& down_bias) {
    const int64_t qkv_n = (heads_ + 2 * kv_heads_) * dim_;
    check_vector(input_norm, hidden_, "input_norm");
    check_vector(post_norm, hidden_, "post_norm");
    check_vector(q_norm, dim_, "q_norm");
    check_vector(k_norm, dim_, "k_norm");
    TORCH_CHECK(q_norm.has_value() == k_norm.has_value(), "stream_gemm.Decoder: q_norm and k_norm go together");
    layers_.push_back(Layer{input_norm, post_norm, q_norm, k_norm, projection(qkv, hidden_, qkv_n, qkv_bias, "qkv"),
                            projection(o, heads_ * dim_, hidden_, o_bias, "o"),
                            projection(gate_up, hidden_, 2 * intermediate_, gate_up_bias, "gate_up"),
                            projection(down, intermediate_, hidden_, down_bias, "down")});
  }

  void set_head(const torch::Tensor& final_norm, const torch::Tensor& lm_head, int64_t vocab,
                const c10::optional<torch::Tensor>& lm_bias) {
    check_vector(final_norm, hidden_, "final_norm");
    head_ = projection(lm_head, hidden_, vocab, lm_bias, "lm_head");
    final_norm_ = final_norm;
  }

  // hidden (rows, hidden) float32: the new tokens' embeddings; keys[l] / values[l] (rows, kv_heads, capacity,
  // head_dim), float32 (bf16 for a bf16 decoder): layer l's cache, `length` positions filled, the new token's key
  // and value written at position `length`; cos / sin (rows, head_dim): the new positions' rotary tables; mask
  // (rows, 1, 1, length + 1): 0 where a row attends, -inf at its padding. Returns the next-token logits (rows,
  // vocab), float32 (bf16 for a bf16 decoder).
  torch::Tensor step(const torch::Tensor& hidden, const std::vector<torch::Tensor>& keys,
                     const std::vector<torch::Tensor>& values, int64_t length, const torch::Tensor& cos_in,
                     const torch::Tensor& sin_in, const torch::Tensor& mask_in) {
    TORCH_CHECK(head_.n > 0, "stream_gemm.Decoder: set_head was not called");
    const int64_t rows = hidden.size(0), layers = static_cast<int64_t>(layers_.size());
    const auto cache_type = bf16_ ? torch::kBFloat16 : torch::kFloat32;
    TORCH_CHECK(hidden.dim() == 2 && hidden.size(1) == hidden_ && hidden.scalar_type() == torch::kFloat32,
                "stream_gemm.Decoder.step: hidden must be (rows, ", hidden_, ") float32, got ", hidden.sizes());
    TORCH_CHECK(static_cast<int64_t>(keys.size()) == layers && static_cast<int64_t>(values.size()) == layers,
                "stream_gemm.Decoder.step: ", layers, " layers, got ", keys.size(), " key and ", values.size(),
                " value caches");
    const int64_t capacity = layers ? keys[0].size(2) : 0;
    TORCH_CHECK(length >= 0 && length < capacity, "stream_gemm.Decoder.step: a cache of ", capacity,
                " positions cannot take position ", length);
    for (int64_t l = 0; l < layers; ++l) {
      for (const auto* cache : {&keys[l], &values[l]}) {
        TORCH_CHECK(cache->dim() == 4 && cache->size(0) == rows && cache->size(1) == kv_heads_ &&
                    cache->size(2) == capacity && cache->size(3) == dim_ && cache->is_contiguous() &&
                    cache->scalar_type() == cache_type,
                    "stream_gemm.Decoder.step: layer ", l, "'s cache must be a contiguous ",
                    bf16_ ? "bfloat16" : "float32", " (", rows,
                    ", ", kv_heads_, ", ", capacity, ", ", dim_, ") tensor, got ", cache->sizes(), " ",
                    cache->scalar_type());
      }
    }
    TORCH_CHECK(mask_in.dim() == 4 && mask_in.size(0) == rows && mask_in.size(3) == length + 1 &&
                at::isFloatingType(mask_in.scalar_type()),
                "stream_gemm.Decoder.step: mask must be (rows, 1, 1, ", length + 1, "), got ", mask_in.sizes());
    const auto mask = mask_in.scalar_type() == torch::kFloat32 && mask_in.stride(3) == 1
                          ? mask_in : mask_in.to(torch::kFloat32).contiguous();
    const auto cos = cos_in.contiguous(), sin = sin_in.contiguous();
    TORCH_CHECK(cos.numel() == rows * dim_ && sin.numel() == rows * dim_ && cos.scalar_type() == torch::kFloat32 &&
                sin.scalar_type() == torch::kFloat32, "stream_gemm.Decoder.step: cos and sin must be float32 (rows, ",
                dim_, ")");
    const int64_t qkv_n = (heads_ + 2 * kv_heads_) * dim_, span = length + 1;
    auto h = hidden.contiguous().clone();
    const auto options = h.options();
    auto x = torch::empty({rows, std::max(hidden_, intermediate_)}, options);
    auto qkv = torch::empty({rows, qkv_n}, options);
    auto attention = torch::empty({rows, heads_ * dim_}, options);
    auto gate_up = torch::empty({rows, 2 * intermediate_}, options);
    auto added = torch::empty({rows, hidden_}, options);
    auto scores = torch::empty({at::get_num_threads(), span}, options);
    float *hp = h.data_ptr<float>(), *xp = x.data_ptr<float>(), *qkvp = qkv.data_ptr<float>();
    float *ap = attention.data_ptr<float>(), *gup = gate_up.data_ptr<float>(), *addp = added.data_ptr<float>();
    const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>(), *mp = mask.data_ptr<float>();
    const int64_t mask_stride = mask.stride(0), group = heads_ / kv_heads_;
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim_));

    for (int64_t l = 0; l < layers; ++l) {
      const Layer& layer = layers_[l];
      for (int64_t r = 0; r < rows; ++r)
        rms_norm_row(hp + r * hidden_, layer.input_norm.data_ptr<float>(), hidden_, eps_, xp + r * hidden_);
      project(layer.qkv, xp, rows, hidden_, qkvp);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = qkvp + r * qkv_n;
        for (int64_t head = 0; head < heads_ + kv_heads_; ++head) {  // q heads, then k heads
          float* x_head = row + head * dim_;
          if (layer.q_norm.has_value())
            rms_norm_row(x_head, (head < heads_ ? *layer.q_norm : *layer.k_norm).data_ptr<float>(), dim_, qk_eps_,
                         x_head, bf16_);
          rotate_head(x_head, cp + r * dim_, sp + r * dim_, dim_);
        }
      }
      if (bf16_) {
        write_and_attend<c10::BFloat16>(keys[l], values[l], rows, capacity, length, qkvp, qkv_n, mp, mask_stride,
                                        group, scale, scores, ap);
      } else {
        write_and_attend<float>(keys[l], values[l], rows, capacity, length, qkvp, qkv_n, mp, mask_stride, group,
                                scale, scores, ap);
      }
      project(layer.o, ap, rows, heads_ * dim_, addp);
      add_into(hp, addp, rows * hidden_);
      for (int64_t r = 0; r < rows; ++r)
        rms_norm_row(hp + r * hidden_, layer.post_norm.data_ptr<float>(), hidden_, eps_, xp + r * hidden_);
      project(layer.gate_up, xp, rows, hidden_, gup);
      for (int64_t r = 0; r < rows; ++r)
        silu_mul_row(gup + r * 2 * intermediate_, gup + r * 2 * intermediate_ + intermediate_, intermediate_,
                     xp + r * intermediate_, bf16_);
      project(layer.down, xp, rows, intermediate_, addp);
      add_into(hp, addp, rows * hidden_);
    }
    for (int64_t r = 0; r < rows; ++r)
      rms_norm_row(hp + r * hidden_, final_norm_.data_ptr<float>(), hidden_, eps_, xp + r * hidden_);
    if (bf16_) return onednn_linear(to_bf16(xp, rows, hidden_), head_.packed, head_.bias);
    auto logits = torch::empty({rows, head_.n}, options);
    project(head_, xp, rows, hidden_, logits.data_ptr<float>());
    return logits;
  }

 private:
  Projection projection(const torch::Tensor& packed, int64_t k, int64_t n, const c10::optional<torch::Tensor>& bias,
                        const char* what) const {
    if (!bf16_) {
      check_packed(packed, k, n, what);
      check_vector(bias, n, what);
    } else {
      TORCH_CHECK(packed.dim() == 2 && packed.size(0) == n && packed.size(1) == k &&
                  packed.scalar_type() == torch::kBFloat16, "stream_gemm.Decoder: `", what,
                  "` must be a bf16 weight of (", n, ", ", k, ") packed by torch.ops.mkldnn._reorder_linear_weight");
      TORCH_CHECK(!bias.has_value() || (bias->numel() == n && bias->scalar_type() == torch::kBFloat16),
                  "stream_gemm.Decoder: `", what, "`'s bias must be a bf16 vector of ", n);
    }
    return Projection{packed, n, bias};
  }

  // x (rows, k) @ weight.T + bias into out (rows, n); bf16: x rounded to bf16 first, the bf16 result widened.
  void project(const Projection& p, const float* x, int64_t rows, int64_t k, float* out) const {
    if (!bf16_) {
      linear_into(x, rows, k, p.packed.data_ptr<float>(), p.packed.size(0), p.n, data_or_null(p.bias), out);
      return;
    }
    const auto y = onednn_linear(to_bf16(x, rows, k), p.packed, p.bias).contiguous();
    convert(y.data_ptr<c10::BFloat16>(), out, rows * p.n);
  }

  static torch::Tensor to_bf16(const float* x, int64_t rows, int64_t k) {
    auto narrow = torch::empty({rows, k}, torch::dtype(torch::kBFloat16));
    convert(x, narrow.data_ptr<c10::BFloat16>(), rows * k);
    return narrow;
  }

  // This token's keys (rotated) and values into the layer's cache at `length`, then every query head's attention.
  template <typename T>
  void write_and_attend(const torch::Tensor& keys, const torch::Tensor& values, int64_t rows, int64_t capacity,
                        int64_t length, float* qkvp, int64_t qkv_n, const float* mp, int64_t mask_stride,
                        int64_t group, float scale, torch::Tensor& scores, float* ap) const {
    T* key_cache = keys.data_ptr<T>();
    T* value_cache = values.data_ptr<T>();
    const int64_t span = length + 1;
    for (int64_t r = 0; r < rows; ++r) {
      float* row = qkvp + r * qkv_n;
      for (int64_t g = 0; g < kv_heads_; ++g) {
        const int64_t at = ((r * kv_heads_ + g) * capacity + length) * dim_;
        convert(row + (heads_ + g) * dim_, key_cache + at, dim_);
        convert(row + (heads_ + kv_heads_ + g) * dim_, value_cache + at, dim_);
      }
      if (bf16_) round_to_bf16(row, heads_ * dim_);  // the queries as autocast hands them to attention: bf16
    }
    at::parallel_for(0, rows * heads_, 1, [&](int64_t begin, int64_t end) {
      float* thread_scores = scores.data_ptr<float>() + at::get_thread_num() * span;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = task / heads_, head = task % heads_, g = head / group;
        const int64_t cache_at = (r * kv_heads_ + g) * capacity * dim_;
        attend<T>(qkvp + r * qkv_n + head * dim_, key_cache + cache_at, value_cache + cache_at, mp + r * mask_stride,
                  span, dim_, scale, thread_scores, ap + task * dim_);
      }
    });
  }

  static void add_into(float* h, const float* add, int64_t n) {
    for (int64_t i = 0; i < n; ++i) h[i] += add[i];
  }

  int64_t hidden_, heads_, kv_heads_, dim_, intermediate_;
  float eps_, qk_eps_;
  bool bf16_;
  std::vector<Layer> layers_;
  torch::Tensor final_norm_;
  Projection head_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported, "whether this CPU runs the kernel (AVX-512F)");
  m.def("pack", &pack, "weight (N, K) -> the blocked layout `linear` streams");
  m.def("pack_into", &pack_into, "weight (n, K) -> blocks first.. of a packed (blocks, K, 16) tensor",
        pybind11::arg("weight"), pybind11::arg("packed"), pybind11::arg("first"));
  // without the GIL: other Python threads run while a GEMM streams (it touches no Python object)
  m.def("linear", &linear, "x (M, K) @ weight.T + bias from the packed weight", pybind11::arg("x"),
        pybind11::arg("packed"), pybind11::arg("n"), pybind11::arg("bias") = pybind11::none(),
        pybind11::call_guard<pybind11::gil_scoped_release>());
  pybind11::class_<Decoder>(m, "Decoder", "a whole decoding step of a Llama-family model (fp32 or bf16)")
      .def(pybind11::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, double, bool>(),
           pybind11::arg("hidden"), pybind11::arg("heads"), pybind11::arg("kv_heads"), pybind11::arg("head_dim"),
           pybind11::arg("intermediate"), pybind11::arg("eps"), pybind11::arg("qk_eps"), pybind11::arg("bf16") = false)
      .def("add_layer", &Decoder::add_layer, pybind11::arg("input_norm"), pybind11::arg("qkv"),
           pybind11::arg("qkv_bias"), pybind11::arg("q_norm"), pybind11::arg("k_norm"), pybind11::arg("o"),
           pybind11::arg("o_bias"), pybind11::arg("post_norm"), pybind11::arg("gate_up"),
           pybind11::arg("gate_up_bias"), pybind11::arg("down"), pybind11::arg("down_bias"))
      .def("set_head", &Decoder::set_head, pybind11::arg("final_norm"), pybind11::arg("lm_head"),
           pybind11::arg("vocab"), pybind11::arg("lm_bias"))
      .def("step", &Decoder::step, pybind11::arg("hidden"), pybind11::arg("keys"), pybind11::arg("values"),
           pybind11::arg("length"), pybind11::arg("cos"), pybind11::arg("sin"), pybind11::arg("mask"),
           pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("exp", [](const torch::Tensor& x) {  // the step's e^x (softmax, SiLU), for its accuracy test
    TORCH_CHECK(cpu_has_avx512() && x.scalar_type() == torch::kFloat32, "stream_gemm.exp: float32, AVX-512F");
    auto in = x.contiguous();
    auto out = torch::empty_like(in);
    const float* ip = in.data_ptr<float>();
    float* op = out.data_ptr<float>();
    for (int64_t i = 0; i < in.numel(); i += kBlock) exp_block(ip + i, op + i, in.numel() - i);
    return out;
  }, "e^x as the fused step computes it");
}
