// Target classification of the CPU kernels: mom_loss.h's rule (target_valid /
// target_bad / classify_target) applied to a group of lanes (classify_lanes)
// or to a block of rows (classify_block; contiguous int64 targets with
// AVX-512 compare masks).  Part of kernel_impl.h (compiled once per ISA).
#pragma once

#include "isa_prelude.h"

#include <cstdint>

namespace momkernels::cpu {
namespace CPU_CAPABILITY {

// Per-lane facts of a group of rows, gathered with integer logic and no
// data-dependent branches; padding lanes (beyond the block) are invalid.
template <typename acc_t, int64_t V>
struct Lanes {
  alignas(64) acc_t xy[V];     // logit of the target class (0 if invalid)
  alignas(64) acc_t wy[V];     // class weight of the target (0 if invalid)
  alignas(64) acc_t valid[V];  // 1 / 0
  alignas(64) acc_t is_o[V];   // 1 / 0: valid and target == o_index
  int64_t y[V];                // target, clamped to 0 when invalid
  bool any_bad;                // an out-of-range target that is not ignore_index
  int64_t first_bad;
};

template <typename acc_t, int64_t V>
inline void classify_lanes(const Common& c, int64_t i0, int64_t nr, const acc_t* cols,
                           Lanes<acc_t, V>& L) {
  const acc_t* w = static_cast<const acc_t*>(c.w);
  L.any_bad = false;
  L.first_bad = -1;
  for (int64_t l = 0; l < V; ++l) {
    const int64_t y = l < nr ? load_target(c, i0 + l) : c.ignore_index;
    const bool valid = target_valid(y, c.C, c.ignore_index);
    if (target_bad(y, c.C, c.ignore_index) && !L.any_bad) {
      L.any_bad = true;
      L.first_bad = i0 + l;
    }
    const int64_t yc = valid ? y : 0;
    L.y[l] = yc;
    L.xy[l] = valid ? cols[yc * V + l] : acc_t(0);
    L.wy[l] = valid ? (w ? w[yc] : acc_t(1)) : acc_t(0);
    L.valid[l] = valid ? acc_t(1) : acc_t(0);
    L.is_o[l] = valid && y == c.o_index ? acc_t(1) : acc_t(0);
  }
}

// Targets of a block as acc_t: the class for a valid row, -1 for an ignored
// or out-of-range one (and for the padding up to a multiple of V); returns the
// first out-of-range row (not ignore_index), or -1.  classify_span_scalar is
// the rule of mom_loss.h over a span of targets (stride sT); contiguous int64
// targets take classify_span, which with AVX-512 does 8 targets at a time
// (the same rule in compare masks).
template <typename acc_t, typename tgt_t>
inline bool classify_span_scalar(const tgt_t* t, int64_t n, int64_t sT, int64_t C, int64_t ignore,
                                 acc_t* ycls) {
  bool any_bad = false;
  for (int64_t l = 0; l < n; ++l) {
    const int64_t y = int64_t(t[l * sT]);
    ycls[l] = target_valid(y, C, ignore) ? acc_t(y) : acc_t(-1);
    any_bad |= target_bad(y, C, ignore);
  }
  return any_bad;
}

template <typename acc_t, typename tgt_t>
inline bool classify_span(const tgt_t* t, int64_t n, int64_t C, int64_t ignore, acc_t* ycls) {
  return classify_span_scalar(t, n, /*sT=*/1, C, ignore, ycls);
}

#if defined(CPU_CAPABILITY_AVX512)
// int64 targets -> float classes, 8 at a time with mask compares (the scalar
// loop compiles to branches, mispredicted on NER targets); the tail is scalar.
template <>
inline bool classify_span<float, int64_t>(const int64_t* t, int64_t n, int64_t C, int64_t ignore,
                                          float* ycls) {
  const __m512i vign = _mm512_set1_epi64(ignore), vC = _mm512_set1_epi64(C);
  const __m256 minus_one = _mm256_set1_ps(-1.0f);
  __mmask8 bad = 0;
  int64_t l = 0;
  for (; l + 8 <= n; l += 8) {
    const __m512i y = _mm512_loadu_si512(t + l);
    // target_valid = !ign & in_range, target_bad = !ign & !in_range
    const __mmask8 ign = _mm512_cmpeq_epi64_mask(y, vign);
    const __mmask8 in_range = _mm512_cmplt_epu64_mask(y, vC);  // negatives are huge unsigned
    const __mmask8 valid = _kandn_mask8(ign, in_range);
    bad = _kor_mask8(bad, _kandn_mask8(ign, _knot_mask8(in_range)));
    _mm256_storeu_ps(ycls + l, _mm256_mask_blend_ps(valid, minus_one, _mm512_cvtepi64_ps(y)));
  }
  const bool tail_bad = classify_span_scalar(t + l, n - l, /*sT=*/1, C, ignore, ycls + l);
  return bad != 0 || tail_bad;
}
#endif

template <typename acc_t>
inline int64_t classify_block(const Common& c, int64_t r0, int64_t n, int64_t n_pad,
                              acc_t* ycls) {
  bool any_bad;
  if (c.sT == 1) {
    any_bad = c.t_int32
                  ? classify_span(static_cast<const int32_t*>(c.t) + r0, n, c.C, c.ignore_index, ycls)
                  : classify_span(static_cast<const int64_t*>(c.t) + r0, n, c.C, c.ignore_index, ycls);
  } else {
    any_bad = c.t_int32 ? classify_span_scalar(static_cast<const int32_t*>(c.t) + r0 * c.sT, n,
                                               c.sT, c.C, c.ignore_index, ycls)
                        : classify_span_scalar(static_cast<const int64_t*>(c.t) + r0 * c.sT, n,
                                               c.sT, c.C, c.ignore_index, ycls);
  }
  for (int64_t l = n; l < n_pad; ++l) ycls[l] = acc_t(-1);
  if (!any_bad) return -1;
  for (int64_t l = 0; l < n; ++l) {  // rare: find the first bad row
    const int64_t y = load_target(c, r0 + l);
    if (target_bad(y, c.C, c.ignore_index)) return r0 + l;
  }
  return -1;
}

}  // namespace CPU_CAPABILITY
}  // namespace momkernels::cpu
