// The CUDA operators of momkernels (ops_cuda.cu + forward.cu + backward.cu,
// unchanged) compiled for the CPU on top of cuda_shim.h, exposed as a Python
// module with `fwd` and `bwd` (the schemas' arguments).  Built and driven by
// check_kernels.py to test the kernels' logic on a machine without a GPU.
#include <torch/extension.h>

#include "cuda_shim.h"

#define MOMK_DEVICE_GUARD(t) (void)0
#define MOMK_CURRENT_STREAM() cudaStream_t(nullptr)
#define MOMK_CHECK_LAUNCH(e) TORCH_CHECK((e) == cudaSuccess, "emulated launch failed")

#include "../forward.cu"
#include "../backward.cu"
#include "../ops_cuda.cu"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", [](const at::Tensor& input, const at::Tensor& target,
                  const std::optional<at::Tensor>& weight, double lam, std::optional<int64_t> o_index,
                  int64_t ignore_index, const std::string& loss, double gamma, double dice_alpha,
                  double dice_smooth, double label_smoothing, const std::string& reduction,
                  const std::string& mom_norm, double mom_denom) {
    return momkernels::cuda::mom_loss_fwd_cuda(input, target, weight, lam, o_index, ignore_index,
                                               loss, gamma, dice_alpha, dice_smooth,
                                               label_smoothing, reduction, mom_norm, mom_denom);
  });
  m.def("bwd", [](const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
                  const std::optional<at::Tensor>& weight, const at::Tensor& stats,
                  const at::Tensor& coef, std::optional<int64_t> o_index, int64_t ignore_index,
                  const std::string& loss, double gamma, double dice_alpha, double dice_smooth,
                  double label_smoothing) {
    return momkernels::cuda::mom_loss_bwd_cuda(grad, input, target, weight, stats, coef, o_index,
                                               ignore_index, loss, gamma, dice_alpha, dice_smooth,
                                               label_smoothing);
  });
}
