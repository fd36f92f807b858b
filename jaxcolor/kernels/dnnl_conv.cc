// oneDNN convolutions as XLA FFI custom calls for jaxcolor's CPU steps
// (config.model.conv_impl='dnnl'; jaxcolor/kernels/dnnl_conv.py).
//
// Three handlers, one per pass of a 2-D convolution with a square stride:
//   jaxcolor_dnnl_conv_fwd          y  = conv(x, w)
//   jaxcolor_dnnl_conv_bwd_data     dx = conv's input grad from dy and w
//   jaxcolor_dnnl_conv_bwd_weights  dw = conv's weight grad from x and dy
// Activations are NHWC (x: B,H,W,C; y: B,Ho,Wo,O), weights HWIO (k,k,C,O),
// or with the attribute flip=1 the kernel (k,k,O,C) of the
// lax.conv_transpose that is this convolution's input grad: its taps
// reversed, its two channel axes swapped. Inputs are float32 or bfloat16
// (both of one call alike); results float32 or bfloat16, as the caller's
// result buffer says (weight grads float32). oneDNN accumulates in float32
// either way. Other attributes: stride and the four paddings (pad_top,
// pad_bottom, pad_left, pad_right).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dnnl_common.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

using jaxcolor::Block;
using jaxcolor::DnnlForEachPart;
using jaxcolor::Engine;
using jaxcolor::Guarded;

bool DnnlType(ffi::DataType type, memory::data_type* out) {
  switch (type) {
    case ffi::DataType::F32:
      *out = memory::data_type::f32;
      return true;
    case ffi::DataType::BF16:
      *out = memory::data_type::bf16;
      return true;
    default:
      return false;
  }
}

// NHWC (B,H,W,C) dims -> oneDNN's logical (B,C,H,W).
memory::dims Nchw(ffi::AnyBuffer::Dimensions d) {
  return {d[0], d[3], d[1], d[2]};
}

// A kernel buffer (k,k,A,B) as the convolution's weights: oneDNN's logical
// dims (O,C,k,k) and the buffer's strides. HWIO: O=B, C=A. flip: O=A, C=B,
// and the strides are those of the buffer with its k*k taps reversed: tap
// t = (i,j) of the convolution is tap `Source(t)` of the buffer, as oneDNN
// takes no negative strides.
struct Kernel {
  memory::dims dims, strides;
  bool flip;
  int64_t k;
  int64_t taps() const { return k * k; }
  int64_t Source(int64_t t) const { return flip ? taps() - 1 - t : t; }
  // One tap (O,C,1,1) of the buffer's layout.
  memory::desc Tap(memory::data_type type) const {
    return memory::desc({dims[0], dims[1], 1, 1}, type, strides);
  }
};

Kernel KernelOf(ffi::AnyBuffer::Dimensions d, bool flip) {
  int64_t k = d[0], a = d[2], b = d[3];
  if (flip) return {{a, b, k, k}, {b, 1, k * a * b, a * b}, true, k};
  return {{b, a, k, k}, {1, b, k * a * b, a * b}, false, k};
}

struct Geometry {
  memory::dims strides, pad_l, pad_r;
};

Geometry MakeGeometry(int64_t stride, int64_t pad_top, int64_t pad_bottom,
                      int64_t pad_left, int64_t pad_right) {
  return {{stride, stride}, {pad_top, pad_left}, {pad_bottom, pad_right}};
}

ffi::Error CheckRanks(std::initializer_list<ffi::AnyBuffer::Dimensions> all) {
  for (auto d : all) {
    if (d.size() != 4) {
      return ffi::Error::InvalidArgument("dnnl conv: every operand is rank 4");
    }
  }
  return ffi::Error::Success();
}

ffi::Error Types(ffi::DataType a, ffi::DataType b, ffi::DataType out,
                 memory::data_type* in_type, memory::data_type* out_type) {
  memory::data_type b_type;
  if (!DnnlType(a, in_type) || !DnnlType(b, &b_type) || *in_type != b_type ||
      !DnnlType(out, out_type)) {
    return ffi::Error::InvalidArgument(
        "dnnl conv: operands float32 or bfloat16, both alike; result float32 "
        "or bfloat16");
  }
  return ffi::Error::Success();
}

dnnl::convolution_forward::primitive_desc ForwardDesc(
    const memory::desc& x, const memory::desc& w, const memory::desc& y,
    const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, x, w, y, g.strides, g.pad_l,
      g.pad_r);
}

// How a batch of `batch` splits: `parts` slices of `per` images (the last
// may have fewer), one per thread of XLA's pool.
struct Split {
  int64_t parts, per;
  int64_t lo(int64_t i) const { return i * per; }
  int64_t size(int64_t i, int64_t batch) const {
    return std::min(per, batch - i * per);
  }
};

Split SplitBatch(int64_t batch, ffi::ThreadPool& pool) {
  if (batch == 0) return {0, 1};
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t per = (batch + threads - 1) / threads;
  return {(batch + per - 1) / per, per};
}

memory::dims WithBatch(memory::dims d, int64_t batch) {
  d[0] = batch;
  return d;
}

size_t Bytes(memory::data_type t) {
  return t == memory::data_type::f32 ? 4 : 2;
}

// Bytes per image of an NHWC buffer with logical dims d (B,C,H,W).
size_t ImageBytes(const memory::dims& d, memory::data_type t) {
  return static_cast<size_t>(d[1] * d[2] * d[3]) * Bytes(t);
}

char* At(void* base, int64_t image, size_t image_bytes) {
  return static_cast<char*>(base) + image * image_bytes;
}

// Runs part(i) for i in [0, parts) on this thread, one after another.
ffi::Error Serially(int64_t parts, const std::function<void(int64_t)>& part) {
  return Guarded([&] {
    for (int64_t i = 0; i < parts; ++i) part(i);
  });
}

using Runner =
    std::function<ffi::Error(int64_t, const std::function<void(int64_t)>&)>;

// The kernel buffer `w` reordered into `wanted` (oneDNN's packed layout)
// in `storage`, one tap per part of `run` (XLA's pool, or `Serially`): a
// flipped kernel's taps are read in reverse, so nothing is copied first.
// The buffer itself where it already is `wanted` (never for flip).
ffi::Error PackWeights(const Kernel& kernel, memory::data_type type, void* w,
                       const memory::desc& wanted, const Runner& run,
                       Block* storage, memory* packed) {
  memory::desc tap = kernel.Tap(type);
  if (!kernel.flip && wanted == memory::desc(kernel.dims, type,
                                             kernel.strides)) {
    *packed = memory(wanted, Engine(), w);
    return ffi::Error::Success();
  }
  if (auto e = Guarded([&] {
        *storage = Block(wanted.get_size());
        *packed = memory(wanted, Engine(), storage->data());
      });
      e.failure()) {
    return e;
  }
  void* dst = storage->data();
  // The taps' reorders write the channels there are; a layout whose blocks
  // pad the channels needs zeros in the rest.
  if (wanted.get_padded_dims() != wanted.get_dims()) {
    std::memset(dst, 0, wanted.get_size());
  }
  memory::dims one_tap = tap.get_dims();
  return run(kernel.taps(), [&](int64_t t) {
    memory src(tap, Engine(),
               static_cast<char*>(w) + kernel.Source(t) * tap.get_size());
    memory part(wanted.submemory_desc(one_tap, {0, 0, t / kernel.k,
                                                t % kernel.k}),
                Engine(), dst);
    dnnl::stream stream(Engine());
    dnnl::reorder(src, part).execute(stream, src, part);
    stream.wait();
  });
}

ffi::Error Prepare(ffi::AnyBuffer a, ffi::AnyBuffer b,
                   ffi::Result<ffi::AnyBuffer>& out,
                   memory::data_type* in_type, memory::data_type* out_type) {
  if (auto e = CheckRanks({a.dimensions(), b.dimensions(), out->dimensions()});
      e.failure()) {
    return e;
  }
  return Types(a.element_type(), b.element_type(), out->element_type(),
               in_type, out_type);
}

// Forward and input grad: y = conv(x, w) or dx from dy, batch-split. `pd_for`
// gives the primitive for a slice of n images; `run` executes one slice.
template <typename PdFor, typename Run>
ffi::Error WithPackedWeights(ffi::ThreadPool& pool, int64_t batch,
                             const Kernel& kernel, memory::data_type type,
                             void* w, PdFor pd_for, Run run) {
  Split split = SplitBatch(batch, pool);
  memory::desc first;
  if (auto e = Guarded([&] { first = pd_for(split.per).weights_desc(); });
      e.failure()) {
    return e;
  }
  Runner on_pool = [&pool](int64_t parts,
                           const std::function<void(int64_t)>& part) {
    return DnnlForEachPart(pool, parts, part);
  };
  Block storage;
  memory packed;
  if (auto e = PackWeights(kernel, type, w, first, on_pool, &storage, &packed);
      e.failure()) {
    return e;
  }
  return DnnlForEachPart(pool, split.parts, [&](int64_t i) {
    auto pd = pd_for(split.size(i, batch));
    memory weights = packed;
    Block own;
    if (pd.weights_desc() != first) {  // a shorter last slice, rarely
      ffi::Error e = PackWeights(kernel, type, w, pd.weights_desc(),
                                 Serially, &own, &weights);
      if (e.failure()) throw std::runtime_error(e.message());
    }
    run(pd, weights, split.lo(i));
  });
}

ffi::Error ConvFwdImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                       ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                       int64_t stride, int64_t pad_top, int64_t pad_bottom,
                       int64_t pad_left, int64_t pad_right, int64_t flip) {
  memory::data_type in_type, out_type;
  if (auto e = Prepare(x, w, y, &in_type, &out_type); e.failure()) return e;
  using tag = memory::format_tag;
  Geometry g = MakeGeometry(stride, pad_top, pad_bottom, pad_left, pad_right);
  memory::dims x_dims = Nchw(x.dimensions()), y_dims = Nchw(y->dimensions());
  Kernel kernel = KernelOf(w.dimensions(), flip != 0);
  memory::desc w_any(kernel.dims, in_type, tag::any);
  auto pd_for = [&](int64_t n) {
    return ForwardDesc(memory::desc(WithBatch(x_dims, n), in_type, tag::nhwc),
                       w_any,
                       memory::desc(WithBatch(y_dims, n), out_type, tag::nhwc),
                       g);
  };
  size_t x_image = ImageBytes(x_dims, in_type);
  size_t y_image = ImageBytes(y_dims, out_type);
  return WithPackedWeights(
      pool, x_dims[0], kernel, in_type, w.untyped_data(), pd_for,
      [&](const dnnl::convolution_forward::primitive_desc& pd,
          memory& weights, int64_t lo) {
        memory x_mem(pd.src_desc(), Engine(),
                     At(x.untyped_data(), lo, x_image));
        memory y_mem(pd.dst_desc(), Engine(),
                     At(y->untyped_data(), lo, y_image));
        dnnl::stream stream(Engine());
        dnnl::convolution_forward(pd).execute(
            stream, {{DNNL_ARG_SRC, x_mem},
                     {DNNL_ARG_WEIGHTS, weights},
                     {DNNL_ARG_DST, y_mem}});
        stream.wait();
      });
}

ffi::Error ConvBwdDataImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy,
                           ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                           int64_t stride, int64_t pad_top, int64_t pad_bottom,
                           int64_t pad_left, int64_t pad_right, int64_t flip) {
  memory::data_type in_type, out_type;
  if (auto e = Prepare(dy, w, dx, &in_type, &out_type); e.failure()) return e;
  using tag = memory::format_tag;
  Geometry g = MakeGeometry(stride, pad_top, pad_bottom, pad_left, pad_right);
  memory::dims dy_dims = Nchw(dy.dimensions());
  memory::dims dx_dims = Nchw(dx->dimensions());
  Kernel kernel = KernelOf(w.dimensions(), flip != 0);
  memory::desc w_any(kernel.dims, in_type, tag::any);
  auto pd_for = [&](int64_t n) {
    memory::desc dy_md(WithBatch(dy_dims, n), in_type, tag::nhwc);
    memory::desc x_hint(WithBatch(dx_dims, n), in_type, tag::nhwc);
    auto hint = ForwardDesc(x_hint, w_any, dy_md, g);
    return dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct,
        memory::desc(WithBatch(dx_dims, n), out_type, tag::nhwc), w_any,
        dy_md, g.strides, g.pad_l, g.pad_r, hint);
  };
  size_t dy_image = ImageBytes(dy_dims, in_type);
  size_t dx_image = ImageBytes(dx_dims, out_type);
  return WithPackedWeights(
      pool, dy_dims[0], kernel, in_type, w.untyped_data(), pd_for,
      [&](const dnnl::convolution_backward_data::primitive_desc& pd,
          memory& weights, int64_t lo) {
        memory dy_mem(pd.diff_dst_desc(), Engine(),
                      At(dy.untyped_data(), lo, dy_image));
        memory dx_mem(pd.diff_src_desc(), Engine(),
                      At(dx->untyped_data(), lo, dx_image));
        dnnl::stream stream(Engine());
        dnnl::convolution_backward_data(pd).execute(
            stream, {{DNNL_ARG_DIFF_DST, dy_mem},
                     {DNNL_ARG_WEIGHTS, weights},
                     {DNNL_ARG_DIFF_SRC, dx_mem}});
        stream.wait();
      });
}

// dw_out = the weight grad of the convolution of x (B,C,H,W) giving dy, in
// dw_out's layout: oneDNN computes it in the layout it prefers, then
// reorders when that differs.
void BackwardWeights(const memory& x, const memory& dy, memory dw_out,
                     const Geometry& g) {
  const memory::desc &x_md = x.get_desc(), &dy_md = dy.get_desc();
  memory::dims w_dims = dw_out.get_desc().get_dims();
  auto hint = ForwardDesc(
      x_md, memory::desc(w_dims, x_md.get_data_type(), memory::format_tag::any),
      dy_md, g);
  dnnl::convolution_backward_weights::primitive_desc pd(
      Engine(), dnnl::algorithm::convolution_direct, x_md,
      memory::desc(w_dims, dw_out.get_desc().get_data_type(),
                   memory::format_tag::any),
      dy_md, g.strides, g.pad_l, g.pad_r, hint);
  bool packed = pd.diff_weights_desc() != dw_out.get_desc();
  Block storage(packed ? pd.diff_weights_desc().get_size() : 0);
  memory dw_mem =
      packed ? memory(pd.diff_weights_desc(), Engine(), storage.data())
             : dw_out;
  dnnl::stream stream(Engine());
  dnnl::convolution_backward_weights(pd).execute(
      stream, {{DNNL_ARG_SRC, x},
               {DNNL_ARG_DIFF_DST, dy},
               {DNNL_ARG_DIFF_WEIGHTS, dw_mem}});
  if (packed) dnnl::reorder(dw_mem, dw_out).execute(stream, dw_mem, dw_out);
  stream.wait();
}

ffi::Error ConvBwdWeightsImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                              ffi::AnyBuffer dy,
                              ffi::Result<ffi::AnyBuffer> dw, int64_t stride,
                              int64_t pad_top, int64_t pad_bottom,
                              int64_t pad_left, int64_t pad_right,
                              int64_t flip) {
  memory::data_type in_type, out_type;
  if (auto e = Prepare(x, dy, dw, &in_type, &out_type); e.failure()) return e;
  if (out_type != memory::data_type::f32) {
    return ffi::Error::InvalidArgument("dnnl conv: weight grads are float32");
  }
  using tag = memory::format_tag;
  Geometry g = MakeGeometry(stride, pad_top, pad_bottom, pad_left, pad_right);
  memory::dims x_dims = Nchw(x.dimensions()), dy_dims = Nchw(dy.dimensions());
  Kernel kernel = KernelOf(dw->dimensions(), flip != 0);
  memory::desc dw_user(kernel.dims, out_type, kernel.strides);
  int64_t batch = x_dims[0];
  Split split = SplitBatch(batch, pool);
  size_t count = dw->element_count();
  if (split.parts == 0) {  // an empty batch: no gradient
    std::memset(dw->untyped_data(), 0, count * sizeof(float));
    return ffi::Error::Success();
  }
  size_t x_image = ImageBytes(x_dims, in_type);
  size_t dy_image = ImageBytes(dy_dims, in_type);
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t out_channels = kernel.dims[0];
  if (!kernel.flip && threads > 1 && out_channels % (16 * threads) == 0 &&
      count * sizeof(float) > batch * (x_image + dy_image)) {
    // A grad larger than the activations (deep layers at a few pixels):
    // each thread computes its share of the output channels over the whole
    // batch (dy's channels copied out, a few hundred KB), instead of a whole
    // grad per slice of the batch and then their sum.
    return DnnlForEachPart(pool, threads, [&](int64_t i) {
      int64_t per = out_channels / threads, lo = i * per;
      size_t elem = Bytes(in_type), pixels = dy_image / (out_channels * elem);
      Block dy_part(batch * pixels * per * elem);
      const char* dy_all = static_cast<const char*>(dy.untyped_data());
      for (size_t p = 0; p < batch * pixels; ++p) {
        std::memcpy(static_cast<char*>(dy_part.data()) + p * per * elem,
                    dy_all + (p * out_channels + lo) * elem, per * elem);
      }
      memory::dims dy_part_dims = dy_dims, w_part_dims = kernel.dims;
      dy_part_dims[1] = w_part_dims[0] = per;
      // HWIO: the output channel is the innermost axis, stride 1.
      memory dw_out(memory::desc(w_part_dims, out_type, kernel.strides),
                    Engine(), static_cast<float*>(dw->untyped_data()) + lo);
      BackwardWeights(memory(memory::desc(x_dims, in_type, tag::nhwc),
                             Engine(), x.untyped_data()),
                      memory(memory::desc(dy_part_dims, in_type, tag::nhwc),
                             Engine(), dy_part.data()),
                      dw_out, g);
    });
  }
  // Slice i's grad goes to sums[i]; dw is their sum, summed tap by tap on
  // XLA's pool (a flipped kernel's taps reversed back). Slice 0 writes into
  // dw where it can.
  std::vector<Block> sums(split.parts);
  auto sum_of = [&](int64_t i) -> float* {
    if (i == 0 && !kernel.flip) return static_cast<float*>(dw->untyped_data());
    if (sums[i].data() == nullptr) sums[i] = Block(count * sizeof(float));
    return sums[i].floats();
  };
  auto part = [&](int64_t i) {
    int64_t n = split.size(i, batch);
    BackwardWeights(
        memory(memory::desc(WithBatch(x_dims, n), in_type, tag::nhwc),
               Engine(), At(x.untyped_data(), split.lo(i), x_image)),
        memory(memory::desc(WithBatch(dy_dims, n), in_type, tag::nhwc),
               Engine(), At(dy.untyped_data(), split.lo(i), dy_image)),
        memory(dw_user, Engine(), sum_of(i)), g);
  };
  if (auto e = DnnlForEachPart(pool, split.parts, part); e.failure()) {
    return e;
  }
  if (!kernel.flip && split.parts == 1) return ffi::Error::Success();
  const float* first = sum_of(0);
  float* total = static_cast<float*>(dw->untyped_data());
  size_t tap = count / kernel.taps();
  return DnnlForEachPart(pool, kernel.taps(), [&](int64_t t) {
    size_t from = kernel.Source(t) * tap;
    float* out = total + t * tap;
    if (kernel.flip) std::memcpy(out, first + from, tap * sizeof(float));
    for (int64_t i = 1; i < split.parts; ++i) {
      const float* part_sum = sums[i].floats() + from;
      for (size_t j = 0; j < tap; ++j) out[j] += part_sum[j];
    }
  });
}

}  // namespace

#define JAXCOLOR_CONV_BINDING                      \
  ffi::Ffi::Bind()                                 \
      .Ctx<ffi::ThreadPool>()                      \
      .Arg<ffi::AnyBuffer>()                       \
      .Arg<ffi::AnyBuffer>()                       \
      .Ret<ffi::AnyBuffer>()                       \
      .Attr<int64_t>("stride")                     \
      .Attr<int64_t>("pad_top")                    \
      .Attr<int64_t>("pad_bottom")                 \
      .Attr<int64_t>("pad_left")                   \
      .Attr<int64_t>("pad_right")                  \
      .Attr<int64_t>("flip")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcolorDnnlConvFwd, ConvFwdImpl,
                              JAXCOLOR_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcolorDnnlConvBwdData, ConvBwdDataImpl,
                              JAXCOLOR_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcolorDnnlConvBwdWeights, ConvBwdWeightsImpl,
                              JAXCOLOR_CONV_BINDING);
