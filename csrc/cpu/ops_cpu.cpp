// CPU implementation of the momkernels operators: checks, allocation, the
// parallel loop over row blocks and the final (deterministic) reduction.  The
// per-block work is in kernel_impl.h, built once per instruction set.
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/accumulate.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/ones.h>

#include <cmath>
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../op_common.h"
#include "grad_plan.h"
#include "kernel.h"

namespace momkernels::cpu {

const KernelTable& kernels_for_this_cpu() {
  static const KernelTable table = [] {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string cap = at::get_cpu_capability();
    if (cap.rfind("AVX512", 0) == 0) return AVX512::kernels();
    if (cap == "AVX2") return AVX2::kernels();
#endif
    return DEFAULT::kernels();
  }();
  return table;
}

const char* isa_name() { return kernels_for_this_cpu().isa; }

namespace {

// Gradient buffers of large inputs are recycled.  Writing a fresh multi-MB
// buffer costs page faults and the kernel's zeroing of every page on first
// touch (measured against mapped memory in docs/bench/cpu_analysis.md, "the
// memory floor"; see also docs/bench/README.md), and in a training loop the previous
// step's gradient of the same size has been freed by the time the next
// backward runs.  So the backward's output of >= kCacheMinBytes comes from a
// small cache of freed blocks: at most kCacheBlocks blocks and kCacheMaxBytes
// held.  MOMKERNELS_GRAD_CACHE=0 turns it off.
class GradBufferCache {
 public:
  static GradBufferCache& instance() {
    static GradBufferCache* cache = new GradBufferCache();  // never destroyed:
    return *cache;  // tensors may outlive static destruction at exit
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
    const size_t nbytes = size_t(c10::multiply_integers(sizes)) * opts.dtype().itemsize();
    if (!enabled_ || nbytes < kCacheMinBytes) return at::empty(sizes, opts);
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t k = 0; k < free_.size(); ++k) {
        if (free_[k].first == nbytes) {
          ptr = free_[k].second;
          held_ -= nbytes;
          free_.erase(free_.begin() + k);
          break;
        }
      }
    }
    if (ptr == nullptr) ptr = c10::alloc_cpu(nbytes);
    return at::from_blob(
        ptr, sizes, [nbytes](void* p) { GradBufferCache::instance().release(p, nbytes); }, opts);
  }

 private:
  static constexpr size_t kCacheMinBytes = size_t(1) << 20;
  static constexpr size_t kCacheBlocks = 2;
  static constexpr size_t kCacheMaxBytes = size_t(4) << 30;

  GradBufferCache() {
    const char* env = std::getenv("MOMKERNELS_GRAD_CACHE");
    enabled_ = env == nullptr || std::string(env) != "0";
  }

  void release(void* ptr, size_t nbytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (free_.size() < kCacheBlocks && held_ + nbytes <= kCacheMaxBytes) {
        free_.emplace_back(nbytes, ptr);
        held_ += nbytes;
        return;
      }
    }
    c10::free_cpu(ptr);
  }

  bool enabled_ = true;
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;
  size_t held_ = 0;
};

// Work per parallel task, in logits elements, so that tiny inputs stay on one
// thread (thread wake-up costs more than they do).  16K rather than 64K: the
// measurement is in docs/bench/README.md, "Measurements quoted by the code".
constexpr int64_t kTaskElems = 16384;

Common make_common(const at::Tensor& input, const at::Tensor& target, const at::Tensor& w,
                   const OpOptions& o) {
  Common c{};
  c.dtype = input.scalar_type();
  c.x = input.data_ptr();
  c.N = input.size(0);
  c.C = input.size(1);
  c.sN = input.stride(0);
  c.sC = input.stride(1);
  c.t = target.data_ptr();
  c.t_int32 = target.scalar_type() == at::kInt;
  c.sT = target.stride(0);
  c.w = w.defined() ? w.data_ptr() : nullptr;
  c.W = double(c.C);
  if (w.defined()) {
    // sum of the class weights, in a fixed order (deterministic)
    double W = 0;
    if (w.scalar_type() == at::kDouble) {
      const double* p = w.const_data_ptr<double>();
      for (int64_t j = 0; j < c.C; ++j) W += p[j];
    } else {
      const float* p = w.const_data_ptr<float>();
      for (int64_t j = 0; j < c.C; ++j) W += p[j];
    }
    c.W = W;
  }
  c.ignore_index = o.ignore_index;
  c.o_index = o.o_index;
  c.opt = o.loss;
  c.block_rows = block_rows_for(c.C);
  return c;
}

int64_t num_blocks(const Common& c) { return (c.N + c.block_rows - 1) / c.block_rows; }

int64_t task_grain(const Common& c) {
  const int64_t per_block = c.block_rows * c.C;
  return std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, per_block));
}

at::Tensor math_weight(const std::optional<at::Tensor>& weight, at::ScalarType acc) {
  return weight.has_value() ? weight->to(acc).contiguous() : at::Tensor();
}

template <typename acc_t>
void write_coef(at::Tensor& coef, double a, double b) {
  acc_t* p = coef.data_ptr<acc_t>();
  p[0] = acc_t(a);
  p[1] = acc_t(b);
}

struct FwdResult {
  at::Tensor out, stats, coef, grad, gscale;
};

// The facts of the logits that plan_gradient reads.
GradInputs grad_inputs(const at::Tensor& input, const std::optional<at::Tensor>& weight) {
  GradInputs g;
  g.cpu = input.device().is_cpu();
  g.dim = input.dim();
  g.floating = at::isFloatingType(input.scalar_type());
  g.half = at::isReducedFloatingType(input.scalar_type());
  if (input.dim() == 2) g.C = input.size(1);
  g.weighted = weight.has_value();
  g.fusion_enabled = true;  // the operator was asked for the gradient
  return g;
}

// The forward; with `fuse` (mom_loss_fwd_fused) also the gradient for a unit
// upstream gradient, as plan_gradient says (cpu/grad_plan.h).
FwdResult mom_loss_fwd_impl(const at::Tensor& input, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight, const OpOptions& o,
                            bool fuse) {
  const Reduction red = o.reduction;
  const MoMNorm norm = o.mom_norm;
  const double lam = o.lam;
  auto [out, stats, coef] = make_forward_outputs(input, red);
  const at::ScalarType acc = math_dtype(input.scalar_type());
  const at::Tensor w = math_weight(weight, acc);

  FwdArgs a{};
  a.c = make_common(input, target, w, o);
  const int64_t nb = num_blocks(a.c);
  std::vector<double> partials(3 * nb);
  std::vector<int64_t> bad(nb, -1);
  a.stats_out = stats.data_ptr();
  a.none_out = red == Reduction::NONE ? out.data_ptr() : nullptr;
  a.none_a = lam;
  a.none_b = 1.0 - lam;
  a.partials = partials.data();
  a.bad_row = bad.data();

  GradPlan plan;
  at::Tensor grad;
  if (fuse) {
    plan = plan_gradient(grad_inputs(input, weight), o);
    // called directly for an input the tile kernel does not take (C > kTileMaxC):
    // the operator still returns the gradient
    if (plan.mode == GradMode::SEPARATE) plan.mode = GradMode::AFTER_FORWARD;
    grad = GradBufferCache::instance().empty({a.c.N, a.c.C}, input.options());
  }
  const bool inline_grad = plan.mode == GradMode::INLINE || plan.mode == GradMode::INLINE_RELATIVE;
  if (inline_grad) {
    double pre = 1.0;  // INLINE: the global factor, folded in
    if (plan.mode == GradMode::INLINE) {
      const double valid_rows = plan.count_valid ? double(count_valid_rows(a.c)) : 0.0;
      pre = global_factor(red, norm, lam, valid_rows, o.d_mom);
    }
    a.gfused = grad.data_ptr();
    // a zero coefficient stays 0 (never 0 * inf: an all-ignored batch)
    a.rel_a = plan.rel_a != 0.0 ? plan.rel_a * pre : 0.0;
    a.rel_b = plan.rel_b != 0.0 ? plan.rel_b * pre : 0.0;
  }
  const KernelTable& k = kernels_for_this_cpu();
  at::parallel_for(0, nb, task_grain(a.c), [&](int64_t b0, int64_t b1) { k.forward(a, b0, b1); });

  for (int64_t b = 0; b < nb; ++b) {
    if (bad[b] >= 0) {
      const int64_t y = target[bad[b]].item<int64_t>();
      TORCH_CHECK_INDEX(false, "Target ", y, " is out of bounds.");
    }
  }
  // blocks are added in order: the result does not depend on the thread count
  double s_valid = 0, s_o = 0, denom = 0;
  for (int64_t b = 0; b < nb; ++b) {
    s_valid += partials[3 * b];
    s_o += partials[3 * b + 1];
    denom += partials[3 * b + 2];
  }
  const Reduced<double> r = reduce_loss<double>(s_valid, s_o, denom, o.d_mom, lam, red, norm);
  if (acc == at::kDouble) write_coef<double>(coef, r.a, r.b); else write_coef<float>(coef, r.a, r.b);
  if (red != Reduction::NONE) {  // a 0-dim output: written directly, no fill_ dispatch
    switch (input.scalar_type()) {
      case at::kFloat: *out.data_ptr<float>() = float(r.loss); break;
      case at::kDouble: *out.data_ptr<double>() = r.loss; break;
      case at::kHalf: *out.data_ptr<at::Half>() = at::Half(float(r.loss)); break;
      case at::kBFloat16: *out.data_ptr<at::BFloat16>() = at::BFloat16(float(r.loss)); break;
      default: out.fill_(r.loss);
    }
  }
  FwdResult res{out, stats, coef, grad, at::Tensor()};
  if (!fuse) return res;
  if (plan.mode == GradMode::AFTER_FORWARD) {
    // the backward kernel with a unit upstream gradient and the real
    // coefficients; the global factor is then 1
    BwdArgs b{};
    b.c = a.c;
    b.c.stats = stats.data_ptr();
    const at::Tensor one = at::ones({}, input.options().dtype(acc));
    b.grad = one.data_ptr();
    b.grad_per_row = false;
    b.a = r.a;
    b.b = r.b;
    b.grad_in = grad.data_ptr();
    at::parallel_for(0, nb, task_grain(a.c), [&](int64_t b0, int64_t b1) { k.backward(b, b0, b1); });
  }
  // gscale = (global factor, rel_a, rel_b): INLINE folded the factor in (1);
  // INLINE_RELATIVE leaves 1 / D to the backward; AFTER_FORWARD wrote the
  // real coefficients (a, b), the factor is 1 and (a, b) only say which rows
  // are exactly 0
  const double gscale =
      plan.mode == GradMode::INLINE_RELATIVE ? global_factor(red, norm, lam, denom, o.d_mom) : 1.0;
  const double ra = inline_grad ? plan.rel_a : r.a, rb = inline_grad ? plan.rel_b : r.b;
  res.gscale = at::empty({3}, input.options().dtype(acc));
  if (acc == at::kDouble) {
    double* p = res.gscale.data_ptr<double>();
    p[0] = gscale; p[1] = ra; p[2] = rb;
  } else {
    float* p = res.gscale.data_ptr<float>();
    p[0] = float(gscale); p[1] = float(ra); p[2] = float(rb);
  }
  return res;
}

OpOptions forward_options(const at::Tensor& input, double lam, std::optional<int64_t> o_index,
                          int64_t ignore_index, c10::string_view loss, double gamma,
                          double dice_alpha, double dice_smooth, double label_smoothing,
                          c10::string_view reduction, c10::string_view mom_norm,
                          const c10::Scalar& mom_denom) {
  return parse_forward_options(lam, o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth,
                               label_smoothing, reduction, mom_norm, mom_denom, input.size(0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mom_loss_fwd_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double lam, std::optional<int64_t> o_index, int64_t ignore_index, c10::string_view loss,
    double gamma, double dice_alpha, double dice_smooth, double label_smoothing,
    c10::string_view reduction, c10::string_view mom_norm, const c10::Scalar& mom_denom) {
  check_op_inputs(input, target, weight);
  const OpOptions o = forward_options(input, lam, o_index, ignore_index, loss, gamma, dice_alpha,
                                      dice_smooth, label_smoothing, reduction, mom_norm, mom_denom);
  FwdResult r = mom_loss_fwd_impl(input, target, weight, o, /*fuse=*/false);
  return {r.out, r.stats, r.coef};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mom_loss_fwd_fused_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double lam, std::optional<int64_t> o_index, int64_t ignore_index, c10::string_view loss,
    double gamma, double dice_alpha, double dice_smooth, double label_smoothing,
    c10::string_view reduction, c10::string_view mom_norm, const c10::Scalar& mom_denom) {
  check_op_inputs(input, target, weight);
  const OpOptions o = forward_options(input, lam, o_index, ignore_index, loss, gamma, dice_alpha,
                                      dice_smooth, label_smoothing, reduction, mom_norm, mom_denom);
  FwdResult r = mom_loss_fwd_impl(input, target, weight, o, /*fuse=*/true);
  return {r.out, r.stats, r.coef, r.grad, r.gscale};
}

// grad_fused (N, C) *= upstream * gscale per row, in place; rows whose target
// is ignore_index (or out of range) become exactly 0, as in mom_loss_bwd.
template <typename acc_t>
void scale_fused_grad(at::Tensor& G, const at::Tensor& grad, const at::Tensor& target,
                      const at::Tensor& gscale_t, int64_t ignore_index, int64_t o_index) {
  // gscale = (global factor, rel_a, rel_b), float or double: read in place
  // (no conversion op: this runs in every training step)
  double gsp[3];
  for (int k = 0; k < 3; ++k) {
    const int64_t off = k * gscale_t.stride(0);
    gsp[k] = gscale_t.scalar_type() == at::kDouble ? gscale_t.const_data_ptr<double>()[off]
                                                   : double(gscale_t.const_data_ptr<float>()[off]);
  }
  const acc_t gscale = acc_t(gsp[0]);
  const bool zero_a = gsp[1] == 0.0, zero_ab = gsp[1] + gsp[2] == 0.0;
  const int64_t N = G.size(0), C = G.size(1);
  acc_t* g = G.data_ptr<acc_t>();
  const at::Tensor up = grad.scalar_type() == G.scalar_type() && grad.is_contiguous()
                           ? grad
                           : grad.to(G.scalar_type()).contiguous();
  const acc_t* u = up.const_data_ptr<acc_t>();
  const bool per_row = grad.dim() == 1;
  // per-row grad may be empty (N = 0): only a 0-dim grad is read here
  const acc_t s0 = per_row ? acc_t(0) : u[0] * gscale;
  if (!per_row && s0 != acc_t(0) && std::isfinite(s0)) {
    // ignored rows hold exact zeros already: one flat multiply
    const KernelTable& k = kernels_for_this_cpu();
    // (one thread below 256K elements: waking a second one costs more than
    // the multiply of an NER batch, 8192 x 9)
    at::parallel_for(0, N * C, 1 << 18, [&](int64_t e0, int64_t e1) {
      k.scale(g + e0, G.scalar_type(), e1 - e0, double(s0));
    });
    return;
  }
  const bool t32 = target.scalar_type() == at::kInt;
  const int64_t sT = target.stride(0);
  const void* tp = target.data_ptr();
  at::parallel_for(0, N, std::max<int64_t>(1, 65536 / std::max<int64_t>(C, 1)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t y = t32 ? int64_t(static_cast<const int32_t*>(tp)[i * sT])
                            : static_cast<const int64_t*>(tp)[i * sT];
      // rows without a valid target, or whose coefficient is exactly 0, get
      // exact zeros (as mom_loss_bwd: never 0 * inf)
      const bool live = target_valid(y, C, ignore_index) && !(y == o_index ? zero_ab : zero_a);
      const acc_t s = live ? (per_row ? u[i] : u[0]) * gscale : acc_t(0);
      acc_t* row = g + i * C;
      if (s == acc_t(0)) {
        std::fill(row, row + C, acc_t(0));
      } else {
        for (int64_t j = 0; j < C; ++j) row[j] *= s;
      }
    }
  });
}

void mom_loss_bwd_fused_cpu(at::Tensor& G, const at::Tensor& grad, const at::Tensor& target,
                            const at::Tensor& gscale, std::optional<int64_t> o_index_opt,
                            int64_t ignore_index) {
  const int64_t o_index = o_index_opt.value_or(kNoClass);
  TORCH_CHECK_VALUE(G.dim() == 2 && G.is_contiguous() && target.dim() == 1 &&
                        target.size(0) == G.size(0) && gscale.numel() == 3 &&
                        (gscale.scalar_type() == at::kFloat || gscale.scalar_type() == at::kDouble),
                    "momkernels: mom_loss_bwd_fused_: bad arguments");
  TORCH_CHECK_VALUE(grad.dim() == 0 || (grad.dim() == 1 && grad.size(0) == G.size(0)),
                    "momkernels: grad must be 0-dim or (N,); got ", grad.sizes());
  if (G.scalar_type() == at::kDouble) {
    scale_fused_grad<double>(G, grad, target, gscale, ignore_index, o_index);
  } else {
    TORCH_CHECK_VALUE(G.scalar_type() == at::kFloat || at::isReducedFloatingType(G.scalar_type()),
                      "momkernels: mom_loss_bwd_fused_: unsupported dtype ", G.scalar_type());
    if (G.scalar_type() == at::kFloat) {
      scale_fused_grad<float>(G, grad, target, gscale, ignore_index, o_index);
    } else {  // half types: scale in float, round once more
      at::Tensor Gf = G.to(at::kFloat);
      scale_fused_grad<float>(Gf, grad, target, gscale, ignore_index, o_index);
      G.copy_(Gf);
    }
  }
}

at::Tensor mom_loss_bwd_cpu(const at::Tensor& grad, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const at::Tensor& stats, const at::Tensor& coef,
                            std::optional<int64_t> o_index, int64_t ignore_index,
                            c10::string_view loss, double gamma, double dice_alpha,
                            double dice_smooth, double label_smoothing) {
  check_op_inputs(input, target, weight);
  const OpOptions o = parse_backward_options(o_index, ignore_index, loss, gamma, dice_alpha,
                                             dice_smooth, label_smoothing);
  const int64_t N = input.size(0);
  const at::ScalarType acc = math_dtype(input.scalar_type());
  check_backward_inputs(input, grad, stats, coef);
  const at::Tensor g = grad.to(acc).contiguous();  // no copy in the usual case
  const at::Tensor st = stats.to(acc).contiguous();
  const at::Tensor cf = coef.to(acc).contiguous();
  const at::Tensor w = math_weight(weight, acc);
  at::Tensor grad_in = GradBufferCache::instance().empty({N, input.size(1)}, input.options());

  BwdArgs a{};
  a.c = make_common(input, target, w, o);
  a.c.stats = st.data_ptr();
  a.grad = g.data_ptr();
  a.grad_per_row = grad.dim() == 1;
  if (acc == at::kDouble) {
    a.a = cf.const_data_ptr<double>()[0];
    a.b = cf.const_data_ptr<double>()[1];
  } else {
    a.a = cf.const_data_ptr<float>()[0];
    a.b = cf.const_data_ptr<float>()[1];
  }
  a.grad_in = grad_in.data_ptr();
  const KernelTable& k = kernels_for_this_cpu();
  at::parallel_for(0, num_blocks(a.c), task_grain(a.c),
                   [&](int64_t b0, int64_t b1) { k.backward(a, b0, b1); });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(momkernels, CPU, m) {
  m.impl("mom_loss_fwd", &mom_loss_fwd_cpu);
  m.impl("mom_loss_bwd", &mom_loss_bwd_cpu);
  m.impl("mom_loss_fwd_fused", &mom_loss_fwd_fused_cpu);
  m.impl("mom_loss_bwd_fused_", &mom_loss_bwd_fused_cpu);
}

}  // namespace momkernels::cpu
