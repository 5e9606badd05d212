"""Small compile-time helpers shared by the generated Numba drivers.

``load``/``store`` make an absent (``None``) state array cost nothing: Numba
types ``None`` as NoneType, so the overloads below resolve to "return 0" /
"do nothing" at compile time and the loop carries no extra memory traffic.
``pick`` selects the k-th array of a tuple, or ``None`` for an absent state.

``normal`` is the counter-based Gaussian used for perturbed SGD and SGLD:
the draw for element ``i`` at a step is a pure function of (key, i), so every
backend (serial, parallel in any order, CUDA, Cython, NumPy) draws the same
numbers and a seed makes a run reproducible.  ``kernels/reference.py`` has the
vectorised NumPy twin and ``kernels/cython/generate.py`` the C twin.
"""

import math

import numpy as np
from numba import types
from numba.extending import intrinsic, overload, register_jitable

# splitmix64 finaliser constants and the golden-ratio increment
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_ONE = np.uint64(1)
_TWO = np.uint64(2)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53
_TWO_PI = 2.0 * math.pi


def load(a, i, zero):
    return zero if a is None else a[i]


def store(a, i, v):
    if a is not None:
        a[i] = v


def pick(tup, k):
    return None if tup is None else tup[k]


def update_average(avg, i, p, w):
    """Polyak averaging: avg <- avg + w*(p - avg) with w = 1/(number averaged)."""
    if avg is not None:
        avg[i] = avg[i] + w * (p - avg[i])


def _none(x):
    return isinstance(x, (types.NoneType, types.Omitted)) or x is None


@overload(load, inline="always", target="generic")
def _ol_load(a, i, zero):
    if _none(a):
        return lambda a, i, zero: zero
    return lambda a, i, zero: a[i]


@overload(store, inline="always", target="generic")
def _ol_store(a, i, v):
    if _none(a):
        return lambda a, i, v: None

    def impl(a, i, v):
        a[i] = v
    return impl


@overload(pick, inline="always", target="generic")
def _ol_pick(tup, k):
    if _none(tup):
        return lambda tup, k: None
    return lambda tup, k: tup[k]


@overload(update_average, inline="always", target="generic")
def _ol_update_average(avg, i, p, w):
    if _none(avg):
        return lambda avg, i, p, w: None

    def impl(avg, i, p, w):
        avg[i] = avg[i] + w * (p - avg[i])
    return impl


@register_jitable
def mix64(x):
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@register_jitable
def normal(key, counter):
    """Standard normal draw number ``counter`` of the stream ``key`` (Box-Muller)."""
    c = np.uint64(counter)
    a = mix64(key + _GOLDEN * (_TWO * c + _ONE))
    b = mix64(key + _GOLDEN * (_TWO * c + _TWO))
    u1 = (np.float64(a >> _S11) + 1.0) * _INV53
    u2 = np.float64(b >> _S11) * _INV53
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)


def draw(key, counter, zero):
    return zero if key is None else normal(key, counter)


@overload(draw, inline="always", target="generic")
def _ol_draw(key, counter, zero):
    if _none(key):
        return lambda key, counter, zero: zero

    def impl(key, counter, zero):
        return normal(key, counter)
    return impl


# A tensor's update runs threaded (the parallel drivers' ``prange``, kernels/
# templates/update.py) only from these sizes; smaller ones run the serial loop
# inside the same call (elementwise: the same bits).  optkern asks libgomp for
# passive waits (optkern._backend), so each parallel region wakes its worker
# through the kernel: ~70-80 us on the 2-core VM, against 0.25-0.7 ns an
# element for a deterministic rule in float32 (SGD 46 us, Adam 134 us at
# 200,000).  Measured there, numba-parallel against numba: 1.5-2.3x slower at
# 200,000 elements, 1.0-1.3x at 500,000, 0.87-1.03x at 750,000, 0.74-0.90x
# at 1e6; a model of 100 tensors of 10,000 took 10.4 ms threaded against 3.4
# serial (one region a tensor).  A noise draw costs ~24 ns an element (SGLD
# threaded: 0.52x from 200,000 down), so a noisy update pays from far fewer.
# The default step's finite scan of a gradient runs threaded where the
# update of that tensor does (the worker is then awake for both; alone, a
# scan of 0.14 ns a float32 would not pay for its wake-up).
PARALLEL_GRAIN = 750_000
PARALLEL_GRAIN_NOISE = 16_384


def parallel_grain(key):
    """The size from which a tensor's update runs threaded: PARALLEL_GRAIN
    without noise (``key`` None), PARALLEL_GRAIN_NOISE with it."""
    return PARALLEL_GRAIN if key is None else PARALLEL_GRAIN_NOISE


@overload(parallel_grain, inline="always", target="generic")
def _ol_parallel_grain(key):
    if _none(key):
        return lambda key: PARALLEL_GRAIN
    return lambda key: PARALLEL_GRAIN_NOISE


def step_key(seed, step):
    """The per-step noise stream key, computed on the host (Python ints)."""
    mask = (1 << 64) - 1
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(step)) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return np.uint64(x ^ (x >> 31))


def noise_key_jit(seed, step):
    """``step_key`` for compiled code: None (no noise) stays None."""
    return None if seed is None else step_key(seed, step)


_KEY_MUL = np.uint64(0x9E3779B97F4A7C15)


@overload(noise_key_jit, inline="always", target="generic")
def _ol_noise_key_jit(seed, step):
    if _none(seed):
        return lambda seed, step: None

    def impl(seed, step):
        x = np.uint64(seed) * _KEY_MUL + np.uint64(step)
        return mix64(x)
    return impl


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch ``arr[idx]``'s cache line (1-D array, read, keep
    in all cache levels).  A no-op for correctness; the compiled epoch uses
    it to fetch the next shuffled row of X while it works on the current
    one: randomly ordered rows of an X larger than the cache otherwise stall
    on memory (make_classification 200 000 x 100 float32: score loop 61 ->
    44 ms per epoch pass, measured side by side)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(idx, types.Integer)):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        from numba.core import cgutils

        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # (address, rw=0 read, locality=3 keep, cache type=1 data)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0),
                          ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen



def prefetch_target(T, i):
    """Prefetch row i of the targets (2-D: one row per example; 1-D: labels)."""


@overload(prefetch_target, inline="always")
def _ol_prefetch_target(T, i):
    if T.ndim == 2:
        return lambda T, i: prefetch(T[i], 0)
    return lambda T, i: prefetch(T, i)


# ------------------------------------------------------------------ exp
# ``exp_fast``: the exponential for the loss rules compiled by Numba.  A call
# to libm's exp/expf cannot be vectorised here (no vector maths library) and
# costs a call with its register spills per element: measured 4.4 ns per
# softmax output (4096 x 10 scores, the CSR kernel), most of the loss work at
# 1% density.  This is straight-line arithmetic LLVM inlines and can
# vectorise: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 split in a high
# part whose product with n is exact, and a low part), exp(r) by its Taylor
# polynomial (degree 13 for float64, 7 for float32: truncation error below
# 0.05 ulp), and 2^n built from exponent bits as two factors 2^(n//2) and
# 2^(n - n//2), so that results which overflow or go subnormal come out of
# the last multiplication as IEEE arithmetic makes them (inf, subnormal, 0).
# Arguments are clamped to where those two factors stay normal; NaN passes
# through.  tests/test_losses.py measures the error against NumPy's exp.

@intrinsic
def _float_from_bits(typingctx, bits, like):
    """The float of ``like``'s type whose bit pattern is the integer ``bits``."""
    if not (isinstance(bits, types.Integer) and isinstance(like, types.Float)):
        return None
    sig = like(bits, like)

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        width = signature.return_type.bitwidth
        ival = args[0]
        have = signature.args[0].bitwidth
        ity = ir.IntType(width)
        if have > width:
            ival = builder.trunc(ival, ity)
        elif have < width:
            ival = builder.sext(ival, ity)
        return builder.bitcast(ival, context.get_value_type(signature.return_type))

    return sig, codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01      # fdlibm: n * _LN2_HI is exact for |n| < 2**11
_LN2_LO = 1.90821492927058770002e-10
_F32 = np.float32
_LOG2E_F = _F32(1.4426950408889634)
_LN2_HI_F = _F32(0.693359375)             # 8 significant bits: n * it is exact
_LN2_LO_F = _F32(-2.12194440054690582e-4)
_HALF_F = _F32(0.5)
_LO_F, _HI_F = _F32(-104.0), _F32(89.0)
_INV_FACT_F = tuple(_F32(1.0 / math.factorial(i)) for i in range(8))
_INV_FACT = tuple(1.0 / math.factorial(i) for i in range(14))
_I32_1 = np.int32(1)
_I32_23 = np.int32(23)
_I32_127 = np.int32(127)


@register_jitable
def _exp_f64(x):
    xc = x if x > -746.0 else -746.0         # NaN -> -746 here, restored below
    xc = xc if xc < 710.0 else 710.0
    nf = np.floor(xc * _LOG2E + 0.5)
    r = (xc - nf * _LN2_HI) - nf * _LN2_LO
    c = _INV_FACT
    p = c[13]
    p = p * r + c[12]
    p = p * r + c[11]
    p = p * r + c[10]
    p = p * r + c[9]
    p = p * r + c[8]
    p = p * r + c[7]
    p = p * r + c[6]
    p = p * r + c[5]
    p = p * r + c[4]
    p = p * r + c[3]
    p = p * r + c[2]
    p = p * r + c[1]
    p = p * r + c[0]
    n = np.int64(nf)
    h = n >> 1
    s1 = _float_from_bits((h + 1023) << 52, x)
    s2 = _float_from_bits((n - h + 1023) << 52, x)
    res = p * s1 * s2
    return res if x == x else x


@register_jitable
def _exp_f32(x):
    xc = x if x > _LO_F else _LO_F
    xc = xc if xc < _HI_F else _HI_F
    nf = np.floor(xc * _LOG2E_F + _HALF_F)
    r = (xc - nf * _LN2_HI_F) - nf * _LN2_LO_F
    c = _INV_FACT_F
    p = c[7]
    p = p * r + c[6]
    p = p * r + c[5]
    p = p * r + c[4]
    p = p * r + c[3]
    p = p * r + c[2]
    p = p * r + c[1]
    p = p * r + c[0]
    n = np.int32(nf)
    h = n >> _I32_1
    s1 = _float_from_bits((h + _I32_127) << _I32_23, x)
    s2 = _float_from_bits((n - h + _I32_127) << _I32_23, x)
    res = p * s1 * s2
    return res if x == x else x


def exp_fast(x):
    """exp(x) (Python fallback; compiled code gets the overloads below)."""
    return math.exp(x)


def _by_float_width(f32, f64):
    """An overload body calling f32 on float32 arguments, f64 on float64,
    integer and boolean ones."""
    def ol(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x: f32(x)
        if isinstance(x, types.Float):
            return lambda x: f64(x)
        if isinstance(x, (types.Integer, types.Boolean)):
            return lambda x: f64(float(x))
        return None
    return ol


overload(exp_fast, inline="always")(_by_float_width(_exp_f32, _exp_f64))


# ------------------------------------------------------------------ log
# ``log_fast``: the logarithm for the rules' lane forms (kernels/rule_lanes.py),
# where softmax takes one log a row in a loop over the rows of a block: libm's
# log is a call per row there (0.6 of 3.2 us for the rule on 256 rows, k = 10),
# this is arithmetic LLVM vectorises.  x = 2^e m with m in [sqrt(1/2),
# sqrt(2)) from the exponent bits (subnormals scaled by 2^54 first), f = m - 1,
# s = f / (2 + f), and log(m) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R(s^2))
# with R the atanh series' terms 2 z^i / (2i + 1), z = s^2, i = 1..10 for
# float64 (|s| <= 0.1716: the first term left out is below 1e-18 of the
# result), 1..4 for float32; e ln2 is added as e ln2_hi (exact) + e ln2_lo.
# Computed in float64 for both dtypes (a float32 result is rounded once).
# log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, NaN passes through.
# tests/test_exp_fast.py measures the error against NumPy's log.

@intrinsic
def _bits_of_float(typingctx, x):
    """The int64 bit pattern of a float64."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


_SQRT2 = math.sqrt(2.0)
_TWO54 = 2.0 ** 54
_TINY64 = 2.2250738585072014e-308         # the smallest normal float64
_MANT_MASK = np.int64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.int64(0x3FF0000000000000)
_I64_52 = np.int64(52)
_I64_1023 = np.int64(1023)
_ATANH = tuple(2.0 / (2 * i + 1) for i in range(11))    # R's coefficients, index i


@register_jitable
def _log_parts(x):
    """(e, f, s, z) of log_fast's reduction of a float64 x > 0 (any x: the
    edges are fixed by _log_join)."""
    sub = x < _TINY64
    xs = x * _TWO54 if sub else x
    bits = _bits_of_float(xs)
    e = float((bits >> _I64_52) - _I64_1023) - (54.0 if sub else 0.0)
    m = _float_from_bits((bits & _MANT_MASK) | _ONE_BITS, x)    # [1, 2)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    f = m - 1.0
    s = f / (2.0 + f)
    return e, f, s, s * s


@register_jitable
def _log_join(x, e, f, s, R):
    hfsq = 0.5 * f * f
    res = e * _LN2_HI + (f - (hfsq - (s * (hfsq + R) + e * _LN2_LO)))
    # the edges, as IEEE: 0 -> -inf, < 0 -> NaN, inf -> inf, NaN -> NaN
    res = res if x < math.inf else x
    res = res if x > 0.0 else (-math.inf if x == 0.0 else math.nan)
    return res if x == x else x


@register_jitable
def _log_f64(x):
    e, f, s, z = _log_parts(x)
    c = _ATANH
    # R = sum_{i=1..10} c_i z^i, Estrin's scheme (a Horner chain of ten
    # dependent multiply-adds held a vectorised loop at 1.8 ns a value)
    z2 = z * z
    z4 = z2 * z2
    p12 = c[1] + c[2] * z
    p34 = c[3] + c[4] * z
    p56 = c[5] + c[6] * z
    p78 = c[7] + c[8] * z
    p910 = c[9] + c[10] * z
    R = z * ((p12 + p34 * z2) + z4 * ((p56 + p78 * z2) + z4 * p910))
    return _log_join(x, e, f, s, R)


@register_jitable
def _log_f32(x):
    # a float32 result needs R to i = 4 only (the next term is below 1e-9
    # of the result), still in float64: one rounding at the end
    xd = np.float64(x)
    e, f, s, z = _log_parts(xd)
    c = _ATANH
    R = z * ((c[1] + c[2] * z) + (z * z) * (c[3] + c[4] * z))
    return np.float32(_log_join(xd, e, f, s, R))


def log_fast(x):
    """log(x) (Python fallback; compiled code gets the overload below)."""
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


overload(log_fast, inline="always")(_by_float_width(_log_f32, _log_f64))


# ------------------------------------------------------------------ max
# ``max_fast``: the two-argument ``max`` of the rules' vector form.  Python's
# rule (the first of equal or unordered values) compiles to a compare and
# select, a reduction LLVM does not vectorise without nnan; the softmax
# rule's row maximum was then one dependent chain, 1.0 ns a score at k = 1000
# (a third of the rule).  ``llvm.maxnum`` reductions are vectorised as they
# are: 0.13 ns a score at k = 1000, 0.18 at k = 100, float32.  maxnum skips
# a NaN where Python's max keeps a first-place one; a row with a NaN gives
# NaN loss and derivatives either way (the NaN reaches the sum of
# exponentials), and of two equal zeros either may be returned, which the
# rules only subtract.  Other argument types, and three or more arguments,
# are Python's max.

@intrinsic
def _maxnum(typingctx, a, b):
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)
    return a(a, b), codegen


def max_fast(*args):
    """max(*args) (Python fallback; compiled code gets the overload below)."""
    return max(*args)


@overload(max_fast)
def _max_fast_ol(a, b, *rest):
    if not rest and isinstance(a, types.Float) and a == b:
        return lambda a, b, *rest: _maxnum(a, b)
    return lambda a, b, *rest: max(a, b, *rest)


# Where exp_fast pays: only in a loop LLVM vectorises, which needs at least
# a vector's worth of outputs and output and input rows that do not overlap
# (the softmax rule in place, dz is z, fails LLVM's runtime alias check).
# Measured per score, softmax rule, float32 (libm's exp / exp_fast):
# k = 10: 5.2 / 6.4 ns; k = 100: 4.2 / 2.1 ns separate rows, 4.1 / 6.0 ns in
# place; k = 1000 the same as 100.  The drivers compile both and pick.
VEC_MIN_OUTPUTS = 16

# the namespace the Numba-compiled loss rules see as ``math``
rule_math = None


def with_fast_math(fn):
    """``fn`` (a loss rule from loss_rules.py) with ``math.exp`` bound to
    ``exp_fast`` and ``max`` to ``max_fast``; ``math.log``/``log1p`` stay
    libm's (one per row or output, and rarely on the hot path).  The rule's
    text is untouched: only the names it sees as ``math`` and ``max`` differ,
    so Cython and CUDA keep libm's and Python's max."""
    import types as pytypes
    global rule_math
    if rule_math is None:
        ns = pytypes.ModuleType("optkern_rule_math")
        for name in dir(math):
            if not name.startswith("_"):
                setattr(ns, name, getattr(math, name))
        ns.exp = exp_fast
        rule_math = ns
    glb = dict(fn.__globals__)
    glb["math"] = rule_math
    glb["max"] = max_fast
    new = pytypes.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    return new


def _compile_target_has_avx512():
    """Whether Numba compiles for a CPU with AVX-512 (its NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES when set, else this machine's CPU)."""
    from numba.core import config
    if config.CPU_FEATURES is not None:
        return "+avx512f" in str(config.CPU_FEATURES).split(",")
    if config.CPU_NAME is not None:
        return False            # a named generic target: assume no AVX-512
    try:
        import llvmlite.binding as llvm
        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:           # pragma: no cover - llvmlite without the query
        return False


# The fused dense loss kernel's wide register tiles (loss_drivers
# _scores_block_wide, _accumulate_block): with AVX-512 the 32 vector
# registers hold a 4-row x 5-output tile of 512-bit accumulators.  A global
# of the compiled functions: Numba's cache index is keyed on the target CPU,
# so a machine without AVX-512 compiles its own (6 x 2 ymm tiles).
AVX512 = _compile_target_has_avx512()


@intrinsic
def wide_vectors(typingctx):
    """Within the compiled function that calls it, LLVM's vectoriser may use
    the target's widest vectors: the function attribute prefer-vector-width=512
    (LLVM's default on Intel's AVX-512 CPUs is 256 bits, so Numba never emits
    512-bit code otherwise).  Measured on the project machine (2 vCPUs, AVX-512,
    float32, 784 features, rows of X not 64-byte aligned as NumPy allocates
    them): the rank-6 update of dW^T 42.6 -> 55.0 G multiply-adds/s from L2,
    32.8 -> 38.3 from L3.  Changes no result beyond the order of a
    fast-math reduction's partial sums; a no-op without AVX-512."""
    sig = types.none()

    def codegen(context, builder, signature, args):
        # a string attribute; llvmlite's FunctionAttributes.add() knows only
        # the keyword attributes, so it goes into the set as written
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return sig, codegen
