// Autograd for momkernels::mom_loss_fwd, registered in C++ for the Autograd
// dispatch key: the backward is the second operator, mom_loss_bwd.  Doing this
// in C++ rather than with torch.library.register_autograd keeps Python out of
// every training step (at the NER shape, 8192 x 9, the Python autograd wrapper
// cost more than the kernels).  torch.compile and opcheck see it as any
// C++-autograd operator; momkernels/ops.py registers the fake kernels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>
#include <typeinfo>

namespace momkernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, int64_t,
    int64_t, c10::string_view, double, double, double, double, c10::string_view, c10::string_view,
    const c10::Scalar&);
using BwdFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                         int64_t, int64_t, c10::string_view, double, double, double, double);

using FusedFwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, int64_t,
    int64_t, c10::string_view, double, double, double, double, c10::string_view, c10::string_view,
    const c10::Scalar&);
using FusedBwdFn = void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        int64_t, int64_t);

const c10::TypedOperatorHandle<FusedFwdFn>& fused_fwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("momkernels::mom_loss_fwd_fused", "")
                             .typed<FusedFwdFn>();
  return op;
}

const c10::TypedOperatorHandle<FusedBwdFn>& fused_bwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("momkernels::mom_loss_bwd_fused_", "")
                             .typed<FusedBwdFn>();
  return op;
}

// Small C on the CPU: the forward kernel also computes the gradient (for a
// unit upstream gradient), and the backward only scales it in place.  At the
// NER shape (8192 x 9) this replaces a second pass that re-reads the logits,
// re-transposes them and recomputes every exp with one multiply.  All four
// float dtypes; a half-precision gradient is rounded once (see backward).
// MOMKERNELS_FUSED=0 turns it off.
bool use_fused(const at::Tensor& input) {
  static const bool enabled = [] {
    const char* env = std::getenv("MOMKERNELS_FUSED");
    return env == nullptr || std::string(env) != "0";
  }();
  // sym_size, not size: under torch.compile size() would materialise the
  // symbolic row count and specialise the graph on N (one graph per batch
  // shape); a symbolic C (never a NER head) just takes the unfused path
  if (!(enabled && input.device().is_cpu() && input.dim() == 2 &&
        at::isFloatingType(input.scalar_type()))) {
    return false;
  }
  const std::optional<int64_t> C = input.sym_size(1).maybe_as_int();
  return C.has_value() && *C <= 64;
}

const c10::TypedOperatorHandle<FwdFn>& fwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("momkernels::mom_loss_fwd", "")
                             .typed<FwdFn>();
  return op;
}

const c10::TypedOperatorHandle<BwdFn>& bwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("momkernels::mom_loss_bwd", "")
                             .typed<BwdFn>();
  return op;
}

// A real (not fake, functional, batched or subclass) CPU tensor whose data
// can be read on the host.  Under torch.compile / opcheck the backward runs
// on fake tensors: those always take the operator call.
bool is_plain_cpu(const at::Tensor& t) {
  if (!t.defined() || !t.device().is_cpu() || t.layout() != at::kStrided) return false;
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  if (typeid(*impl) != typeid(c10::TensorImpl)) return false;  // wrapper subclasses
  const c10::DispatchKeySet ks = impl->key_set();
  return !ks.has(c10::DispatchKey::Python) && !ks.has(c10::DispatchKey::Functionalize) &&
         t.has_storage() && t.storage().data() != nullptr;
}

// The first element of a non-empty floating-point plain CPU tensor, or NaN
// if it is not one.
double first_value(const at::Tensor& t) {
  if (!is_plain_cpu(t) || t.numel() == 0) return std::nan("");
  switch (t.scalar_type()) {
    case at::kFloat: return double(*t.const_data_ptr<float>());
    case at::kDouble: return *t.const_data_ptr<double>();
    case at::kBFloat16: return double(float(*t.const_data_ptr<at::BFloat16>()));
    case at::kHalf: return double(float(*t.const_data_ptr<at::Half>()));
    default: return std::nan("");
  }
}

// The value of a 0-dim floating-point plain CPU tensor, or NaN if it is not one.
double scalar_value(const at::Tensor& t) {
  return t.dim() == 0 ? first_value(t) : std::nan("");
}

class MoMLoss : public torch::autograd::Function<MoMLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               double lam, int64_t o_index, int64_t ignore_index,
                               const std::string& loss, double gamma, double dice_alpha,
                               double dice_smooth, double label_smoothing,
                               const std::string& reduction, const std::string& mom_norm,
                               const c10::Scalar& mom_denom) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out, stats, coef;
    if (use_fused(input)) {
      at::Tensor grad_fused, gscale;
      std::tie(out, stats, coef, grad_fused, gscale) =
          fused_fwd_op().call(input, target, weight, lam, o_index, ignore_index, loss, gamma,
                              dice_alpha, dice_smooth, label_smoothing, reduction, mom_norm,
                              mom_denom);
      // kept in saved_data, not save_for_backward: the backward scales it in
      // place and hands it on as the gradient (so no version check), then
      // drops it; a second backward (retain_graph) recomputes from the logits
      ctx->saved_data["grad_fused"] = grad_fused;
      ctx->saved_data["gscale"] = gscale;
      ctx->saved_data["fused"] = true;
      ctx->saved_data["lam"] = lam;
      ctx->saved_data["reduction"] = reduction;
      ctx->saved_data["mom_norm"] = mom_norm;
      ctx->saved_data["mom_denom"] = mom_denom;
    } else {
      std::tie(out, stats, coef) =
          fwd_op().call(input, target, weight, lam, o_index, ignore_index, loss, gamma,
                        dice_alpha, dice_smooth, label_smoothing, reduction, mom_norm,
                        mom_denom);
    }
    // The logits are saved as they are (no copy): the backward recomputes the
    // softmax from them and the per-row (max, log-normaliser) stats.
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), stats, coef});
    ctx->saved_data["o_index"] = o_index;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["loss"] = loss;
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["dice_alpha"] = dice_alpha;
    ctx->saved_data["dice_smooth"] = dice_smooth;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->mark_non_differentiable({stats, coef});
    // stats and coef never receive gradients: do not materialise zeros for them
    ctx->set_materialize_grads(false);
    return {out, stats, coef};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    variable_list result(14);
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return result;
    std::optional<at::Tensor> weight;
    if (saved[2].defined()) weight = saved[2];
    auto& d = ctx->saved_data;
    if (d.count("fused")) {
      auto it = d.find("grad_fused");
      const at::Tensor& gscale = d.at("gscale").toTensor();
      // loss.backward() of a mean / sum: the upstream gradient is 1 and the
      // forward already folded the global factor in (gscale[0] == 1), so the
      // buffer is the gradient as it is: no operator call, no pass over it
      const bool unit = scalar_value(grads[0]) == 1.0 && first_value(gscale) == 1.0;
      const bool reduced = at::isReducedFloatingType(input.scalar_type());
      at::Tensor g;
      if (reduced && !unit) {
        // a half-precision buffer is already rounded: scaling it would round
        // a second time, so the backward operator recomputes the gradient
        // from the logits (rounded once); the buffer is dropped
        it->second = c10::IValue();
      } else if (it->second.isTensor()) {
        g = it->second.toTensor();
        it->second = c10::IValue();  // used once: the gradient now owns it
      } else {
        // a second backward through the same graph (retain_graph=True): the
        // first one consumed the buffer, so recompute it with the same
        // kernel -- bitwise the same gradient as the first call
        at::AutoDispatchBelowADInplaceOrView guard;
        g = std::get<3>(fused_fwd_op().call(
            input, saved[1], weight, d.at("lam").toDouble(), d.at("o_index").toInt(),
            d.at("ignore_index").toInt(), d.at("loss").toStringRef(), d.at("gamma").toDouble(),
            d.at("dice_alpha").toDouble(), d.at("dice_smooth").toDouble(),
            d.at("label_smoothing").toDouble(), d.at("reduction").toStringRef(),
            d.at("mom_norm").toStringRef(), d.at("mom_denom").toScalar()));
      }
      if (g.defined()) {
        if (!unit) {
          fused_bwd_op().call(g, grads[0], saved[1], gscale, d.at("o_index").toInt(),
                              d.at("ignore_index").toInt());
        }
        result[0] = std::move(g);
        return result;
      }
    }
    result[0] = bwd_op().call(grads[0], input, saved[1], weight, saved[3], saved[4],
                              d.at("o_index").toInt(), d.at("ignore_index").toInt(),
                              d.at("loss").toStringRef(), d.at("gamma").toDouble(),
                              d.at("dice_alpha").toDouble(), d.at("dice_smooth").toDouble(),
                              d.at("label_smoothing").toDouble());
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> mom_loss_fwd_autograd(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double lam, int64_t o_index, int64_t ignore_index, c10::string_view loss, double gamma,
    double dice_alpha, double dice_smooth, double label_smoothing, c10::string_view reduction,
    c10::string_view mom_norm, const c10::Scalar& mom_denom) {
  if (!(at::GradMode::is_enabled() && input.requires_grad())) {
    // no graph to record (eval, no_grad, frozen logits): the plain forward,
    // without the fused path's gradient
    at::AutoDispatchBelowADInplaceOrView guard;
    return fwd_op().call(input, target, weight, lam, o_index, ignore_index, loss, gamma,
                         dice_alpha, dice_smooth, label_smoothing, reduction, mom_norm,
                         mom_denom);
  }
  auto r = MoMLoss::apply(input, target, weight, lam, o_index, ignore_index, std::string(loss),
                          gamma, dice_alpha, dice_smooth, label_smoothing, std::string(reduction),
                          std::string(mom_norm), mom_denom);
  return {r[0], r[1], r[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(momkernels, Autograd, m) {
  m.impl("mom_loss_fwd", &mom_loss_fwd_autograd);
}

}  // namespace momkernels
