// Fused CPU forward of drconv.region_conv (float32, AVX-512), built and loaded by
// drconv/cpu_forward.py; the pure-PyTorch path runs wherever this does not.
//
// The output pixels come sorted by group g = sample * m + region (`order`, group g's rows at
// order[starts[g]:starts[g + 1]]). One work item is a group and a panel of up to 64 output
// channels: the panel's filter rows are packed once, transposed to (K, 64) in a buffer of the
// thread's own, then every tile of MR sorted pixels is multiplied with it: each pixel's k x k
// patch is read straight from the channels-last input (no im2col buffer; an out-of-image tap reads
// a row of zeros), one input value broadcast against 64 filter values per step, and the tile's
// MR x 64 results are written to their pixels. K is ordered (kh, kw, C_in), as the filters are.
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

namespace {

// Layer geometry, in the order `shape` passes it.
struct Geometry {
  int64_t batch, regions, c_in, h, w, c_out, h_out, w_out, kh, kw, sh, sw, ph, pw, dh, dw;
};

constexpr int MAX_ROWS = 6;           // pixels per tile
constexpr int VECTORS = 4;            // 16-float vectors per panel row
constexpr int PANEL = 16 * VECTORS;   // output channels per work item

// dst[c * dst_stride + r] = src[r * src_stride + c] for r, c < 16.
inline void transpose16(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
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

// panel[k * PANEL + j] = filters[j * K + k] for j < width, zero for width <= j < PANEL.
void pack_panel(const float* filters, int64_t K, int64_t width, float* panel) {
  const int64_t k16 = K & ~int64_t(15), j16 = width & ~int64_t(15);
  for (int64_t j = 0; j < j16; j += 16)
    for (int64_t k = 0; k < k16; k += 16)
      transpose16(filters + j * K + k, K, panel + k * PANEL + j, PANEL);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = k < k16 ? j16 : 0; j < PANEL; ++j)
      panel[k * PANEL + j] = j < width ? filters[j * K + k] : 0.f;
}

// Output channels first .. first + width of the ROWS sorted pixels `rows`.
template <int ROWS, int V>
void tile(const Geometry& g, const float* x, const float* zero_row, const float* panel,
          const int64_t* rows, float* out, int64_t first, int64_t width) {
  const int64_t pixels = g.h_out * g.w_out;
  int64_t sample[ROWS], oh[ROWS], ow[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    sample[r] = rows[r] / pixels;
    const int64_t p = rows[r] % pixels;
    oh[r] = p / g.w_out;
    ow[r] = p % g.w_out;
  }
  __m512 acc[ROWS][V];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* weights = panel;
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      const float* tap[ROWS];
      for (int r = 0; r < ROWS; ++r) {
        const int64_t ih = oh[r] * g.sh - g.ph + i * g.dh, iw = ow[r] * g.sw - g.pw + j * g.dw;
        tap[r] = (ih >= 0 && ih < g.h && iw >= 0 && iw < g.w)
                     ? x + ((sample[r] * g.h + ih) * g.w + iw) * g.c_in : zero_row;
      }
      for (int64_t c = 0; c < g.c_in; ++c, weights += PANEL) {
        __m512 wv[V];
        for (int v = 0; v < V; ++v) wv[v] = _mm512_load_ps(weights + 16 * v);
        for (int r = 0; r < ROWS; ++r) {
          const __m512 xv = _mm512_set1_ps(tap[r][c]);
          for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(xv, wv[v], acc[r][v]);
        }
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    float* o = out + rows[r] * g.c_out + first;
    for (int v = 0; v < V; ++v) {
      const int64_t left = width - 16 * v;
      _mm512_mask_storeu_ps(o + 16 * v, left >= 16 ? 0xffff : (1u << left) - 1, acc[r][v]);
    }
  }
}

template <int V, int ROWS = MAX_ROWS>
void tile_of_rows(int rows_left, const Geometry& g, const float* x, const float* zero_row,
                  const float* panel, const int64_t* rows, float* out, int64_t first,
                  int64_t width) {
  if constexpr (ROWS > 1) {
    if (rows_left < ROWS)
      return tile_of_rows<V, ROWS - 1>(rows_left, g, x, zero_row, panel, rows, out, first,
                                       width);
  }
  tile<ROWS, V>(g, x, zero_row, panel, rows, out, first, width);
}

void any_tile(int rows_left, const Geometry& g, const float* x, const float* zero_row,
              const float* panel, const int64_t* rows, float* out, int64_t first,
              int64_t width) {
  switch ((width + 15) / 16) {
    case 4: return tile_of_rows<4>(rows_left, g, x, zero_row, panel, rows, out, first, width);
    case 3: return tile_of_rows<3>(rows_left, g, x, zero_row, panel, rows, out, first, width);
    case 2: return tile_of_rows<2>(rows_left, g, x, zero_row, panel, rows, out, first, width);
    default: return tile_of_rows<1>(rows_left, g, x, zero_row, panel, rows, out, first, width);
  }
}

}  // namespace

// x: (B, H, W, C_in) contiguous; filters: (B * m, C_out, K) contiguous; order: (B * L) flat
// pixels b * L + p sorted by group, L = H_out * W_out; starts: (B * m + 1) group offsets into
// order; out: (B * L, C_out) rows; shape: the 16 Geometry fields. Returns 0, or 1 when a buffer
// could not be allocated.
extern "C" int drconv_region_forward_f32(const float* x, const float* filters,
                                         const int64_t* order, const int64_t* starts, float* out,
                                         const int64_t* shape, int threads) {
  const Geometry g{shape[0], shape[1], shape[2],  shape[3],  shape[4],  shape[5],
                   shape[6], shape[7], shape[8],  shape[9],  shape[10], shape[11],
                   shape[12], shape[13], shape[14], shape[15]};
  const int64_t K = g.kh * g.kw * g.c_in, panels = (g.c_out + PANEL - 1) / PANEL;
  const int64_t items = g.batch * g.regions * panels;
  int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
  {
    float* panel = static_cast<float*>(aligned_alloc(64, K * PANEL * sizeof(float)));
    float* zero_row = static_cast<float*>(calloc(g.c_in, sizeof(float)));
    failed = !panel || !zero_row;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t group = item / panels, first = (item % panels) * PANEL;
      const int64_t lo = starts[group], hi = starts[group + 1];
      if (failed || lo == hi) continue;
      const int64_t width = g.c_out - first < PANEL ? g.c_out - first : PANEL;
      pack_panel(filters + (group * g.c_out + first) * K, K, width, panel);
      for (int64_t row = lo; row < hi; row += MAX_ROWS)
        any_tile(static_cast<int>(hi - row < MAX_ROWS ? hi - row : MAX_ROWS), g, x, zero_row,
                 panel, order + row, out, first, width);
    }
    free(panel);
    free(zero_row);
  }
  return failed;
}

// out[b, j, i] = x[b, i, j] for x (B, rows, cols), in 16 x 16 blocks.
extern "C" void drconv_transpose_f32(const float* x, float* out, int64_t batch, int64_t rows,
                                     int64_t cols, int threads) {
  const int64_t rows16 = rows & ~int64_t(15), cols16 = cols & ~int64_t(15);
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < cols16; j += 16) {
      const float* src = x + b * rows * cols + j;
      float* dst = out + (b * cols + j) * rows;
      for (int64_t i = 0; i < rows16; i += 16) transpose16(src + i * cols, cols, dst + i, rows);
      for (int64_t i = rows16; i < rows; ++i)
        for (int64_t q = 0; q < 16; ++q) dst[q * rows + i] = src[i * cols + q];
    }
  }
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = cols16; j < cols; ++j)
      for (int64_t i = 0; i < rows; ++i)
        out[(b * cols + j) * rows + i] = x[(b * rows + i) * cols + j];
}

// Sort the pixels of region (B, L), values in [0, m), by group g = b * m + region, stably:
// order (B * L) gets the flat pixels b * L + p, starts (B * m + 1) the group offsets.
// Returns 0, or 1 when a buffer could not be allocated.
extern "C" int drconv_sort_by_group(const int64_t* region, int64_t batch, int64_t pixels,
                                    int64_t regions, int64_t* order, int64_t* starts) {
  const int64_t groups = batch * regions, n = batch * pixels;
  int64_t* next = static_cast<int64_t*>(malloc(groups * sizeof(int64_t)));
  if (!next) return 1;
  for (int64_t g = 0; g <= groups; ++g) starts[g] = 0;
  for (int64_t i = 0; i < n; ++i) ++starts[(i / pixels) * regions + region[i] + 1];
  for (int64_t g = 0; g < groups; ++g) starts[g + 1] += starts[g];
  for (int64_t g = 0; g < groups; ++g) next[g] = starts[g];
  for (int64_t i = 0; i < n; ++i) order[next[(i / pixels) * regions + region[i]]++] = i;
  free(next);
  return 0;
}
