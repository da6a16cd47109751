// CUDA implementation of the momkernels operators: checks, allocation, the
// current stream, the launches (forward.cu, backward.cu) and the registration
// for CUDA tensors.  The schemas are in registration.cpp; the fake and
// autograd registrations in momkernels/ops.py apply unchanged.
//
// Launches per call: forward 1 (reduction 'none') or 2 (kernel + one-block
// finish), backward 1, plus a dtype conversion only when the weight / the
// upstream gradient are not already in the math / logits dtype.  Nothing is
// read back to the host, so both run inside CUDA graphs.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <limits>

#include "../op_common.h"
#include "launch.h"

// host_emulation/ compiles this file for the CPU, with the kernels run by
// threads standing in for CUDA threads; everything device-specific is here.
#ifndef MOMK_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define MOMK_DEVICE_GUARD(t) const c10::cuda::CUDAGuard device_guard((t).device())
#define MOMK_CURRENT_STREAM() c10::cuda::getCurrentCUDAStream().stream()
#define MOMK_CHECK_LAUNCH(e) C10_CUDA_CHECK(e)
#endif

namespace momkernels::cuda {
namespace {

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    case at::kDouble: return DType::Double;
    default: return DType::Float;  // check_op_inputs admits only these four
  }
}

void check_cuda_inputs(const at::Tensor& input) {
#ifndef MOMK_CUDA_EMULATION
  TORCH_CHECK_VALUE(input.is_cuda(), "momkernels: expected CUDA tensors; got input on ",
                    input.device());
#endif
  // one block per row (large C) / per row group (small C)
  TORCH_CHECK_VALUE(input.size(0) <= std::numeric_limits<int32_t>::max(),
                    "momkernels: at most 2^31 - 1 rows on CUDA; got ", input.size(0));
}

Rows make_rows(const at::Tensor& input, const at::Tensor& target, const at::Tensor& w,
               const OpOptions& o) {
  Rows r{};
  r.dtype = dtype_of(input.scalar_type());
  r.x = input.data_ptr();
  r.N = input.size(0);
  r.C = input.size(1);
  r.sN = input.stride(0);
  r.sC = input.stride(1);
  r.t = target.data_ptr();
  r.sT = target.stride(0);
  r.t_int32 = target.scalar_type() == at::kInt;
  r.w = w.defined() ? w.data_ptr() : nullptr;
  r.ignore_index = o.ignore_index;
  r.o_index = o.o_index;
  r.opt = o.loss;
  return r;
}

at::Tensor math_weight(const std::optional<at::Tensor>& weight, at::ScalarType acc) {
  return weight.has_value() ? weight->to(acc).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mom_loss_fwd_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double lam, std::optional<int64_t> o_index, int64_t ignore_index, c10::string_view loss,
    double gamma, double dice_alpha, double dice_smooth, double label_smoothing,
    c10::string_view reduction, c10::string_view mom_norm, const c10::Scalar& mom_denom) {
  check_op_inputs(input, target, weight);
  check_cuda_inputs(input);
  const OpOptions o =
      parse_forward_options(lam, o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth,
                            label_smoothing, reduction, mom_norm, mom_denom, input.size(0));
  const Reduction red = o.reduction;
  const MoMNorm norm = o.mom_norm;
  const double d_mom = o.d_mom;  // the MoM denominator of mom_norm 'rows' / 'fixed'
  MOMK_DEVICE_GUARD(input);
  auto [out, stats, coef] = make_forward_outputs(input, red);
  const at::ScalarType acc = math_dtype(input.scalar_type());
  const at::Tensor w = math_weight(weight, acc);
  const int64_t N = input.size(0);
  const cudaStream_t stream = MOMK_CURRENT_STREAM();

  FwdParams p{};
  p.r = make_rows(input, target, w, o);
  p.stats = stats.data_ptr();
  p.none_out = red == Reduction::NONE ? out.data_ptr() : nullptr;
  p.none_a = lam;
  p.none_b = 1.0 - lam;
  p.coef = coef.data_ptr();
  at::Tensor partials;
  if (red != Reduction::NONE) {
    const int64_t np = forward_num_partials(N, input.size(1));
    partials = at::empty({np > 0 ? 3 * np : 3}, input.options().dtype(at::kDouble));
    p.partials = partials.data_ptr<double>();
  } else {
    // (a, b) of 'none' do not depend on the data: the forward kernel writes them
    const Reduced<double> r0 = reduce_loss<double>(0, 0, 0, d_mom, lam, red, norm);
    p.coef_a = r0.a;
    p.coef_b = r0.b;
  }
  MOMK_CHECK_LAUNCH(launch_forward(p, stream));

  if (red != Reduction::NONE || N == 0) {  // N == 0: no forward kernel wrote coef
    FinishParams f{};
    f.partials = p.partials;
    f.num_partials = red != Reduction::NONE ? forward_num_partials(N, input.size(1)) : 0;
    f.rows = d_mom;
    f.lam = lam;
    f.red = red;
    f.norm = norm;
    f.dtype = p.r.dtype;
    f.loss_out = red != Reduction::NONE ? out.data_ptr() : nullptr;
    f.coef = coef.data_ptr();
    MOMK_CHECK_LAUNCH(launch_finish(f, stream));
  }
  return {out, stats, coef};
}

at::Tensor mom_loss_bwd_cuda(const at::Tensor& grad, const at::Tensor& input,
                             const at::Tensor& target, const std::optional<at::Tensor>& weight,
                             const at::Tensor& stats, const at::Tensor& coef,
                             std::optional<int64_t> o_index, int64_t ignore_index,
                             c10::string_view loss, double gamma, double dice_alpha,
                             double dice_smooth, double label_smoothing) {
  check_op_inputs(input, target, weight);
  check_cuda_inputs(input);
  const OpOptions o = parse_backward_options(o_index, ignore_index, loss, gamma, dice_alpha,
                                             dice_smooth, label_smoothing);
  const int64_t N = input.size(0);
  const at::ScalarType acc = math_dtype(input.scalar_type());
  check_backward_inputs(input, grad, stats, coef);
  MOMK_DEVICE_GUARD(input);
  // Conversions only when a caller passes other dtypes; autograd does not.
  const bool grad_is_input_dtype = grad.scalar_type() == input.scalar_type();
  const at::Tensor g = grad_is_input_dtype ? grad : grad.to(acc);
  const at::Tensor st = stats.to(acc);
  const at::Tensor cf = coef.to(acc);
  const at::Tensor w = math_weight(weight, acc);
  at::Tensor grad_in = at::empty({N, input.size(1)}, input.options());

  BwdParams p{};
  p.r = make_rows(input, target, w, o);
  p.grad = g.data_ptr();
  p.sG = g.dim() == 1 ? g.stride(0) : 0;  // (N,) or one value for every row
  p.grad_is_acc = !grad_is_input_dtype;
  p.stats = st.data_ptr();
  p.sS0 = st.stride(0);
  p.sS1 = st.stride(1);
  p.coef = cf.data_ptr();
  p.sCoef = cf.stride(0);
  p.grad_in = grad_in.data_ptr();
  MOMK_CHECK_LAUNCH(launch_backward(p, MOMK_CURRENT_STREAM()));
  return grad_in;
}

}  // namespace

#ifndef MOMK_CUDA_EMULATION
TORCH_LIBRARY_IMPL(momkernels, CUDA, m) {
  m.impl("mom_loss_fwd", &mom_loss_fwd_cuda);
  m.impl("mom_loss_bwd", &mom_loss_bwd_cuda);
}
#endif

}  // namespace momkernels::cuda
