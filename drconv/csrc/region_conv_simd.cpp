// CPU kernels of drconv.region_conv and of DRConv2d's factored filters (float32), built and
// loaded by drconv/cpu_kernels.py for AVX-512 or for AVX2 with FMA (the vector type below); the
// pure-PyTorch path runs wherever these do not.
//
// The output pixels come sorted by group g = sample * m + region (`order`, group g's rows at
// order[starts[g]:starts[g + 1]]). Each pixel's k x k patch is read straight from the
// channels-last input while multiplying (no im2col buffer; an out-of-image tap reads zeros or is
// skipped). K is ordered (kh, kw, C_in), as the filters are. A group's filters come from a
// Filters source: explicit per-sample filters, or DRConv2d's factored form (static weight plus
// per-sample combinations of parameter tensors), formed where the kernels pack them.
// - Forward: one work item is a region, a panel of output channels and a sample, or up to four
//   samples whose factored filters are formed together. A group's filter rows are packed once,
//   transposed to (K, PANEL); then each tile of MAX_ROWS pixels broadcasts one input value
//   against PANEL filter values per step and writes its results to the pixels' output rows.
// - Filter gradient: one work item is a group; per tap and block of input channels, the
//   pixels' values are packed, then multiplied with the group's output gradient (transposed).
//   For factored filters one work item is a run of blocks of output channels instead, looping
//   over the groups and reducing each group's gradient straight into the factors' gradients.
// - Input gradient: one work item is a block of input channels of a sample, or of up to four
//   samples whose factored filters are formed together; per group and tap the filters' block is
//   packed, then each tile of pixels adds its gradient to its taps.
// - Scores: one work item is a sample and a region; the region's filters, formed once for all
//   the chunks of pixels where they fit in SCORE_FILTER_BYTES, meet every pixel either as
//   responses times the output gradient or as patch gradients times the patch (then, for 1x1
//   kernels, also added to x's gradient where the region is the pixel's own).
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <type_traits>

namespace {

#if defined(__AVX512F__)
constexpr int LANES = 16;
using vec = __m512;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vload(const float* p) { return _mm512_load_ps(p); }  // aligned
inline void vstore(float* p, vec v) { _mm512_store_ps(p, v); }  // aligned
inline vec vset1(float a) { return _mm512_set1_ps(a); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? 0xffff : left > 0 ? (1u << left) - 1 : 0;
}
// The first `left` floats at p (all LANES, or none when left <= 0), zeros in the other lanes.
inline vec vload_part(const float* p, int64_t left) {
  return _mm512_maskz_loadu_ps(lanes(left), p);
}
inline void vstore_part(float* p, vec v, int64_t left) {
  _mm512_mask_storeu_ps(p, lanes(left), v);
}
using vmask = __mmask16;
// The lanes where `v` takes over from `best` as a largest value: best is not NaN and v is
// larger or NaN.
inline vmask takes_over(vec best, vec v) {
  return _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q) &
         (_mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
}
// b in the lanes of `where`, a in the others.
inline vec vselect(vmask where, vec a, vec b) { return _mm512_mask_blend_ps(where, a, b); }
// Register tiles: forward MAX_ROWS pixels x VECTORS vectors, backward BLOCK_ROWS rows x
// BLOCK_VECTORS vectors (32 registers).
constexpr int MAX_ROWS = 6, VECTORS = 4, BLOCK_ROWS = 12, BLOCK_VECTORS = 2;
#else
constexpr int LANES = 8;
using vec = __m256;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vload(const float* p) { return _mm256_load_ps(p); }
inline void vstore(float* p, vec v) { _mm256_store_ps(p, v); }
inline vec vset1(float a) { return _mm256_set1_ps(a); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
inline float vsum(vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline __m256i lane_mask(int64_t left) {
  const int n = static_cast<int>(std::clamp<int64_t>(left, 0, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vec vload_part(const float* p, int64_t left) {
  return left >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(left));
}
inline void vstore_part(float* p, vec v, int64_t left) {
  if (left >= 8)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, lane_mask(left), v);
}
using vmask = __m256;
inline vmask takes_over(vec best, vec v) {
  return _mm256_and_ps(_mm256_cmp_ps(best, best, _CMP_ORD_Q),
                       _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ),
                                    _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}
inline vec vselect(vmask where, vec a, vec b) { return _mm256_blendv_ps(a, b, where); }
// 16 registers: 6 x 2 accumulators, two filter vectors and a broadcast.
constexpr int MAX_ROWS = 6, VECTORS = 2, BLOCK_ROWS = 6, BLOCK_VECTORS = 2;
#endif
constexpr int PANEL = LANES * VECTORS;        // output channels per forward work item
constexpr int BLOCK = LANES * BLOCK_VECTORS;  // channels per backward block

// Layer geometry, in the order `shape` passes it.
// An output pixel: its sample's first input pixel and its tap (0, 0)'s input row and column.
struct Pixel {
  int64_t sample_offset;
  int32_t ih, iw;
};

// Layer geometry, and a table of the output pixels (B * L), so that finding a tap takes no
// division (two per lookup cost a third of the forward's time); `pointwise`: a 1x1 kernel at
// stride 1 without padding, whose output pixel is its input pixel (no lookup; table unfilled).
struct Geometry {
  int64_t batch, regions, c_in, h, w, c_out, h_out, w_out, kh, kw, sh, sw, ph, pw, dh, dw;
  Pixel* pixels;
  bool pointwise;
};

}  // namespace

// Where a group's filters come from (the layout of drconv/cpu_kernels.py's FilterSource).
// Explicit: `filters`, element (group, o, tap, i) at group * group_stride + o * out_stride +
// tap * tap_stride + i * in_stride, groups b * m + r, or r only when `shared` by the samples.
// Factored (`filters` null):
//   filter[b, r][o, t, i] = weight[o, t, i] + bias[r, o, i]
//                           + sum_c coef[b, r, c, t] * terms[r, c, o, t, i]
// with weight (C_out, K); bias (m, C_out, C_in) or null; terms (m or 1, n_terms, C_out, K or
// C_in): shared by the regions unless terms_by_region, by the taps unless terms_by_tap; coef
// (B, m, n_terms, taps or 1): shared by the taps unless coef_by_tap.
struct Filters {
  const float* filters;
  const float* weight;
  const float* bias;
  const float* terms;
  const float* coef;
  int64_t shared, group_stride, out_stride, tap_stride, in_stride;
  int64_t n_terms, terms_by_region, terms_by_tap, coef_by_tap;
};

// The factors' gradients (drconv/cpu_kernels.py's FactorGrads), each null when not wanted (the
// kernel zeroes them first): weight (C_out, K), bias and terms shaped as theirs, coef_parts
// (blocks, B, m, n_terms, taps or 1), one part per block of `block_rows` output channels.
struct FactorGrads {
  float* weight;
  float* bias;
  float* terms;
  float* coef_parts;
  int64_t block_rows;
};

namespace {

// Channel 0 of tap (i, j) of sorted row `row` (flat output pixel b * L + p) in a channels-last
// tensor of x's geometry, or nullptr when the tap falls in the padding.
template <class T>
inline T* tap_of(const Geometry& g, T* t, int64_t row, int64_t i, int64_t j) {
  if (g.pointwise) return t + row * g.c_in;
  const Pixel& p = g.pixels[row];
  const int64_t ih = p.ih + i * g.dh, iw = p.iw + j * g.dw;
  if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) return nullptr;
  return t + (p.sample_offset + ih * g.w + iw) * g.c_in;
}

#if defined(__AVX512F__)
// dst[c * dst_stride + r] = src[r * src_stride + c] for r, c < 16.
inline void transpose_tile(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: pairs of rows interleaved
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // lane l of r[4i + q]: rows 4i..4i+3 of column 4l + q
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int q = 0; q < 4; ++q) {  // column 4l + q: lane l of r[q], r[4 + q], r[8 + q], r[12 + q]
    const __m512 even01 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);
    const __m512 odd01 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xdd);
    const __m512 even23 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
    const __m512 odd23 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xdd);
    _mm512_storeu_ps(dst + q * dst_stride, _mm512_shuffle_f32x4(even01, even23, 0x88));
    _mm512_storeu_ps(dst + (4 + q) * dst_stride, _mm512_shuffle_f32x4(odd01, odd23, 0x88));
    _mm512_storeu_ps(dst + (8 + q) * dst_stride, _mm512_shuffle_f32x4(even01, even23, 0xdd));
    _mm512_storeu_ps(dst + (12 + q) * dst_stride, _mm512_shuffle_f32x4(odd01, odd23, 0xdd));
  }
}
#else
// dst[c * dst_stride + r] = src[r * src_stride + c] for r, c < 8.
inline void transpose_tile(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m256 r[8], t[8], s[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 4; ++i) {  // per 128-bit half: pairs of rows interleaved
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // s[4i + q]: rows 4i..4i+3 of columns q and 4 + q
    s[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int q = 0; q < 4; ++q) {
    _mm256_storeu_ps(dst + q * dst_stride, _mm256_permute2f128_ps(s[q], s[4 + q], 0x20));
    _mm256_storeu_ps(dst + (4 + q) * dst_stride, _mm256_permute2f128_ps(s[q], s[4 + q], 0x31));
  }
}
#endif

// panel[k * stride + j] = rows[j * K + k] for j < width, zero for width <= j < PANEL.
void pack_panel(const float* rows, int64_t K, int64_t width, float* panel,
                int64_t stride = PANEL) {
  const int64_t kt = K - K % LANES, jt = width - width % LANES;
  for (int64_t j = 0; j < jt; j += LANES)
    for (int64_t k = 0; k < kt; k += LANES)
      transpose_tile(rows + j * K + k, K, panel + k * stride + j, stride);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = k < kt ? jt : 0; j < PANEL; ++j)
      panel[k * stride + j] = j < width ? rows[j * K + k] : 0.f;
}

// As pack_panel for rows of filters laid out (C_in, taps) instead of (taps, C_in):
// panel[(t * c_in + i) * PANEL + j] = rows[j * K + i * taps + t] for j < width, zero for
// width <= j < PANEL, in tiles of LANES rows by LANES taps (of one input channel) where they fit.
void pack_panel_by_channel(const float* rows, int64_t c_in, int64_t taps, int64_t width,
                           float* panel) {
  const int64_t K = c_in * taps, tt = taps - taps % LANES, jt = width - width % LANES;
  for (int64_t j = 0; j < jt; j += LANES)
    for (int64_t t = 0; t < tt; t += LANES)
      for (int64_t i = 0; i < c_in; ++i)  // the tiles' rows and their taps' panels in order
        transpose_tile(rows + j * K + i * taps + t, K, panel + (t * c_in + i) * PANEL + j,
                       c_in * PANEL);
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t i = 0; i < c_in; ++i)
      for (int64_t j = t < tt ? jt : 0; j < PANEL; ++j)
        panel[(t * c_in + i) * PANEL + j] = j < width ? rows[j * K + i * taps + t] : 0.f;
}

// dst[(o - first_out) * dst_stride + i] = input channels first .. first + width of tap `tap` of
// output channels o = first_out .. first_out + outs of group `group`'s filter.
void filter_rows(const Geometry& g, const Filters& f, int64_t group, int64_t first_out,
                 int64_t outs, int64_t tap, int64_t first, int64_t width, float* dst,
                 int64_t dst_stride) {
  const int64_t K = g.kh * g.kw * g.c_in, at = tap * g.c_in + first;
  if (f.filters) {
    const float* src = f.filters + (f.shared ? group % g.regions : group) * f.group_stride +
                       first_out * f.out_stride + tap * f.tap_stride + first * f.in_stride;
    for (int64_t o = 0; o < outs; ++o, src += f.out_stride, dst += dst_stride) {
      if (f.in_stride == 1) {
        memcpy(dst, src, width * sizeof(float));
      } else {
        for (int64_t i = 0; i < width; ++i) dst[i] = src[i * f.in_stride];
      }
    }
    return;
  }
  constexpr int64_t MAX_TERMS = 64;
  const int64_t r = group % g.regions, coef_taps = f.coef_by_tap ? g.kh * g.kw : 1;
  const int64_t term_k = f.terms_by_tap ? K : g.c_in, term_stride = g.c_out * term_k;
  const int64_t n_terms = std::min(f.n_terms, MAX_TERMS);
  float coef[MAX_TERMS];
  for (int64_t c = 0; c < n_terms; ++c)
    coef[c] = f.coef[(group * f.n_terms + c) * coef_taps + (f.coef_by_tap ? tap : 0)];
  const float* w = f.weight + first_out * K + at;
  const float* bias = f.bias ? f.bias + (r * g.c_out + first_out) * g.c_in + first : nullptr;
  const float* terms = f.terms + ((f.terms_by_region ? r : 0) * f.n_terms * g.c_out + first_out) *
                                     term_k + (f.terms_by_tap ? at : first);
  for (int64_t o = 0; o < outs; ++o, w += K, terms += term_k, dst += dst_stride) {
    for (int64_t i = 0; i < width; i += LANES) {
      vec v = vload_part(w + i, width - i);
      if (bias) v = vadd(v, vload_part(bias + o * g.c_in + i, width - i));
      for (int64_t c = 0; c < n_terms; ++c)
        v = vfma(vset1(coef[c]), vload_part(terms + c * term_stride + i, width - i), v);
      vstore_part(dst + i, v, width - i);
    }
  }
}

// Samples whose filters the forward forms together: the terms' vectors, loaded once, serve
// them all, and their multiply-add chains interleave (one sample's chain alone waits on each
// multiply-add's latency).
constexpr int SAMPLES = 4;

// Taps whose coefficients the factored kernels keep on the stack (formed_in_registers).
constexpr int64_t MAX_TAPS = 64;

// coef[s] = the coefficients of group groups[s], (N terms, coef_taps: the taps or 1).
template <int N, int S>
void group_coefs(const Filters& f, const int64_t* groups, int64_t coef_taps,
                 float (&coef)[S][N * MAX_TAPS]) {
  for (int s = 0; s < S; ++s)
    memcpy(coef[s], f.coef + groups[s] * N * coef_taps, N * coef_taps * sizeof(float));
}

// filter_taps of factored filters with N terms, for the S groups `groups` of one region, group
// s's rows at dst[s]. Each term's vector is loaded once for all the samples, and, unless the
// terms are by tap (BY_TAP), for all the taps (loaded per tap, the loads took longer than the
// multiply-adds), and kept in a register (indexed by a runtime count, the compiler kept them
// in memory). Each filter value is formed as filter_rows forms it: weight + bias, then the
// terms in order.
template <int N, int S, bool BY_TAP>
void factored_taps(const Geometry& g, const Filters& f, const int64_t* groups, int64_t first_out,
                   int64_t outs, int64_t first, int64_t width, float* const* dst,
                   int64_t out_stride, int64_t tap_stride) {
  const int64_t taps = g.kh * g.kw, K = taps * g.c_in, r = groups[0] % g.regions;
  const int64_t coef_taps = f.coef_by_tap ? taps : 1;
  float coef[S][N * MAX_TAPS];
  group_coefs<N, S>(f, groups, coef_taps, coef);
  const int64_t term_k = BY_TAP ? K : g.c_in;
  const float* terms = f.terms + (f.terms_by_region ? r : 0) * N * g.c_out * term_k;
  for (int64_t j = 0; j < outs; ++j) {
    const int64_t o = first_out + j;
    const float* w = f.weight + o * K + first;
    const float* bias = f.bias ? f.bias + (r * g.c_out + o) * g.c_in + first : nullptr;
    const float* term_row = terms + o * term_k + first;
    for (int64_t i = 0; i < width; i += LANES) {
      const int64_t left = width - i;
      vec term[N];
      if (!BY_TAP)
        for (int c = 0; c < N; ++c)
          term[c] = vload_part(term_row + c * g.c_out * term_k + i, left);
      const vec b = bias ? vload_part(bias + i, left) : vzero();
      for (int64_t t = 0; t < taps; ++t) {
        if (BY_TAP)
          for (int c = 0; c < N; ++c)
            term[c] = vload_part(term_row + c * g.c_out * term_k + t * g.c_in + i, left);
        const vec static_part = bias ? vadd(vload_part(w + t * g.c_in + i, left), b)
                                     : vload_part(w + t * g.c_in + i, left);
        const int64_t at = coef_taps > 1 ? t : 0;
        vec v[S];
        for (int s = 0; s < S; ++s) v[s] = static_part;
        for (int c = 0; c < N; ++c)
          for (int s = 0; s < S; ++s)
            v[s] = vfma(vset1(coef[s][c * coef_taps + at]), term[c], v[s]);
        for (int s = 0; s < S; ++s)
          vstore_part(dst[s] + j * out_stride + t * tap_stride + i, v[s], left);
      }
    }
  }
}

// Whether factored_taps forms f's filters: factored, with 1..8 terms.
bool formed_in_registers(const Geometry& g, const Filters& f) {
  return !f.filters && f.n_terms >= 1 && f.n_terms <= 8 &&
         !(f.coef_by_tap && g.kh * g.kw > MAX_TAPS);
}

// Calls call(N, BY_TAP), as std::integral_constant<int, f.n_terms> and
// std::bool_constant<f.terms_by_tap>, and returns true where formed_in_registers; else returns
// false.
template <class Call>
bool with_factored(const Geometry& g, const Filters& f, Call call) {
  if (!formed_in_registers(g, f)) return false;
  const auto by_tap = [&](auto n) {
    if (f.terms_by_tap) {
      call(n, std::true_type());
    } else {
      call(n, std::false_type());
    }
  };
  switch (f.n_terms) {
    case 1: by_tap(std::integral_constant<int, 1>()); break;
    case 2: by_tap(std::integral_constant<int, 2>()); break;
    case 3: by_tap(std::integral_constant<int, 3>()); break;
    case 4: by_tap(std::integral_constant<int, 4>()); break;
    case 5: by_tap(std::integral_constant<int, 5>()); break;
    case 6: by_tap(std::integral_constant<int, 6>()); break;
    case 7: by_tap(std::integral_constant<int, 7>()); break;
    default: by_tap(std::integral_constant<int, 8>()); break;
  }
  return true;
}

// Calls factored_taps<n_terms, S, terms by tap>(g, f, args...) where formed_in_registers.
template <int S, class... Args>
bool with_factored_taps(const Geometry& g, const Filters& f, Args&&... args) {
  return with_factored(g, f, [&](auto n, auto by_tap) {
    factored_taps<decltype(n)::value, S, decltype(by_tap)::value>(g, f, args...);
  });
}

// The factors of one forward panel of factored filters (PANEL output channels from `first`),
// transposed as the panel is (pack_panel: rows of PANEL, zero beyond its width): the weight
// (K, PANEL), a region's bias (C_in, PANEL) and terms (C_in or K, n_terms, PANEL: a row's terms
// side by side, not 8 KiB apart in one cache set). A thread's copy is transposed again only
// where its panel or region changes (the forward's items run panel by panel): from it a
// group's panel is formed where the kernel reads it, a few multiply-adds per value (formed as
// rows of K, then transposed group by group, it took a fifth of the 3x3 forward kernel's
// time). Unless `used`, nothing is allocated.
struct FactorPanel {
  const Geometry& g;
  const Filters& f;
  const int64_t term_k;
  float* weight;
  float* bias;
  float* terms;
  int64_t first = -1, bias_region = -1, terms_region = -1;
  const bool used;
  FactorPanel(const Geometry& geometry, const Filters& filters, bool use)
      : g(geometry),
        f(filters),
        term_k(f.terms_by_tap ? g.kh * g.kw * g.c_in : g.c_in),
        weight(use ? static_cast<float*>(
                         aligned_alloc(64, g.kh * g.kw * g.c_in * PANEL * sizeof(float)))
                   : nullptr),
        bias(use && f.bias
                 ? static_cast<float*>(aligned_alloc(64, g.c_in * PANEL * sizeof(float)))
                 : nullptr),
        terms(use ? static_cast<float*>(
                        aligned_alloc(64, f.n_terms * term_k * PANEL * sizeof(float)))
                  : nullptr),
        used(use) {}
  ~FactorPanel() {
    free(weight);
    free(bias);
    free(terms);
  }
  FactorPanel(const FactorPanel&) = delete;
  FactorPanel& operator=(const FactorPanel&) = delete;
  bool allocated() const { return !used || (weight && terms && (bias || !f.bias)); }
  // Makes these the factors of the panel from output channel `from` (`width` of them) and of
  // region `region`.
  void load(int64_t from, int64_t width, int64_t region) {
    const int64_t K = g.kh * g.kw * g.c_in;
    if (from != first) {
      pack_panel(f.weight + from * K, K, width, weight);
      first = from;
      bias_region = terms_region = -1;
    }
    if (f.bias && region != bias_region) {
      pack_panel(f.bias + (region * g.c_out + from) * g.c_in, g.c_in, width, bias);
      bias_region = region;
    }
    const int64_t own = f.terms_by_region ? region : 0;
    if (own != terms_region) {
      for (int64_t c = 0; c < f.n_terms; ++c)
        pack_panel(f.terms + ((own * f.n_terms + c) * g.c_out + from) * term_k, term_k, width,
                   terms + c * PANEL, f.n_terms * PANEL);
      terms_region = own;
    }
  }
};

// The panels (pack_panel's layout) of the S groups `groups` of one region, group s's at dst[s],
// formed from `factors` (loaded for the groups' panel and region) with N terms, by tap unless
// shared by the taps, row by row in the panel's order. Each value is formed as filter_rows
// forms it: weight + bias, then the terms in order; each term's vector is loaded once for all
// the samples.
template <int N, int S, bool BY_TAP>
void form_panels(const Geometry& g, const Filters& f, const FactorPanel& factors,
                 const int64_t* groups, float* const* dst) {
  const int64_t taps = g.kh * g.kw, coef_taps = f.coef_by_tap ? taps : 1;
  float coef[S][N * MAX_TAPS];
  group_coefs<N, S>(f, groups, coef_taps, coef);
  for (int64_t t = 0; t < taps; ++t) {
    const float* coef_t = &coef[0][0] + (coef_taps > 1 ? t : 0);
    for (int64_t i = 0; i < g.c_in; ++i) {
      const int64_t own = i * PANEL, at = t * g.c_in * PANEL + own;
      const float* term = factors.terms + (BY_TAP ? t * g.c_in + i : i) * N * PANEL;
      vec v[S][VECTORS];
      for (int l = 0; l < VECTORS; ++l) {
        const vec w = vload(factors.weight + at + l * LANES);
        const vec static_part = factors.bias ? vadd(w, vload(factors.bias + own + l * LANES)) : w;
        for (int s = 0; s < S; ++s) v[s][l] = static_part;
      }
      for (int c = 0; c < N; ++c) {
        vec tv[VECTORS];
        for (int l = 0; l < VECTORS; ++l) tv[l] = vload(term + c * PANEL + l * LANES);
        for (int s = 0; s < S; ++s) {
          const vec k = vset1(coef_t[s * N * MAX_TAPS + c * coef_taps]);
          for (int l = 0; l < VECTORS; ++l) v[s][l] = vfma(k, tv[l], v[s][l]);
        }
      }
      for (int s = 0; s < S; ++s)
        for (int l = 0; l < VECTORS; ++l) vstore(dst[s] + at + l * LANES, v[s][l]);
    }
  }
}

// The groups `groups` (n <= SAMPLES) padded to SAMPLES with the last (formed twice), and where
// each one's filters go: base + s * stride (the last's for the padding).
void pad_groups(const int64_t* groups, int n, float* base, int64_t stride,
                int64_t (&padded)[SAMPLES], float* (&dst)[SAMPLES]) {
  for (int s = 0; s < SAMPLES; ++s) {
    padded[s] = groups[std::min(s, n - 1)];
    dst[s] = base + std::min(s, n - 1) * stride;
  }
}

// As filter_rows for every tap: dst[(o - first_out) * out_stride + t * tap_stride + i].
void filter_taps(const Geometry& g, const Filters& f, int64_t group, int64_t first_out,
                 int64_t outs, int64_t first, int64_t width, float* dst, int64_t out_stride,
                 int64_t tap_stride) {
  if (with_factored_taps<1>(g, f, &group, first_out, outs, first, width, &dst, out_stride,
                           tap_stride))
    return;
  for (int64_t t = 0; t < g.kh * g.kw; ++t)
    filter_rows(g, f, group, first_out, outs, t, first, width, dst + t * tap_stride, out_stride);
}

// A thread's `count` filter panels (pack_panel: of as many groups, or of one group's output
// channels) and a row of zeros for taps in the padding, as response reads them; `rows` holds
// one panel's filter rows while they are formed (pack) or, for explicit filters in another
// layout, gathered; `factors` (used where `form` and formed_in_registers, and then `rows` is
// not allocated) the factors form_groups forms panels from.
struct FilterPanel {
  const Geometry& g;
  const Filters& f;
  const int64_t size;  // floats per panel
  float* panels;
  float* zero_row;
  FactorPanel factors;
  float* rows;
  FilterPanel(const Geometry& geometry, const Filters& filters, int count, bool form = false)
      : g(geometry),
        f(filters),
        size(g.kh * g.kw * g.c_in * PANEL),
        panels(static_cast<float*>(aligned_alloc(64, count * size * sizeof(float)))),
        zero_row(static_cast<float*>(calloc(g.c_in + LANES, sizeof(float)))),
        factors(g, f, form && formed_in_registers(g, f)),
        rows(factors.used ? nullptr : static_cast<float*>(malloc(size * sizeof(float)))) {}
  ~FilterPanel() {
    free(panels);
    free(zero_row);
    free(rows);
  }
  bool allocated() const {
    return panels && zero_row && (rows || factors.used) && factors.allocated();
  }
  const float* panel(int s = 0) const { return panels + s * size; }
  void pack(int64_t group, int64_t first, int64_t width, int s = 0) {
    const int64_t K = g.kh * g.kw * g.c_in;
    float* panel = panels + s * size;
    const int64_t taps = g.kh * g.kw;
    const float* own = f.filters ? f.filters + (f.shared ? group % g.regions : group) *
                                                   f.group_stride + first * f.out_stride
                                 : nullptr;
    if (own && f.in_stride == 1 && (taps == 1 || f.tap_stride == g.c_in) && f.out_stride == K) {
      // rows of K in order: transposed in tiles from where they lie
      pack_panel(own, K, width, panel);
      return;
    }
    if (own && f.tap_stride == 1 && f.in_stride == taps && f.out_stride == K) {
      // (C_out, C_in, kh, kw), as region_conv's filters come: likewise, each input channel's
      // taps in turn (gathered into rows of K first, then packed, it took 15% of the forward)
      pack_panel_by_channel(own, g.c_in, taps, width, panel);
      return;
    }
    if (own) {  // any other strides: each row gathered into rows of K in order
      for (int64_t j = 0; j < width; ++j) {
        const float* row = own + j * f.out_stride;
        float* dst = rows + j * K;
        if (f.tap_stride < f.in_stride) {  // e.g. (C_in, kh, kw): read in memory order
          for (int64_t i = 0; i < g.c_in; ++i)
            for (int64_t tap = 0; tap < taps; ++tap)
              dst[tap * g.c_in + i] = row[tap * f.tap_stride + i * f.in_stride];
        } else {
          for (int64_t tap = 0; tap < taps; ++tap)
            for (int64_t i = 0; i < g.c_in; ++i)
              dst[tap * g.c_in + i] = row[tap * f.tap_stride + i * f.in_stride];
        }
      }
    } else {
      filter_taps(g, f, group, first, width, 0, g.c_in, rows, K, g.c_in);
    }
    pack_panel(rows, K, width, panel);
  }
  // Panels 0 .. n - 1 of the groups `groups` (n <= SAMPLES, all of region `region`): formed
  // together from `factors`, else packed one by one.
  void form_groups(const int64_t* groups, int n, int64_t region, int64_t first, int64_t width) {
    if (!factors.used) {
      for (int s = 0; s < n; ++s) pack(groups[s], first, width, s);
      return;
    }
    factors.load(first, width, region);
    int64_t padded[SAMPLES];
    float* dst[SAMPLES];
    pad_groups(groups, n, panels, size, padded, dst);
    with_factored(g, f, [&](auto n_terms, auto by_tap) {
      constexpr int N = decltype(n_terms)::value;
      constexpr bool BY_TAP = decltype(by_tap)::value;
      if (n == 1) {
        form_panels<N, 1, BY_TAP>(g, f, factors, padded, dst);
      } else {
        form_panels<N, SAMPLES, BY_TAP>(g, f, factors, padded, dst);
      }
    });
  }
};

// Calls Kernel<rows, vectors>::run(args...) for runtime rows in 1..MAX and the vectors that hold
// `width` floats (1..V).
template <template <int, int> class Kernel, int V, int ROWS, class... Args>
void with_rows(int rows, Args&&... args) {
  if constexpr (ROWS > 1) {
    if (rows < ROWS) return with_rows<Kernel, V, ROWS - 1>(rows, args...);
  }
  Kernel<ROWS, V>::run(args...);
}

template <template <int, int> class Kernel, int MAX, int V, class... Args>
void dispatch(int rows, int64_t width, Args&&... args) {
  if constexpr (V > 1) {
    if ((width + LANES - 1) / LANES < V) return dispatch<Kernel, MAX, V - 1>(rows, width, args...);
  }
  with_rows<Kernel, V, MAX>(rows, args...);
}

// Rows a loop gathering scattered rows fetches ahead of the one it reads (without, each read
// waited on the cache).
constexpr int64_t AHEAD = 8;

// Into the cache (L1, or with LOCALITY 2 L2; __builtin_prefetch's), to be read or, with WRITE
// 1, written: the cache lines of p[0 .. n).
template <int LOCALITY = 3, int WRITE = 0>
inline void prefetch(const float* p, int64_t n) {
  for (int64_t c = 0; c < n; c += 64 / sizeof(float)) __builtin_prefetch(p + c, WRITE, LOCALITY);
  __builtin_prefetch(p + n - 1, WRITE, LOCALITY);
}

// Responses: `out` = output channels first.. (V vectors) of the ROWS sorted pixels `rows` from
// the panel of a group's filters (pack_panel), their patches read from x (B, H, W, C_in). Not
// inlined, with accumulators of its own: inlined into its callers, or adding to `out` (which
// might alias x), the compiler kept an accumulator in memory, at half the speed.
template <int ROWS, int V>
__attribute__((noinline)) void response(const Geometry& g, const float* x, const float* zero_row,
                                        const float* panel, const int64_t* rows,
                                        vec (&out)[ROWS][V]) {
  vec acc[ROWS][V];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = vzero();
  const float* weights = panel;
  for (int64_t t = 0; t < g.kh * g.kw; ++t) {
    const float* tap[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      tap[r] = tap_of(g, x, rows[r], t / g.kw, t % g.kw);
      if (!tap[r]) tap[r] = zero_row;
    }
    for (int64_t c = 0; c < g.c_in; ++c, weights += PANEL) {
      vec wv[V];
      for (int v = 0; v < V; ++v) wv[v] = vload(weights + LANES * v);
      for (int r = 0; r < ROWS; ++r) {
        const vec xv = vset1(tap[r][c]);
        for (int v = 0; v < V; ++v) acc[r][v] = vfma(xv, wv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < V; ++v) out[r][v] = acc[r][v];
}

// Forward: output channels first .. first + width of the ROWS sorted pixels `rows`, from the
// panel of their group's filters, plus `bias` (those channels' own, or null), into the output
// rows `out` (B * L, C_out), and without it into `responses` (likewise; unless null). The lines
// of the output (and response) rows of the `next` pixels after these (the next tile's) are
// fetched into L2 meanwhile, to be written (a scattered row's line is read from memory before
// it is written: 7-9% of the forward at the 1x1 target layer, 1-5% at 3x3), and in a pointwise
// layer so are their input rows (10%; at 3x3, whose neighbouring pixels share their rows, that
// was slower).
template <int ROWS, int V>
struct OutputTile {
  static void run(const Geometry& g, const float* x, const float* zero_row, const float* panel,
                  const int64_t* rows, const float* bias, float* out, float* responses,
                  int64_t first, int64_t width, int64_t next) {
    for (int64_t r = 0; r < next; ++r) {
      const int64_t row = rows[ROWS + r];
      if (g.pointwise) prefetch<2>(x + row * g.c_in, g.c_in);
      prefetch<2, 1>(out + row * g.c_out + first, width);
      if (responses) prefetch<2, 1>(responses + row * g.c_out + first, width);
    }
    vec acc[ROWS][V];
    response(g, x, zero_row, panel, rows, acc);
    for (int v = 0; v < V; ++v) {
      const vec b = bias ? vload_part(bias + LANES * v, width - LANES * v) : vzero();
      for (int r = 0; r < ROWS; ++r) {
        const int64_t at = rows[r] * g.c_out + first + LANES * v;
        vstore_part(out + at, vadd(acc[r][v], b), width - LANES * v);
        if (responses) vstore_part(responses + at, acc[r][v], width - LANES * v);
      }
    }
  }
};

// A pixel's response `acc` at output channels first .. first + width (V vectors) times its
// output gradient `grad` (its row), added to its score `score`.
template <int V>
inline void add_score(const vec (&acc)[V], const float* grad, int64_t first, int64_t width,
                      float& score) {
  vec dot = vzero();
  for (int v = 0; v < V; ++v)
    dot = vfma(acc[v], vload_part(grad + first + LANES * v, width - LANES * v), dot);
  score += vsum(dot);
}

// Scores from responses: the ROWS pixels' response to one region's panel, times their output
// gradient there, added to their sums (`sums[r]`, row r's).
template <int ROWS, int V>
struct ResponseScoreTile {
  static void run(const Geometry& g, const float* x, const float* zero_row, const float* panel,
                  const int64_t* rows, const float* grad_rows, float* sums, int64_t first,
                  int64_t width) {
    vec acc[ROWS][V];
    response(g, x, zero_row, panel, rows, acc);
    for (int r = 0; r < ROWS; ++r)
      add_score(acc[r], grad_rows + rows[r] * g.c_out, first, width, sums[r]);
  }
};

// A score from a saved response: the pixel's response (the forward's: its row `response`) at
// output channels first .. first + width (V vectors), times its output gradient there, added to
// its score `score`, as ResponseScoreTile adds it. (ROWS: dispatch's, 1.)
template <int ROWS, int V>
struct SavedScoreTile {
  static void run(const float* response, const float* grad, int64_t first, int64_t width,
                  float& score) {
    vec acc[V];
    for (int v = 0; v < V; ++v)
      acc[v] = vload_part(response + first + LANES * v, width - LANES * v);
    add_score(acc, grad, first, width, score);
  }
};

// The backward's tiles: ROWS rows by a block of up to BLOCK channels (V vectors), operands
// packed contiguously first: rows read at a stride of a power of two (a pixel's channels, a
// filter's taps) fall into a few cache sets and evict each other.

// Filter gradient: output channels j0 .. j0 + ROWS by `width` input channels of one tap, summed
// over a group's n pixels: patches (n, BLOCK) packed, grads (n, BLOCK_ROWS) the output
// gradient of the group's pixels at channels j0.., packed. Written to out, rows K apart.
template <int ROWS, int V>
struct FilterGradTile {
  static void run(const float* patches, const float* grads, int64_t n, float* out, int64_t K,
                  int64_t width) {
    vec acc[ROWS][V];
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = vzero();
    for (int64_t q = 0; q < n; ++q) {
      vec xv[V];
      for (int v = 0; v < V; ++v) xv[v] = vload(patches + q * BLOCK + LANES * v);
      for (int r = 0; r < ROWS; ++r) {
        const vec gv = vset1(grads[q * BLOCK_ROWS + r]);
        for (int v = 0; v < V; ++v) acc[r][v] = vfma(gv, xv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < V; ++v)
        vstore_part(out + r * K + LANES * v, acc[r][v], width - LANES * v);
  }
};

// The output gradient of a tile's pixels as patch_grad reads it, channel after channel: packed
// (C_out, BLOCK_ROWS) and read through one pointer (PackedGrads), or read from each pixel's
// output gradient row (GradRows: no packing).
struct PackedGrads {
  const float* at;
  float operator[](int r) const { return at[r]; }
  void next() { at += BLOCK_ROWS; }
};
template <int ROWS>
struct GradRows {
  const float* row[ROWS];
  GradRows(const float* grad_rows, const int64_t* rows, int64_t c_out) {
    for (int r = 0; r < ROWS; ++r) row[r] = grad_rows + rows[r] * c_out;
  }
  float operator[](int r) const { return *row[r]; }
  void next() {
    for (int r = 0; r < ROWS; ++r) ++row[r];
  }
};

// Patch gradient: `acc` = the ROWS sorted pixels' output gradient (`grads`) times the packed
// block of one tap's `width` input channels of a group's filters (`weights`: (C_out, BLOCK)),
// the pixels' patch gradient at those channels; each sum from zero over the output channels in
// order. Packed, the gradient is read through one pointer (ROWS row pointers take as many
// registers). Inlined into patch_grad and input_grad_taps, which are not inlined and keep
// accumulators of their own, as response: inlined into their callers, the compiler loaded each
// filter vector ROWS times (folded into the multiply-adds) or kept accumulators in memory.
template <int ROWS, int V, class Grads>
__attribute__((always_inline)) inline void patch_grad_sums(const Geometry& g, Grads grads,
                                                           const float* weights,
                                                           vec (&acc)[ROWS][V]) {
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = vzero();
  for (int64_t c = 0; c < g.c_out; ++c, grads.next(), weights += BLOCK) {
    vec wv[V];
    for (int v = 0; v < V; ++v) wv[v] = vload(weights + LANES * v);
    for (int r = 0; r < ROWS; ++r) {
      const vec gv = vset1(grads[r]);
      for (int v = 0; v < V; ++v) acc[r][v] = vfma(gv, wv[v], acc[r][v]);
    }
  }
}

// patch_grad_sums of an output gradient (PackedGrads or GradRows), into `out`.
template <int ROWS, int V, class Grads>
__attribute__((noinline)) void patch_grad(const Geometry& g, const Grads& grads,
                                          const float* weights, vec (&out)[ROWS][V]) {
  vec acc[ROWS][V];
  patch_grad_sums(g, grads, weights, acc);
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < V; ++v) out[r][v] = acc[r][v];
}

// t[0 .. width) += sum, or, `first` (t uninitialised, as where x's gradient gets one sum per
// element: a pointwise layer's), = sum: the same floats, as such a sum from zero is never -0.
template <int V>
inline void add_to(float* t, const vec (&sum)[V], int64_t width, bool first = false) {
  for (int v = 0; v < V; ++v) {
    const int64_t left = width - LANES * v;
    vstore_part(t + LANES * v, first ? sum[v] : vadd(vload_part(t + LANES * v, left), sum[v]),
                left);
  }
}

// Input gradient: `width` input channels (from `first`) of every tap of the ROWS sorted pixels
// `rows`, their patch gradient at each tap in turn (tap t's filter block at weights + t *
// C_out * BLOCK), added to grad_x (B, H, W, C_in), or written for a pointwise layer: each sum
// from zero, then added. The taps' loop inside (a call of patch_grad per tap: 12% slower at 3x3).
template <int ROWS, int V, class Grads>
__attribute__((noinline)) void input_grad_taps(const Geometry& g, const Grads& grads,
                                               const float* weights, const int64_t* rows,
                                               float* grad_x, int64_t first, int64_t width) {
  for (int64_t tap = 0; tap < g.kh * g.kw; ++tap, weights += g.c_out * BLOCK) {
    const int64_t i = tap / g.kw, j = tap % g.kw;
    // x's gradient at the taps fetched while the sums are made (read after, it waited on the
    // cache for a third of the time)
    float* taps[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      taps[r] = tap_of(g, grad_x, rows[r], i, j);
      if (taps[r]) prefetch(taps[r] + first, width);
    }
    vec acc[ROWS][V];
    patch_grad_sums(g, grads, weights, acc);
    for (int r = 0; r < ROWS; ++r)
      if (taps[r]) add_to(taps[r] + first, acc[r], width, g.pointwise);
  }
}

// input_grad_taps with the pixels' output gradient packed in `grads` (PackedGrads), or, where
// `grads` is null, read from their rows of `grad_rows`.
template <int ROWS, int V>
struct InputGradTile {
  static void run(const Geometry& g, const float* grads, const float* grad_rows,
                  const float* weights, const int64_t* rows, float* grad_x, int64_t first,
                  int64_t width) {
    if (grads)
      input_grad_taps<ROWS, V>(g, PackedGrads{grads}, weights, rows, grad_x, first, width);
    else
      input_grad_taps<ROWS, V>(g, GradRows<ROWS>(grad_rows, rows, g.c_out), weights, rows,
                               grad_x, first, width);
  }
};

// Region scores: for the ROWS sorted pixels `rows` and one region, the part of
// s = <output gradient, region's response> = <patch gradient, patch> from `width` input channels
// (from `first`) of tap (i, j), added to the tile's sums (`sums[r]`, row r's). Their output
// gradient comes packed in `grads` (PackedGrads) or, where `grads` is null, is read from their
// rows of `grad_rows`; the region's filters come packed in `weights` as patch_grad reads them.
// Rows selected_from .. selected_to of the tile belong to the region: with grad_x (1x1 kernels,
// where no two pixels share an input pixel), their patch gradient, x's, is added to it.
template <int ROWS, int V>
struct PatchGradScoreTile {
  static void run(const Geometry& g, const float* x, const float* grads, const float* grad_rows,
                  const float* weights, const int64_t* rows, int64_t i, int64_t j, int64_t first,
                  int64_t width, float* sums, int selected_from, int selected_to,
                  float* grad_x) {
    // the rows' patches (and x's gradient) fetched while patch_grad multiplies: read after
    // it, they waited on the cache as long as it took
    const float* taps[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      taps[r] = tap_of(g, x, rows[r], i, j);
      if (!taps[r]) continue;
      prefetch(taps[r] + first, width);
      if (grad_x && r >= selected_from && r < selected_to)
        prefetch(grad_x + (taps[r] - x) + first, width);
    }
    vec acc[ROWS][V];
    if (grads)
      patch_grad(g, PackedGrads{grads}, weights, acc);
    else
      patch_grad(g, GradRows<ROWS>(grad_rows, rows, g.c_out), weights, acc);
    for (int r = 0; r < ROWS; ++r) {
      const float* t = taps[r];
      if (!t) continue;
      vec dot = vzero();
      for (int v = 0; v < V; ++v)
        dot = vfma(acc[r][v], vload_part(t + first + LANES * v, width - LANES * v), dot);
      sums[r] += vsum(dot);
      if (grad_x && r >= selected_from && r < selected_to)
        add_to(grad_x + (t - x) + first, acc[r], width, g.pointwise);
    }
  }
};

// dst[q * BLOCK + c] = rows[q][first + c] for c < width, zero up to BLOCK (rows[q] null: all
// zero).
void pack_block(const float* const* rows, int64_t n, int64_t first, int64_t width, float* dst) {
  for (int64_t q = 0; q < n; ++q, dst += BLOCK) {
    if (q + AHEAD < n && rows[q + AHEAD]) prefetch(rows[q + AHEAD] + first, width);
    const float* row = rows[q] ? rows[q] + first : nullptr;
    for (int v = 0; v < BLOCK_VECTORS; ++v)
      vstore(dst + LANES * v, row ? vload_part(row + LANES * v, width - LANES * v) : vzero());
  }
}

// A thread's packed blocks of a group's filters, `count` blocks of input channels (slots) of
// one per tap: (count, taps, C_out, BLOCK), the tap's `width` input channels from `first`, zero
// up to BLOCK, as patch_grad reads them; and the output gradient rows of `tiles` tiles of
// pixels, each packed (C_out, BLOCK_ROWS).
struct FilterBlock {
  const Geometry& g;
  const Filters& f;
  float* weights;
  float* grads;
  FilterBlock(const Geometry& geometry, const Filters& filters, int64_t count = 1,
              int64_t tiles = 1)
      : g(geometry),
        f(filters),
        weights(static_cast<float*>(
            aligned_alloc(64, count * g.kh * g.kw * g.c_out * BLOCK * sizeof(float)))),
        grads(static_cast<float*>(malloc(tiles * g.c_out * BLOCK_ROWS * sizeof(float)))) {}
  ~FilterBlock() {
    free(weights);
    free(grads);
  }
  bool allocated() const { return weights && grads; }
  // Tile `tile`'s packed output gradient.
  float* tile_grads(int64_t tile = 0) const { return grads + tile * g.c_out * BLOCK_ROWS; }
  // tile_grads(tile)[c * BLOCK_ROWS + r] = the output gradient of sorted row rows[r] (r < n) at
  // channel c.
  void pack_grads(const float* grad_rows, const int64_t* rows, int n, int64_t tile = 0) {
    float* dst = tile_grads(tile);
    for (int r = 0; r < n; ++r) {
      const float* row = grad_rows + rows[r] * g.c_out;
      for (int64_t c = 0; c < g.c_out; ++c) dst[c * BLOCK_ROWS + r] = row[c];
    }
  }
  float* at(int64_t tap, int64_t slot = 0) const {
    return weights + (slot * g.kh * g.kw + tap) * g.c_out * BLOCK;
  }
  void pack(int64_t group, int64_t tap, int64_t first, int64_t width) {
    filter_rows(g, f, group, 0, g.c_out, tap, first, width, at(tap), BLOCK);
    zero_tail(at(tap), width);
  }
  // Every tap's block, into slot `slot`.
  void pack_taps(int64_t group, int64_t first, int64_t width, int64_t slot = 0) {
    filter_taps(g, f, group, 0, g.c_out, first, width, at(0, slot), BLOCK, g.c_out * BLOCK);
    for (int64_t tap = 0; tap < g.kh * g.kw; ++tap) zero_tail(at(tap, slot), width);
  }
  // Every tap's block of the groups `groups` (n <= SAMPLES, all of one region) into slots
  // slot0 .. slot0 + n - 1, formed together where formed_in_registers.
  void pack_groups(const int64_t* groups, int n, int64_t first, int64_t width,
                   int64_t slot0 = 0) {
    int64_t padded[SAMPLES];
    float* dst[SAMPLES];
    pad_groups(groups, n, at(0, slot0), g.kh * g.kw * g.c_out * BLOCK, padded, dst);
    if (n == 1 || !with_factored_taps<SAMPLES>(g, f, padded, 0, g.c_out, first, width, dst,
                                              BLOCK, g.c_out * BLOCK)) {
      for (int s = 0; s < n; ++s) pack_taps(groups[s], first, width, slot0 + s);
      return;
    }
    for (int s = 0; s < n; ++s)
      for (int64_t tap = 0; tap < g.kh * g.kw; ++tap) zero_tail(at(tap, slot0 + s), width);
  }
  void zero_tail(float* block, int64_t width) {
    if (width < BLOCK)
      for (int64_t c = 0; c < g.c_out; ++c)
        for (int64_t i = width; i < BLOCK; ++i) block[c * BLOCK + i] = 0.f;
  }
};

// Rows of a group's filter gradient that reduce_to_terms reduces into the terms together, and
// groups whose gradients it adds to the terms at once (WaveTermsReduction).
constexpr int64_t REDUCED_ROWS = 4;
constexpr int WAVE_GROUPS = 8;

// A thread's buffers for a filter gradient of `rows` output channels: the group's output
// gradient packed in tiles of BLOCK_ROWS channels, (tiles, n, BLOCK_ROWS), one tap's block of its
// pixels' values, (n, BLOCK), the pixels' taps, and (factored filters) the gradient blocks of
// `blocks` groups, (blocks, rows, K), and reduce_to_terms' dot products, (WAVE_GROUPS,
// REDUCED_ROWS, taps).
struct GroupPatches {
  float* grads;
  float* patches;
  const float** taps;
  float* block;
  float* sums;
  bool with_block;
  GroupPatches(const Geometry& g, int64_t rows, bool block_too, int64_t blocks = 1)
      : grads(static_cast<float*>(malloc((rows + BLOCK_ROWS - 1) / BLOCK_ROWS * BLOCK_ROWS *
                                         g.h_out * g.w_out * sizeof(float)))),
        patches(static_cast<float*>(aligned_alloc(64, g.h_out * g.w_out * BLOCK * sizeof(float)))),
        taps(static_cast<const float**>(malloc(g.h_out * g.w_out * sizeof(float*)))),
        block(block_too ? static_cast<float*>(
                              malloc(blocks * rows * g.kh * g.kw * g.c_in * sizeof(float)))
                        : nullptr),
        sums(block_too ? static_cast<float*>(
                             malloc(WAVE_GROUPS * REDUCED_ROWS * g.kh * g.kw * sizeof(float)))
                       : nullptr),
        with_block(block_too) {}
  ~GroupPatches() {
    free(grads);
    free(patches);
    free(taps);
    free(block);
    free(sums);
  }
  bool allocated() const { return grads && patches && taps && ((block && sums) || !with_block); }
};

// out (rows, K, rows K apart) = the gradient of output channels first .. first + rows of group
// `group`'s filter: its pixels' output gradient times their patches.
void group_filter_grad(const Geometry& g, const float* x, const float* grad_rows,
                       const int64_t* order, const int64_t* starts, int64_t group, int64_t first,
                       int64_t rows, GroupPatches& buffers, float* out) {
  const int64_t K = g.kh * g.kw * g.c_in, lo = starts[group], n = starts[group + 1] - lo;
  for (int64_t q = 0; q < n; ++q) {
    if (q + AHEAD < n) prefetch(grad_rows + order[lo + q + AHEAD] * g.c_out + first, rows);
    const float* row = grad_rows + order[lo + q] * g.c_out + first;
    for (int64_t j0 = 0; j0 < rows; j0 += BLOCK_ROWS)  // tile j0 / BLOCK_ROWS starts at j0 * n
      for (int64_t r = 0; r < std::min<int64_t>(rows - j0, BLOCK_ROWS); ++r)
        buffers.grads[(j0 * n + q * BLOCK_ROWS) + r] = row[j0 + r];
  }
  for (int64_t tap = 0; tap < g.kh * g.kw; ++tap) {
    for (int64_t q = 0; q < n; ++q)
      buffers.taps[q] = tap_of(g, x, order[lo + q], tap / g.kw, tap % g.kw);
    for (int64_t from = 0; from < g.c_in; from += BLOCK) {
      const int64_t width = std::min<int64_t>(g.c_in - from, BLOCK);
      pack_block(buffers.taps, n, from, width, buffers.patches);
      for (int64_t j0 = 0; j0 < rows; j0 += BLOCK_ROWS)
        dispatch<FilterGradTile, BLOCK_ROWS, BLOCK_VECTORS>(
            static_cast<int>(std::min<int64_t>(rows - j0, BLOCK_ROWS)), width, buffers.patches,
            buffers.grads + j0 * n, n, out + j0 * K + tap * g.c_in + from, K, width);
    }
  }
}

// reduce_to_terms' terms and coefficients of R output channels' gradient rows `gr` (R, K):
// their terms' rows at T + c * stride + j * term_k (term c, row j), their gradients likewise at
// dT (or dT null), the group's coefficients `coef` (n_terms, taps or 1) and their gradient part
// `coef_part` (or null). The R rows' dot products are multiply-add chains of their own,
// interleaved (one row's alone waits on each multiply-add's latency), and every value is summed
// in the order one row after the other sums it (`sums` keeps the rows' dot products until then:
// (R, taps)). (V: with_rows' vectors, unused.)
template <int R, int V>
struct TermsReduction {
  static void run(const Geometry& g, const Filters& f, const float* T, float* dT, int64_t term_k,
                  int64_t stride, const float* coef, float* coef_part, const float* gr,
                  float* sums) {
    const int64_t c_in = g.c_in, taps = g.kh * g.kw, K = taps * c_in;
    const int64_t coef_taps = f.coef_by_tap ? taps : 1;
    const bool by_tap = f.terms_by_tap;
    for (int64_t c = 0; c < f.n_terms; ++c) {
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t at = c * stride + (by_tap ? t * c_in : 0);
        const vec a = vset1(coef[c * coef_taps + (coef_taps > 1 ? t : 0)]);
        vec dot[R];
        for (int j = 0; j < R; ++j) dot[j] = vzero();
        for (int64_t i = 0; i < c_in; i += LANES) {
          const int64_t left = c_in - i;
          for (int j = 0; j < R; ++j) {
            const vec gv = vload_part(gr + j * K + t * c_in + i, left);
            if (dT) {
              float* d = dT + at + j * term_k + i;
              vstore_part(d, vfma(a, gv, vload_part(d, left)), left);
            }
            dot[j] = vfma(vload_part(T + at + j * term_k + i, left), gv, dot[j]);
          }
        }
        for (int j = 0; j < R; ++j) sums[j * taps + t] = vsum(dot[j]);
      }
      if (coef_part)
        for (int j = 0; j < R; ++j)
          for (int64_t t = 0; t < taps; ++t)
            coef_part[c * coef_taps + (coef_taps > 1 ? t : 0)] += sums[j * taps + t];
    }
  }
};

// TermsReduction of N groups that share their terms (a region's own, or the regions' shared
// ones), in group order, where each term value belongs to one tap (terms by tap, or a 1x1
// kernel): the gradient rows of group s at gr[s] (`rows` of them, K apart), its coefficients
// coef[s] and their gradient part coef_part[s] (or null). Each term gradient value is summed
// over the N groups in a register, in their order, and stored once (added group by group, the
// paper generator's terms' loads and stores took as long as the filter gradient itself at 1x1);
// each group's dot products, and the coefficients' parts, are summed as TermsReduction sums
// them. `sums`: (N, REDUCED_ROWS, taps). (V: with_rows' vectors, unused.)
template <int N, int V>
struct WaveTermsReduction {
  static void run(const Geometry& g, const Filters& f, const float* T, float* dT, int64_t term_k,
                  int64_t stride, const float* const* coef, float* const* coef_part,
                  const float* const* gr, int64_t rows, float* sums) {
    const int64_t c_in = g.c_in, taps = g.kh * g.kw, K = taps * c_in;
    const int64_t coef_taps = f.coef_by_tap ? taps : 1;
    for (int64_t c = 0; c < f.n_terms; ++c) {
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t at = c * stride + t * c_in, ct = c * coef_taps + (coef_taps > 1 ? t : 0);
        for (int64_t j = 0; j < rows; ++j) {
          const float* term = T + at + j * term_k;
          float* d_term = dT ? dT + at + j * term_k : nullptr;
          vec dot[N];
          for (int s = 0; s < N; ++s) dot[s] = vzero();
          for (int64_t i = 0; i < c_in; i += LANES) {
            const int64_t left = c_in - i;
            const vec tv = vload_part(term + i, left);
            vec d = d_term ? vload_part(d_term + i, left) : vzero();
            for (int s = 0; s < N; ++s) {
              const vec gv = vload_part(gr[s] + j * K + t * c_in + i, left);
              d = vfma(vset1(coef[s][ct]), gv, d);
              dot[s] = vfma(tv, gv, dot[s]);
            }
            if (d_term) vstore_part(d_term + i, d, left);
          }
          for (int s = 0; s < N; ++s) sums[(s * REDUCED_ROWS + j) * taps + t] = vsum(dot[s]);
        }
      }
      for (int s = 0; s < N; ++s)
        if (coef_part[s])
          for (int64_t j = 0; j < rows; ++j)
            for (int64_t t = 0; t < taps; ++t)
              coef_part[s][c * coef_taps + (coef_taps > 1 ? t : 0)] +=
                  sums[(s * REDUCED_ROWS + j) * taps + t];
    }
  }
};

// Adds a group's filter gradient `grad` (rows, K) of output channels first .. first + rows to
// the static factors' gradients (Filters' factored form): weight += grad; bias[r] += grad summed
// over the taps.
void reduce_to_weight_and_bias(const Geometry& g, const FactorGrads& d, int64_t group,
                               int64_t first, int64_t rows, const float* grad) {
  const int64_t K = g.kh * g.kw * g.c_in, taps = g.kh * g.kw, r = group % g.regions;
  for (int64_t j = 0; j < rows; ++j) {
    const int64_t o = first + j;
    const float* gr = grad + j * K;
    if (d.weight) {
      float* dw = d.weight + o * K;
      for (int64_t k = 0; k < K; k += LANES)
        vstore_part(dw + k, vadd(vload_part(dw + k, K - k), vload_part(gr + k, K - k)), K - k);
    }
    if (d.bias) {
      float* db = d.bias + (r * g.c_out + o) * g.c_in;
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t i = 0; i < g.c_in; i += LANES) {
          const int64_t left = g.c_in - i;
          vstore_part(db + i, vadd(vload_part(db + i, left), vload_part(gr + t * g.c_in + i, left)),
                      left);
        }
    }
  }
}

// Adds the filter gradients (rows <= REDUCED_ROWS, K; group s's at grads[s]) of output channels
// first .. first + rows of the n groups `groups` (one group, or WaveTermsReduction's) to their
// terms' and coefficients' gradients: terms[r, c] += coef[b, r, c, t] * grad (summed over the
// taps where the terms are shared by them); coef part [b, r, c, t] (of block `part`) += <terms[r,
// c] at tap t, grad at tap t> (summed over the taps where the coefficients are shared by them).
// `sums`: (WAVE_GROUPS, REDUCED_ROWS, taps).
void reduce_to_terms(const Geometry& g, const Filters& f, const FactorGrads& d,
                     const int64_t* groups, int n, int64_t first, int64_t rows,
                     const float* const* grads, int64_t part, float* sums) {
  const int64_t K = g.kh * g.kw * g.c_in, taps = g.kh * g.kw, r = groups[0] % g.regions;
  const int64_t coef_taps = f.coef_by_tap ? taps : 1, term_k = f.terms_by_tap ? K : g.c_in;
  const float* coef[WAVE_GROUPS];
  float* coef_part[WAVE_GROUPS];
  for (int s = 0; s < n; ++s) {
    coef[s] = f.coef + groups[s] * f.n_terms * coef_taps;
    coef_part[s] = d.coef_parts ? d.coef_parts + (part * g.batch * g.regions + groups[s]) *
                                                     f.n_terms * coef_taps
                                : nullptr;
  }
  const int64_t stride = g.c_out * term_k;  // from one term to the next
  const float* T = f.terms + (f.terms_by_region ? r : 0) * f.n_terms * stride + first * term_k;
  float* dT = d.terms ? d.terms + (T - f.terms) : nullptr;
  if (n == 1) {
    with_rows<TermsReduction, 1, REDUCED_ROWS>(static_cast<int>(rows), g, f, T, dT, term_k,
                                               stride, coef[0], coef_part[0], grads[0], sums);
  } else {
    with_rows<WaveTermsReduction, 1, WAVE_GROUPS>(n, g, f, T, dT, term_k, stride, coef,
                                                  coef_part, grads, rows, sums);
  }
}

// groups[0 .. n) = the groups of region `region` of samples b0 .. b0 + samples - 1 that have
// pixels; returns n.
int groups_with_pixels(const Geometry& g, const int64_t* starts, int64_t b0, int samples,
                       int64_t region, int64_t* groups) {
  int n = 0;
  for (int64_t b = b0; b < std::min<int64_t>(b0 + samples, g.batch); ++b)
    if (starts[b * g.regions + region] < starts[b * g.regions + region + 1])
      groups[n++] = b * g.regions + region;
  return n;
}

// Runs work(buffers, item) for items 0 .. n on `threads` threads, each with Buffers of its own
// made from args. Returns 1 when a thread's buffers could not be allocated, else 0.
template <class Buffers, class Work, class... Args>
int each_item(int64_t n, int threads, Work work, const Args&... args) {
  int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
  {
    Buffers buffers(args...);
    failed = !buffers.allocated();
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n; ++item)
      if (!failed) work(buffers, item);
  }
  return failed;
}

// The geometry `shape` gives (its 16 fields), with its pixel table, freed with it. The table
// is filled by one thread (a few microseconds): waking the others took longer.
struct LayerGeometry : Geometry {
  explicit LayerGeometry(const int64_t* shape)
      : Geometry{shape[0],  shape[1],  shape[2],  shape[3],  shape[4],  shape[5],
                 shape[6],  shape[7],  shape[8],  shape[9],  shape[10], shape[11],
                 shape[12], shape[13], shape[14], shape[15], nullptr,
                 shape[8] * shape[9] == 1 && shape[10] * shape[11] == 1 &&
                     shape[12] == 0 && shape[13] == 0} {
    pixels = static_cast<Pixel*>(malloc(std::max<int64_t>(batch * h_out * w_out, 1) *
                                        sizeof(Pixel)));
    if (!pixels || pointwise) return;  // pointwise: tap_of reads no table
    Pixel* pixel = pixels;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < h_out; ++i)
        for (int64_t j = 0; j < w_out; ++j)
          *pixel++ = Pixel{b * h * w, static_cast<int32_t>(i * sh - ph),
                           static_cast<int32_t>(j * sw - pw)};
  }
  ~LayerGeometry() { free(pixels); }
  LayerGeometry(const LayerGeometry&) = delete;
  LayerGeometry& operator=(const LayerGeometry&) = delete;
};

}  // namespace

// The arguments of the kernels. x, grad_x: (B, H, W, C_in) contiguous; filters: a Filters
// source (K ordered (kh, kw, C_in)); grad_filters: (B * m, C_out, K) contiguous; order: (B * L)
// flat pixels b * L + p sorted by group g = b * m + region, L = H_out * W_out; starts:
// (B * m + 1) group offsets into order; out, grad_rows: (B * L, C_out) output (gradient) rows;
// shape: the 16 Geometry fields. Each returns 0, or 1 when a buffer could not be allocated.

// out = the selected-filter convolution, plus bias (C_out) unless null; responses (B * L, C_out)
// = the convolution alone, unless null.
extern "C" int drconv_region_forward_f32(const float* x, const Filters* filters,
                                         const int64_t* order, const int64_t* starts,
                                         const float* bias, float* out, float* responses,
                                         const int64_t* shape, int threads) {
  const LayerGeometry g(shape);
  if (!g.pixels) return 1;
  const int64_t panels = (g.c_out + PANEL - 1) / PANEL;
  // an item: a panel, a region and a run of chunks of samples (those whose filters are formed
  // together). Factored filters: runs as long as leave about 4 items per thread (all the
  // samples, where that many panels and regions), in that order: a thread's factor panel is
  // transposed again only where the panel or region changes. Explicit filters: one sample per
  // run, ordered sample, region, panel (a sample and region's panels consecutive: their pixels'
  // input rows stay in cache)
  const bool formed = formed_in_registers(g, *filters);
  const int samples = formed ? SAMPLES : 1;
  const int64_t chunks = (g.batch + samples - 1) / samples;
  const int64_t runs =
      formed ? std::clamp<int64_t>((4 * threads + g.regions * panels - 1) / (g.regions * panels),
                                   1, chunks)
             : chunks;
  return each_item<FilterPanel>(
      runs * g.regions * panels, threads,
      [&](FilterPanel& filter, int64_t item) {
        const int64_t first = (formed ? item / runs / g.regions : item % panels) * PANEL;
        const int64_t region = formed ? item / runs % g.regions : item / panels % g.regions;
        const int64_t run = formed ? item % runs : item / panels / g.regions;
        const int64_t width = std::min<int64_t>(g.c_out - first, PANEL);
        for (int64_t chunk = run * chunks / runs; chunk < (run + 1) * chunks / runs; ++chunk) {
          const int64_t b = chunk * samples;
          int64_t groups[SAMPLES];
          const int n = groups_with_pixels(g, starts, b, samples, region, groups);
          if (!n) continue;
          filter.form_groups(groups, n, region, first, width);
          for (int s = 0; s < n; ++s) {
            const int64_t end = starts[groups[s] + 1];
            for (int64_t row = starts[groups[s]]; row < end; row += MAX_ROWS)
              dispatch<OutputTile, MAX_ROWS, VECTORS>(
                  static_cast<int>(std::min<int64_t>(end - row, MAX_ROWS)), width, g, x,
                  filter.zero_row, filter.panel(s), order + row, bias ? bias + first : nullptr,
                  out, responses, first, width,
                  std::clamp<int64_t>(end - row - MAX_ROWS, 0, MAX_ROWS));
          }
        }
      },
      g, *filters, samples, true);
}

// grad_filters = every group's filter gradient (zero for groups without pixels). One work item
// is a group.
extern "C" int drconv_region_filter_grad_f32(const float* x, const float* grad_rows,
                                             const int64_t* order, const int64_t* starts,
                                             float* grad_filters, const int64_t* shape,
                                             int threads) {
  const LayerGeometry g(shape);
  if (!g.pixels) return 1;
  const int64_t K = g.kh * g.kw * g.c_in;
  return each_item<GroupPatches>(
      g.batch * g.regions, threads,
      [&](GroupPatches& buffers, int64_t group) {
        if (starts[group] == starts[group + 1]) {
          memset(grad_filters + group * g.c_out * K, 0, g.c_out * K * sizeof(float));
          return;
        }
        group_filter_grad(g, x, grad_rows, order, starts, group, 0, g.c_out, buffers,
                          grad_filters + group * g.c_out * K);
      },
      g, g.c_out, false);
}

// The most bytes of a group's filter gradient one work item of the factored filter gradient
// holds (its gradient block): larger items are made of fewer blocks.
constexpr int64_t FACTOR_GRAD_BYTES = 16 << 20;

// Zeroes what the work item of output channels first .. first + n_rows (blocks of `rows`) sums
// into: the factors' gradient rows of those channels (the weight's; every region's bias and
// every term's) and the blocks' coefficient parts.
void zero_factor_rows(const Geometry& g, const Filters& f, const FactorGrads& d, int64_t first,
                      int64_t n_rows, int64_t rows) {
  const int64_t K = g.kh * g.kw * g.c_in, term_k = f.terms_by_tap ? K : g.c_in;
  const int64_t coef_taps = f.coef_by_tap ? g.kh * g.kw : 1;
  const int64_t bytes = static_cast<int64_t>(sizeof(float));
  if (d.weight) memset(d.weight + first * K, 0, n_rows * K * bytes);
  for (int64_t r = 0; d.bias && r < g.regions; ++r)
    memset(d.bias + (r * g.c_out + first) * g.c_in, 0, n_rows * g.c_in * bytes);
  const int64_t term_sets = (f.terms_by_region ? g.regions : 1) * f.n_terms;
  for (int64_t c = 0; d.terms && c < term_sets; ++c)
    memset(d.terms + (c * g.c_out + first) * term_k, 0, n_rows * term_k * bytes);
  const int64_t part = g.batch * g.regions * f.n_terms * coef_taps;
  if (d.coef_parts)
    memset(d.coef_parts + first / rows * part, 0, (n_rows + rows - 1) / rows * part * bytes);
}

// The most bytes of gradient blocks a work item of the factored filter gradient keeps for a
// wave of groups (below).
constexpr int64_t WAVE_BYTES = 2 << 20;

// The factors' gradients (FactorGrads) of factored filters. One work item is a run of blocks of
// grads->block_rows output channels (as many as make an item per thread, where their gradient
// fits in FACTOR_GRAD_BYTES: each item packs every group's patches again), which zeroes its
// part of the gradients, then takes the groups in order, in waves: each group's gradient is
// added to the weight's and bias's, then, block of rows by block of rows, the wave's gradients
// to the terms' and coefficients'. At 1x1 a wave is as many groups as their gradient blocks fit
// in WAVE_BYTES (whole samples, two or more, where each region has terms of its own), whose
// groups that share their terms (a region's, sample by sample; else all, in order) are added
// to them up to WAVE_GROUPS at once (WaveTermsReduction); else a wave is one group. Every
// element is summed by one thread in a fixed order: over the groups in order (a region's
// terms and bias get its groups only).
extern "C" int drconv_factored_filter_grad_f32(const float* x, const float* grad_rows,
                                               const int64_t* order, const int64_t* starts,
                                               const Filters* filters, const FactorGrads* grads,
                                               const int64_t* shape, int threads) {
  const LayerGeometry g(shape);
  if (!g.pixels) return 1;
  const Filters& f = *filters;
  const int64_t K = g.kh * g.kw * g.c_in, rows = grads->block_rows;
  const int64_t blocks = (g.c_out + rows - 1) / rows;
  const int64_t fit = FACTOR_GRAD_BYTES / (rows * K * static_cast<int64_t>(sizeof(float)));
  const int64_t per_item = std::max<int64_t>(1, std::min((blocks + threads - 1) / threads, fit));
  const int64_t groups = g.batch * g.regions;
  const int64_t fits = WAVE_BYTES / (per_item * rows * K * static_cast<int64_t>(sizeof(float)));
  // waves at 1x1 only (at 3x3 they were no faster: the groups' gradient blocks no longer in
  // L2 when reduced), of whole samples (two or more) where each region has terms of its own
  int64_t wave = 1;
  if (g.kh * g.kw == 1) {
    const int64_t samples = std::min(g.batch, fits / g.regions);
    wave = f.terms_by_region ? (samples >= 2 ? samples * g.regions : 1)
                             : std::max<int64_t>(1, std::min(groups, fits));
  }
  return each_item<GroupPatches>(
      (blocks + per_item - 1) / per_item, threads,
      [&](GroupPatches& buffers, int64_t item) {
        const int64_t first = item * per_item * rows;
        const int64_t n_rows = std::min(g.c_out - first, per_item * rows);
        zero_factor_rows(g, f, *grads, first, n_rows, rows);
        for (int64_t w0 = 0; w0 < groups; w0 += wave) {
          const int64_t w1 = std::min(groups, w0 + wave);
          const auto block = [&](int64_t group) {
            return buffers.block + (group - w0) * n_rows * K;
          };
          for (int64_t group = w0; group < w1; ++group) {
            if (starts[group] == starts[group + 1]) continue;
            group_filter_grad(g, x, grad_rows, order, starts, group, first, n_rows, buffers,
                              block(group));
            reduce_to_weight_and_bias(g, *grads, group, first, n_rows, block(group));
          }
          // the wave's groups that share their terms: each region's (whole samples), else all
          const int64_t runs = f.terms_by_region && w1 - w0 > 1 ? g.regions : 1;
          for (int64_t at = 0; at < n_rows; at += rows) {
            const int64_t end = std::min(n_rows, at + rows);
            for (int64_t j = at; j < end; j += REDUCED_ROWS)
              for (int64_t run = 0; run < runs; ++run) {
                int64_t shared[WAVE_GROUPS];
                const float* grad[WAVE_GROUPS];
                int n = 0;
                for (int64_t group = w0 + run; group < w1; group += runs) {
                  if (starts[group] < starts[group + 1]) {
                    shared[n] = group;
                    grad[n++] = block(group) + j * K;
                  }
                  if (n && (n == WAVE_GROUPS || group + runs >= w1)) {
                    reduce_to_terms(g, f, *grads, shared, n, first + j,
                                    std::min(REDUCED_ROWS, end - j), grad, (first + at) / rows,
                                    buffers.sums);
                    n = 0;
                  }
                }
              }
          }
        }
      },
      g, per_item * rows, true, wave);
}

// grad_x (zeroed by the caller) += the input gradient; for a pointwise layer (one sum per
// element) grad_x = the input gradient, written over whatever it held. One work item is a sample
// and a block of BLOCK input channels, so no two threads add to the same element.
extern "C" int drconv_region_input_grad_f32(const Filters* filters, const float* grad_rows,
                                            const int64_t* order, const int64_t* starts,
                                            float* grad_x, const int64_t* shape, int threads) {
  const LayerGeometry g(shape);
  if (!g.pixels) return 1;
  const int64_t blocks = (g.c_in + BLOCK - 1) / BLOCK;
  // an item: a block of input channels of a chunk of samples (those whose filters are formed
  // together), each sample's regions in order
  const int samples = formed_in_registers(g, *filters) ? SAMPLES : 1;
  const int64_t chunks = (g.batch + samples - 1) / samples;
  return each_item<FilterBlock>(
      chunks * blocks, threads,
      [&](FilterBlock& block, int64_t item) {
        const int64_t b0 = item / blocks * samples, first = item % blocks * BLOCK;
        const int64_t width = std::min<int64_t>(g.c_in - first, BLOCK);
        for (int64_t region = 0; region < g.regions; ++region) {
          int64_t groups[SAMPLES];
          const int n = groups_with_pixels(g, starts, b0, samples, region, groups);
          if (!n) continue;
          block.pack_groups(groups, n, first, width);
          for (int s = 0; s < n; ++s) {
            // every tap of a tile before the next, its output gradient in L1: read where it
            // lies (packing it again for each block took as long as the multiply-adds at 1x1,
            // and at 3x3 it was 5% slower with AVX2's 6 rows), packed once where 12 row
            // pointers (AVX-512) would leave too few registers for the loop
            const int64_t lo = starts[groups[s]], hi = starts[groups[s] + 1];
            const bool packed = g.kh * g.kw > 1 && BLOCK_ROWS > 6;
            for (int64_t row = lo; row < hi; row += BLOCK_ROWS) {
              const int rows = static_cast<int>(std::min<int64_t>(hi - row, BLOCK_ROWS));
              if (packed) block.pack_grads(grad_rows, order + row, rows);
              dispatch<InputGradTile, BLOCK_ROWS, BLOCK_VECTORS>(
                  rows, width, g, packed ? block.tile_grads() : nullptr, grad_rows,
                  block.at(0, s), order + row, grad_x, first, width);
            }
          }
        }
      },
      g, *filters, samples);
}

namespace {

// Pixels per chunk of the scores: a chunk's patches and output gradients stay in L2 while every
// block or panel of the region's filters passes over them.
constexpr int64_t SCORE_CHUNK = 256, SCORE_TILES = (SCORE_CHUNK + BLOCK_ROWS - 1) / BLOCK_ROWS;
// Bytes of a region's filters formed at once for the scores (each used by every chunk): by
// responses, all its panels for up to 128 channels at 3x3 (about 0.6 MB), fewer (and the
// chunks' patches read again for each such block) for wider layers.
constexpr int64_t SCORE_FILTER_BYTES = 1 << 20;

// Scores as patch gradient times patch (PatchGradScoreTile): the product's sum runs over C_out.
// One work item is a region and a chunk of samples: up to SAMPLES, whose factored filter blocks
// are formed together (as the forward's), where all their blocks fit in SCORE_FILTER_BYTES, else
// one. A region's filter blocks are formed once for all the chunks of pixels where they fit,
// else again for each chunk.
int scores_by_patch_grads(const Geometry& g, const float* x, const Filters& filters,
                          const float* grad_rows, const int64_t* order, const int64_t* starts,
                          float* scores, float* grad_x, int threads) {
  const int64_t blocks = (g.c_in + BLOCK - 1) / BLOCK;
  const int64_t block_bytes =
      blocks * g.kh * g.kw * g.c_out * BLOCK * static_cast<int64_t>(sizeof(float));
  const bool together =
      formed_in_registers(g, filters) && SAMPLES * block_bytes <= SCORE_FILTER_BYTES;
  const int samples = together ? SAMPLES : 1;
  const bool once = block_bytes <= SCORE_FILTER_BYTES, packed = BLOCK_ROWS > 6;
  const int64_t chunks = (g.batch + samples - 1) / samples;
  return each_item<FilterBlock>(
      chunks * g.regions, threads,
      [&](FilterBlock& block, int64_t item) {
        const int64_t region = item % g.regions, b0 = item / g.regions * samples;
        const int n = static_cast<int>(std::min<int64_t>(g.batch - b0, samples));
        int64_t groups[SAMPLES];
        for (int s = 0; s < n; ++s) groups[s] = (b0 + s) * g.regions + region;
        if (once)  // block b of sample s in slot b * samples + s
          for (int64_t b = 0; b < blocks; ++b)
            block.pack_groups(groups, n, b * BLOCK, std::min<int64_t>(g.c_in - b * BLOCK, BLOCK),
                              b * samples);
        for (int s = 0; s < n; ++s) {
          const int64_t group = groups[s], sample = b0 + s;
          const int64_t lo = starts[sample * g.regions], hi = starts[(sample + 1) * g.regions];
          for (int64_t chunk = lo; chunk < hi; chunk += SCORE_CHUNK) {
            const int64_t end = std::min(hi, chunk + SCORE_CHUNK);
            // the chunk's scores summed here from zero (in the same order), written once: added
            // there part by part, their scattered rows took a fifth of the time
            float sums[SCORE_CHUNK];
            for (int64_t row = chunk; row < end; ++row) sums[row - chunk] = 0.0f;
            // the chunk's output gradient packed once for every tap and block where 12 row
            // pointers (AVX-512) would leave too few registers for the loop, else read where it
            // lies (packed again for every region, it took as long as the multiply-adds at 1x1)
            if (packed)
              for (int64_t row = chunk, tile = 0; row < end; row += BLOCK_ROWS, ++tile)
                block.pack_grads(grad_rows, order + row,
                                 static_cast<int>(std::min<int64_t>(end - row, BLOCK_ROWS)),
                                 tile);
            for (int64_t tap = 0; tap < g.kh * g.kw; ++tap) {
              for (int64_t first = 0; first < g.c_in; first += BLOCK) {
                const int64_t width = std::min<int64_t>(g.c_in - first, BLOCK);
                if (!once) block.pack(group, tap, first, width);
                const float* weights =
                    once ? block.at(tap, first / BLOCK * samples + s) : block.at(tap);
                for (int64_t row = chunk, tile = 0; row < end; row += BLOCK_ROWS, ++tile) {
                  const int rows = static_cast<int>(std::min<int64_t>(end - row, BLOCK_ROWS));
                  // the tile's rows of this region: x's gradient where it is the pixel's own
                  const int from =
                      static_cast<int>(std::clamp<int64_t>(starts[group] - row, 0, rows));
                  const int to =
                      static_cast<int>(std::clamp<int64_t>(starts[group + 1] - row, 0, rows));
                  dispatch<PatchGradScoreTile, BLOCK_ROWS, BLOCK_VECTORS>(
                      rows, width, g, x, packed ? block.tile_grads(tile) : nullptr, grad_rows,
                      weights, order + row, tap / g.kw, tap % g.kw, first, width,
                      sums + (row - chunk), from, to, grad_x);
                }
              }
            }
            for (int64_t row = chunk; row < end; ++row)
              scores[order[row] * g.regions + region] = sums[row - chunk];
          }
        }
      },
      g, filters, once ? blocks * samples : 1, packed ? SCORE_TILES : 1);
}

// Scores as response times output gradient (ResponseScoreTile): the product's sum runs over K.
// The sample's pixels are taken in image order, whose neighbours share their patches' taps.
// With the forward's `responses` (B * L, C_out; else null), a pixel's own region's score is
// made from its saved response (SavedScoreTile; `region_of` (B * L): each pixel's region).
int scores_by_responses(const Geometry& g, const float* x, const Filters& filters,
                        const float* grad_rows, const int64_t* order, const int64_t* starts,
                        const int64_t* region_of, const float* responses, float* scores,
                        int threads) {
  const int64_t pixels = g.h_out * g.w_out, panels = (g.c_out + PANEL - 1) / PANEL;
  const int64_t panel_bytes = g.kh * g.kw * g.c_in * PANEL * sizeof(float);
  const int64_t formed = std::clamp<int64_t>(SCORE_FILTER_BYTES / panel_bytes, 1, panels);
  return each_item<FilterPanel>(
      g.batch * g.regions, threads,
      [&](FilterPanel& filter, int64_t group) {
        const int64_t sample = group / g.regions, region = group % g.regions;
        // the pixels of the region's own group from their saved responses, the others here
        if (responses)
          for (int64_t q = starts[group]; q < starts[group + 1]; ++q) {
            const int64_t row = order[q];
            float& score = scores[row * g.regions + region];
            score = 0.0f;
            for (int64_t first = 0; first < g.c_out; first += PANEL) {
              const int64_t width = std::min<int64_t>(g.c_out - first, PANEL);
              dispatch<SavedScoreTile, 1, VECTORS>(1, width, responses + row * g.c_out,
                                                   grad_rows + row * g.c_out, first, width,
                                                   score);
            }
          }
        // every pixel of the sample in this group (as stand-ins' pixels are in the first): done
        if (responses && starts[group + 1] - starts[group] == pixels) return;
        int64_t rows[SCORE_CHUNK];
        float sums[SCORE_CHUNK];
        for (int64_t p0 = 0; p0 < panels; p0 += formed) {
          const int64_t n_panels = std::min(panels - p0, formed);
          for (int64_t p = 0; p < n_panels; ++p)
            filter.pack(group, (p0 + p) * PANEL,
                        std::min<int64_t>(g.c_out - (p0 + p) * PANEL, PANEL), p);
          for (int64_t chunk = 0; chunk < pixels; chunk += SCORE_CHUNK) {
            int64_t n = 0;
            for (int64_t row = sample * pixels + chunk;
                 row < sample * pixels + std::min(pixels, chunk + SCORE_CHUNK); ++row)
              if (!responses || region_of[row] != region) rows[n++] = row;
            // the chunk's scores summed here, as the patch gradients' are: from zero, then on
            // from the panels before
            for (int64_t q = 0; q < n; ++q)
              sums[q] = p0 ? scores[rows[q] * g.regions + region] : 0.0f;
            for (int64_t p = 0; p < n_panels; ++p) {
              const int64_t first = (p0 + p) * PANEL;
              const int64_t width = std::min<int64_t>(g.c_out - first, PANEL);
              for (int64_t q = 0; q < n; q += MAX_ROWS)
                dispatch<ResponseScoreTile, MAX_ROWS, VECTORS>(
                    static_cast<int>(std::min<int64_t>(n - q, MAX_ROWS)), width, g, x,
                    filter.zero_row, filter.panel(p), rows + q, grad_rows, sums + q, first,
                    width);
            }
            for (int64_t q = 0; q < n; ++q) scores[rows[q] * g.regions + region] = sums[q];
          }
        }
      },
      g, filters, static_cast<int>(formed));
}

}  // namespace

// scores (B * L, m) = every region's score at every pixel (each summed from zero),
// <output gradient, region's response>, one work item per sample and region (m: the regions of
// `filters`, which may be stand-ins shared by the samples, their pixels all in the first). With
// the forward's `responses` (else null), each pixel's own region's score is made from them
// (`region`: (B * L), each pixel's region) and the others' as response times output gradient
// (grad_x must be null); without, the products' sums run over the longer of K and C_out: as
// patch gradient times patch when K <= C_out (then with grad_x, for 1x1 kernels only, also x's
// gradient: added to grad_x, zeroed by the caller, or for a pointwise layer written over what
// it held), else as response times output gradient.
extern "C" int drconv_region_scores_f32(const float* x, const Filters* filters,
                                        const float* grad_rows, const int64_t* order,
                                        const int64_t* starts, const int64_t* region,
                                        const float* responses, float* scores, float* grad_x,
                                        const int64_t* shape, int threads) {
  const LayerGeometry g(shape);
  if (!g.pixels) return 1;
  if (!responses && g.kh * g.kw * g.c_in <= g.c_out)
    return scores_by_patch_grads(g, x, *filters, grad_rows, order, starts, scores, grad_x,
                                 threads);
  return scores_by_responses(g, x, *filters, grad_rows, order, starts, region, responses,
                             scores, threads);
}

// out[b, j, i] = x[b, i, j] for x (B, rows, cols), in LANES x LANES tiles. A work item is a
// sample's columns of one tile or, where x's rows are the longer (NCHW to rows), of a cache
// line (16 floats; with AVX2 two tiles side by side): each line of x is then read at once (a
// tile at a time, the rows 4 KiB apart at 32 x 32 fell into one cache set, and a line's other
// half was read again from L2), and the lines of the next item's columns are fetched meanwhile
// (x's rows lie too far apart for the hardware to fetch ahead: 0.65-0.82 of the time without,
// interleaved, at the 1x1 target layer's 4 MiB). The other way, a line's width of out's rows
// would be written at once, more lines into one set than it holds (and fetching there, where
// the next item's columns mostly share the line, was 10% slower).
extern "C" void drconv_transpose_f32(const float* x, float* out, int64_t batch, int64_t rows,
                                     int64_t cols, int threads) {
  const bool line_wide = rows <= cols;
  const int64_t item_cols = line_wide ? std::max<int64_t>(64 / sizeof(float), LANES) : LANES;
  const int64_t rows_t = rows - rows % LANES, cols_t = cols - cols % LANES;
  const int64_t items = (cols_t + item_cols - 1) / item_cols;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t item = 0; item < items; ++item) {
      const int64_t j0 = item * item_cols, j1 = std::min(j0 + item_cols, cols_t);
      const float* src = x + b * rows * cols;
      float* dst = out + b * cols * rows;
      const int64_t next = line_wide ? j1 : cols_t;  // the next item's columns, fetched
      for (int64_t i = 0; i < rows_t; i += LANES) {
        if (next < cols_t)
          for (int64_t r = i; r < i + LANES; ++r) __builtin_prefetch(src + r * cols + next);
        for (int64_t j = j0; j < j1; j += LANES)
          transpose_tile(src + i * cols + j, cols, dst + j * rows + i, rows);
      }
      for (int64_t i = rows_t; i < rows; ++i)
        for (int64_t j = j0; j < j1; ++j) dst[j * rows + i] = src[i * cols + j];
    }
  }
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = cols_t; j < cols; ++j)
      for (int64_t i = 0; i < rows; ++i)
        out[(b * cols + j) * rows + i] = x[(b * rows + i) * cols + j];
}

// The guide conv's shifted sum (drconv/guide_conv.py), out (B, m, H_out, W_out): each tap
// (i, j)'s products taps (B, kh, kw, m, H, W) at input pixel (oh * sh + i * dh - ph,
// ow * sw + j * dw - pw) summed from zero in tap order, then bias[r] added (unless null): the
// very float additions, in the same order, of the PyTorch path's sum of padded slices (a tap in
// the padding adds a zero, which changes no sum from zero: such a sum is never -0). shape: B,
// kh, kw, m, H, W, H_out, W_out, sh, sw, ph, pw, dh, dw. One work item is an output row.
extern "C" void drconv_shifted_sum_f32(const float* taps, const float* bias, float* out,
                                       const int64_t* shape, int threads) {
  const int64_t batch = shape[0], kh = shape[1], kw = shape[2], m = shape[3], h = shape[4];
  const int64_t w = shape[5], h_out = shape[6], w_out = shape[7], sh = shape[8], sw = shape[9];
  const int64_t ph = shape[10], pw = shape[11], dh = shape[12], dw = shape[13];
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t item = 0; item < batch * m * h_out; ++item) {
    const int64_t oh = item % h_out, r = item / h_out % m, n = item / h_out / m;
    float* row = out + item * w_out;
    for (int64_t ow = 0; ow < w_out; ++ow) row[ow] = 0.0f;
    for (int64_t i = 0; i < kh; ++i) {
      const int64_t ih = oh * sh + i * dh - ph;
      if (ih < 0 || ih >= h) continue;
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t shift = j * dw - pw;  // input column of ow: ow * sw + shift
        const int64_t first = shift >= 0 ? 0 : (-shift + sw - 1) / sw;
        const int64_t end = w - shift <= 0 ? 0 : std::min(w_out, (w - shift - 1) / sw + 1);
        const float* tap = taps + ((((n * kh + i) * kw + j) * m + r) * h + ih) * w;
        for (int64_t ow = first; ow < end; ++ow) row[ow] += tap[ow * sw + shift];
      }
    }
    if (bias)
      for (int64_t ow = 0; ow < w_out; ++ow) row[ow] += bias[r];
  }
}

namespace {

// The most regions a pointwise guide pass keeps in registers (one vector of pixels each; the
// kernels below take their count R from with_rows, as a register per region: indexed by a
// runtime count, the compiler kept them in memory).
constexpr int GUIDE_REGIONS = 8;

// x's gradient at a run of `count` vectors of pixels of a sample (`left` pixels from the
// run's first), every input channel i: grad_x[i, p] (rows `pixels` apart) = sum_r
// weight_t[i, r] * g[r] (weight_t (C_in, m): rows m apart), the sum over the regions r < R in
// order, from zero or, `going_on` (regions before these), from grad_x; g: the regions'
// gradient at each vector of pixels, R vectors side by side, vectors `stride` floats apart.
// Channel by channel, each row's run written in order (vector by vector, every channel's, the
// stores fell 4 KiB apart into one cache set). (V: with_rows' vectors, unused.)
template <int R, int V>
struct PointwiseGuideInputGrad {
  static void run(const float* g, int64_t stride, int64_t count, const float* weight_t,
                  float* grad_x, bool going_on, int64_t c_in, int64_t regions, int64_t pixels,
                  int64_t left) {
    for (int64_t i = 0; i < c_in; ++i, weight_t += regions) {
      vec w[R];
      for (int r = 0; r < R; ++r) w[r] = vset1(weight_t[r]);
      float* row = grad_x + i * pixels;
      for (int64_t v = 0; v < count; ++v) {
        const float* gv = g + v * stride;
        const int64_t rest = left - v * LANES;
        vec acc = going_on ? vload_part(row + v * LANES, rest) : vzero();
        for (int r = 0; r < R; ++r) acc = vfma(w[r], vload(gv + r * LANES), acc);
        vstore_part(row + v * LANES, acc, rest);
      }
    }
  }
};

// grad_weight[r] (r < R, rows `stride` apart) = sum_b sum_p g[b, p, r] * x[b, p], summed lane by
// lane over the vectors of pixels, sample after sample, then over the lanes; g: the regions'
// gradient packed (B, vectors of pixels, m, LANES), x: one input channel's (B, pixels; samples
// `sample` apart), or null for the sums of g alone (the bias's gradient). (V: with_rows'
// vectors, unused.)
template <int R, int V>
struct PointwiseGuideWeightGrad {
  static void run(const float* g, const float* x, float* grad_weight, int64_t stride,
                  int64_t batch, int64_t sample, int64_t regions, int64_t pixels) {
    vec sums[R];
    for (int r = 0; r < R; ++r) sums[r] = vzero();
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t p = 0; p < pixels; p += LANES, g += regions * LANES) {
        const vec xv = x ? vload_part(x + b * sample + p, pixels - p) : vset1(1.0f);
        for (int r = 0; r < R; ++r) sums[r] = vfma(vload(g + r * LANES), xv, sums[r]);
      }
    for (int r = 0; r < R; ++r) grad_weight[r * stride] = vsum(sums[r]);
  }
};

}  // namespace

// The gradients of a 1x1 guide conv at stride 1 without padding, out (B, m, pixels) = weight
// (m, C_in) times x (B, C_in, pixels) plus bias (m), from the logits' gradient grad (B, m,
// pixels), each unless null: grad_x (B, C_in, pixels) = weight^T times grad, each sum from zero
// over the regions in order; grad_weight (m, C_in) = grad times x^T summed over the samples and
// pixels, and grad_bias (m) the sums of grad, each lane by lane over the vectors of pixels,
// sample after sample, then over the lanes. grad is first packed (B, vectors of pixels, m,
// LANES): read where it lies, its m rows (4 KiB apart at 32 x 32) fell into one cache set. Work
// items: x's gradient, a sample's run of pixels; the weight's, an input channel (and one the
// bias), whose sums no thread count changes. (oneDNN's backward with 8 outputs ran far below its
// speed.) Returns 1 when a buffer could not be allocated, else 0.
extern "C" int drconv_pointwise_guide_backward_f32(const float* x, const float* weight,
                                                   const float* grad, float* grad_x,
                                                   float* grad_weight, float* grad_bias,
                                                   int64_t batch, int64_t c_in, int64_t regions,
                                                   int64_t pixels, int threads) {
  const int64_t vectors = (pixels + LANES - 1) / LANES;
  // a whole number of 64-byte lines, at least one (aligned_alloc's size; empty inputs)
  const int64_t lines = (batch * vectors * regions * LANES * sizeof(float) + 63) / 64;
  float* packed = static_cast<float*>(aligned_alloc(64, std::max<int64_t>(lines, 1) * 64));
  float* weight_t = static_cast<float*>(malloc(c_in * regions * sizeof(float)));
  if (!packed || !weight_t) {
    free(packed);
    free(weight_t);
    return 1;
  }
  for (int64_t i = 0; i < c_in; ++i)
    for (int64_t r = 0; r < regions; ++r) weight_t[i * regions + r] = weight[r * c_in + i];
  constexpr int64_t RUN = 16;  // vectors of pixels per item of x's gradient
  const int64_t runs = (vectors + RUN - 1) / RUN;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t item = 0; item < batch * vectors; ++item) {
      const int64_t b = item / vectors, p = item % vectors * LANES;
      for (int64_t r = 0; r < regions; ++r)
        vstore(packed + (item * regions + r) * LANES,
               vload_part(grad + (b * regions + r) * pixels + p, pixels - p));
    }
#pragma omp for schedule(static) nowait
    for (int64_t item = 0; item < (grad_x ? batch * runs : 0); ++item) {
      const int64_t b = item / runs, v = item % runs * RUN;
      for (int64_t r0 = 0; r0 < regions; r0 += GUIDE_REGIONS)
        with_rows<PointwiseGuideInputGrad, 1, GUIDE_REGIONS>(
            static_cast<int>(std::min<int64_t>(regions - r0, GUIDE_REGIONS)),
            packed + ((b * vectors + v) * regions + r0) * LANES, regions * LANES,
            std::min(vectors - v, RUN), weight_t + r0, grad_x + b * c_in * pixels + v * LANES,
            r0 > 0, c_in, regions, pixels, pixels - v * LANES);
    }
#pragma omp for schedule(static)
    for (int64_t i = -1; i < c_in; ++i) {  // item -1: the bias
      if (i < 0 ? !grad_bias : !grad_weight) continue;
      for (int64_t r0 = 0; r0 < regions; r0 += GUIDE_REGIONS)
        with_rows<PointwiseGuideWeightGrad, 1, GUIDE_REGIONS>(
            static_cast<int>(std::min<int64_t>(regions - r0, GUIDE_REGIONS)), packed + r0 * LANES,
            i < 0 ? nullptr : x + i * pixels,
            i < 0 ? grad_bias + r0 : grad_weight + r0 * c_in + i, i < 0 ? int64_t{1} : c_in,
            batch, c_in * pixels, regions, pixels);
    }
  }
  free(packed);
  free(weight_t);
  return 0;
}

// region (B, L) = the first of the m largest guide logits (B, m, L) of each pixel, NaN counting
// as the largest, as torch's max does. One thread, vectorised over the pixels (a few
// microseconds at the layers' sizes: waking another thread took longer).
extern "C" void drconv_region_of(const float* guide, int64_t batch, int64_t regions,
                                 int64_t pixels, int64_t* region) {
  alignas(64) float at[LANES];
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t p = 0; p < pixels; p += LANES) {
      const int64_t left = pixels - p;
      const float* g = guide + b * regions * pixels + p;
      vec best = vload_part(g, left), index = vzero();  // the best's region, as a float
      for (int64_t j = 1; j < regions; ++j) {  // once the best is NaN, it stays
        const vec v = vload_part(g + j * pixels, left);
        const vmask take = takes_over(best, v);
        best = vselect(take, best, v);
        index = vselect(take, index, vset1(static_cast<float>(j)));
      }
      vstore(at, index);
      for (int64_t l = 0; l < std::min<int64_t>(left, LANES); ++l)
        region[b * pixels + p + l] = static_cast<int64_t>(at[l]);
    }
}

// Sort the pixels of region (B, L), values in [0, m), by group g = b * m + region, stably:
// order (B * L) gets the flat pixels b * L + p, starts (B * m + 1) the group offsets.
// Returns 0, or 1 when a buffer could not be allocated.
extern "C" int drconv_sort_by_group(const int64_t* region, int64_t batch, int64_t pixels,
                                    int64_t regions, int64_t* order, int64_t* starts) {
  const int64_t groups = batch * regions, n = batch * pixels;
  int64_t* next = static_cast<int64_t*>(malloc((groups + 1) * sizeof(int64_t)));
  if (!next) return 1;
  for (int64_t g = 0; g <= groups; ++g) starts[g] = 0;
  for (int64_t i = 0; i < n; ++i) ++starts[(i / pixels) * regions + region[i] + 1];
  for (int64_t g = 0; g < groups; ++g) starts[g + 1] += starts[g];
  for (int64_t g = 0; g < groups; ++g) next[g] = starts[g];
  for (int64_t i = 0; i < n; ++i) order[next[(i / pixels) * regions + region[i]]++] = i;
  free(next);
  return 0;
}

// out (planes, out_h, out_w) = adaptive average pooling of x (planes, h, w): bin (i, j) averages
// rows i * h / out_h .. ceil((i + 1) * h / out_h) and likewise columns, summed in float in row
// order, then divided by the bin's height, then by its width, as torch's CPU kernel (the same
// floats). Each bin's sum is a chain of dependent adds: a row's bins of PLANES planes are
// summed side by side, their chains interleaved.
extern "C" void drconv_adaptive_avg_pool_f32(const float* x, float* out, int64_t planes,
                                             int64_t h, int64_t w, int64_t out_h, int64_t out_w,
                                             int threads) {
  constexpr int64_t BINS = 16, PLANES = 8;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p0 = 0; p0 < planes; p0 += PLANES) {
    const int64_t n_planes = std::min(PLANES, planes - p0);
    const float* plane[PLANES];  // past the last plane: the last again
    for (int64_t q = 0; q < PLANES; ++q) plane[q] = x + (p0 + std::min(q, n_planes - 1)) * h * w;
    for (int64_t i = 0; i < out_h; ++i) {
      const int64_t top = i * h / out_h, bottom = ((i + 1) * h + out_h - 1) / out_h;
      for (int64_t j0 = 0; j0 < out_w; j0 += BINS) {
        const int64_t n = std::min(BINS, out_w - j0);
        int64_t left[BINS], right[BINS];
        for (int64_t j = 0; j < n; ++j) {
          left[j] = (j0 + j) * w / out_w;
          right[j] = ((j0 + j + 1) * w + out_w - 1) / out_w;
        }
        float sum[BINS][PLANES] = {};
        for (int64_t row = top; row < bottom; ++row)
          for (int64_t j = 0; j < n; ++j)
            for (int64_t col = left[j]; col < right[j]; ++col)
              for (int64_t q = 0; q < PLANES; ++q) sum[j][q] += plane[q][row * w + col];
        for (int64_t q = 0; q < n_planes; ++q)
          for (int64_t j = 0; j < n; ++j)
            out[((p0 + q) * out_h + i) * out_w + j0 + j] = sum[j][q] /
                                                           static_cast<float>(bottom - top) /
                                                           static_cast<float>(right[j] - left[j]);
      }
    }
  }
}
