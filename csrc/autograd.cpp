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
#include <optional>
#include <string>
#include <tuple>
#include <typeinfo>
#include <vector>

#include "cpu/grad_plan.h"
#include "op_common.h"

namespace momkernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double,
    std::optional<int64_t>, int64_t, c10::string_view, double, double, double, double,
    c10::string_view, c10::string_view, const c10::Scalar&);
using BwdFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                         std::optional<int64_t>, int64_t, c10::string_view, double, double, double,
                         double);

using FusedFwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double,
    std::optional<int64_t>, int64_t, c10::string_view, double, double, double, double,
    c10::string_view, c10::string_view, const c10::Scalar&);
using FusedBwdFn = void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        std::optional<int64_t>, int64_t);

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

// mom_loss_fwd's scalar arguments as the schema has them, kept by the
// autograd node (as one IValue tuple) to call the operators again; parsed
// with op_common.h's parser, the operators' own.
struct ScalarArgs {
  double lam;
  std::optional<int64_t> o_index;
  int64_t ignore_index;
  std::string loss;
  double gamma, dice_alpha, dice_smooth, label_smoothing;
  std::string reduction, mom_norm;
  c10::Scalar mom_denom;

  // The options that the plan reads.  Neither MoM denominator is one of
  // them: rows = 0 and mom_denom 1 stand in for N and mom_denom, which under
  // torch.compile are symbolic (reading them would specialise the graph on
  // the batch shape); the operator parses the real ones.
  OpOptions parse() const {
    return parse_forward_options(lam, o_index, ignore_index, loss, gamma, dice_alpha,
                                 dice_smooth, label_smoothing, reduction, mom_norm,
                                 c10::Scalar(1.0), 0);
  }

  c10::IValue pack() const {
    return c10::ivalue::Tuple::create(std::vector<c10::IValue>{
        lam, o_index.has_value() ? c10::IValue(*o_index) : c10::IValue(), ignore_index, loss,
        gamma, dice_alpha, dice_smooth, label_smoothing, reduction, mom_norm, mom_denom});
  }

  static ScalarArgs unpack(const c10::IValue& v) {
    const std::vector<c10::IValue> e = v.toTupleRef().elements().vec();
    return ScalarArgs{e[0].toDouble(),
                      e[1].isNone() ? std::nullopt : std::optional<int64_t>(e[1].toInt()),
                      e[2].toInt(),
                      e[3].toStringRef(),
                      e[4].toDouble(),
                      e[5].toDouble(),
                      e[6].toDouble(),
                      e[7].toDouble(),
                      e[8].toStringRef(),
                      e[9].toStringRef(),
                      e[10].toScalar()};
  }
};

// The gradient plan for this call (cpu/grad_plan.h), from the logits'
// metadata: sym_size, not size, for C -- under torch.compile size() would
// materialise the symbolic row count and specialise the graph on N (one graph
// per batch shape); a symbolic C (never a NER head) takes the unfused path.
cpu::GradPlan gradient_plan(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const OpOptions& o) {
  cpu::GradInputs g;
  g.cpu = input.device().is_cpu();
  g.dim = input.dim();
  g.floating = at::isFloatingType(input.scalar_type());
  g.half = at::isReducedFloatingType(input.scalar_type());
  if (g.dim == 2) g.C = input.sym_size(1).maybe_as_int();
  g.weighted = weight.has_value();
  g.fusion_enabled = cpu::fusion_enabled_by_env();
  return cpu::plan_gradient(g, o);
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
                               const ScalarArgs& a) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out, stats, coef;
    const cpu::GradPlan plan = gradient_plan(input, weight, a.parse());
    if (plan.mode != cpu::GradMode::SEPARATE) {
      // small C on the CPU: the forward kernel also computes the gradient
      // (for a unit upstream gradient), and the backward only scales it in
      // place, if anything.  At the NER shape (8192 x 9) this replaces a
      // second pass that re-reads the logits, re-transposes them and
      // recomputes every exp with one multiply.
      at::Tensor grad_fused, gscale;
      std::tie(out, stats, coef, grad_fused, gscale) = fused_fwd_op().call(
          input, target, weight, a.lam, a.o_index, a.ignore_index, a.loss, a.gamma, a.dice_alpha,
          a.dice_smooth, a.label_smoothing, a.reduction, a.mom_norm, a.mom_denom);
      // kept in saved_data, not save_for_backward: the backward scales it in
      // place and hands it on as the gradient (so no version check), then
      // drops it; a second backward (retain_graph) recomputes from the logits
      ctx->saved_data["grad_fused"] = grad_fused;
      ctx->saved_data["gscale"] = gscale;
    } else {
      std::tie(out, stats, coef) =
          fwd_op().call(input, target, weight, a.lam, a.o_index, a.ignore_index, a.loss, a.gamma,
                        a.dice_alpha, a.dice_smooth, a.label_smoothing, a.reduction, a.mom_norm,
                        a.mom_denom);
    }
    // The logits are saved as they are (no copy): the backward recomputes the
    // softmax from them and the per-row (max, log-normaliser) stats.
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), stats, coef});
    ctx->saved_data["args"] = a.pack();
    ctx->mark_non_differentiable({stats, coef});
    // stats and coef never receive gradients: do not materialise zeros for them
    ctx->set_materialize_grads(false);
    return {out, stats, coef};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& target = saved[1];
    variable_list result(4);
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return result;
    std::optional<at::Tensor> weight;
    if (saved[2].defined()) weight = saved[2];
    auto& d = ctx->saved_data;
    const ScalarArgs a = ScalarArgs::unpack(d.at("args"));
    auto it = d.find("grad_fused");
    if (it != d.end()) {
      const at::Tensor& gscale = d.at("gscale").toTensor();
      // loss.backward() of a mean / sum: the upstream gradient is 1 and the
      // forward already folded the global factor in (gscale[0] == 1), so the
      // buffer is the gradient as it is: no operator call, no pass over it
      const bool unit = scalar_value(grads[0]) == 1.0 && first_value(gscale) == 1.0;
      const cpu::FusedBackward step = cpu::fused_backward(
          unit, at::isReducedFloatingType(input.scalar_type()), it->second.isTensor());
      at::Tensor g;
      switch (step.source) {
        case cpu::FusedSource::BWD_OP:
          it->second = c10::IValue();  // dropped: mom_loss_bwd below
          break;
        case cpu::FusedSource::BUFFER:
          g = it->second.toTensor();
          it->second = c10::IValue();  // used once: the gradient now owns it
          break;
        case cpu::FusedSource::RECOMPUTE: {
          // a second backward through the same graph (retain_graph=True):
          // the same kernel, so bitwise the same gradient as the first call
          at::AutoDispatchBelowADInplaceOrView guard;
          g = std::get<3>(fused_fwd_op().call(input, target, weight, a.lam, a.o_index,
                                              a.ignore_index, a.loss, a.gamma, a.dice_alpha,
                                              a.dice_smooth, a.label_smoothing, a.reduction,
                                              a.mom_norm, a.mom_denom));
          break;
        }
      }
      if (g.defined()) {
        if (step.scale) fused_bwd_op().call(g, grads[0], target, gscale, a.o_index, a.ignore_index);
        result[0] = std::move(g);
        return result;
      }
    }
    result[0] = bwd_op().call(grads[0], input, target, weight, saved[3], saved[4], a.o_index,
                              a.ignore_index, a.loss, a.gamma, a.dice_alpha, a.dice_smooth,
                              a.label_smoothing);
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> mom_loss_fwd_autograd(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double lam, std::optional<int64_t> o_index, int64_t ignore_index, c10::string_view loss,
    double gamma, double dice_alpha, double dice_smooth, double label_smoothing,
    c10::string_view reduction, c10::string_view mom_norm, const c10::Scalar& mom_denom) {
  if (!(at::GradMode::is_enabled() && input.requires_grad())) {
    // no graph to record (eval, no_grad, frozen logits): the plain forward,
    // without the fused path's gradient
    at::AutoDispatchBelowADInplaceOrView guard;
    return fwd_op().call(input, target, weight, lam, o_index, ignore_index, loss, gamma,
                         dice_alpha, dice_smooth, label_smoothing, reduction, mom_norm,
                         mom_denom);
  }
  const ScalarArgs args{lam,          o_index,         ignore_index,           std::string(loss),
                        gamma,        dice_alpha,      dice_smooth,            label_smoothing,
                        std::string(reduction),        std::string(mom_norm), mom_denom};
  auto r = MoMLoss::apply(input, target, weight, args);
  return {r[0], r[1], r[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(momkernels, Autograd, m) {
  m.impl("mom_loss_fwd", &mom_loss_fwd_autograd);
}

}  // namespace momkernels
