"""Explicit-vector loops for the CSR loss kernels (Numba intrinsics).

A CSR row's scores are ``z = b + sum_v x_v W[f_v]`` and its gradient scatter
is ``acc[f_v] += x_v dz``, for a row of W or acc per nonzero.  With few
outputs (k = 10) Numba's loops over ``j < k`` cost 3.5-3.7 ns per nonzero on
the project machine: the loop vectoriser's body needs a trip count of 8 or
64, so k = 10 runs one 8-wide step and two scalar ones, each behind its own
alias check, and the scores accumulate in memory (a store-to-load chain per
nonzero).  Numba turns LLVM's SLP vectoriser off (numba#8705), so scalar
locals do not become vectors either.

The two loops here are written in LLVM IR with one masked vector of 4, 8 or
16 lanes per row of W or acc (16-lane chunks when k > 16): the scores stay in
a register across the row, and the loads and stores of a row touch its first
k elements only (a masked load never reads past the mask, so nothing is
padded or copied).  Per nonzero at k = 10, float32: scores 3.7 -> 1.1 ns,
scatter 3.5 -> 1.5 ns (asv ``CSRRowLoops`` in bench_losses.py; table in
docs/losses.md).

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
from numba.extending import intrinsic, overload

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


def _row_loops(context, builder, n_lanes, M, M_v, data, data_v, indices, ind_v,
               lo, lo_v, hi, hi_v, chunk):
    """The loop structure both intrinsics share.  For each column chunk
    [c0, c0 + n_lanes) of M's k columns, ``chunk(c0, mask, vty, zero, align,
    nonzeros)`` emits the chunk's code (mask: the lanes below k - c0; vty the
    vector type, zero its zero, align the element alignment);
    ``nonzeros(body)`` emits the loop over v in [lo, hi) calling
    ``body(x, ptr)`` with x = data[v] and ptr = &M[indices[v], c0]."""
    intp = context.get_value_type(types.intp)
    vty = ir.VectorType(context.get_value_type(M.dtype), n_lanes)
    align = M.dtype.bitwidth // 8
    Ma = context.make_array(M)(context, builder, M_v)
    k = cgutils.unpack_tuple(builder, Ma.shape)[1]
    lo_i = context.cast(builder, lo_v, lo, types.intp)
    hi_i = context.cast(builder, hi_v, hi, types.intp)

    def nonzeros(c0, body):
        with cgutils.for_range_slice(builder, lo_i, hi_i, ir.Constant(intp, 1),
                                     intp=intp) as (v, _):
            x = _item(context, builder, data, data_v, v)
            f = context.cast(builder, _item(context, builder, indices, ind_v, v),
                             indices.dtype, types.intp)
            body(x, builder.gep(_row_ptr(context, builder, M, M_v, f), [c0]))

    with cgutils.for_range_slice(builder, ir.Constant(intp, 0), k,
                                 ir.Constant(intp, n_lanes), intp=intp) as (c0, _):
        mask = _lane_mask(builder, builder.sub(k, c0), n_lanes)
        chunk(c0, mask, vty, ir.Constant(vty, None), align,
              lambda body: nonzeros(c0, body))


def _scores_codegen(n_lanes, W, b, z, data, indices, lo, hi):
    def codegen(context, builder, signature, args):
        data_v, ind_v, lo_v, hi_v, W_v, b_v, z_v = args
        za = context.make_array(z)(context, builder, z_v)
        vty = ir.VectorType(context.get_value_type(W.dtype), n_lanes)
        acc = cgutils.alloca_once(builder, vty)     # promoted to a register

        def chunk(c0, mask, vty, zero, align, nonzeros):
            if b is types.none:
                builder.store(zero, acc)
            else:
                ba = context.make_array(b)(context, builder, b_v)
                builder.store(_masked_load(builder, builder.gep(ba.data, [c0]), mask, zero,
                                           align), acc)

            def term(x, wp):
                w = _masked_load(builder, wp, mask, zero, align)
                builder.store(_fmuladd(builder, _splat(builder, x, vty), w,
                                       builder.load(acc)), acc)
            nonzeros(term)
            _masked_store(builder, builder.load(acc), builder.gep(za.data, [c0]), mask,
                          align)

        _row_loops(context, builder, n_lanes, W, W_v, data, data_v, indices, ind_v,
                   lo, lo_v, hi, hi_v, chunk)
        return context.get_dummy_value()
    return codegen


def _scatter_codegen(n_lanes, dz, acc, data, indices, lo, hi):
    def codegen(context, builder, signature, args):
        data_v, ind_v, lo_v, hi_v, dz_v, acc_v = args
        da = context.make_array(dz)(context, builder, dz_v)

        def chunk(c0, mask, vty, zero, align, nonzeros):
            d = _masked_load(builder, builder.gep(da.data, [c0]), mask, zero, align)

            def term(x, ptr):
                a = _masked_load(builder, ptr, mask, zero, align)
                _masked_store(builder, _fmuladd(builder, _splat(builder, x, vty), d, a),
                              ptr, mask, align)
            nonzeros(term)

        _row_loops(context, builder, n_lanes, acc, acc_v, data, data_v, indices, ind_v,
                   lo, lo_v, hi, hi_v, chunk)
        return context.get_dummy_value()
    return codegen


def _scores_intrinsic(n_lanes):
    @intrinsic
    def scores_vec(typingctx, data, indices, lo, hi, W, b, z):
        """z = b + sum_v data[v] W[indices[v]] for W.shape[1] <= n_lanes."""
        if not (_vector_ok(data, indices, W, z) and isinstance(lo, types.Integer)
                and isinstance(hi, types.Integer)
                and (b is types.none or (isinstance(b, types.Array) and b.ndim == 1
                                          and b.layout == "C" and b.dtype == W.dtype))):
            return None
        return (types.void(data, indices, lo, hi, W, b, z),
                _scores_codegen(n_lanes, W, b, z, data, indices, lo, hi))
    return scores_vec


def _scatter_intrinsic(n_lanes):
    @intrinsic
    def scatter_vec(typingctx, data, indices, lo, hi, dz, acc):
        """acc[indices[v]] += data[v] dz for acc.shape[1] <= n_lanes."""
        if not (_vector_ok(data, indices, acc, dz) and isinstance(lo, types.Integer)
                and isinstance(hi, types.Integer)):
            return None
        return (types.void(data, indices, lo, hi, dz, acc),
                _scatter_codegen(n_lanes, dz, acc, data, indices, lo, hi))
    return scatter_vec


_scores4, _scores8, _scores16 = (_scores_intrinsic(m) for m in (4, 8, 16))
_scatter4, _scatter8, _scatter16 = (_scatter_intrinsic(m) for m in (4, 8, 16))


# ------------------------------------------------------------ the overloads


@overload(csr_row_scores, inline="always")
def _ov_scores(data, indices, lo, hi, W, b, z):
    if not _vector_ok(data, indices, W, z):
        return csr_row_scores       # the plain loop

    def impl(data, indices, lo, hi, W, b, z):
        k = W.shape[1]
        if k <= 4:
            _scores4(data, indices, lo, hi, W, b, z)
        elif k <= 8:
            _scores8(data, indices, lo, hi, W, b, z)
        else:
            _scores16(data, indices, lo, hi, W, b, z)
    return impl


@overload(csr_row_scatter, inline="always")
def _ov_scatter(data, indices, lo, hi, dz, acc):
    if not _vector_ok(data, indices, acc, dz):
        return csr_row_scatter

    def impl(data, indices, lo, hi, dz, acc):
        k = acc.shape[1]
        if k <= 4:
            _scatter4(data, indices, lo, hi, dz, acc)
        elif k <= 8:
            _scatter8(data, indices, lo, hi, dz, acc)
        else:
            _scatter16(data, indices, lo, hi, dz, acc)
    return impl

