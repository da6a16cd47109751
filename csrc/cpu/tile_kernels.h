// The tile path of the CPU kernels (C <= kTileMaxC, NER tag sets): a block is
// a tile of rows x all classes, copied to a stack buffer with rows in vector
// lanes, then ONE vectorised exp over the whole tile -- per-row vectors would
// be mostly empty lanes for C = 9.  The forward can also write the gradient
// (the fused gradient of grad_plan.h).  Part of kernel_impl.h.
#pragma once

#include "isa_prelude.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "targets.h"
#include "vec_math.h"

namespace momkernels::cpu {
namespace CPU_CAPABILITY {

// Tile path: rows in vector lanes.  A group of V = Vec::size() rows is
// transposed into cols[j * V + l] = x[row l][class j], so every pass over the C
// classes is one vector op for V rows: no horizontal reductions and no
// per-row transcendental calls for ce (log1p, exp and expm1 run on vectors).
template <typename scalar_t, typename acc_t>
inline void load_cols(const Common& c, int64_t i0, int64_t nr, acc_t* cols) {
  constexpr int64_t V = Vectorized<acc_t>::size();
  const int64_t C = c.C;
  const scalar_t* x = static_cast<const scalar_t*>(c.x);
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    // a full group of float rows with unit class stride: one vector gather
    // per class, rows sN apart (int32 offsets: checked to fit)
    if (nr == V && c.sC == 1 && c.sN * V < (int64_t(1) << 31)) {
      alignas(64) int32_t idx[V];
      for (int64_t l = 0; l < V; ++l) idx[l] = int32_t(l * c.sN);
      const Vectorized<int32_t> vidx = Vectorized<int32_t>::loadu(idx);
      const float* base = x + i0 * c.sN;
      for (int64_t j = 0; j < C; ++j)
        at::vec::gather<sizeof(float)>(base + j, vidx).store(cols + j * V);
      return;
    }
  }
  for (int64_t l = 0; l < nr; ++l) {
    const scalar_t* row = x + (i0 + l) * c.sN;
    if (c.sC == 1) {
      for (int64_t j = 0; j < C; ++j) cols[j * V + l] = static_cast<acc_t>(row[j]);
    } else {
      for (int64_t j = 0; j < C; ++j) cols[j * V + l] = static_cast<acc_t>(row[j * c.sC]);
    }
  }
  for (int64_t l = nr; l < V; ++l) {
    for (int64_t j = 0; j < C; ++j) cols[j * V + l] = acc_t(0);
  }
}

// The inverse of load_cols for a contiguous (rows, C) output: out[l * C + j] =
// cols[j * V + l] for the first nr rows.  AVX-512 scatters one class column
// per instruction; elsewhere a scalar transpose.
template <typename acc_t, int64_t V>
inline void store_rows(const acc_t* cols, int64_t C, int64_t nr, acc_t* out) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float> && V == 16) {
    if (nr == V) {
      const __m512i idx = _mm512_mullo_epi32(
          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
          _mm512_set1_epi32(int32_t(C)));
      for (int64_t j = 0; j < C; ++j)
        _mm512_i32scatter_ps(out + j, idx, _mm512_load_ps(cols + j * V), sizeof(float));
      return;
    }
  }
#endif
  for (int64_t l = 0; l < nr; ++l) {
    acc_t* row = out + l * C;
    for (int64_t j = 0; j < C; ++j) row[j] = cols[j * V + l];
  }
}

// store_rows for half-precision output: the float tile is rounded once, with
// at::vec's vectorised conversion, into tmp (C * V values, same layout), then
// transposed as 2-byte values.
template <typename scalar_t, typename acc_t, int64_t V>
inline void store_rows_reduced(const acc_t* cols, int64_t C, int64_t nr, scalar_t* tmp,
                               scalar_t* out) {
  static_assert(std::is_same_v<acc_t, float>);
  at::vec::convert(cols, tmp, C * V);
  for (int64_t l = 0; l < nr; ++l) {
    scalar_t* row = out + l * C;
    for (int64_t j = 0; j < C; ++j) row[j] = tmp[j * V + l];
  }
}

template <typename scalar_t>
void forward_tile(const FwdArgs& a, int64_t blk) {
  using acc_t = acc_t_of<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using L = LaneOps<acc_t>;
  using Mask = typename L::Mask;
  constexpr int64_t V = Vec::size();
  const Common& c = a.c;
  const int64_t C = c.C;
  acc_t* stats = static_cast<acc_t*>(a.stats_out);
  const acc_t* w = static_cast<const acc_t*>(c.w);
  const bool smooth = c.opt.label_smoothing > 0;
  const bool is_ce = c.opt.kind == LossKind::CE;
  const acc_t eps = acc_t(c.opt.label_smoothing);
  alignas(64) acc_t cols[kTileMaxC * V];
  alignas(64) acc_t m_l[V], logs_l[V], ell_l[V], isx_l[V];
  alignas(64) acc_t ycls[kTileRows + V];
  const Vec one(1), zero(0), minus_one(-1);
  // fused gradient, written in the logits dtype.  A half-precision one is
  // rounded once here; ops_cpu.cpp only fuses it when the global factor is
  // folded in, and autograd recomputes it with the backward operator for an
  // upstream gradient other than 1 (never a second rounding).
  constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;
  const bool fused = a.gfused != nullptr;
  alignas(64) acc_t ecols[kTileMaxC * V];
  alignas(64) scalar_t hcols[kReduced ? kTileMaxC * V : 1];
  const Vec rel_a(acc_t(a.rel_a)), rel_ab(acc_t(a.rel_a + a.rel_b));
  // o_index as acc_t: the lanes' classes are exact in acc_t; an o_index that
  // is no class (kNoClass: cross_entropy) becomes -2, which no lane holds
  // (valid lanes hold their class, the others -1)
  const Vec o_f(target_in_range(c.o_index, C) ? acc_t(c.o_index) : acc_t(-2));
  // block sums kept in vector lanes (each lane adds block_rows / V rows), then
  // added in double at the end: fixed order, so deterministic
  Vec acc_valid(0), acc_o(0), acc_den(0);
  const int64_t r0 = blk * c.block_rows, r1 = std::min(c.N, r0 + c.block_rows);
  const int64_t nrows = r1 - r0;
  const int64_t first_bad = classify_block<acc_t>(c, r0, nrows, (nrows + V - 1) / V * V, ycls);
  for (int64_t i0 = r0; i0 < r1; i0 += V) {
    const int64_t nr = std::min<int64_t>(V, r1 - i0);
    load_cols<scalar_t, acc_t>(c, i0, nr, cols);
    const Vec yv = Vec::loadu(ycls + (i0 - r0));
    const Mask valid = L::gt(yv, minus_one);  // a valid row
    const Mask is_o = L::both(valid, L::eq(yv, o_f));
    // max, and the target logit / weight picked by class (no per-lane code)
    Vec m = Vec::loadu(cols);
    Mask is_j = L::eq(yv, zero);
    Vec xy = L::sel(is_j, m, zero);
    Vec wy = w ? L::sel(is_j, Vec(w[0]), zero) : L::sel(valid, one, zero);
    Vec jv = zero;  // the class index j in every lane
    for (int64_t j = 1; j < C; ++j) {
      const Vec col = Vec::loadu(cols + j * V);
      jv = jv + one;
      is_j = L::eq(yv, jv);
      m = L::max(m, col);
      xy = L::sel(is_j, col, xy);
      if (w) wy = L::sel(is_j, Vec(w[j]), wy);
    }
    // dsum = sum of x - m: NaN exactly when a logit of the row is NaN or
    // +inf, or all are -inf (then x - m is NaN somewhere; -inf logits alone
    // only make it -inf).  Such rows get a NaN normaliser, so their loss and
    // gradient are NaN as in PyTorch, and the exps need no NaN handling
    // (exp_u20 turns a NaN input into a finite value or +inf).
    Vec ties(0), rest(0), wdev(0), ey(0), dsum(0);
    jv = zero;
    for (int64_t j = 0; j < C; ++j, jv = jv + one) {
      const Vec d = Vec::loadu(cols + j * V) - m;
      dsum += d;
      const Vec e = tile_exp(d);
      if (fused) {
        e.store(ecols + j * V);
        ey = L::sel(L::eq(yv, jv), e, ey);
      }
      const Mask tie = L::eq(e, one);
      rest = L::add_unless(rest, tie, e);
      ties = L::add_if(ties, tie, one);
    }
    rest = L::sel(L::isnan(dsum), dsum, rest);
    // log(ties + rest) = log1p((ties - 1) + rest): exact log1p(rest) for one max
    const Vec logs = tile_log1p<acc_t>((ties - one) + rest);
    if (smooth) {
      for (int64_t j = 0; j < C; ++j)
        wdev += (m - Vec::loadu(cols + j * V)) * Vec(w ? w[j] : acc_t(1));
    }
    Vec ell, h_fd = one;  // h_fd: focal / dice gradient factor (row_loss's h)
    if (is_ce) {
      ell = wy * (logs - (xy - m));  // w_y * -log p_y
      if (smooth) {
        ell = Vec(acc_t(1) - eps) * ell +
              Vec(eps / acc_t(C)) * (wdev + Vec(acc_t(c.W)) * logs);
      }
    } else {  // focal / dice
      const RowLoss<Vec> rl = row_loss_vec<acc_t>(L::sel(valid, (xy - m) - logs, zero), c.opt);
      h_fd = rl.h;
      ell = wy * rl.value;
    }
    ell = L::sel(valid, ell, zero);
    acc_valid += ell;
    acc_o = L::add_if(acc_o, is_o, ell);
    acc_den += wy;
    if (fused) {
      // the backward of this group, with the row's coefficient as its
      // scale (see backward_tile for the formulas); p_j = e_j / Z
      const Vec scale = L::sel(valid, L::sel(is_o, rel_ab, rel_a), zero);
      const Mask live = L::ne(scale, zero);
      const Vec A = scale * Vec(acc_t(1) - eps) * wy * h_fd;
      const Vec S = scale * Vec(eps / acc_t(C));
      const Vec Bs = S * Vec(acc_t(c.W));
      const Vec invZ = one / (ties + rest);
      // p_y - 1 = -(Z - e_y) / Z with Z - e_y = (ties - e_y) + rest: when y
      // is the (single) max, e_y = 1 = ties exactly and this is -rest / Z,
      // exact as p_y -> 1 (no expm1 needed); otherwise p_y <= 1/2 and the
      // subtraction loses nothing
      Vec gy = -(A * ((ties - ey) + rest)) * invZ;
      if (smooth) gy = gy + Bs * ey * invZ - S * wy;
      const Vec P = (A + Bs) * invZ;
      jv = zero;
      for (int64_t j = 0; j < C; ++j, jv = jv + one) {
        Vec g = P * Vec::loadu(ecols + j * V);
        if (smooth) g = g - S * Vec(w ? w[j] : acc_t(1));
        g = L::sel(L::eq(yv, jv), gy, g);
        g = L::sel(live, g, zero);  // rows without gradient: exact zeros
        g.store(ecols + j * V);
      }
      scalar_t* gout = static_cast<scalar_t*>(a.gfused) + i0 * C;
      if constexpr (kReduced) {
        store_rows_reduced<scalar_t, acc_t, V>(ecols, C, nr, hcols, gout);
      } else {
        store_rows<acc_t, V>(ecols, C, nr, gout);
      }
    }
    // stats (max, log normaliser) per row, 0 for rows without a valid target
    const Vec ms = L::sel(valid, m, zero), ls = L::sel(valid, logs, zero);
    if (nr == V) {
      const auto il = at::vec::interleave2<acc_t>(ms, ls);
      std::get<0>(il).store(stats + 2 * i0);
      std::get<1>(il).store(stats + 2 * i0 + V);
    } else {
      ms.store(m_l);
      ls.store(logs_l);
      for (int64_t l = 0; l < nr; ++l) {
        stats[2 * (i0 + l)] = m_l[l];
        stats[2 * (i0 + l) + 1] = logs_l[l];
      }
    }
    if (a.none_out) {
      scalar_t* out = static_cast<scalar_t*>(a.none_out);
      ell.store(ell_l);
      L::sel(is_o, one, zero).store(isx_l);
      for (int64_t l = 0; l < nr; ++l) {
        const double coef = isx_l[l] != acc_t(0) ? a.none_a + a.none_b : a.none_a;
        out[i0 + l] = static_cast<scalar_t>(acc_t(coef) * ell_l[l]);
      }
      if (first_bad >= 0) {  // rare: mark out-of-range rows NaN, as the GPU kernels do
        for (int64_t l = 0; l < nr; ++l) {
          const int64_t y = load_target(c, i0 + l);
          if (y != c.ignore_index && (y < 0 || y >= C))
            out[i0 + l] = std::numeric_limits<scalar_t>::quiet_NaN();
        }
      }
    }
  }
  alignas(64) acc_t sv[V], so[V], sd[V];
  acc_valid.store(sv);
  acc_o.store(so);
  acc_den.store(sd);
  double s_valid = 0, s_o = 0, denom = 0;
  for (int64_t l = 0; l < V; ++l) {
    s_valid += double(sv[l]);
    s_o += double(so[l]);
    denom += double(sd[l]);
  }
  a.partials[3 * blk] = s_valid;
  a.partials[3 * blk + 1] = s_o;
  a.partials[3 * blk + 2] = denom;
  a.bad_row[blk] = first_bad;
}

template <typename scalar_t>
void backward_tile(const BwdArgs& a, int64_t blk) {
  using acc_t = acc_t_of<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Common& c = a.c;
  const int64_t C = c.C;
  scalar_t* gout = static_cast<scalar_t*>(a.grad_in);
  const acc_t* stats = static_cast<const acc_t*>(c.stats);
  const acc_t* w = static_cast<const acc_t*>(c.w);
  const acc_t* up = static_cast<const acc_t*>(a.grad);
  const bool smooth = c.opt.label_smoothing > 0;
  const bool is_ce = c.opt.kind == LossKind::CE;
  const acc_t eps = acc_t(c.opt.label_smoothing);
  const acc_t coef_a = acc_t(a.a), coef_ab = acc_t(a.a) + acc_t(a.b);
  alignas(64) acc_t cols[kTileMaxC * V];
  alignas(64) acc_t m_l[V], logs_l[V], scale_l[V];
  alignas(64) scalar_t hcols[std::is_same_v<scalar_t, acc_t> ? 1 : kTileMaxC * V];
  Lanes<acc_t, V> L;
  const Vec zero(0), one(1);
  const int64_t r0 = blk * c.block_rows, r1 = std::min(c.N, r0 + c.block_rows);
  for (int64_t i0 = r0; i0 < r1; i0 += V) {
    const int64_t nr = std::min<int64_t>(V, r1 - i0);
    load_cols<scalar_t, acc_t>(c, i0, nr, cols);
    classify_lanes<acc_t, V>(c, i0, nr, cols, L);
    for (int64_t l = 0; l < V; ++l) {
      const bool v = L.valid[l] != acc_t(0);
      const int64_t i = v ? i0 + l : 0;
      m_l[l] = v ? stats[2 * i] : acc_t(0);
      logs_l[l] = v ? stats[2 * i + 1] : acc_t(0);
      const acc_t g = a.grad_per_row ? up[i] : up[0];
      // row coefficient a + b [y == o]: b is added, never multiplied by 0.
      // Rows without a valid target get exactly 0 (a may be inf: mean of an
      // all-ignored batch, where 0 * inf would be NaN).
      scale_l[l] = v ? g * (L.is_o[l] != acc_t(0) ? coef_ab : coef_a) : acc_t(0);
    }
    const Vec m = Vec::loadu(m_l), logs = Vec::loadu(logs_l), scale = Vec::loadu(scale_l);
    const Vec xy = Vec::loadu(L.xy), wy = Vec::loadu(L.wy);
    const Vec live = Vec::blendv(zero, one, scale != zero) == one;  // else exact zeros
    const Vec lp = (xy - m) - logs;  // log p_y
    Vec h = one;
    if (!is_ce) h = row_loss_vec<acc_t>(Vec::blendv(zero, lp, live), c.opt).h;
    const Vec A = scale * Vec(acc_t(1) - eps) * wy * h;
    const Vec S = scale * Vec(eps / acc_t(C));
    const Vec Bs = S * Vec(acc_t(c.W));
    const Vec P = A + Bs;
    // true class: A (p_y - 1) + Bs p_y - S w_y, with p_y - 1 = expm1(lp) (exact as p_y -> 1)
    Vec gy = A * lp.expm1();
    if (smooth) gy = gy + Bs * lp.exp() - S * wy;
    alignas(64) acc_t yf_l[V];
    for (int64_t l = 0; l < V; ++l) yf_l[l] = acc_t(L.y[l]);
    const Vec yv = Vec::loadu(yf_l);
    for (int64_t j = 0; j < C; ++j) {
      const Vec p = bulk_exp((Vec::loadu(cols + j * V) - m) - logs);
      Vec g = P * p;
      if (smooth) g = g - S * Vec(w ? w[j] : acc_t(1));
      g = Vec::blendv(g, gy, yv == Vec(acc_t(j)));
      g = Vec::blendv(zero, g, live);
      g.store(cols + j * V);
    }
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      store_rows<acc_t, V>(cols, C, nr, gout + i0 * C);
    } else {
      store_rows_reduced<scalar_t, acc_t, V>(cols, C, nr, hcols, gout + i0 * C);
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace momkernels::cpu
