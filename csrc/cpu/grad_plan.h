// The fused CPU gradient as one plan: whether the forward also writes the
// gradient of the loss, how, and what the backward then does.  autograd.cpp
// asks plan_gradient whether to call mom_loss_fwd_fused; ops_cpu.cpp executes
// the plan that the same function returns for the operator's arguments.
//
// Why: for small C the second pass over the logits (re-read, re-transpose,
// recompute every exp) costs as much as the first, so the tile forward can
// write d loss / d x for a unit upstream gradient while it has the
// probabilities in registers (docs/architecture.md, "The fused small-C path").
#pragma once

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "../mom_loss.h"
#include "../op_common.h"
#include "kernel.h"

namespace momkernels::cpu {

enum class GradMode : int32_t {
  // No gradient in the forward: mom_loss_bwd recomputes it from the logits.
  SEPARATE = 0,
  // The tile forward writes it with the row coefficients and the global
  // factor folded in (known before the kernel: factor_coefficients and
  // constant_global_factor, or an unweighted mean, whose D is the number of
  // valid rows, counted first).  For loss.backward() it is the gradient.
  INLINE = 1,
  // The tile forward writes it with the relative coefficients rel_a, rel_b;
  // the global factor 1 / D (a weighted mean: D = sum of w_y is a result of
  // the kernel) is applied by the backward's scale.  float / double only: a
  // half-precision buffer would be rounded twice.
  INLINE_RELATIVE = 2,
  // The reduction does not factor, or the logits are half precision and the
  // factor is not known before the kernel: the backward kernel runs right
  // after the forward with a unit upstream gradient and the final (a, b).
  AFTER_FORWARD = 3,
};

struct GradPlan {
  GradMode mode = GradMode::SEPARATE;
  double rel_a = 0, rel_b = 0;  // factor_coefficients (INLINE, INLINE_RELATIVE)
  bool count_valid = false;     // INLINE needs the number of valid rows (unweighted mean)
};

// What the plan needs to know of the logits: metadata only (under
// torch.compile the row count stays symbolic, so it is not asked for).
struct GradInputs {
  bool cpu = false;
  int64_t dim = 0;
  bool floating = false;
  bool half = false;           // float16 / bfloat16
  std::optional<int64_t> C;    // the class count, if static
  bool weighted = false;
  bool fusion_enabled = true;  // autograd: MOMKERNELS_FUSED != 0
};

// MOMKERNELS_FUSED=0 turns the fused path off (autograd then always takes
// mom_loss_fwd + mom_loss_bwd).
inline bool fusion_enabled_by_env() {
  static const bool enabled = [] {
    const char* env = std::getenv("MOMKERNELS_FUSED");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

// The one decision.  The tile path (C <= kTileMaxC) is the only kernel that
// can write the gradient inline; larger C, other devices, or fusion turned
// off: SEPARATE.
inline GradPlan plan_gradient(const GradInputs& in, const OpOptions& o) {
  GradPlan p;
  if (!(in.fusion_enabled && in.cpu && in.dim == 2 && in.floating && in.C.has_value() &&
        *in.C <= kTileMaxC)) {
    return p;
  }
  const bool factors = factor_coefficients(o.lam, o.reduction, o.mom_norm, p.rel_a, p.rel_b);
  const bool constant = constant_global_factor(o.lam, o.reduction, o.mom_norm);
  const bool factor_known = constant || !in.weighted;
  if (factors && factor_known) {
    p.mode = GradMode::INLINE;
    p.count_valid = !constant;
  } else if (factors && !in.half) {
    p.mode = GradMode::INLINE_RELATIVE;
  } else {
    p.mode = GradMode::AFTER_FORWARD;
  }
  return p;
}

// What MoMLoss::backward does with the buffer of a fused forward.
enum class FusedSource : int32_t {
  BUFFER = 0,     // the forward's buffer (first backward)
  RECOMPUTE = 1,  // mom_loss_fwd_fused again: the buffer was consumed (retain_graph)
  BWD_OP = 2,     // mom_loss_bwd from the logits (the buffer is dropped)
};

struct FusedBackward {
  FusedSource source;
  bool scale;  // then mom_loss_bwd_fused_: *= upstream * global factor
};

// `unit`: upstream gradient 1 and global factor 1 (INLINE / AFTER_FORWARD),
// so the buffer is the gradient as it is.  Otherwise the buffer is scaled in
// place -- except a half-precision one, already rounded once: mom_loss_bwd
// recomputes it from the logits, rounded once.
inline FusedBackward fused_backward(bool unit, bool half, bool have_buffer) {
  if (half && !unit) return {FusedSource::BWD_OP, false};
  return {have_buffer ? FusedSource::BUFFER : FusedSource::RECOMPUTE, !unit};
}

}  // namespace momkernels::cpu
