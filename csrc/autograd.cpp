// Autograd for momkernels::mom_loss_fwd, registered in C++ for the Autograd
// dispatch key: the backward is the second operator, mom_loss_bwd.  Doing this
// in C++ rather than with torch.library.register_autograd keeps Python out of
// every training step (at the NER shape, 8192 x 9, the Python autograd wrapper
// cost more than the kernels).  torch.compile and opcheck see it as any
// C++-autograd operator; momkernels/ops.py registers the fake kernels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace momkernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, int64_t,
    int64_t, c10::string_view, double, double, double, double, c10::string_view, c10::string_view);
using BwdFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                         int64_t, int64_t, c10::string_view, double, double, double, double);

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

class MoMLoss : public torch::autograd::Function<MoMLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               double lam, int64_t o_index, int64_t ignore_index,
                               const std::string& loss, double gamma, double dice_alpha,
                               double dice_smooth, double label_smoothing,
                               const std::string& reduction, const std::string& mom_norm) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, stats, coef] =
        fwd_op().call(input, target, weight, lam, o_index, ignore_index, loss, gamma, dice_alpha,
                      dice_smooth, label_smoothing, reduction, mom_norm);
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
    variable_list result(13);
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return result;
    std::optional<at::Tensor> weight;
    if (saved[2].defined()) weight = saved[2];
    const auto& d = ctx->saved_data;
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
    c10::string_view mom_norm) {
  auto r = MoMLoss::apply(input, target, weight, lam, o_index, ignore_index, std::string(loss),
                          gamma, dice_alpha, dice_smooth, label_smoothing, std::string(reduction),
                          std::string(mom_norm));
  return {r[0], r[1], r[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(momkernels, Autograd, m) {
  m.impl("mom_loss_fwd", &mom_loss_fwd_autograd);
}

}  // namespace momkernels
