// The row path of the CPU kernels (C > kTileMaxC, LM vocabularies): each row
// streams through in chunks of kChunkElems; each chunk's max and exp-sum are
// computed from L1 and merged online (mom_loss.h's SoftmaxState), so the
// forward reads the logits from memory once.  The per-row math is
// mom_loss.h's row_value / row_grad.  Part of kernel_impl.h.
#pragma once

#include "isa_prelude.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "vec_math.h"

namespace momkernels::cpu {
namespace CPU_CAPABILITY {

// ---------------------------------------------------------------- loading

// n logits of one row starting at p, class stride sC, as acc_t.  Returns p
// itself when it already is contiguous acc_t (no copy), else fills buf.
template <typename scalar_t, typename acc_t>
inline const acc_t* load_span(const scalar_t* p, int64_t sC, int64_t n, acc_t* buf) {
  if (sC == 1) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      return p;
    } else {
      at::vec::convert(p, buf, n);
      return buf;
    }
  }
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(p[i * sC]);
  return buf;
}

template <typename acc_t>
inline void store_span(const acc_t* src, acc_t* dst, int64_t n) {
  if (src != dst) std::copy(src, src + n, dst);
}
template <typename acc_t, typename scalar_t>
inline void store_span(const acc_t* src, scalar_t* dst, int64_t n) {
  at::vec::convert(src, dst, n);
}

// Per-block sums of the row path.
struct BlockSums {
  double s_valid = 0, s_o = 0, denom = 0;
  int64_t bad = -1;  // first row with a BAD target, or -1
};

// A row's results once its kind (and, for a valid row, its loss ell and
// weight w_y) is known: the block sums, and the 'none' entry c_i l_i (0 for an
// ignored row, NaN for a BAD one, as the GPU kernels write).
template <typename acc_t, typename scalar_t>
inline void finish_row(const FwdArgs& a, int64_t i, int64_t y, RowKind kind, acc_t ell, acc_t w_y,
                       BlockSums& bs) {
  const Common& c = a.c;
  const bool valid = kind == RowKind::VALID;
  if (valid) {
    bs.s_valid += double(ell);
    bs.denom += double(w_y);
    if (y == c.o_index) bs.s_o += double(ell);
  } else if (kind == RowKind::BAD && bs.bad < 0) {
    bs.bad = i;
  }
  if (a.none_out) {
    const double coef = y == c.o_index ? a.none_a + a.none_b : a.none_a;
    static_cast<scalar_t*>(a.none_out)[i] =
        kind == RowKind::BAD ? std::numeric_limits<scalar_t>::quiet_NaN()
                             : static_cast<scalar_t>(valid ? acc_t(coef) * ell : acc_t(0));
  }
}

// ---------------------------------------------------------------- forward

template <typename scalar_t>
void forward_rows(const FwdArgs& a, int64_t blk) {
  using acc_t = acc_t_of<scalar_t>;
  const Common& c = a.c;
  const scalar_t* x = static_cast<const scalar_t*>(c.x);
  acc_t* stats = static_cast<acc_t*>(a.stats_out);
  const acc_t* w = static_cast<const acc_t*>(c.w);
  const bool smooth = c.opt.label_smoothing > 0;
  alignas(64) acc_t buf[kChunkElems];
  BlockSums bs;
  const int64_t r0 = blk * c.block_rows, r1 = std::min(c.N, r0 + c.block_rows);
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t y = load_target(c, i);
    const RowKind kind = classify(c, y);
    if (kind != RowKind::VALID) {
      stats[2 * i] = stats[2 * i + 1] = acc_t(0);
      finish_row<acc_t, scalar_t>(a, i, y, kind, acc_t(0), acc_t(0), bs);
      continue;
    }
    const scalar_t* row = x + i * c.sN;
    SoftmaxState<acc_t> st = SoftmaxState<acc_t>::empty();
    for (int64_t c0 = 0; c0 < c.C; c0 += kChunkElems) {
      const int64_t n = std::min(kChunkElems, c.C - c0);
      const acc_t* v = load_span(row + c0 * c.sC, c.sC, n, buf);
      const acc_t cm = span_max(v, n);
      acc_t cties = 0, crest = 0, cwdev = 0, cwsum = 0;
      // A chunk whose logits are all -inf adds exactly 0 to the normaliser
      // (exp(x - cm) would be exp(-inf + inf) = NaN); its smoothing term is
      // +inf (or NaN for a zero weight), as in PyTorch, whatever the reference.
      const bool all_neg_inf = cm == -std::numeric_limits<acc_t>::infinity();
      if (!all_neg_inf) span_expsum(v, n, cm, cties, crest);
      if (smooth)
        span_weighted_dev(v, w ? w + c0 : nullptr, n, all_neg_inf ? acc_t(0) : cm, cwdev, cwsum);
      st = merge(st, SoftmaxState<acc_t>{cm, cties, crest, cwdev, cwsum});
    }
    const acc_t logs = log_normaliser(st.ties, st.rest);
    stats[2 * i] = st.m;
    stats[2 * i + 1] = logs;
    const acc_t w_y = class_weight<acc_t>(c, y);
    const acc_t x_y = static_cast<acc_t>(row[y * c.sC]);
    const acc_t ell = row_value<acc_t>(c.opt, c.C, acc_t(c.W), x_y, st.m, logs, st.wdev, w_y);
    finish_row<acc_t, scalar_t>(a, i, y, RowKind::VALID, ell, w_y, bs);
  }
  a.partials[3 * blk] = bs.s_valid;
  a.partials[3 * blk + 1] = bs.s_o;
  a.partials[3 * blk + 2] = bs.denom;
  a.bad_row[blk] = bs.bad;
}

// ---------------------------------------------------------------- backward

template <typename acc_t>
inline acc_t upstream(const BwdArgs& a, int64_t i) {
  const acc_t* g = static_cast<const acc_t*>(a.grad);
  return a.grad_per_row ? g[i] : g[0];
}

// Row scale (upstream gradient x row coefficient), 0 for rows without gradient.
template <typename acc_t>
inline acc_t row_scale(const BwdArgs& a, int64_t i, int64_t& y) {
  const Common& c = a.c;
  y = load_target(c, i);
  if (!target_valid(y, c.C, c.ignore_index)) return acc_t(0);
  const acc_t coef = row_coefficient<acc_t>(acc_t(a.a), acc_t(a.b), y == c.o_index);
  return upstream<acc_t>(a, i) * coef;
}

// grad = P * p - S * w over a span, p = exp((v - m) - logs); written to out.
// (v - m) - logs, not v - (m + logs): the latter rounds m + logs to the
// magnitude of m and loses p's relative accuracy for huge logits.
template <typename acc_t>
inline void span_grad(const acc_t* v, const acc_t* w, int64_t n, acc_t m, acc_t logs, acc_t P,
                      acc_t S, acc_t* out) {
  using Vec = Vectorized<acc_t>;
  if (S == acc_t(0)) {
    at::vec::map([m, logs, P](Vec x) { return bulk_exp((x - Vec(m)) - Vec(logs)) * Vec(P); }, out, v,
                 n);
  } else if (w == nullptr) {
    at::vec::map(
        [m, logs, P, S](Vec x) { return bulk_exp((x - Vec(m)) - Vec(logs)) * Vec(P) - Vec(S); }, out,
        v, n);
  } else {
    at::vec::map2(
        [m, logs, P, S](Vec x, Vec ww) {
          return bulk_exp((x - Vec(m)) - Vec(logs)) * Vec(P) - Vec(S) * ww;
        },
        out, v, w, n);
  }
}

template <typename scalar_t>
void backward_rows(const BwdArgs& a, int64_t blk) {
  using acc_t = acc_t_of<scalar_t>;
  const Common& c = a.c;
  const int64_t C = c.C;
  const scalar_t* x = static_cast<const scalar_t*>(c.x);
  scalar_t* gout = static_cast<scalar_t*>(a.grad_in);
  const acc_t* stats = static_cast<const acc_t*>(c.stats);
  const acc_t* w = static_cast<const acc_t*>(c.w);
  alignas(64) acc_t buf[kChunkElems];
  alignas(64) acc_t obuf[kChunkElems];
  const int64_t r0 = blk * c.block_rows, r1 = std::min(c.N, r0 + c.block_rows);
  for (int64_t i = r0; i < r1; ++i) {
    int64_t y;
    const acc_t scale = row_scale<acc_t>(a, i, y);
    scalar_t* grow = gout + i * C;
    if (scale == acc_t(0)) {
      std::fill(grow, grow + C, scalar_t(0));
      continue;
    }
    const scalar_t* row = x + i * c.sN;
    const acc_t m = stats[2 * i], logs = stats[2 * i + 1];
    const acc_t lp = (static_cast<acc_t>(row[y * c.sC]) - m) - logs;
    const acc_t w_y = class_weight<acc_t>(c, y);
    const RowGrad<acc_t> g = row_grad<acc_t>(c.opt, c.C, acc_t(c.W), scale, lp, w_y);
    for (int64_t c0 = 0; c0 < C; c0 += kChunkElems) {
      const int64_t n = std::min(kChunkElems, C - c0);
      const acc_t* v = load_span(row + c0 * c.sC, c.sC, n, buf);
      acc_t* o = obuf;
      if constexpr (std::is_same_v<scalar_t, acc_t>) o = grow + c0;
      span_grad(v, w ? w + c0 : nullptr, n, m, logs, g.P, g.S, o);
      store_span(o, grow + c0, n);
    }
    grow[y] = static_cast<scalar_t>(g.true_class(lp, w_y));
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace momkernels::cpu
