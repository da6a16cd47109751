// Host-side pieces shared by the CPU and CUDA operators and by autograd: the
// one parser of the schemas' scalar arguments (OpOptions), argument checks
// and output allocation.  The Python layer has already validated every
// argument with friendlier messages; these checks guard direct torch.ops calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Scalar.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>

#include "mom_loss.h"

namespace momkernels {

inline LossKind parse_loss(c10::string_view s) {
  if (s == "ce") return LossKind::CE;
  if (s == "focal") return LossKind::FOCAL;
  if (s == "dice") return LossKind::DICE;
  TORCH_CHECK_VALUE(false, "momkernels: loss must be 'ce', 'focal' or 'dice'; got '", s, "'");
}

inline Reduction parse_reduction(c10::string_view s) {
  if (s == "none") return Reduction::NONE;
  if (s == "sum") return Reduction::SUM;
  if (s == "mean") return Reduction::MEAN;
  TORCH_CHECK_VALUE(false, "momkernels: reduction must be 'mean', 'sum' or 'none'; got '", s, "'");
}

// The MoM term's denominator under reduction 'mean' (docs/spec.md): 'valid'
// = D (the CE term's), 'rows' = N rows (padding included), 'fixed' = the
// caller's mom_denom > 0 (the paper's sentences x M with dynamic padding).
// 'rows' and 'fixed' are one mode for the kernels: a denominator known before
// they run, returned in d_mom.
inline MoMNorm parse_mom_norm(c10::string_view s, double mom_denom, int64_t rows, double& d_mom) {
  d_mom = double(rows);
  if (s == "valid") return MoMNorm::VALID;
  if (s == "rows") return MoMNorm::ROWS;
  if (s == "fixed") {
    TORCH_CHECK_VALUE(mom_denom > 0 && mom_denom < std::numeric_limits<double>::infinity(),
                      "momkernels: mom_norm='fixed' needs a positive finite mom_denom; got ",
                      mom_denom);
    d_mom = mom_denom;
    return MoMNorm::ROWS;
  }
  TORCH_CHECK_VALUE(false, "momkernels: mom_norm must be 'valid', 'rows' or 'fixed'; got '", s,
                    "'");
}

inline LossOptions make_options(c10::string_view loss, double gamma, double dice_alpha,
                                double dice_smooth, double label_smoothing) {
  LossOptions o;
  o.kind = parse_loss(loss);
  TORCH_CHECK_VALUE(gamma >= 0, "momkernels: gamma must be >= 0; got ", gamma);
  TORCH_CHECK_VALUE(dice_alpha >= 0, "momkernels: dice_alpha must be >= 0; got ", dice_alpha);
  TORCH_CHECK_VALUE(dice_smooth > 0, "momkernels: dice_smooth must be > 0; got ", dice_smooth);
  TORCH_CHECK_VALUE(label_smoothing >= 0 && label_smoothing <= 1,
                    "momkernels: label_smoothing must be in [0, 1]; got ", label_smoothing);
  TORCH_CHECK_VALUE(label_smoothing == 0 || o.kind == LossKind::CE,
                    "momkernels: label_smoothing > 0 is only defined for loss='ce'");
  o.gamma = gamma;
  o.dice_alpha = dice_alpha;
  o.dice_smooth = dice_smooth;
  o.label_smoothing = label_smoothing;
  return o;
}

// The scalar arguments of one call, parsed and checked once: what the kernels,
// the reduction and the gradient plan (cpu/grad_plan.h) read.  Every operator
// builds it with parse_forward_options / parse_backward_options from its
// schema arguments (registration.cpp) and passes this one value on.
struct OpOptions {
  LossOptions loss;                        // kind, gamma, dice_alpha, dice_smooth, label_smoothing
  double lam = 1.0;                        // forward only
  int64_t o_index = kNoClass;              // the schema's int? o_index; None -> kNoClass
  int64_t ignore_index = -100;
  Reduction reduction = Reduction::MEAN;   // forward only
  MoMNorm mom_norm = MoMNorm::VALID;       // forward only
  double d_mom = 0;                        // MoM denominator of 'rows' (N) / 'fixed' (mom_denom)
};

// The options of mom_loss_fwd (and mom_loss_fwd_fused): `rows` = N, the
// denominator of mom_norm 'rows'.  Checks in the order the operators have
// always made them: lam, then the loss options, reduction, mom_norm.
inline OpOptions parse_forward_options(double lam, std::optional<int64_t> o_index,
                                       int64_t ignore_index, c10::string_view loss, double gamma,
                                       double dice_alpha, double dice_smooth,
                                       double label_smoothing, c10::string_view reduction,
                                       c10::string_view mom_norm, const c10::Scalar& mom_denom,
                                       int64_t rows) {
  TORCH_CHECK_VALUE(lam >= 0 && lam <= 1, "momkernels: lam must be in [0, 1]; got ", lam);
  OpOptions o;
  o.loss = make_options(loss, gamma, dice_alpha, dice_smooth, label_smoothing);
  o.lam = lam;
  o.o_index = o_index.value_or(kNoClass);
  o.ignore_index = ignore_index;
  o.reduction = parse_reduction(reduction);
  o.mom_norm = parse_mom_norm(mom_norm, mom_denom.toDouble(), rows, o.d_mom);
  return o;
}

// The options of mom_loss_bwd: the loss and the row bookkeeping (the
// reduction's coefficients come in the coef tensor).
inline OpOptions parse_backward_options(std::optional<int64_t> o_index, int64_t ignore_index,
                                        c10::string_view loss, double gamma, double dice_alpha,
                                        double dice_smooth, double label_smoothing) {
  OpOptions o;
  o.loss = make_options(loss, gamma, dice_alpha, dice_smooth, label_smoothing);
  o.o_index = o_index.value_or(kNoClass);
  o.ignore_index = ignore_index;
  return o;
}

inline at::ScalarType math_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_op_inputs(const at::Tensor& input, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight) {
  TORCH_CHECK_VALUE(input.dim() == 2, "momkernels: input must be (N, C); got shape ", input.sizes());
  const auto st = input.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                   "momkernels: input must be float16, bfloat16, float32 or float64; got ", st);
  TORCH_CHECK_VALUE(input.size(1) >= 1, "momkernels: input needs C >= 1 classes; got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == input.size(0),
                    "momkernels: target must be (N,) = (", input.size(0), ",); got shape ",
                    target.sizes());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong || target.scalar_type() == at::kInt,
                   "momkernels: target must be int64 or int32; got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.device() == input.device(), "momkernels: target is on ",
                    target.device(), " but input is on ", input.device());
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == input.size(1),
                      "momkernels: weight must have shape (C,) = (", input.size(1), ",); got ",
                      w.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()),
                     "momkernels: weight must be floating point; got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == input.device(), "momkernels: weight is on ", w.device(),
                      " but input is on ", input.device());
  }
}

// Checks of the backward's extra inputs: the upstream gradient (0-dim or
// (N,)) and the forward's saved stats (N, 2) and coef (2,), all on input's device.
inline void check_backward_inputs(const at::Tensor& input, const at::Tensor& grad,
                                  const at::Tensor& stats, const at::Tensor& coef) {
  const int64_t N = input.size(0);
  TORCH_CHECK_VALUE(grad.numel() == 1 || (grad.dim() == 1 && grad.size(0) == N),
                    "momkernels: grad must be 0-dim or (N,); got shape ", grad.sizes());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == N && stats.size(1) == 2,
                    "momkernels: stats must be (N, 2); got shape ", stats.sizes());
  TORCH_CHECK_VALUE(coef.dim() == 1 && coef.size(0) == 2,
                    "momkernels: coef must have shape (2,); got ", coef.sizes());
  for (const at::Tensor* t : {&grad, &stats, &coef}) {
    TORCH_CHECK_VALUE(t->device() == input.device(), "momkernels: grad, stats and coef must be on ",
                      input.device(), "; got a tensor on ", t->device());
  }
  TORCH_CHECK_TYPE(grad.is_floating_point(), "momkernels: grad must be floating point; got ",
                   grad.scalar_type());
}

// Outputs of the forward: the loss ((N,) for reduction 'none', else 0-dim) in
// the logits' dtype; per-row (max, log normaliser) and the two reduction
// coefficients (a, b) in the math dtype, both saved for the backward.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> make_forward_outputs(
    const at::Tensor& input, Reduction red) {
  const int64_t N = input.size(0);
  const auto acc = input.options().dtype(math_dtype(input.scalar_type()));
  at::Tensor loss = red == Reduction::NONE ? at::empty({N}, input.options())
                                           : at::empty({}, input.options());
  return {loss, at::empty({N, 2}, acc), at::empty({2}, acc)};
}

}  // namespace momkernels
