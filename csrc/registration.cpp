// Operator schemas of momkernels (one definition for every device; the CPU and
// CUDA files register implementations) and the empty Python module whose import
// runs these registrations, as in pytorch/extension-cpp.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/kernel.h"

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace momkernels {

static std::string build_info() {
  std::string s = "cpu_isa=";
  s += cpu::isa_name();
#ifdef MOMK_WITH_CUDA
  s += ";cuda=1";
#else
  s += ";cuda=0";
#endif
  return s;
}

TORCH_LIBRARY(momkernels, m) {
  // o_index is the majority class of the MoM term, or None (cross_entropy:
  // no such class; lam is then 1).  mom_norm is 'valid', 'rows' or 'fixed'
  // (then the MoM denominator of a mean is mom_denom > 0; see op_common.h's
  // parse_mom_norm).  The operators parse these arguments once, into
  // op_common.h's OpOptions.  mom_denom is a
  // Scalar, not a float: under torch.compile a float argument is specialised
  // (one graph per value, and the paper's sentences x M changes with the
  // batch) while a Scalar stays symbolic.
  // Forward: (loss, stats, coef).  loss is (N,) for reduction 'none', else
  // 0-dim, in input's dtype; stats (N, 2) = per-row (max, log normaliser) and
  // coef (2,) = reduction coefficients (a, b), in the math dtype, for backward.
  m.def(
      "mom_loss_fwd(Tensor input, Tensor target, Tensor? weight, float lam, int? o_index, "
      "int ignore_index, str loss, float gamma, float dice_alpha, float dice_smooth, "
      "float label_smoothing, str reduction, str mom_norm, Scalar mom_denom=0) -> "
      "(Tensor, Tensor, Tensor)");
  // Backward: d loss / d input, (N, C) contiguous, input's dtype.  grad is the
  // upstream gradient of loss (0-dim, or (N,) for reduction 'none').
  m.def(
      "mom_loss_bwd(Tensor grad, Tensor input, Tensor target, Tensor? weight, Tensor stats, "
      "Tensor coef, int? o_index, int ignore_index, str loss, float gamma, float dice_alpha, "
      "float dice_smooth, float label_smoothing) -> Tensor");
  // Forward that also returns the gradient for a unit upstream gradient (CPU;
  // the Autograd kernel of mom_loss_fwd uses it for small C): (loss, stats,
  // coef, grad_fused (N, C) in input's dtype, gscale (3,) math dtype = (global
  // factor g, rel_a, rel_b)).  The gradient of the loss is grad_fused * upstream
  // * g, with exact zeros in rows that are ignored or whose coefficient
  // rel_a + rel_b [y == o_index] is 0.
  m.def(
      "mom_loss_fwd_fused(Tensor input, Tensor target, Tensor? weight, float lam, int? o_index, "
      "int ignore_index, str loss, float gamma, float dice_alpha, float dice_smooth, "
      "float label_smoothing, str reduction, str mom_norm, Scalar mom_denom=0) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  // In place: grad_fused *= upstream * g (see above).
  m.def(
      "mom_loss_bwd_fused_(Tensor(a!) grad_fused, Tensor grad, Tensor target, Tensor gscale, "
      "int? o_index, int ignore_index) -> ()");
  m.def("build_info() -> str", &build_info);
}

}  // namespace momkernels
