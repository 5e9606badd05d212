"""Explicit-vector loops for the CSR loss kernels (Numba intrinsics).

A CSR row's scores are ``z = b + sum_v x_v W[f_v]`` and its gradient scatter
is ``acc[f_v] += x_v dz``, for a row of W or acc per nonzero.  With few
outputs (k = 10) Numba's loops over ``j < k`` cost 3.5-3.7 ns per nonzero on
the project machine: the loop vectoriser's body needs a trip count of 8 or
64, so k = 10 runs one 8-wide step and two scalar ones, each behind its own
alias check, and the scores accumulate in memory (a store-to-load chain per
nonzero).  Numba turns LLVM's SLP vectoriser off (numba#8705), so scalar
locals do not become vectors either.

The two loops here are written in LLVM IR with explicit vectors: a row of W
or acc is covered by one to four 256-bit vectors per nonzero (the last one
masked, and 128-bit when it holds at most half a vector's columns; rows
longer than four vectors go in chunks of four, each its own pass over the
row's nonzeros).  The scores stay in registers across the row, and the loads
and stores of a row touch its first k elements only (a masked load never
reads past the mask, so nothing is padded or copied).  256 bits because the
project machine's Zen 4 cores split a 512-bit access in two: one masked
16-lane vector per nonzero, the first version of this module, cost 1.58 ns a
nonzero in the scatter at k = 10, float32, 256-bit vectors 1.44, and 9.2 ->
7.6 ns at k = 100.  Per nonzero at k = 10, float32, against Numba's loop:
scores 3.7 -> 1.0 ns, scatter 3.5 -> 1.4 ns (asv ``CSRRowLoops`` in
bench_losses.py; table in docs/losses.md).

``csr_row_scores`` and ``csr_row_scatter`` are plain functions with Numba
overloads: for C-contiguous W/acc and z/dz they run the vector loop,
otherwise the plain loop (which is also what they are as Python).  Their
sums run in nonzero order, one multiply-add per nonzero (LLVM's
``fmuladd``: fused where the target has FMA).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

from ._helpers import load

def csr_row_scores(data, indices, lo, hi, W, b, z):
    """z[:] = b + sum over v in [lo, hi) of data[v] * W[indices[v]] (b None: 0)."""
    k = W.shape[1]
    for j in range(k):
        z[j] = load(b, j, 0)
    for v in range(lo, hi):
        x = data[v]
        f = indices[v]
        for j in range(k):
            z[j] += x * W[f, j]


def csr_row_scatter(data, indices, lo, hi, dz, acc):
    """acc[indices[v]] += data[v] * dz for every v in [lo, hi)."""
    k = acc.shape[1]
    for v in range(lo, hi):
        x = data[v]
        f = indices[v]
        for j in range(k):
            acc[f, j] += x * dz[j]


# ----------------------------------------------------------------- LLVM IR


def _vec_name(vty):
    return f"v{vty.count}{vty.element.intrinsic_name}"


def _ptr_name(pty, vty):
    """The intrinsic-name suffix of a pointer to vty (typed or opaque IR)."""
    if getattr(pty, "is_opaque", False):
        return f"p{pty.addrspace}"
    return f"p{pty.addrspace}{_vec_name(vty)}"


def _masked_load(builder, ptr, mask, passthru, align):
    vty = passthru.type
    ptr = builder.bitcast(ptr, vty.as_pointer())
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(vty, [ptr.type, i32, mask.type, vty])
    fn = cgutils.get_or_insert_function(
        builder.module, fnty, f"llvm.masked.load.{_vec_name(vty)}.{_ptr_name(ptr.type, vty)}")
    return builder.call(fn, [ptr, ir.Constant(i32, align), mask, passthru])


def _masked_store(builder, value, ptr, mask, align):
    vty = value.type
    ptr = builder.bitcast(ptr, vty.as_pointer())
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [vty, ptr.type, i32, mask.type])
    fn = cgutils.get_or_insert_function(
        builder.module, fnty, f"llvm.masked.store.{_vec_name(vty)}.{_ptr_name(ptr.type, vty)}")
    builder.call(fn, [value, ptr, ir.Constant(i32, align), mask])


def _fmuladd(builder, a, b, c):
    vty = a.type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                        f"llvm.fmuladd.{_vec_name(vty)}")
    return builder.call(fn, [a, b, c])


def _splat(builder, scalar, vty):
    undef = ir.Constant(vty, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32),
                                                                          vty.count),
                                                          [0] * vty.count))


def _lane_mask(builder, k, n_lanes):
    """<n_lanes x i1>: lane < k."""
    i64 = ir.IntType(64)
    lanes = ir.Constant(ir.VectorType(i64, n_lanes), list(range(n_lanes)))
    kv = _splat(builder, builder.sext(k, i64) if k.type.width < 64 else k,
                ir.VectorType(i64, n_lanes))
    return builder.icmp_unsigned("<", lanes, kv)


def _item(context, builder, aryty, ary, idx):
    """The scalar ary[idx] of a 1-D array (any layout)."""
    a = context.make_array(aryty)(context, builder, ary)
    ptr = cgutils.get_item_pointer2(context, builder, a.data, cgutils.unpack_tuple(builder, a.shape),
                                    cgutils.unpack_tuple(builder, a.strides), aryty.layout, [idx])
    return builder.load(ptr)


def _row_ptr(context, builder, aryty, ary, row):
    """Pointer to element [row, 0] of a C-contiguous 2-D array."""
    a = context.make_array(aryty)(context, builder, ary)
    ncol = cgutils.unpack_tuple(builder, a.shape)[1]
    return builder.gep(a.data, [builder.mul(row, ncol)])


def _is_float(t):
    return t in (types.float32, types.float64)


def _vector_ok(data, indices, M, v):
    """Types the vector loops take: M (W or acc) 2-D C, v (z or dz) 1-D C,
    one float dtype, integer indices."""
    return (isinstance(M, types.Array) and M.ndim == 2 and M.layout == "C"
            and isinstance(v, types.Array) and v.ndim == 1 and v.layout == "C"
            and isinstance(data, types.Array) and data.ndim == 1
            and isinstance(indices, types.Array) and indices.ndim == 1
            and isinstance(indices.dtype, types.Integer)
            and _is_float(M.dtype) and M.dtype == v.dtype == data.dtype)


# 256-bit vectors: the project machine's cores (Zen 4) split a 512-bit load or
# store in two, and a row of 10 float32 in one 16-lane vector cost 1.48 ns a
# nonzero in the scatter against 0.77 for 8 lanes at k = 8
VEC_BYTES = 32
# at most this many vectors per nonzero (the scores keep one accumulator each)
MAX_VECTORS = 4     # the overloads' tail dispatch spells out 1..4


def _lanes(dtype):
    return VEC_BYTES * 8 // dtype.bitwidth


def _row_loops(context, builder, n_vec, tail, M, M_v, data, data_v, indices, ind_v,
               lo, lo_v, hi, hi_v, c0_v, piece):
    """The loop structure both intrinsics share: columns from c0 in n_vec
    vectors of L lanes (L = _lanes(M.dtype)); with ``tail`` ("full" or
    "half") the last vector has L or L/2 lanes, masked to the columns below k.
    ``piece(mask, vty, zero, align)`` returns the code of one vector: a pair
    ``(before, body)`` of callbacks: ``before(off)`` runs once (off: the
    vector's first column) and ``body(x, ptr)`` per nonzero with x = data[v]
    and ptr = &M[indices[v], off]."""
    intp = context.get_value_type(types.intp)
    L = _lanes(M.dtype)
    elem = context.get_value_type(M.dtype)
    align = M.dtype.bitwidth // 8
    Ma = context.make_array(M)(context, builder, M_v)
    k = cgutils.unpack_tuple(builder, Ma.shape)[1]
    lo_i = context.cast(builder, lo_v, lo, types.intp)
    hi_i = context.cast(builder, hi_v, hi, types.intp)
    bodies, offs = [], []
    for p in range(n_vec):
        off = builder.add(c0_v, ir.Constant(intp, p * L))
        if tail and p == n_vec - 1:
            lanes = L if tail == "full" else L // 2
            vty = ir.VectorType(elem, lanes)
            mask = _lane_mask(builder, builder.sub(k, off), lanes)
        else:
            vty = ir.VectorType(elem, L)
            mask = None
        before, body = piece(mask, vty, ir.Constant(vty, None), align)
        before(off)
        bodies.append(body)
        offs.append(off)
    with cgutils.for_range_slice(builder, lo_i, hi_i, ir.Constant(intp, 1),
                                 intp=intp) as (v, _):
        x = _item(context, builder, data, data_v, v)
        f = context.cast(builder, _item(context, builder, indices, ind_v, v),
                         indices.dtype, types.intp)
        row = _row_ptr(context, builder, M, M_v, f)
        for body, off in zip(bodies, offs):
            body(x, builder.gep(row, [off]))


def _load(builder, ptr, mask, zero, align):
    if mask is None:
        return builder.load(builder.bitcast(ptr, zero.type.as_pointer()), align=align)
    return _masked_load(builder, ptr, mask, zero, align)


def _store(builder, value, ptr, mask, align):
    if mask is None:
        builder.store(value, builder.bitcast(ptr, value.type.as_pointer()), align=align)
    else:
        _masked_store(builder, value, ptr, mask, align)


def _scores_codegen(n_vec, tail, W, b, z, data, indices, lo, hi):
    def codegen(context, builder, signature, args):
        data_v, ind_v, lo_v, hi_v, W_v, b_v, z_v, c0_v = args
        za = context.make_array(z)(context, builder, z_v)
        stores = []

        def piece(mask, vty, zero, align):
            acc = cgutils.alloca_once(builder, vty)     # promoted to a register

            def before(off):
                if b is types.none:
                    builder.store(zero, acc)
                else:
                    ba = context.make_array(b)(context, builder, b_v)
                    builder.store(_load(builder, builder.gep(ba.data, [off]), mask, zero,
                                        align), acc)
                stores.append(lambda: _store(builder, builder.load(acc),
                                             builder.gep(za.data, [off]), mask, align))

            def body(x, wp):
                w = _load(builder, wp, mask, zero, align)
                builder.store(_fmuladd(builder, _splat(builder, x, vty), w,
                                       builder.load(acc)), acc)
            return before, body

        c0 = context.cast(builder, c0_v, signature.args[7], types.intp)
        _row_loops(context, builder, n_vec, tail, W, W_v, data, data_v, indices, ind_v,
                   lo, lo_v, hi, hi_v, c0, piece)
        for store in stores:
            store()
        return context.get_dummy_value()
    return codegen


def _scatter_codegen(n_vec, tail, dz, acc, data, indices, lo, hi):
    def codegen(context, builder, signature, args):
        data_v, ind_v, lo_v, hi_v, dz_v, acc_v, c0_v = args
        da = context.make_array(dz)(context, builder, dz_v)

        def piece(mask, vty, zero, align):
            d = []

            def before(off):
                d.append(_load(builder, builder.gep(da.data, [off]), mask, zero, align))

            def body(x, ptr):
                a = _load(builder, ptr, mask, zero, align)
                _store(builder, _fmuladd(builder, _splat(builder, x, vty), d[0], a), ptr,
                       mask, align)
            return before, body

        c0 = context.cast(builder, c0_v, signature.args[6], types.intp)
        _row_loops(context, builder, n_vec, tail, acc, acc_v, data, data_v, indices,
                   ind_v, lo, lo_v, hi, hi_v, c0, piece)
        return context.get_dummy_value()
    return codegen


def _scores_intrinsic(n_vec, tail):
    @intrinsic
    def scores_vec(typingctx, data, indices, lo, hi, W, b, z, c0):
        """z[c] = b[c] + sum_v data[v] W[indices[v], c] for the n_vec vectors'
        columns c from c0 (with a tail, the last one masked to c < k)."""
        if not (_vector_ok(data, indices, W, z) and isinstance(lo, types.Integer)
                and isinstance(hi, types.Integer) and isinstance(c0, types.Integer)
                and (b is types.none or (isinstance(b, types.Array) and b.ndim == 1
                                          and b.layout == "C" and b.dtype == W.dtype))):
            return None
        return (types.void(data, indices, lo, hi, W, b, z, c0),
                _scores_codegen(n_vec, tail, W, b, z, data, indices, lo, hi))
    return scores_vec


def _scatter_intrinsic(n_vec, tail):
    @intrinsic
    def scatter_vec(typingctx, data, indices, lo, hi, dz, acc, c0):
        """acc[indices[v], c] += data[v] dz[c] for the n_vec vectors' columns c
        from c0 (with a tail, the last one masked to c < k)."""
        if not (_vector_ok(data, indices, acc, dz) and isinstance(lo, types.Integer)
                and isinstance(hi, types.Integer) and isinstance(c0, types.Integer)):
            return None
        return (types.void(data, indices, lo, hi, dz, acc, c0),
                _scatter_codegen(n_vec, tail, dz, acc, data, indices, lo, hi))
    return scatter_vec


def _variants(factory):
    """The compiled loops of one kind: ``full`` covers MAX_VECTORS*L columns
    unmasked; ``tails[(n, half)]`` the last 1..MAX_VECTORS*L columns of a row,
    n vectors with the last one masked, of L/2 lanes when ``half`` (a 128-bit
    vector for the last few columns: k = 1, float32, 1.34 -> 0.91 ns a nonzero
    in the scatter)."""
    tails = {}
    for n in range(1, MAX_VECTORS + 1):
        for half in (False, True):
            tails[n, half] = factory(n, "half" if half else "full")
    return factory(MAX_VECTORS, None), tails


_scores_full, _scores_tails = _variants(_scores_intrinsic)
_scatter_full, _scatter_tails = _variants(_scatter_intrinsic)


def _dispatcher(full, tails, L):
    """A compiled ``run(k, args)`` covering a row's k columns: full chunks of
    MAX_VECTORS vectors, then the tail variant for the columns left (1..4
    vectors, the last half-width when its columns fit half of one); each
    loop is called as ``loop(*args, c0)``."""
    chunk = MAX_VECTORS * L
    (f1, h1), (f2, h2), (f3, h3), (f4, h4) = (
        (tails[n, False], tails[n, True]) for n in range(1, MAX_VECTORS + 1))

    @register_jitable(inline="always")
    def run(k, args):
        c0 = 0
        while k - c0 > chunk:
            full(*args, c0)
            c0 += chunk
        r = k - c0                      # 1..chunk columns left
        half = (r - 1) % L < L // 2     # the last vector's columns fit half of one
        if r <= L:
            if half:
                h1(*args, c0)
            else:
                f1(*args, c0)
        elif r <= 2 * L:
            if half:
                h2(*args, c0)
            else:
                f2(*args, c0)
        elif r <= 3 * L:
            if half:
                h3(*args, c0)
            else:
                f3(*args, c0)
        elif half:
            h4(*args, c0)
        else:
            f4(*args, c0)
    return run


# ------------------------------------------------------------ the overloads


@overload(csr_row_scores, inline="always")
def _ov_scores(data, indices, lo, hi, W, b, z):
    if not _vector_ok(data, indices, W, z):
        return csr_row_scores       # the plain loop
    run = _dispatcher(_scores_full, _scores_tails, _lanes(W.dtype))

    def impl(data, indices, lo, hi, W, b, z):
        run(W.shape[1], (data, indices, lo, hi, W, b, z))
    return impl


@overload(csr_row_scatter, inline="always")
def _ov_scatter(data, indices, lo, hi, dz, acc):
    if not _vector_ok(data, indices, acc, dz):
        return csr_row_scatter
    run = _dispatcher(_scatter_full, _scatter_tails, _lanes(acc.dtype))

    def impl(data, indices, lo, hi, dz, acc):
        run(acc.shape[1], (data, indices, lo, hi, dz, acc))
    return impl


# ------------------------------------------------ one output (k = 1) helpers
#
# The CSR kernels' one-output loop (templates/loss.py ``_csr_chunk_k1``) works
# on scalars: it must round exactly as the vector loops above do at k = 1 (a
# 128-bit vector with one live lane: z = fmuladd(x, W[f], z) per nonzero,
# acc[f] = fmuladd(x, dz, acc[f])), so that its results are the same bits.


def fmuladd(a, b, c):
    """a * b + c, fused where the target has FMA (LLVM's llvm.fmuladd), as
    the vector loops' multiply-adds."""
    return a * b + c


@intrinsic
def _fmuladd_scalar(typingctx, a, b, c):
    if not (_is_float(a) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        name = "f32" if a == types.float32 else "f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3),
                                            f"llvm.fmuladd.{name}")
        return builder.call(fn, list(args))
    return a(a, b, c), codegen


@overload(fmuladd, inline="always")
def _ov_fmuladd(a, b, c):
    if _is_float(a) and a == b == c:
        return lambda a, b, c: _fmuladd_scalar(a, b, c)
    return None


def vector_form(data, indices, M):
    """Whether csr_row_scores / csr_row_scatter run their vector loops (with
    fused multiply-adds) for these argument types; as Python, False."""
    return False


@overload(vector_form, inline="always")
def _ov_vector_form(data, indices, M):
    ok = isinstance(M, types.Array) and _vector_ok(data, indices, M,
                                                   types.Array(M.dtype, 1, "C"))
    return lambda data, indices, M: ok
