// Winograd convolutions F(m x m, r x r) (stride 1) as XLA FFI custom calls
// for jaxcolor's CPU steps (jaxcolor/kernels/winograd.py).
//
//   jaxcolor_winograd_fwd          y  = conv(x, w)
//   jaxcolor_winograd_bwd_weights  dw = conv's weight grad from x and dy
// x (B,H,W,C), y and dy (B,Ho,Wo,O), NHWC; w (r,r,C,O), HWIO, or with
// flip=1 the kernel (r,r,O,C) of the lax.conv_transpose that is this
// convolution's input grad (its taps reversed, its channel axes swapped):
// the input grad is jaxcolor_winograd_fwd of dy with the forward kernel
// and flip=1. Activations float32 or bfloat16 (x and dy alike), kernels
// float32; y in the result buffer's dtype, dw float32.
//
// The output is cut into m x m tiles. Each tile's n x n input patch
// (n = m + r - 1) is transformed (B^T d B), the kernel too (G w G^T), and
// per point t of the n x n transform one matmul over channels,
// (tiles x C) . (C x O), replaces the r*r taps' products; the output
// transform (A^T M A) gives the tile. For r = 4, m = 3 the matmuls do
// 36 / (9 * 16) = 1/4 of a direct convolution's multiplications. The
// transforms and oneDNN's matmuls are float32 whatever the activations'
// dtype: bfloat16 matmuls on the transformed tiles would round them, and
// the output transform's sums magnify that error several times over
// (docs/benchmarks.md). The matrices come from winograd.py as the
// attributes at (m x n), g (n x r) and bt (n x n), row-major; the others
// are pad_top, pad_bottom, pad_left, pad_right, flip and chunk_bytes (the
// transformed tiles' scratch, about, per call: tiles go through in chunks).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "dnnl_common.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using jaxcolor::Block;
using jaxcolor::Engine;

namespace {

// Parts on XLA's pool, oneDNN single-threaded (dnnl_common.h).
ffi::Error OnPool(ffi::ThreadPool& pool, int64_t parts,
                  const std::function<void(int64_t)>& part) {
  return jaxcolor::DnnlForEachPart(pool, parts, part, "winograd");
}

// y[i] += a * x[i] and y[i] = a * x[i], vectorised for each instruction set.
__attribute__((target_clones("avx512f", "avx2", "default"),
               optimize("O3"))) void
Axpy(float a, const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

__attribute__((target_clones("avx512f", "avx2", "default"),
               optimize("O3"))) void
Scaled(float a, const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a * x[i];
}

// out[i] = sum_j mat[i][j] in[j] over rows of `len` floats, in[j] at
// in + j * in_step, out[i] at out + i * out_step: one side of a transform.
void Combine(const float* mat, int64_t rows, int64_t cols, const float* in,
             int64_t in_step, float* out, int64_t out_step, int64_t len) {
  for (int64_t i = 0; i < rows; ++i) {
    float* o = out + i * out_step;
    bool first = true;
    for (int64_t j = 0; j < cols; ++j) {
      float a = mat[i * cols + j];
      if (a == 0.0f) continue;
      if (first) {
        Scaled(a, in + j * in_step, o, len);
        first = false;
      } else {
        Axpy(a, in + j * in_step, o, len);
      }
    }
    if (first) std::memset(o, 0, len * sizeof(float));
  }
}

// bfloat16 <-> float32 (round to nearest even), and plain float32 copies.
__attribute__((target_clones("avx512f", "avx2", "default"),
               optimize("O3"))) void
Widen(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits = static_cast<uint32_t>(in[i]) << 16;
    std::memcpy(out + i, &bits, 4);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"),
               optimize("O3"))) void
Narrow(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, in + i, 4);
    bits += 0x7fff + ((bits >> 16) & 1);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
}

struct Typed {
  void* base;
  bool bf16;
  // Element `offset` .. + n as float32 into `out`.
  void Load(int64_t offset, float* out, int64_t n) const {
    if (bf16) {
      Widen(static_cast<const uint16_t*>(base) + offset, out, n);
    } else {
      std::memcpy(out, static_cast<const float*>(base) + offset, n * 4);
    }
  }
  void Store(const float* in, int64_t offset, int64_t n) const {
    if (bf16) {
      Narrow(in, static_cast<uint16_t*>(base) + offset, n);
    } else {
      std::memcpy(static_cast<float*>(base) + offset, in, n * 4);
    }
  }
};

// Tiles of a (B,Ho,Wo) output, m x m each.
struct Tiling {
  int64_t batch, h, w, ho, wo, m, r, n, th, tw;
  int64_t pad_top, pad_left;
  int64_t tiles() const { return batch * th * tw; }
  int64_t points() const { return n * n; }
};

Tiling MakeTiling(int64_t batch, int64_t h, int64_t w, int64_t ho, int64_t wo,
                  int64_t m, int64_t r, int64_t pad_top, int64_t pad_left) {
  int64_t n = m + r - 1;
  return {batch, h, w, ho, wo, m, r, n, (ho + m - 1) / m, (wo + m - 1) / m,
          pad_top, pad_left};
}

// Transposes a row-major (rows x cols) matrix.
std::vector<float> Transposed(const float* a, int64_t rows, int64_t cols) {
  std::vector<float> t(rows * cols);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) t[j * rows + i] = a[i * cols + j];
  }
  return t;
}

// A run of `count` tiles from tile `first` on: the transformed tiles of a
// call are made, multiplied and used a chunk at a time, so its scratch stays
// near the chunk_bytes attribute however large the batch and image.
struct Chunk {
  int64_t first, count;
};

int64_t ChunkTiles(const Tiling& t, int64_t channels, int64_t chunk_bytes) {
  int64_t per_tile = t.points() * std::max<int64_t>(channels, 1) * 4;
  return std::min(t.tiles(), std::max<int64_t>(1, chunk_bytes / per_tile));
}

// A call's float32 scratch: per chunk of `per_chunk` tiles the transformed
// input tiles (points x tiles x C) and the output side's (points x tiles x
// O), and one transformed kernel or kernel grad (points x C x O).
struct Scratch {
  int64_t per_chunk;
  Block in_tiles, out_tiles, kernel;
};

ffi::Error MakeScratch(const Tiling& t, int64_t c, int64_t o,
                       int64_t chunk_bytes, Scratch* s) {
  s->per_chunk = ChunkTiles(t, std::max(c, o), chunk_bytes);
  return jaxcolor::Guarded([&] {
    s->in_tiles = Block(t.points() * s->per_chunk * c * sizeof(float));
    s->out_tiles = Block(t.points() * s->per_chunk * o * sizeof(float));
    s->kernel = Block(t.points() * c * o * sizeof(float));
  }, "winograd");
}

// body(chunk) for the call's tiles, `per_chunk` at a time; the first error.
template <typename F>
ffi::Error ForEachChunk(const Tiling& t, int64_t per_chunk, F body) {
  for (int64_t first = 0; first < t.tiles(); first += per_chunk) {
    if (auto e = body(Chunk{first, std::min(per_chunk, t.tiles() - first)});
        e.failure()) {
      return e;
    }
  }
  return ffi::Error::Success();
}

// The side of a stride-1 convolution's output.
int64_t OutSide(int64_t in, int64_t lo, int64_t hi, int64_t r) {
  return in + lo + hi - r + 1;
}

// body(lo, hi) for the chunk's tiles in parts of kTilesPerPart, on XLA's
// pool.
constexpr int64_t kTilesPerPart = 8;

template <typename F>
ffi::Error ForEachTileBlock(ffi::ThreadPool& pool, Chunk chunk, F body) {
  int64_t parts = (chunk.count + kTilesPerPart - 1) / kTilesPerPart;
  return OnPool(pool, parts, [&](int64_t part) {
    int64_t lo = chunk.first + part * kTilesPerPart;
    body(lo, std::min(chunk.first + chunk.count, lo + kTilesPerPart));
  });
}

// out[t][q][:] (t < n*n, q the chunk's q-th tile, C channels) = B^T d B of
// the tile's input patch d (rows of `in` (B,H,W,C); zeros outside, the
// padding).
ffi::Error InputTransform(ffi::ThreadPool& pool, const Tiling& t,
                          const float* bt, Typed in, int64_t c, Chunk chunk,
                          float* out) {
  int64_t n = t.n;
  return ForEachTileBlock(pool, chunk, [&](int64_t lo, int64_t hi) {
    std::vector<float> d(n * n * c), mid(n * n * c), row(n * n * c);
    for (int64_t p = lo; p < hi; ++p) {
      int64_t b = p / (t.th * t.tw), ty = p / t.tw % t.th, tx = p % t.tw;
      for (int64_t i = 0; i < n; ++i) {
        int64_t y = ty * t.m + i - t.pad_top;
        for (int64_t j = 0; j < n; ++j) {
          int64_t x = tx * t.m + j - t.pad_left;
          float* dst = d.data() + (i * n + j) * c;
          if (y < 0 || y >= t.h || x < 0 || x >= t.w) {
            std::memset(dst, 0, c * sizeof(float));
          } else {
            in.Load(((b * t.h + y) * t.w + x) * c, dst, c);
          }
        }
      }
      // mid[a][j] = sum_i bt[a][i] d[i][j]; row[a][k] = sum_j bt[k][j]
      // mid[a][j].
      Combine(bt, n, n, d.data(), n * c, mid.data(), n * c, n * c);
      for (int64_t a = 0; a < n; ++a) {
        Combine(bt, n, n, mid.data() + a * n * c, c, row.data() + a * n * c,
                c, c);
      }
      int64_t q = p - chunk.first;
      for (int64_t k = 0; k < n * n; ++k) {
        std::memcpy(out + (k * chunk.count + q) * c, row.data() + k * c,
                    c * sizeof(float));
      }
    }
  });
}

// y (B,Ho,Wo,O) = A^T M A of the chunk's tiles, M = in[t][q][:] (float32,
// q the chunk's q-th tile).
ffi::Error OutputTransform(ffi::ThreadPool& pool, const Tiling& t,
                           const float* at, const float* in, int64_t o,
                           Chunk chunk, Typed y) {
  int64_t n = t.n, m = t.m;
  return ForEachTileBlock(pool, chunk, [&](int64_t lo, int64_t hi) {
    std::vector<float> mid(m * n * o), tile(m * m * o);
    for (int64_t p = lo; p < hi; ++p) {
      int64_t b = p / (t.th * t.tw), ty = p / t.tw % t.th, tx = p % t.tw;
      int64_t q = p - chunk.first;
      // mid[i][k] = sum_a at[i][a] M[a][k], M[a][k] = in[a*n+k][q];
      // tile[i][j] = sum_k at[j][k] mid[i][k].
      for (int64_t k = 0; k < n; ++k) {
        Combine(at, m, n, in + (k * chunk.count + q) * o,
                n * chunk.count * o, mid.data() + k * o, n * o, o);
      }
      for (int64_t i = 0; i < m; ++i) {
        Combine(at, m, n, mid.data() + i * n * o, o, tile.data() + i * m * o,
                o, o);
      }
      for (int64_t i = 0; i < m; ++i) {
        int64_t yy = ty * m + i;
        if (yy >= t.ho) break;
        for (int64_t j = 0; j < m; ++j) {
          int64_t xx = tx * m + j;
          if (xx >= t.wo) break;
          y.Store(tile.data() + (i * m + j) * o,
                  ((b * t.ho + yy) * t.wo + xx) * o, o);
        }
      }
    }
  });
}


// One float32 matmul per point t of the transform, on XLA's pool with
// oneDNN single-threaded: c[t] (rows x cols) = op(a[t]) op(b[t]), or
// c[t] += ... with `accumulate`; a[t] (rows x inner), or (inner x rows) read
// transposed (a_t); b[t] (inner x cols), or (cols x inner) read transposed
// (b_t).
ffi::Error Matmuls(ffi::ThreadPool& pool, int64_t points, int64_t rows,
                   int64_t inner, int64_t cols, const float* a, bool a_t,
                   const float* b, bool b_t, float* c, bool accumulate) {
  memory::data_type type = memory::data_type::f32;
  memory::desc a_md({rows, inner}, type,
                    a_t ? memory::dims{1, rows} : memory::dims{inner, 1});
  memory::desc b_md({inner, cols}, type,
                    b_t ? memory::dims{1, inner} : memory::dims{cols, 1});
  memory::desc c_md({rows, cols}, memory::data_type::f32, {cols, 1});
  dnnl::matmul::primitive_desc pd;
  if (auto e = jaxcolor::Guarded(
          [&] {
            dnnl::primitive_attr attr;
            if (accumulate) {
              dnnl::post_ops sum;
              sum.append_sum(1.0f);
              attr.set_post_ops(sum);
            }
            pd = dnnl::matmul::primitive_desc(Engine(), a_md, b_md, c_md,
                                              attr);
          },
          "winograd");
      e.failure()) {
    return e;
  }
  return OnPool(pool, points, [&](int64_t t) {
    memory a_mem(a_md, Engine(), const_cast<float*>(a) + t * rows * inner);
    memory b_mem(b_md, Engine(), const_cast<float*>(b) + t * inner * cols);
    memory c_mem(c_md, Engine(), c + t * rows * cols);
    dnnl::stream stream(Engine());
    dnnl::matmul(pd).execute(stream, {{DNNL_ARG_SRC, a_mem},
                                      {DNNL_ARG_WEIGHTS, b_mem},
                                      {DNNL_ARG_DST, c_mem}});
    stream.wait();
  });
}

// out[t][x][:] (T, X, Y) = G k G^T of each (r x r) kernel slice k[:,:,x,:]
// of `w` (r,r,X,Y) float32; `g` (n x r).
ffi::Error KernelTransform(ffi::ThreadPool& pool, int64_t n, int64_t r,
                           const float* g, const float* w, int64_t xs,
                           int64_t ys, float* out) {
  constexpr int64_t kRowsPerPart = 16;
  int64_t parts = (xs + kRowsPerPart - 1) / kRowsPerPart;
  return OnPool(pool, parts, [&](int64_t part) {
    std::vector<float> mid(n * r * ys), row(n * n * ys);
    int64_t hi = std::min(xs, (part + 1) * kRowsPerPart);
    for (int64_t x = part * kRowsPerPart; x < hi; ++x) {
      // mid[a][j] = sum_i g[a][i] k[i][j]; row[a][b] = sum_j g[b][j]
      // mid[a][j].
      for (int64_t j = 0; j < r; ++j) {
        Combine(g, n, r, w + (j * xs + x) * ys, r * xs * ys,
                mid.data() + j * ys, r * ys, ys);
      }
      for (int64_t a = 0; a < n; ++a) {
        Combine(g, n, r, mid.data() + a * r * ys, ys,
                row.data() + a * n * ys, ys, ys);
      }
      for (int64_t t = 0; t < n * n; ++t) {
        std::memcpy(out + (t * xs + x) * ys, row.data() + t * ys,
                    ys * sizeof(float));
      }
    }
  });
}

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("winograd: " + what);
}

// The transform's sizes from the attributes; an error if they disagree.
ffi::Error Sizes(ffi::Span<const float> at, ffi::Span<const float> g,
                 ffi::Span<const float> bt, int64_t r, int64_t* m,
                 int64_t* n) {
  int64_t nn = bt.size(), side = 1;
  while (side * side < nn) ++side;
  *n = side;
  *m = side - r + 1;
  int64_t at_size = at.size(), g_size = g.size();
  if (side * side != nn || *m < 1 || at_size != *m * side ||
      g_size != side * r) {
    return Invalid("transform matrices at (m x n), g (n x r), bt (n x n) "
                   "do not fit the kernel");
  }
  return ffi::Error::Success();
}

ffi::Error CheckTypes(ffi::AnyBuffer a, ffi::AnyBuffer w, bool* bf16) {
  for (auto d : {a.dimensions(), w.dimensions()}) {
    if (d.size() != 4) return Invalid("every operand is rank 4");
  }
  auto t = a.element_type();
  if (t != ffi::DataType::F32 && t != ffi::DataType::BF16) {
    return Invalid("activations float32 or bfloat16");
  }
  if (w.element_type() != ffi::DataType::F32) {
    return Invalid("the kernel (and a weight grad) is float32");
  }
  *bf16 = t == ffi::DataType::BF16;
  return ffi::Error::Success();
}

ffi::Error FwdImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, ffi::Span<const float> at,
                   ffi::Span<const float> g, ffi::Span<const float> bt,
                   int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                   int64_t pad_right, int64_t flip, int64_t chunk_bytes) {
  bool bf16;
  if (auto e = CheckTypes(x, w, &bf16); e.failure()) return e;
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  int64_t r = wd[0], c = xd[3], o = yd[3];
  int64_t m, n;
  if (auto e = Sizes(at, g, bt, r, &m, &n); e.failure()) return e;
  if (wd[1] != r || (flip ? (wd[3] != c || wd[2] != o)
                          : (wd[2] != c || wd[3] != o)) ||
      yd[0] != xd[0] || yd[1] != OutSide(xd[1], pad_top, pad_bottom, r) ||
      yd[2] != OutSide(xd[2], pad_left, pad_right, r)) {
    return Invalid("shapes of x, kernel and result disagree");
  }
  bool y_bf16 = y->element_type() == ffi::DataType::BF16;
  if (!y_bf16 && y->element_type() != ffi::DataType::F32) {
    return Invalid("result float32 or bfloat16");
  }
  Tiling t = MakeTiling(xd[0], xd[1], xd[2], yd[1], yd[2], m, r, pad_top,
                        pad_left);
  if (t.tiles() == 0 || c == 0 || o == 0) {
    std::memset(y->untyped_data(), 0, y->size_bytes());
    return ffi::Error::Success();
  }
  Scratch scratch;
  if (auto e = MakeScratch(t, c, o, chunk_bytes, &scratch); e.failure()) {
    return e;
  }
  float* x_hat = scratch.in_tiles.floats();
  float* m_hat = scratch.out_tiles.floats();
  float* w_hat = scratch.kernel.floats();
  // flip: the conv's kernel is w's taps reversed, its axes swapped: the
  // columns of g reversed, and the transformed (O x C) planes read
  // transposed.
  std::vector<float> g_used(g.begin(), g.end());
  if (flip) {
    for (int64_t a = 0; a < n; ++a) {
      std::reverse(g_used.begin() + a * r, g_used.begin() + (a + 1) * r);
    }
  }
  const float* w_data = static_cast<const float*>(w.untyped_data());
  if (auto e = KernelTransform(pool, n, r, g_used.data(), w_data, wd[2], wd[3],
                               w_hat);
      e.failure()) {
    return e;
  }
  return ForEachChunk(t, scratch.per_chunk, [&](Chunk chunk) {
    if (auto e = InputTransform(pool, t, bt.begin(),
                                Typed{x.untyped_data(), bf16}, c, chunk, x_hat);
        e.failure()) {
      return e;
    }
    if (auto e = Matmuls(pool, t.points(), chunk.count, c, o, x_hat, false,
                         w_hat, flip != 0, m_hat, false);
        e.failure()) {
      return e;
    }
    return OutputTransform(pool, t, at.begin(), m_hat, o, chunk,
                           Typed{y->untyped_data(), y_bf16});
  });
}

// dM[t][q][:] = A dy_tile A^T (n x n) of the chunk's tiles (zeros past the
// output's edge); `at` (m x n).
ffi::Error OutputTransformTransposed(ffi::ThreadPool& pool, const Tiling& t,
                                     const float* at, Typed dy, int64_t o,
                                     Chunk chunk, float* out) {
  int64_t n = t.n, m = t.m;
  std::vector<float> a = Transposed(at, m, n);  // (n x m)
  return ForEachTileBlock(pool, chunk, [&](int64_t lo, int64_t hi) {
    std::vector<float> d(m * m * o), mid(n * m * o), row(n * n * o);
    for (int64_t p = lo; p < hi; ++p) {
      int64_t b = p / (t.th * t.tw), ty = p / t.tw % t.th, tx = p % t.tw;
      for (int64_t i = 0; i < m; ++i) {
        int64_t yy = ty * m + i;
        for (int64_t j = 0; j < m; ++j) {
          int64_t xx = tx * m + j;
          float* dst = d.data() + (i * m + j) * o;
          if (yy >= t.ho || xx >= t.wo) {
            std::memset(dst, 0, o * sizeof(float));
          } else {
            dy.Load(((b * t.ho + yy) * t.wo + xx) * o, dst, o);
          }
        }
      }
      // mid[a][j] = sum_i A[a][i] d[i][j]; row[a][k] = sum_j A[k][j]
      // mid[a][j].
      Combine(a.data(), n, m, d.data(), m * o, mid.data(), m * o, m * o);
      for (int64_t k = 0; k < n; ++k) {
        Combine(a.data(), n, m, mid.data() + k * m * o, o,
                row.data() + k * n * o, o, o);
      }
      int64_t q = p - chunk.first;
      for (int64_t k = 0; k < n * n; ++k) {
        std::memcpy(out + (k * chunk.count + q) * o, row.data() + k * o,
                    o * sizeof(float));
      }
    }
  });
}

ffi::Error BwdWeightsImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                          ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          ffi::Span<const float> at, ffi::Span<const float> g,
                          ffi::Span<const float> bt, int64_t pad_top,
                          int64_t pad_bottom, int64_t pad_left,
                          int64_t pad_right, int64_t flip,
                          int64_t chunk_bytes) {
  bool bf16, dy_bf16;
  if (auto e = CheckTypes(x, *dw, &bf16); e.failure()) return e;
  if (auto e = CheckTypes(dy, *dw, &dy_bf16); e.failure()) return e;
  if (bf16 != dy_bf16) return Invalid("x and dy of one dtype");
  if (flip) return Invalid("no weight grad of a flipped kernel");
  auto xd = x.dimensions(), dyd = dy.dimensions(), wd = dw->dimensions();
  int64_t r = wd[0], c = xd[3], o = dyd[3];
  int64_t m, n;
  if (auto e = Sizes(at, g, bt, r, &m, &n); e.failure()) return e;
  if (wd[1] != r || wd[2] != c || wd[3] != o || dyd[0] != xd[0] ||
      dyd[1] != OutSide(xd[1], pad_top, pad_bottom, r) ||
      dyd[2] != OutSide(xd[2], pad_left, pad_right, r)) {
    return Invalid("shapes of x, dy and the weight grad disagree");
  }
  Tiling t = MakeTiling(xd[0], xd[1], xd[2], dyd[1], dyd[2], m, r, pad_top,
                        pad_left);
  float* out = static_cast<float*>(dw->untyped_data());
  if (t.tiles() == 0 || c == 0 || o == 0) {
    std::memset(out, 0, dw->size_bytes());
    return ffi::Error::Success();
  }
  Scratch scratch;
  if (auto e = MakeScratch(t, c, o, chunk_bytes, &scratch); e.failure()) {
    return e;
  }
  float* x_hat = scratch.in_tiles.floats();
  float* dm_hat = scratch.out_tiles.floats();
  float* dw_hat = scratch.kernel.floats();
  if (auto e = ForEachChunk(t, scratch.per_chunk, [&](Chunk chunk) {
        if (auto e = InputTransform(pool, t, bt.begin(),
                                    Typed{x.untyped_data(), bf16}, c, chunk,
                                    x_hat);
            e.failure()) {
          return e;
        }
        if (auto e = OutputTransformTransposed(
                pool, t, at.begin(), Typed{dy.untyped_data(), bf16}, o, chunk,
                dm_hat);
            e.failure()) {
          return e;
        }
        // dW[t] (C x O) (+)= x_hat[t]^T (C x tiles) . dM[t] (tiles x O).
        return Matmuls(pool, t.points(), c, chunk.count, o, x_hat, true,
                       dm_hat, false, dw_hat, chunk.first > 0);
      });
      e.failure()) {
    return e;
  }
  // dw[i][j][c][:] = sum_a sum_b g[a][i] g[b][j] dW[a*n+b][c][:].
  std::vector<float> gt = Transposed(g.begin(), n, r);  // (r x n)
  constexpr int64_t kRowsPerPart = 16;
  int64_t parts = (c + kRowsPerPart - 1) / kRowsPerPart;
  return OnPool(pool, parts, [&](int64_t part) {
    std::vector<float> mid(r * n * o);
    int64_t hi = std::min(c, (part + 1) * kRowsPerPart);
    for (int64_t ch = part * kRowsPerPart; ch < hi; ++ch) {
      // mid[i][b] = sum_a gt[i][a] dW[a][b]; dw[i][j] = sum_b gt[j][b]
      // mid[i][b].
      for (int64_t b = 0; b < n; ++b) {
        Combine(gt.data(), r, n, dw_hat + (b * c + ch) * o, n * c * o,
                mid.data() + b * o, n * o, o);
      }
      for (int64_t i = 0; i < r; ++i) {
        Combine(gt.data(), r, n, mid.data() + i * n * o, o,
                out + (i * r * c + ch) * o, c * o, o);
      }
    }
  });
}

}  // namespace

#define JAXCOLOR_WINOGRAD_BINDING                  \
  ffi::Ffi::Bind()                                 \
      .Ctx<ffi::ThreadPool>()                      \
      .Arg<ffi::AnyBuffer>()                       \
      .Arg<ffi::AnyBuffer>()                       \
      .Ret<ffi::AnyBuffer>()                       \
      .Attr<ffi::Span<const float>>("at")          \
      .Attr<ffi::Span<const float>>("g")           \
      .Attr<ffi::Span<const float>>("bt")          \
      .Attr<int64_t>("pad_top")                    \
      .Attr<int64_t>("pad_bottom")                 \
      .Attr<int64_t>("pad_left")                   \
      .Attr<int64_t>("pad_right")                  \
      .Attr<int64_t>("flip")                       \
      .Attr<int64_t>("chunk_bytes")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcolorWinogradFwd, FwdImpl,
                              JAXCOLOR_WINOGRAD_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcolorWinogradBwdWeights, BwdWeightsImpl,
                              JAXCOLOR_WINOGRAD_BINDING);
