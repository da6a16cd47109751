"""Triton kernels of the MoM loss family (docs/spec.md): forward, backward, reduction.

The per-row math is a port of ``csrc/mom_loss.h`` (``row_loss``,
``log_normaliser``, ``reduce_loss``); read that header for the derivations.
Notation for one valid row with logits x, target y, class weights w (1 without):

    m     = max_c x_c
    logs  = log(sum_c exp(x_c - m))         kept as (ties, rest): see _log_normaliser
    lp    = log p_y = (x_y - m) - logs      (accurate even when p_y -> 1)
    value, h = _row_loss(lp)                 l = w_y * value,  dl/dx_j = w_y * h * (p_j - [j == y])

Kernels (all math in float32, whatever the logits' dtype; partial sums in float64):

* ``mom_fwd_kernel``  -- one program = a tile of BLOCK_N rows; the classes are
  read in chunks of BLOCK_C with an online softmax.  Writes per-row stats
  (m, logs), the per-row loss for ``reduction="none"``, and one partial-sum
  record per program: (sum_valid l, sum_O l, sum_valid w_y) in float64.
* ``mom_reduce_kernel`` -- ONE program: adds the partial records in program
  order (deterministic) and applies ``reduce_loss``: the reduced loss and the
  backward's row coefficients coef = (a, b), shape (2,) as the C++
  operators' coef.  Everything stays on the device: no ``.item()``, no host
  synchronisation.
* ``mom_bwd_kernel`` -- same tiling; recomputes p from (m, logs) and writes
  the gradient (to a new buffer, or in place over the logits).  Label
  smoothing with class weights needs W = sum_c w_c before its class loop:
  each program adds the weights itself, chunk by chunk in the forward's
  order (as the CUDA ``bwd_*`` kernels of csrc/cuda/backward.cu do).

Two regimes, picked by C (``launch_config``), one code path:

======  ========  ========================  ==========================  ==================
regime  C         BLOCK_C (one chunk)       BLOCK_N (rows per program)  num_warps
======  ========  ========================  ==========================  ==================
tile    <= 128    next_pow2(C)              min(1024, 4096 // BLOCK_C)  4
row     > 128     min(next_pow2(C), 8192)   1                           8 if BLOCK_C >= 4096
                                                                        else 4
======  ========  ========================  ==========================  ==================

So an (8192, 9) NER batch is 32 programs of 256 rows x 16 lanes, and a
(16384, 128256) LM batch is 16384 programs streaming 16 chunks of 8192 each.
The numbers follow Liger-Kernel's cross-entropy (one row per program, large
chunks, many warps for vocabularies) and the C++ tile path (many rows per
block for NER); they have NOT been tuned on a GPU yet (no GPU was available
when they were written) -- bench/ is where measured values should replace them.
Without a GPU, python_tests/test_triton.py still builds the kernels for sm_90
(TTIR -> PTX -> cubin) to type-check what the interpreter runs loosely.

Out-of-range targets (not ignore_index): the target is never used as an
address (every gather is masked); the row's loss is NaN (and so is any
reduced loss containing it), and so is its gradient row.

Under ``TRITON_INTERPRET=1`` (CPU tensors) libdevice is unavailable, so
expm1 / log1p / pow use exact-enough formulations on top of tl.exp / tl.log
(Kahan's and Goldberg's tricks); on the GPU they are libdevice's.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

try:  # what @triton.jit itself consults (decided when the kernels below are defined)
    INTERPRET = bool(triton.knobs.runtime.interpret)
except AttributeError:  # older triton
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# loss kinds, as in mom_loss.h's LossKind
CE, FOCAL, DICE = 0, 1, 2
LOSS_KINDS = {"ce": CE, "focal": FOCAL, "dice": DICE}
# reductions, as in mom_loss.h's Reduction
NONE, SUM, MEAN = 0, 1, 2
REDUCTIONS = {"none": NONE, "sum": SUM, "mean": MEAN}

TILE_MAX_C = 128  # C at or below: many rows per program
TILE_ELEMS = 4096  # elements of one tile (BLOCK_N * BLOCK_C)
TILE_MAX_ROWS = 1024
ROW_CHUNK = 8192  # classes per chunk on the row path
REDUCE_BLOCK = 1024  # partial records added per step by mom_reduce_kernel


def launch_config(C: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, num_warps) for C classes; see the table above."""
    if C <= TILE_MAX_C:
        block_c = triton.next_power_of_2(max(C, 1))
        return min(TILE_MAX_ROWS, TILE_ELEMS // block_c), block_c, 4
    block_c = min(triton.next_power_of_2(C), ROW_CHUNK)
    return 1, block_c, 8 if block_c >= 4096 else 4


# ------------------------------------------------------------------ math helpers

if INTERPRET:

    @triton.jit
    def _expm1(x):
        # Kahan: (u - 1) * x / log(u) with u = exp(x) is accurate to a few ulp
        # because the rounding error of u cancels between numerator and log(u).
        u = tl.exp(x)
        um1 = u - 1.0
        lu = tl.log(tl.where(u > 0.0, u, 1.0))  # u == 0 (x << 0): um1 == -1 below
        safe = (um1 != 0.0) & (um1 != -1.0) & (lu != 0.0)
        r = um1 * (x / tl.where(safe, lu, 1.0))
        return tl.where(um1 == 0.0, x, tl.where(um1 == -1.0, -1.0, r))

    @triton.jit
    def _log1p(x):
        # Goldberg: log(u) * x / (u - 1) with u = 1 + x, exact to a few ulp.
        u = 1.0 + x
        d = u - 1.0
        return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))

    @triton.jit
    def _pow(b, e):
        # b >= 0 here; pow(0, 0) = 1 and pow(0, e > 0) = 0, as C's powf
        pos = b > 0.0
        r = tl.exp2(e * tl.log2(tl.where(pos, b, 1.0)))
        return tl.where(pos, r, tl.where(e == 0.0, 1.0, 0.0))

    @triton.jit
    def _loop_end(n):
        # The interpreter holds a scalar argument as a 1-element array, and
        # range() takes it through int(array), which numpy >= 2.4 refuses for
        # arrays that are not 0-d (triton 3.6): hand range() a Python int.
        return int(n.handle.data.item())

else:
    from triton.language.extra import libdevice

    @triton.jit
    def _expm1(x):
        return libdevice.expm1(x)

    @triton.jit
    def _log1p(x):
        return libdevice.log1p(x)

    @triton.jit
    def _pow(b, e):
        return libdevice.pow(b, e)

    @triton.jit
    def _loop_end(n):
        return n


@triton.jit
def _log_normaliser(ties, rest):
    # log(ties + rest), where `ties` elements equal the row max (each adding
    # exactly 1) and `rest` sums the others: log1p(rest) when ties == 1 keeps
    # full accuracy even when rest is far below float32's epsilon.
    return tl.where(ties == 1.0, _log1p(rest), tl.log(tl.where(ties == 1.0, 1.0, ties + rest)))


@triton.jit
def _row_loss(lp, gamma, dice_alpha, dice_smooth, LOSS: tl.constexpr):
    """(value, h) of the per-token loss at log p_y = lp, as mom_loss.h's row_loss.

    value = f(p_y) before the class weight; h = -p f'(p), the factor of
    (p_j - [j == y]) in the gradient.  q = 1 - p is -expm1(lp), never 1 - p.
    """
    if LOSS == 0:  # ce
        value = -lp
        h = tl.full(lp.shape, 1.0, tl.float32)
    else:
        p = tl.exp(lp)
        q = -_expm1(lp)
        qpos = q > 0.0
        if LOSS == 1:  # focal: -(q^g) lp ; h = q^g (1 - g p lp / q), lp / q -> -1 as q -> 0
            qg = _pow(q, gamma)
            lp_over_q = tl.where(qpos, lp / tl.where(qpos, q, 1.0), -1.0)
            value = -qg * lp
            h = qg * (1.0 - gamma * p * lp_over_q)
        else:  # dice: 1 - (2a + d)/(a + 1 + d), a = q^al p  (Li et al., ACL 2020)
            qa = _pow(q, dice_alpha)
            a = qa * p
            den = a + 1.0 + dice_smooth
            value = 1.0 - (2.0 * a + dice_smooth) / den
            # q^(al-1) multiplies only terms that vanish with q: 0 at q == 0 (1 if al == 1)
            # (base clamped to the smallest normal float: a subnormal q would
            # overflow q^(al-1) for al < 1; docs/SEMANTICS.md S9)
            qa1 = tl.where(qpos, _pow(tl.where(qpos, tl.maximum(q, 1.1754944e-38), 1.0),
                                      dice_alpha - 1.0),
                           tl.where(dice_alpha == 1.0, 1.0, 0.0))
            da_dp = qa - dice_alpha * p * qa1
            h = p * (2.0 + dice_smooth) / (den * den) * da_dp
    return value, h


@triton.jit
def _chunk_stats(x, w, cmask, row_ok, SMOOTH: tl.constexpr):
    """Softmax-normaliser parts of one [BLOCK_N, BLOCK_C] chunk relative to its
    own row max cm: (cm, ties, rest) and, for label smoothing, sum_c w_c (cm - x_c)
    (all terms >= 0: no cancellation).  Rows that are not `row_ok` get cm = 0 so
    that no inf - inf is formed for them.  A chunk of only -inf logits (a
    vocabulary padded with -inf) keeps cm = -inf for the merge but takes its
    exponentials relative to 0 (exp(-inf - (-inf)) would be NaN): ties = rest =
    wdev = 0."""
    cm = tl.max(x, 1)
    cm = tl.where(row_ok, cm, 0.0)
    cm_safe = tl.where(cm == float("-inf"), 0.0, cm)
    e = tl.exp(x - cm_safe[:, None])  # masked lanes hold -inf: e = 0
    tie = e == 1.0
    ties = tl.sum(tl.where(tie, 1.0, 0.0), 1)
    rest = tl.sum(tl.where(tie, 0.0, e), 1)
    if SMOOTH:
        x_in = tl.where(cmask, x, cm[:, None])  # masked lanes add (cm - cm) * w = 0
        dev = tl.where(x_in == cm[:, None], 0.0, cm[:, None] - x_in)  # 0, not -inf - (-inf)
        wdev = tl.sum(dev * w[None, :], 1)
    else:
        wdev = tl.zeros_like(cm)
    return cm, ties, rest, wdev


# ------------------------------------------------------------------ forward


@triton.jit
def mom_fwd_kernel(
    x_ptr, t_ptr, w_ptr,  # logits (N, C); targets (N,); class weights (C,) float32
    none_ptr, stats_ptr, partial_ptr,  # out: (N,) loss for "none"; (N, 2) f32; (programs, 3) f64
    N, C, stride_xn, stride_xc, stride_t,
    o_index, ignore_index,
    coef_rest, coef_o,  # "none": row coefficient lam (other rows) / lam + (1 - lam) (O rows)
    gamma, dice_alpha, dice_smooth, eps,
    LOSS: tl.constexpr,  # 0 ce, 1 focal, 2 dice
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,  # label_smoothing > 0 (ce only)
    WRITE_NONE: tl.constexpr,  # reduction == "none": write the per-row loss
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Forward of BLOCK_N rows.

    Steps: 1. targets -> valid (not ignore_index) / ok (valid and in [0, C)) /
    bad (valid, out of range); 2. online softmax over class chunks: running
    (m, ties, rest) and, with smoothing, (wdev, wsum); a chunk whose max cm
    exceeds m rescales the old sum by exp(m - cm) and the old wdev by
    + (cm - m) * wsum; 3. lp = (x_y - m) - logs and the row loss; 4. stats,
    the "none" output and the program's partial sums.
    """
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    # 1. targets
    y = tl.load(t_ptr + rows * stride_t, mask=rmask, other=0).to(tl.int64)
    valid = rmask & (y != ignore_index)
    in_range = (y >= 0) & (y < C)
    ok = valid & in_range
    bad = valid & (~in_range)
    y_safe = tl.where(ok, y, 0)
    row_base = x_ptr + rows * stride_xn

    # 2. online softmax; the first chunk initialises the state (no -inf start)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    m2 = ok[:, None] & cmask[None, :]
    x = tl.load(row_base[:, None] + cols[None, :].to(tl.int64) * stride_xc, mask=m2,
                other=float("-inf")).to(tl.float32)
    if SMOOTH:
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
        else:
            w = tl.where(cmask, 1.0, 0.0)
        wsum = tl.sum(w, 0)
    else:
        w = tl.zeros([BLOCK_C], tl.float32)
        wsum = 0.0
    m, ties, rest, wdev = _chunk_stats(x, w, m2, ok, SMOOTH)
    for c0 in range(BLOCK_C, _loop_end(C), BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        m2 = ok[:, None] & cmask[None, :]
        x = tl.load(row_base[:, None] + cols[None, :].to(tl.int64) * stride_xc, mask=m2,
                    other=float("-inf")).to(tl.float32)
        if SMOOTH:
            if HAS_WEIGHT:
                w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
            else:
                w = tl.where(cmask, 1.0, 0.0)
            cwsum = tl.sum(w, 0)
        cm, cties, crest, cwdev = _chunk_stats(x, w, m2, ok, SMOOTH)
        gt = cm > m
        eq = cm == m
        # exp(-|m - cm|) <= 1: never overflows; NaN (a NaN logit) propagates
        scale = tl.exp(tl.where(gt, m - cm, cm - m))
        rest = tl.where(gt, (ties + rest) * scale + crest,
                        tl.where(eq, rest + crest, rest + (cties + crest) * scale))
        ties = tl.where(gt, cties, tl.where(eq, ties + cties, ties))
        if SMOOTH:
            wdev = tl.where(gt, wdev + (cm - m) * wsum + cwdev,
                            tl.where(eq, wdev + cwdev, wdev + cwdev + (m - cm) * cwsum))
            wsum = wsum + cwsum
        m = tl.where(gt, cm, m)
    # rows without a valid target: a harmless normaliser of 1 (log 1 = 0)
    logs = _log_normaliser(tl.where(ok, ties, 1.0), tl.where(ok, rest, 0.0))

    # 3. the row loss (x_y is a masked gather: out-of-range targets read nothing)
    x_y = tl.load(row_base + y_safe * stride_xc, mask=ok, other=0.0).to(tl.float32)
    lp = (x_y - m) - logs
    value, h = _row_loss(lp, gamma, dice_alpha, dice_smooth, LOSS)
    if HAS_WEIGHT:
        w_y = tl.load(w_ptr + y_safe, mask=ok, other=0.0)
    else:
        w_y = tl.where(ok, 1.0, 0.0)
    ell = w_y * value
    if SMOOTH:
        # after the last chunk wsum is W = sum_c w_c (C without weights);
        # (eps/C) sum_c w_c (-log p_c) = (eps/C) (sum_c w_c (m - x_c) + W logs)
        ell = (1.0 - eps) * ell + eps / C * (wdev + wsum * logs)
    ell = tl.where(ok, ell, tl.where(bad, float("nan"), 0.0))

    # 4. outputs
    tl.store(stats_ptr + rows * 2, tl.where(ok, m, 0.0), mask=rmask)
    tl.store(stats_ptr + rows * 2 + 1, tl.where(ok, logs, 0.0), mask=rmask)
    is_o = ok & (y == o_index)
    if WRITE_NONE:
        coef = tl.where(is_o, coef_o, coef_rest)
        tl.store(none_ptr + rows, (coef * ell).to(none_ptr.dtype.element_ty), mask=rmask)
    # a bad row's NaN goes into both sums, so every reduced loss that could
    # contain it (lam > 0 or lam < 1) is NaN
    ell64 = ell.to(tl.float64)
    tl.store(partial_ptr + pid * 3, tl.sum(ell64, 0))
    tl.store(partial_ptr + pid * 3 + 1, tl.sum(tl.where(is_o | bad, ell64, 0.0), 0))
    tl.store(partial_ptr + pid * 3 + 2, tl.sum(w_y.to(tl.float64), 0))


# ------------------------------------------------------------------ reduction


@triton.jit
def mom_reduce_kernel(
    partial_ptr, loss_ptr, coef_ptr,  # (P, 3) f64 in; 0-dim loss (logits dtype), coef[0:2] f32 out
    num_partials, rows, lam, one_minus_lam,
    REDUCTION: tl.constexpr,  # 0 none, 1 sum, 2 mean
    ROWS_NORM: tl.constexpr,  # mom_norm "rows" / "fixed": D_MoM = rows (N or the caller's number)
    HAS_A: tl.constexpr,  # lam != 0
    HAS_B: tl.constexpr,  # lam != 1
    BLOCK: tl.constexpr,
):
    """mom_loss.h's reduce_loss on the device, in float64.

    none/sum: a = lam, b = 1 - lam; mean: a = lam / D, b = (1 - lam) / D_MoM.
    A term whose coefficient is exactly 0 is left out, not multiplied by 0
    (0 * inf, or 0 * NaN from an empty 0 / 0, would poison lam = 1 and lam = 0).
    """
    acc_v = tl.zeros([BLOCK], tl.float64)
    acc_o = tl.zeros([BLOCK], tl.float64)
    acc_d = tl.zeros([BLOCK], tl.float64)
    for p0 in range(0, _loop_end(num_partials), BLOCK):
        offs = p0 + tl.arange(0, BLOCK)
        pm = offs < num_partials
        acc_v += tl.load(partial_ptr + offs * 3, mask=pm, other=0.0)
        acc_o += tl.load(partial_ptr + offs * 3 + 1, mask=pm, other=0.0)
        acc_d += tl.load(partial_ptr + offs * 3 + 2, mask=pm, other=0.0)
    s_valid = tl.sum(acc_v, 0)
    s_o = tl.sum(acc_o, 0)
    denom = tl.sum(acc_d, 0)
    lam64 = tl.zeros([], tl.float64) + lam
    ml64 = tl.zeros([], tl.float64) + one_minus_lam
    a = tl.zeros([], tl.float64)
    b = tl.zeros([], tl.float64)
    v = tl.zeros([], tl.float64)
    if REDUCTION == 2:
        if ROWS_NORM:
            d_mom = tl.zeros([], tl.float64) + rows
        else:
            d_mom = denom
        if HAS_A:
            a = lam64 / denom
            v = lam64 * s_valid / denom
        if HAS_B:
            b = ml64 / d_mom
            v = v + ml64 * s_o / d_mom
    else:
        if HAS_A:
            a = lam64
            v = lam64 * s_valid
        if HAS_B:
            b = ml64
            v = v + ml64 * s_o
    tl.store(coef_ptr, a.to(tl.float32))
    tl.store(coef_ptr + 1, b.to(tl.float32))
    if REDUCTION != 0:
        # via float32: the interpreter's float64 -> bfloat16 cast is wrong
        tl.store(loss_ptr, v.to(tl.float32).to(loss_ptr.dtype.element_ty))


# ------------------------------------------------------------------ backward


@triton.jit
def mom_bwd_kernel(
    g_ptr, x_ptr, t_ptr, w_ptr, stats_ptr, coef_ptr,  # inputs (see mom_fwd_kernel); coef (a, b)
    dx_ptr,  # out: gradient, logits dtype; may be x_ptr itself (in-place backward)
    N, C, stride_xn, stride_xc, stride_t, stride_g, stride_dn, stride_dc,
    o_index, ignore_index,
    gamma, dice_alpha, dice_smooth, eps,
    LOSS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    GRAD_PER_ROW: tl.constexpr,  # upstream gradient is (N,) (reduction "none"), else 0-dim
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Gradient of BLOCK_N rows.

    1. row scale = upstream * (a + b [y == o_index]); rows that are ignored
       or have scale 0 get an all-zero gradient, rows with an out-of-range
       target an all-NaN one (like the CUDA extension).
    2. With A = scale (1 - eps) w_y h, S = scale eps / C, P = A + S W:
         grad_j = P p_j - S w_j            (j != y)
         grad_y = A expm1(lp) + S W p_y - S w_y
       p_j = exp((x_j - m) - logs) -- not x_j - (m + logs), which would round
       m + logs to m's magnitude; p_y - 1 = expm1(lp) keeps the confident
       majority-class rows accurate (p_y - 1 cancels to 0 in float32).
    3. x_y is read before any chunk is written, so dx may alias x.
    """
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    y = tl.load(t_ptr + rows * stride_t, mask=rmask, other=0).to(tl.int64)
    valid = rmask & (y != ignore_index)
    in_range = (y >= 0) & (y < C)
    ok = valid & in_range
    bad = valid & (~in_range)  # out-of-range target: NaN gradient row (as its NaN loss)
    y_safe = tl.where(ok, y, 0)
    a = tl.load(coef_ptr)
    b = tl.load(coef_ptr + 1)
    coef = tl.where(y == o_index, a + b, a)
    if GRAD_PER_ROW:
        g = tl.load(g_ptr + rows * stride_g, mask=ok, other=0.0).to(tl.float32)
    else:
        g = tl.load(g_ptr).to(tl.float32)
    scale = tl.where(ok, g * coef, 0.0)
    live = ok & (scale != 0.0)

    m = tl.load(stats_ptr + rows * 2, mask=live, other=0.0)
    logs = tl.load(stats_ptr + rows * 2 + 1, mask=live, other=0.0)
    row_base = x_ptr + rows * stride_xn
    x_y = tl.load(row_base + y_safe * stride_xc, mask=live, other=0.0).to(tl.float32)
    lp = (x_y - m) - logs
    value, h = _row_loss(lp, gamma, dice_alpha, dice_smooth, LOSS)
    if HAS_WEIGHT:
        w_y = tl.load(w_ptr + y_safe, mask=live, other=0.0)
    else:
        w_y = tl.full([BLOCK_N], 1.0, tl.float32)
    if SMOOTH:
        # W = sum_c w_c, added chunk by chunk as the forward's wsum (C without weights)
        if HAS_WEIGHT:
            W = tl.sum(tl.load(w_ptr + tl.arange(0, BLOCK_C), mask=tl.arange(0, BLOCK_C) < C,
                               other=0.0), 0)
            for c0 in range(BLOCK_C, _loop_end(C), BLOCK_C):
                wcols = c0 + tl.arange(0, BLOCK_C)
                W = W + tl.sum(tl.load(w_ptr + wcols, mask=wcols < C, other=0.0), 0)
        else:
            W = C * 1.0
        A = scale * (1.0 - eps) * w_y * h
        S = scale * (eps / C)
        Bs = S * W
    else:
        A = scale * w_y * h
        S = tl.zeros_like(A)
        Bs = tl.zeros_like(A)
    P = A + Bs
    g_y = A * _expm1(lp) + Bs * tl.exp(lp) - S * w_y
    P = tl.where(live, P, 0.0)
    g_y = tl.where(live, g_y, 0.0)

    dx_base = dx_ptr + rows * stride_dn
    for c0 in range(0, _loop_end(C), BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        cols64 = cols.to(tl.int64)
        x = tl.load(row_base[:, None] + cols64[None, :] * stride_xc,
                    mask=live[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        p = tl.exp((x - m[:, None]) - logs[:, None])
        grad = P[:, None] * p
        if SMOOTH:
            if HAS_WEIGHT:
                w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
            else:
                w = tl.full([BLOCK_C], 1.0, tl.float32)
            grad = grad - S[:, None] * w[None, :]
        grad = tl.where(cols64[None, :] == y[:, None], g_y[:, None], grad)
        grad = tl.where(live[:, None], grad, tl.where(bad[:, None], float("nan"), 0.0))
        tl.store(dx_base[:, None] + cols64[None, :] * stride_dc,
                 grad.to(dx_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])
