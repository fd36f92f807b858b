// Adam's update of a whole parameter tree in one pass, as an XLA FFI
// custom call for jaxcolor's CPU steps (jaxcolor/kernels/adam.py).
//
//   jaxcolor_adam(hyper, p_0, mu_0, nu_0, g_0, p_1, ...) -> (p_0, mu_0, nu_0,
//                                                           p_1, ...)
// hyper: float32[8] = (learning rate, 1 - b1, b1, 1 - b2, b2, 1 - b1^t,
// 1 - b2^t, eps) of update t. Per leaf: parameter, first and second moment
// and gradient, float32, all of one size; the results are the new
// parameter and moments, which adam.py aliases to the old ones (updated in
// place). The arithmetic is optax.adam's, leaf by leaf and element by
// element:
//   mu' = (1 - b1) g + b1 mu            nu' = (1 - b2) g^2 + b2 nu
//   p'  = p - lr (mu' / (1 - b1^t)) / (sqrt(nu' / (1 - b2^t)) + eps)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "thread_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLeafArgs = 4, kLeafRets = 3;
constexpr int64_t kChunk = int64_t{1} << 16;  // elements per part

struct Leaf {
  const float *p, *mu, *nu, *g;
  float *p_out, *mu_out, *nu_out;
  int64_t size;
};

struct Hyper {
  float lr, c1, b1, c2, b2, bc1, bc2, eps;
};

// Vectorised for each instruction set (GCC picks the clone at load time);
// element i of every output depends on element i of the inputs alone, so
// the in-place aliasing of p, mu and nu is no loop-carried dependence.
__attribute__((target_clones("avx512f", "avx2", "default"),
               optimize("O3"))) void
Update(const Hyper& h, const Leaf& leaf, int64_t lo, int64_t hi) {
#pragma GCC ivdep
  for (int64_t i = lo; i < hi; ++i) {
    float g = leaf.g[i];
    float mu = h.c1 * g + h.b1 * leaf.mu[i];
    float nu = h.c2 * (g * g) + h.b2 * leaf.nu[i];
    float step = (mu / h.bc1) / (std::sqrt(nu / h.bc2) + h.eps);
    leaf.p_out[i] = leaf.p[i] + step * -h.lr;
    leaf.mu_out[i] = mu;
    leaf.nu_out[i] = nu;
  }
}

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("jaxcolor_adam: " + what);
}

ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::AnyBuffer hyper,
                    ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if (hyper.element_type() != ffi::DataType::F32 ||
      hyper.element_count() != 8) {
    return Invalid("hyper is float32[8]");
  }
  const float* hp = hyper.typed_data<float>();
  Hyper h{hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], hp[7]};
  if (args.size() % kLeafArgs != 0 ||
      rets.size() != args.size() / kLeafArgs * kLeafRets) {
    return Invalid("4 operands and 3 results per leaf");
  }
  std::vector<Leaf> leaves(args.size() / kLeafArgs);
  for (size_t l = 0; l < leaves.size(); ++l) {
    const float* in[kLeafArgs];
    float* out[kLeafRets];
    int64_t size = -1;
    // Every buffer of a leaf float32 and of one size.
    auto check = [&](const ffi::AnyBuffer& buffer) -> bool {
      int64_t n = static_cast<int64_t>(buffer.element_count());
      if (buffer.element_type() != ffi::DataType::F32 ||
          (size >= 0 && n != size)) {
        return false;
      }
      size = n;
      return true;
    };
    for (int64_t k = 0; k < kLeafArgs; ++k) {
      auto arg = args.get<ffi::AnyBuffer>(l * kLeafArgs + k);
      if (!arg.has_value()) return arg.error();
      if (!check(*arg)) return Invalid("a leaf is float32 of one size");
      in[k] = arg->typed_data<float>();
    }
    for (int64_t k = 0; k < kLeafRets; ++k) {
      auto ret = rets.get<ffi::AnyBuffer>(l * kLeafRets + k);
      if (!ret.has_value()) return ret.error();
      if (!check(**ret)) return Invalid("a leaf is float32 of one size");
      out[k] = (*ret)->typed_data<float>();
    }
    leaves[l] = {in[0], in[1], in[2], in[3], out[0], out[1], out[2], size};
  }
  // Parts of kChunk elements, leaf by leaf.
  std::vector<std::pair<int64_t, int64_t>> parts;  // (leaf, first element)
  for (size_t l = 0; l < leaves.size(); ++l) {
    for (int64_t lo = 0; lo < leaves[l].size; lo += kChunk) {
      parts.emplace_back(l, lo);
    }
  }
  return jaxcolor::ForEachPart(
      pool, static_cast<int64_t>(parts.size()), [&](int64_t i) {
        const Leaf& leaf = leaves[parts[i].first];
        int64_t lo = parts[i].second;
        Update(h, leaf, lo, std::min(lo + kChunk, leaf.size));
      });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcolorAdam, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets());
