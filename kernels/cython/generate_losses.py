"""Write the Cython loss kernels (_losses.pyx, _losses.pxd) from loss_rules.py.

One rule, many targets: each rule's Python text (kernels/loss_rules.py) is
translated with ``ast`` into a ``cdef inline`` C function over the fused type
``floating`` (float and double):

* scalar rule ``f(z, y, epsilon) -> (loss, d)`` becomes
  ``floating f(floating z, floating y, floating epsilon, floating* dout)``
  (``return a, b`` -> ``dout[0] = b; return a``);
* row rule ``f(z, y, epsilon, dz) -> loss`` becomes
  ``floating f(floating* z, Py_ssize_t y, floating epsilon, floating* dz, Py_ssize_t k)``
  (``z.shape[0]`` -> ``k``);

``math.exp/log/log1p`` map to libc, ``abs`` to ``fabs``; locals starting with
``j`` are ``Py_ssize_t``, the others ``floating``.  The rule functions and the
per-row functions ``row_<loss>`` live in ``_losses.pxd`` (inline, so other
packages can ``cimport optkern.kernels.cython._losses`` and call them from
nogil code).  ``_losses.pyx`` holds the fused kernels (same algorithm and
scratch layout as the Numba ones in loss_drivers.py: W^T once, row blocks of 6
in register tiles of 6 rows x 2 outputs for the scores (one output per
tile in the dW^T update, see ACC_TILES),
per-thread partial dW^T in ``scratch`` reduced in chunk order), the CSR
kernels, the in-place row pass of the BLAS path and the predictions.

setup.py calls ``write_sources(dir)`` and compiles what it returns.
"""

import ast
import inspect
import os
import runpy
import textwrap
import types

HERE = os.path.dirname(os.path.abspath(__file__))


_files = types.SimpleNamespace(**runpy.run_path(os.path.join(os.path.dirname(HERE), "_files.py")))


def _load_rules():
    path = os.path.join(os.path.dirname(HERE), "loss_rules.py")
    return _files.load_by_path("_optkern_loss_rules", path)


class _ToCython(ast.NodeTransformer):
    def __init__(self, kind):
        self.kind = kind

    def visit_Call(self, node):
        self.generic_visit(node)
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and f.value.id == "math":
            node.func = ast.Name(f.attr, ast.Load())
        elif isinstance(f, ast.Name) and f.id == "abs":
            node.func = ast.Name("fabs", ast.Load())
        return node

    def visit_Subscript(self, node):
        self.generic_visit(node)
        v = node.value
        if isinstance(v, ast.Attribute) and v.attr == "shape":
            return ast.Name("k", ast.Load())
        return node

    def visit_Return(self, node):
        self.generic_visit(node)
        if self.kind == "scalar" and isinstance(node.value, ast.Tuple):
            loss, deriv = node.value.elts
            store = ast.Assign(
                targets=[ast.Subscript(ast.Name("dout", ast.Load()), ast.Constant(0),
                                       ast.Store())],
                value=deriv, lineno=0)
            return [store, ast.Return(loss)]
        return node


def _rule_to_cython(spec):
    src = textwrap.dedent(inspect.getsource(spec.rule))
    fn = ast.parse(src).body[0]
    args = [a.arg for a in fn.args.args]
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    local_names = sorted(names - set(args))
    body = [_ToCython(spec.kind).visit(stmt) for stmt in fn.body]
    flat = []
    for stmt in body:
        flat.extend(stmt if isinstance(stmt, list) else [stmt])
    fn.body = flat
    ast.fix_missing_locations(fn)
    body_src = "\n".join(ast.unparse(s) for s in fn.body)
    z, y, eps = args[:3]
    if spec.kind == "scalar":
        header = (f"cdef inline floating {fn.name}(floating {z}, floating {y}, "
                  f"floating {eps}, floating* dout) noexcept nogil:")
    else:
        dz = args[3]
        header = (f"cdef inline floating {fn.name}(const floating* {z}, Py_ssize_t {y}, "
                  f"floating {eps}, floating* {dz}, Py_ssize_t k) noexcept nogil:")
    decls = []
    ints = [n for n in local_names if n.startswith("j")]
    reals = [n for n in local_names if not n.startswith("j")]
    if ints:
        decls.append("cdef Py_ssize_t " + ", ".join(ints))
    if reals:
        decls.append("cdef floating " + ", ".join(reals))
    lines = [header] + ["    " + line for line in decls]
    lines += textwrap.indent(body_src, "    ").splitlines()
    return "\n".join(lines) + "\n"


def _row_function(spec):
    name = spec.name
    fn = spec.rule.__name__
    if spec.kind == "scalar":
        return f'''
cdef inline floating row_{name}(const floating* z, const floating* y_i, Py_ssize_t label,
                                floating epsilon, floating* dz, Py_ssize_t k) noexcept nogil:
    """Loss of one row (sum over outputs); writes d loss/d z into dz (may alias z)."""
    cdef floating total = 0
    cdef floating d
    cdef Py_ssize_t j
    for j in range(k):
        total = total + {fn}(z[j], y_i[j], epsilon, &d)
        dz[j] = d
    return total
'''
    return f'''
cdef inline floating row_{name}(const floating* z, const floating* y_i, Py_ssize_t label,
                                floating epsilon, floating* dz, Py_ssize_t k) noexcept nogil:
    """Loss of one row of scores; writes d loss/d z into dz (may alias z)."""
    return {fn}(z, label, epsilon, dz, k)
'''


_PXD_HEADER = '''\
# Generated by kernels/cython/generate_losses.py from kernels/loss_rules.py; do not edit.
# The C-level loss API: cimport it from your own Cython code.
#
#   row_<loss>(z, y_i, label, epsilon, dz, k) -> loss of one row of k scores,
#       writing d loss / d z into dz (dz may alias z).  Per-output losses read
#       their targets from y_i[0..k-1]; multiclass losses read the class index
#       ``label`` (pass y_i = NULL).  nogil, noexcept, float or double.
#   the scalar rules <name>_loss(z, y, epsilon, &d) -> loss (d written to *d).
from cython cimport floating
from libc.stdint cimport int64_t
from libc.math cimport exp, log, log1p, fabs

# CSR index types (the minibatch kernels below take either)
ctypedef fused int_t:
    int
    long long

cdef enum:
    ROW_BLOCK = {ROW_BLOCK}


cdef inline Py_ssize_t _per_chunk(Py_ssize_t d, Py_ssize_t k) noexcept nogil:
    return k * d + k + 2 * ROW_BLOCK * k + 1


cdef inline Py_ssize_t scratch_size(Py_ssize_t n_chunks, Py_ssize_t d, Py_ssize_t k) noexcept nogil:
    """Elements of ``scratch`` dense_<loss>/csr_<loss> need for n_chunks threads."""
    return k * d + n_chunks * _per_chunk(d, k)
'''

# the minibatch loss and gradient (defined in _losses.pyx), declared here so
# other modules can cimport them (optkern.kernels.cython.losses re-exports them)
_PXD_MINIBATCH = '''

cdef double dense_{name}(const floating* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                         const floating* yr, const int64_t* yc, const floating* sw,
                         const floating* W, const floating* b, double alpha, double l1_ratio,
                         floating eps, floating* dW, floating* db, floating* scratch,
                         int n_chunks) noexcept nogil
cdef double csr_{name}(const floating* data, const int_t* indices, const int_t* indptr,
                       Py_ssize_t n, Py_ssize_t d, Py_ssize_t k, const floating* yr,
                       const int64_t* yc, const floating* sw, const floating* W,
                       const floating* b, double alpha, double l1_ratio, floating eps,
                       floating* dW, floating* db, floating* scratch,
                       int n_chunks) noexcept nogil
'''

_PYX = r'''
# Generated by kernels/cython/generate_losses.py from kernels/loss_rules.py; do not edit.
# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Ahead-of-time loss kernels (Cython twin of optkern.kernels.loss_drivers).

Python-level entry points (optkern.losses calls them after validating):

dense_loss_grad(loss, X, y, sw, W, b, alpha, l1_ratio, epsilon, dW, db, scratch, n_threads)
csr_loss_grad(loss, data, indices, indptr, y, sw, W, b, alpha, l1_ratio, epsilon,
              dW, db, scratch, n_threads)
rows_inplace(loss, Z, y, sw, b, epsilon, inv_w, row_loss, n_threads=1)
                                           (the BLAS path's row pass)
predict_dense(X, W, b, out), predict_csr(data, indices, indptr, W, b, out)

X, W, dW, db, scratch, Z, out must be C-contiguous; y is (n, k) of X's dtype
for the per-output losses and (n,) int64 for the multiclass ones; sw, b, db
may be None.  The scratch layout and the chunked reduction (chunk order
0..n_threads-1) are those of loss_drivers.scratch_size.  OPENMP tells whether
the extension was built with OpenMP.
"""
cimport cython
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.math cimport exp, log, log1p, fabs
import numpy as np

cdef extern from *:
    """
    #ifndef OPTKERN_OPENMP
    #define OPTKERN_OPENMP 0
    #endif
    static const int optkern_openmp_built = OPTKERN_OPENMP;
    """
    const int optkern_openmp_built

OPENMP = bool(optkern_openmp_built)

# int_t, ROW_BLOCK and _per_chunk come from _losses.pxd


{BLOCKS}


cdef double _penalty_add(const floating* W, floating* dW, Py_ssize_t size, double alpha,
                         double l1_ratio) noexcept nogil:
    cdef Py_ssize_t e
    cdef double l1 = 0, l2 = 0
    cdef floating a1 = <floating>(alpha * l1_ratio)
    cdef floating a2 = <floating>(alpha * (1 - l1_ratio))
    cdef floating w, s
    if alpha == 0:
        return 0.0
    for e in range(size):
        w = W[e]
        s = 0
        if w > 0:
            s = 1
        elif w < 0:
            s = -1
        dW[e] = dW[e] + a1 * s + a2 * w
        l1 += fabs(w)
        l2 += w * w
    return alpha * (l1_ratio * l1 + 0.5 * (1 - l1_ratio) * l2)


cdef double _inverse_weight(const floating* sw, Py_ssize_t n) noexcept nogil:
    cdef double t = 0
    cdef Py_ssize_t i
    if sw == NULL:
        return 1.0 / n if n > 0 else 0.0
    for i in range(n):
        t += sw[i]
    return 1.0 / t if t > 0 else 0.0


cdef double _reduce_T(floating* scratch, Py_ssize_t n_chunks, floating* dW, floating* db,
                      Py_ssize_t d, Py_ssize_t k, int n_threads) noexcept nogil:
    """dW = sum_c accT_c^T in chunk order; returns the loss sum.

    Serial (n_threads is unused): a second parallel region would cost a second
    fork-join, which on a loaded machine waits for a descheduled thread."""
    cdef Py_ssize_t f, j, c, base = k * d, per = _per_chunk(d, k)
    cdef floating s
    cdef double total = 0
    for f in range(d):
        for j in range(k):
            s = scratch[base + j * d + f]
            for c in range(1, n_chunks):
                s = s + scratch[base + c * per + j * d + f]
            dW[f * k + j] = s
    for c in range(n_chunks):
        if db != NULL:
            for j in range(k):
                if c == 0:
                    db[j] = scratch[base + c * per + k * d + j]
                else:
                    db[j] = db[j] + scratch[base + c * per + k * d + j]
        total += scratch[base + c * per + per - 1]
    return total


cdef double _reduce(floating* scratch, Py_ssize_t n_chunks, floating* dW, floating* db,
                    Py_ssize_t d, Py_ssize_t k, int n_threads) noexcept nogil:
    """CSR variant: chunk partials are in W's (d, k) layout (serial, as _reduce_T)."""
    cdef Py_ssize_t e, j, c, base = k * d, per = _per_chunk(d, k)
    cdef floating s
    cdef double total = 0
    for e in range(d * k):
        s = scratch[base + e]
        for c in range(1, n_chunks):
            s = s + scratch[base + c * per + e]
        dW[e] = s
    for c in range(n_chunks):
        if db != NULL:
            for j in range(k):
                if c == 0:
                    db[j] = scratch[base + c * per + k * d + j]
                else:
                    db[j] = db[j] + scratch[base + c * per + k * d + j]
        total += scratch[base + c * per + per - 1]
    return total


def _ptr_or_empty(a, dt):
    return np.zeros(0, dt) if a is None else a


def predict_dense(floating[:, ::1] X, floating[:, ::1] W, b, floating[:, ::1] out):
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = W.shape[1], i, j, f
    cdef floating[::1] bv = _ptr_or_empty(b, np.asarray(W).dtype)
    cdef bint has_b = b is not None
    cdef floating a
    with nogil:
        for i in prange(n, schedule="static"):
            for j in range(k):
                a = 0
                for f in range(d):
                    a = a + X[i, f] * W[f, j]
                if has_b:
                    a = a + bv[j]
                out[i, j] = a


def predict_csr(floating[::1] data, const int_t[::1] indices, const int_t[::1] indptr,
                floating[:, ::1] W, b, floating[:, ::1] out):
    cdef Py_ssize_t n = out.shape[0], k = W.shape[1], i, j, v, f
    cdef floating[::1] bv = _ptr_or_empty(b, np.asarray(W).dtype)
    cdef bint has_b = b is not None
    cdef floating x
    with nogil:
        for i in prange(n, schedule="static"):
            for j in range(k):
                out[i, j] = bv[j] if has_b else 0
            for v in range(indptr[i], indptr[i + 1]):
                x = data[v]
                f = indices[v]
                for j in range(k):
                    out[i, j] = out[i, j] + x * W[f, j]
'''

_PER_LOSS = r'''

# ---------------------------------------------------------------- {name}

cdef double _dense_chunk_{name}(const floating* X, Py_ssize_t ldx, const floating* yr,
                                const int64_t* yc, const floating* sw, const floating* WT,
                                const floating* b, floating eps, double inv_w, floating* acc,
                                Py_ssize_t start, Py_ssize_t stop, Py_ssize_t d,
                                Py_ssize_t k) noexcept nogil:
    cdef floating* accT = acc
    cdef floating* accb = acc + k * d
    cdef floating* Zb = accb + k
    cdef floating* Db = Zb + ROW_BLOCK * k
    cdef Py_ssize_t i = start, r, r_n, j, e
    cdef double total = 0, w
    cdef floating scale, g
    for e in range(k * d + k):
        acc[e] = 0
    while i < stop:
        r_n = min(ROW_BLOCK, stop - i)
        _scores_block(X + i * ldx, ldx, r_n, WT, b, Zb, d, k)
        for r in range(r_n):
            w = 1.0 if sw == NULL else sw[i + r]
            total += w * row_{name}(Zb + r * k, (yr + (i + r) * k) if yr != NULL else NULL,
                                    yc[i + r] if yc != NULL else 0, eps, Db + r * k, k)
            scale = <floating>(w * inv_w)
            for j in range(k):
                g = Db[r * k + j] * scale
                Db[r * k + j] = g
                accb[j] = accb[j] + g
        _accumulate_block(X + i * ldx, ldx, r_n, Db, accT, d, k)
        i = i + r_n
    return total


cdef double dense_{name}(const floating* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                         const floating* yr, const int64_t* yc, const floating* sw,
                         const floating* W, const floating* b, double alpha, double l1_ratio,
                         floating eps, floating* dW, floating* db, floating* scratch,
                         int n_chunks) noexcept nogil:
    """Fused loss and gradient of {name!r}; see the module docstring."""
    cdef double inv_w = _inverse_weight(sw, n)
    cdef Py_ssize_t f, j, c, per = _per_chunk(d, k), base = k * d
    cdef floating* acc
    for f in range(d):
        for j in range(k):
            scratch[j * d + f] = W[f * k + j]
    for c in prange(n_chunks, num_threads=n_chunks, schedule="static"):
        acc = scratch + base + c * per
        acc[per - 1] = <floating>_dense_chunk_{name}(
            X, d, yr, yc, sw, scratch, b, eps, inv_w, acc, c * n // n_chunks,
            (c + 1) * n // n_chunks, d, k)
    return (_reduce_T(scratch, n_chunks, dW, db, d, k, n_chunks) * inv_w
            + _penalty_add(W, dW, d * k, alpha, l1_ratio))


cdef double _csr_chunk_{name}(const floating* data, const int_t* indices, const int_t* indptr,
                              const floating* yr, const int64_t* yc, const floating* sw,
                              const floating* W, const floating* b, floating eps, double inv_w,
                              floating* acc, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t d,
                              Py_ssize_t k) noexcept nogil:
    cdef floating* accb = acc + k * d
    cdef floating* z = accb + k
    cdef floating* dz = z + ROW_BLOCK * k
    cdef Py_ssize_t i, j, e, v, f
    cdef double total = 0, w
    cdef floating scale, g, x
    for e in range(k * d + k):
        acc[e] = 0
    for i in range(start, stop):
        for j in range(k):
            z[j] = b[j] if b != NULL else 0
        for v in range(indptr[i], indptr[i + 1]):
            x = data[v]
            f = indices[v]
            for j in range(k):
                z[j] = z[j] + x * W[f * k + j]
        w = 1.0 if sw == NULL else sw[i]
        total += w * row_{name}(z, (yr + i * k) if yr != NULL else NULL,
                                yc[i] if yc != NULL else 0, eps, dz, k)
        scale = <floating>(w * inv_w)
        for j in range(k):
            g = dz[j] * scale
            dz[j] = g
            accb[j] = accb[j] + g
        for v in range(indptr[i], indptr[i + 1]):
            x = data[v]
            f = indices[v]
            for j in range(k):
                acc[f * k + j] = acc[f * k + j] + x * dz[j]
    return total


cdef double csr_{name}(const floating* data, const int_t* indices, const int_t* indptr,
                       Py_ssize_t n, Py_ssize_t d, Py_ssize_t k, const floating* yr,
                       const int64_t* yc, const floating* sw, const floating* W,
                       const floating* b, double alpha, double l1_ratio, floating eps,
                       floating* dW, floating* db, floating* scratch,
                       int n_chunks) noexcept nogil:
    cdef double inv_w = _inverse_weight(sw, n)
    cdef Py_ssize_t c, per = _per_chunk(d, k), base = k * d
    cdef floating* acc
    for c in prange(n_chunks, num_threads=n_chunks, schedule="static"):
        acc = scratch + base + c * per
        acc[per - 1] = <floating>_csr_chunk_{name}(
            data, indices, indptr, yr, yc, sw, W, b, eps, inv_w, acc, c * n // n_chunks,
            (c + 1) * n // n_chunks, d, k)
    return (_reduce(scratch, n_chunks, dW, db, d, k, n_chunks) * inv_w
            + _penalty_add(W, dW, d * k, alpha, l1_ratio))


cdef double rows_{name}(floating* Z, Py_ssize_t n, Py_ssize_t k, const floating* yr,
                        const int64_t* yc, const floating* sw, const floating* b,
                        floating eps, double inv_w, double* row_loss,
                        int n_threads) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double w, total = 0
    cdef floating* z
    for i in prange(n, schedule="static", num_threads=n_threads):
        z = Z + i * k
        if b != NULL:
            for j in range(k):
                z[j] = z[j] + b[j]
        w = 1.0 if sw == NULL else sw[i]
        row_loss[i] = w * row_{name}(z, (yr + i * k) if yr != NULL else NULL,
                                     yc[i] if yc != NULL else 0, eps, z, k)
        for j in range(k):
            z[j] = z[j] * <floating>(w * inv_w)
    for i in range(n):
        total += row_loss[i]
    return total
'''

_DISPATCH = r'''

cdef double _dense_dispatch(int which, const floating* X, Py_ssize_t n, Py_ssize_t d,
                            Py_ssize_t k, const floating* yr, const int64_t* yc,
                            const floating* sw, const floating* W, const floating* b,
                            double alpha, double l1_ratio, floating eps, floating* dW,
                            floating* db, floating* scratch, int n_chunks) noexcept nogil:
{dense_cases}
    return 0.0


cdef double _csr_dispatch(int which, const floating* data, const int_t* indices,
                          const int_t* indptr, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                          const floating* yr, const int64_t* yc, const floating* sw,
                          const floating* W, const floating* b, double alpha,
                          double l1_ratio, floating eps, floating* dW, floating* db,
                          floating* scratch, int n_chunks) noexcept nogil:
{csr_cases}
    return 0.0


cdef double _rows_dispatch(int which, floating* Z, Py_ssize_t n, Py_ssize_t k,
                           const floating* yr, const int64_t* yc, const floating* sw,
                           const floating* b, floating eps, double inv_w,
                           double* row_loss, int n_threads) noexcept nogil:
{rows_cases}
    return 0.0


LOSS_IDS = {loss_ids!r}


def _loss_id(loss):
    try:
        return LOSS_IDS[loss]
    except KeyError:
        raise ValueError(f"unknown loss {{loss!r}}") from None


def _targets(y, dt):
    """(yr, yc): per-output targets (n, k) of dt, or class indices (n,) int64."""
    if y.dtype == np.int64:
        return np.zeros((0, 0), dt), y
    return y, np.zeros(0, np.int64)


def dense_loss_grad(loss, X, y, sw, W, b, double alpha, double l1_ratio, double epsilon,
                    dW, db, scratch, int n_threads):
    return _dense_typed(_loss_id(loss), X, *_targets(y, X.dtype),
                                _ptr_or_empty(sw, X.dtype), sw is not None, W,
                                _ptr_or_empty(b, X.dtype), b is not None, alpha,
                                l1_ratio, epsilon, dW, _ptr_or_empty(db, X.dtype),
                                scratch, n_threads)


def _dense_typed(int which, const floating[:, ::1] X, const floating[:, ::1] yr,
                 const int64_t[::1] yc, const floating[::1] sw, bint has_sw,
                 const floating[:, ::1] W, const floating[::1] b, bint has_b,
                 double alpha, double l1_ratio, double epsilon, floating[:, ::1] dW,
                 floating[::1] db, floating[::1] scratch, int n_threads):
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = W.shape[1]
    cdef double value
    with nogil:
        value = _dense_dispatch(
            which, &X[0, 0], n, d, k, &yr[0, 0] if yr.shape[0] > 0 else NULL,
            &yc[0] if yc.shape[0] > 0 else NULL, &sw[0] if has_sw else NULL, &W[0, 0],
            &b[0] if has_b else NULL, alpha, l1_ratio, <floating>epsilon, &dW[0, 0],
            &db[0] if has_b else NULL, &scratch[0], n_threads)
    return value


def csr_loss_grad(loss, data, indices, indptr, y, sw, W, b, double alpha, double l1_ratio,
                  double epsilon, dW, db, scratch, int n_threads):
    if indices.dtype != indptr.dtype:
        indptr = indptr.astype(indices.dtype)
    if indices.dtype not in (np.int32, np.int64):
        indices = indices.astype(np.int64)
        indptr = indptr.astype(np.int64)
    dt = data.dtype
    args = (_loss_id(loss), data, indices, indptr, *_targets(y, dt), _ptr_or_empty(sw, dt),
            sw is not None, W, _ptr_or_empty(b, dt), b is not None, alpha, l1_ratio,
            epsilon, dW, _ptr_or_empty(db, dt), scratch, n_threads)
    return _csr_typed(*args)


def _csr_typed(int which, const floating[::1] data, const int_t[::1] indices,
               const int_t[::1] indptr, const floating[:, ::1] yr, const int64_t[::1] yc,
               const floating[::1] sw, bint has_sw, const floating[:, ::1] W,
               const floating[::1] b, bint has_b, double alpha, double l1_ratio,
               double epsilon, floating[:, ::1] dW, floating[::1] db,
               floating[::1] scratch, int n_threads):
    cdef Py_ssize_t n = indptr.shape[0] - 1, d = W.shape[0], k = W.shape[1]
    cdef double value
    cdef floating dummy = 0
    cdef int_t idummy = 0
    with nogil:
        value = _csr_dispatch(
            which, &data[0] if data.shape[0] > 0 else &dummy,
            &indices[0] if indices.shape[0] > 0 else &idummy, &indptr[0], n, d, k,
            &yr[0, 0] if yr.shape[0] > 0 else NULL, &yc[0] if yc.shape[0] > 0 else NULL,
            &sw[0] if has_sw else NULL, &W[0, 0], &b[0] if has_b else NULL, alpha,
            l1_ratio, <floating>epsilon, &dW[0, 0], &db[0] if has_b else NULL,
            &scratch[0], n_threads)
    return value


def rows_inplace(loss, Z, y, sw, b, double epsilon, double inv_w, double[::1] row_loss,
                 int n_threads=1):
    dt = Z.dtype
    args = (_loss_id(loss), Z, *_targets(y, dt), _ptr_or_empty(sw, dt), sw is not None,
            _ptr_or_empty(b, dt), b is not None, epsilon, inv_w, row_loss, n_threads)
    return _rows_typed(*args)


def _rows_typed(int which, floating[:, ::1] Z, const floating[:, ::1] yr,
                const int64_t[::1] yc, const floating[::1] sw, bint has_sw,
                const floating[::1] b, bint has_b, double epsilon, double inv_w,
                double[::1] row_loss, int n_threads):
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    cdef double value
    with nogil:
        value = _rows_dispatch(
            which, &Z[0, 0], n, k, &yr[0, 0] if yr.shape[0] > 0 else NULL,
            &yc[0] if yc.shape[0] > 0 else NULL, &sw[0] if has_sw else NULL,
            &b[0] if has_b else NULL, <floating>epsilon, inv_w, &row_loss[0], n_threads)
    return value
'''


# Row blocks and register tiles of the fused dense kernel, as in
# loss_drivers._scores_block / _accumulate_block: a full block of ROW_BLOCK
# rows computes its scores in tiles of ROW_BLOCK rows x SCORE_TILES outputs
# (the largest tile that fits first, then smaller ones) and its rank-ROW_BLOCK
# update of dW^T in tiles of ROW_BLOCK rows x ACC_TILES outputs; a partial
# block (the end of a chunk) goes row by row.  The update keeps one output per
# tile here (the Numba kernel uses 5): setup.py compiles with -O3 and no
# -march, and GCC vectorises the update loop (SSE2) only while it needs few
# run-time alias checks -- with 5 output rows stored per step it fell back to
# scalar code (18 ms against 13 ms at (4096, 784, 10), one thread, measured
# 2026-11-25 on the project machine; the 4-row kernel before: 12.7 ms).
ROW_BLOCK = 6          # must equal loss_drivers.ROW_BLOCK: scratch_size() sizes the scratch
SCORE_TILES = (2, 1)
ACC_TILES = (1,)


def _score_tile(R, J):
    ind = "        "
    L = [f"{ind}while j + {J} <= k:"]
    L += [f"{ind}    w{c} = WT + (j + {c}) * d" for c in range(J)]
    L += [f"{ind}    a{r}_{c} = 0" for c in range(J) for r in range(R)]
    L += [f"{ind}    for f in range(d):"]
    L += [f"{ind}        y{r} = x{r}[f]" for r in range(R)]
    L += [f"{ind}        v{c} = w{c}[f]" for c in range(J)]
    L += [f"{ind}        a{r}_{c} = a{r}_{c} + y{r} * v{c}" for c in range(J) for r in range(R)]
    L += [f"{ind}    Zb[{r} * k + j + {c}] = a{r}_{c}" for c in range(J) for r in range(R)]
    L += [f"{ind}    j = j + {J}"]
    return L


def _acc_tile(R, J):
    ind = "        "
    L = [f"{ind}while j + {J} <= k:"]
    L += [f"{ind}    g{c} = accT + (j + {c}) * d" for c in range(J)]
    L += [f"{ind}    p{r}_{c} = Db[{r} * k + j + {c}]" for c in range(J) for r in range(R)]
    L += [f"{ind}    for f in range(d):"]
    L += [f"{ind}        y{r} = x{r}[f]" for r in range(R)]
    L += [f"{ind}        g{c}[f] = g{c}[f] + (" + " + ".join(f"p{r}_{c} * y{r}" for r in range(R)) + ")"
          for c in range(J)]
    L += [f"{ind}    j = j + {J}"]
    return L


def _block_functions(R=ROW_BLOCK, score_tiles=SCORE_TILES, acc_tiles=ACC_TILES):
    js = max(score_tiles)
    ja = max(acc_tiles)
    xs = [f"    cdef const floating* x{r}" for r in range(R)]
    rows = [f"        x{r} = X + {r} * ldx" for r in range(R)]
    sc = ["cdef void _scores_block(const floating* X, Py_ssize_t ldx, Py_ssize_t r_n, "
          "const floating* WT,",
          "                        const floating* b, floating* Zb, Py_ssize_t d, "
          "Py_ssize_t k) noexcept nogil:",
          "    cdef Py_ssize_t r, j, f"]
    sc += [f"    cdef const floating* w{c}" for c in range(js)] + xs
    sc += ["    cdef floating " + ", ".join(f"y{r}" for r in range(R)) + ", "
           + ", ".join(f"v{c}" for c in range(js)),
           "    cdef floating " + ", ".join(f"a{r}_{c}" for c in range(js) for r in range(R))]
    sc += [f"    if r_n == {R}:"] + rows + ["        j = 0"]
    for t in score_tiles:
        sc += _score_tile(R, t)
    sc += ["    else:",
           "        for r in range(r_n):",
           "            x0 = X + r * ldx",
           "            for j in range(k):",
           "                w0 = WT + j * d",
           "                a0_0 = 0",
           "                for f in range(d):",
           "                    a0_0 = a0_0 + x0[f] * w0[f]",
           "                Zb[r * k + j] = a0_0",
           "    if b != NULL:",
           "        for r in range(r_n):",
           "            for j in range(k):",
           "                Zb[r * k + j] = Zb[r * k + j] + b[j]"]
    ac = ["cdef void _accumulate_block(const floating* X, Py_ssize_t ldx, Py_ssize_t r_n,",
          "                            const floating* Db, floating* accT, Py_ssize_t d,",
          "                            Py_ssize_t k) noexcept nogil:",
          "    cdef Py_ssize_t r, j, f"]
    ac += [f"    cdef floating* g{c}" for c in range(ja)] + xs
    ac += ["    cdef floating " + ", ".join(f"y{r}" for r in range(R)),
           "    cdef floating " + ", ".join(f"p{r}_{c}" for c in range(ja) for r in range(R))]
    ac += [f"    if r_n == {R}:"] + rows + ["        j = 0"]
    for t in acc_tiles:
        ac += _acc_tile(R, t)
    ac += ["    else:",
           "        for r in range(r_n):",
           "            x0 = X + r * ldx",
           "            for j in range(k):",
           "                g0 = accT + j * d",
           "                p0_0 = Db[r * k + j]",
           "                for f in range(d):",
           "                    g0[f] = g0[f] + p0_0 * x0[f]"]
    return "\n".join(sc) + "\n\n\n" + "\n".join(ac)


def sources():
    """(pxd_text, pyx_text) generated from the loss rules."""
    rules = _load_rules()
    pxd = [_PXD_HEADER.replace("{ROW_BLOCK}", str(ROW_BLOCK))]
    pyx = [_PYX.replace("{ROW_BLOCK}", str(ROW_BLOCK))
           .replace("{BLOCKS}", _block_functions())]
    dense, csr, rows = [], [], []
    ids = {}
    for i, spec in enumerate(rules.LOSS_RULES.values()):
        ids[spec.name] = i
        pxd.append("\n\n" + _rule_to_cython(spec))
        pxd.append(_row_function(spec))
        pxd.append(_PXD_MINIBATCH.format(name=spec.name))
        pyx.append(_PER_LOSS.format(name=spec.name))
        kw = "if" if i == 0 else "elif"
        dense.append(f"    {kw} which == {i}:\n        return dense_{spec.name}("
                     "X, n, d, k, yr, yc, sw, W, b, alpha, l1_ratio, eps, dW, db, "
                     "scratch, n_chunks)")
        csr.append(f"    {kw} which == {i}:\n        return csr_{spec.name}("
                   "data, indices, indptr, n, d, k, yr, yc, sw, W, b, alpha, l1_ratio, "
                   "eps, dW, db, scratch, n_chunks)")
        rows.append(f"    {kw} which == {i}:\n        return rows_{spec.name}("
                    "Z, n, k, yr, yc, sw, b, eps, inv_w, row_loss, n_threads)")
    pyx.append(_DISPATCH.format(dense_cases="\n".join(dense), csr_cases="\n".join(csr),
                                rows_cases="\n".join(rows), loss_ids=ids))
    return "".join(pxd), "".join(pyx)


_write_if_changed = _files.write_if_changed


def write_sources(directory):
    pxd, pyx = sources()
    _write_if_changed(os.path.join(directory, "_losses.pxd"), pxd)
    pyx_path = os.path.join(directory, "_losses.pyx")
    _write_if_changed(pyx_path, pyx)
    return [("_losses", pyx_path)]


if __name__ == "__main__":
    print(write_sources(HERE))
