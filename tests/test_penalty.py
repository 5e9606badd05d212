"""kernels/penalty.py, the elastic-net penalty written once: its pieces
against the NumPy oracle (loss_reference.penalty, written separately on
purpose), and the Cython kernels' C twins translated from its text."""

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from optkern.kernels import penalty as P
from optkern.kernels._files import load_by_path
from optkern.kernels.loss_reference import penalty as reference

KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 12), k=st.integers(1, 4), seed=st.integers(0, 2 ** 32 - 1),
       # (a float32 oracle underflows below ~1e-38: no alpha there)
       alpha=st.one_of(st.just(0.0), st.floats(1e-4, 10.0)), l1_ratio=st.floats(0.0, 1.0),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_the_pieces_are_the_oracles_penalty(d, k, seed, alpha, l1_ratio, dtype):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, k)).astype(dtype)
    W[rng.random((d, k)) < 0.3] = 0       # sign(0) = 0: the subgradient at 0
    value, grad = reference(W, alpha, l1_ratio)
    g = np.array([P.penalty_grad(float(w), alpha, l1_ratio) for w in W.ravel()])
    np.testing.assert_allclose(g.reshape(W.shape), grad, rtol=1e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-12 * max(alpha, 1.0))
    # the strengths' form (the loss kernels': a1 sign(w) + a2 w)
    a1, a2 = P.l1_strength(alpha, l1_ratio), P.l2_strength(alpha, l1_ratio)
    np.testing.assert_allclose(a1 * np.sign(W.astype(np.float64)) + a2 * W.astype(np.float64),
                               grad, rtol=1e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-12 * max(alpha, 1.0))
    W64 = W.astype(np.float64)
    v = P.penalty_of_sums(alpha, l1_ratio, float(np.abs(W64).sum()), float((W64 * W64).sum()))
    assert v == pytest.approx(float(value), rel=1e-6 if dtype == np.float32 else 1e-12, abs=1e-300)


def test_the_named_penalties_l1_share():
    assert P.l1_ratio_of("l2", 0.7) == 0.0
    assert P.l1_ratio_of("l1", 0.7) == 1.0
    assert P.l1_ratio_of("elasticnet", 0.7) == 0.7
    assert type(P.l1_ratio_of("elasticnet", 1)) is float


def test_the_cython_kernels_hold_twins_translated_from_penalty_py():
    pytest.importorskip("Cython")
    gl = load_by_path("_optkern_genl_penalty", os.path.join(KERNELS, "cython", "generate_losses.py"))
    ge = load_by_path("_optkern_gene_penalty", os.path.join(KERNELS, "cython", "generate_epochs.py"))
    texts = {"_losses.pyx": gl.sources()[1], "_epochs.pyx": ge.generate()["_epochs.pyx"]}
    for name in P.KERNEL_FUNCTIONS:
        for module, text in texts.items():
            assert f"cdef inline double _{name}(" in text, (module, name)
            assert f'"""C twin of penalty.{name}."""' in text, (module, name)
    assert "_penalty_of_sums(alpha, l1_ratio, l1, l2)" in texts["_losses.pyx"]
    assert "_penalty_grad(wv, alpha, l1_ratio)" in texts["_epochs.pyx"]
    # the generated epoch's SOURCE_HASH covers penalty.py (an edit there rebuilds it)
    assert os.path.join(KERNELS, "penalty.py") in ge.sources_of(ge.__file__, ge.TEMPLATES,
                                                                 ge.RULE_FILES)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), seed=st.integers(0, 2 ** 32 - 1),
       alpha=st.one_of(st.just(0.0), st.floats(1e-4, 10.0)), l1_ratio=st.floats(0.0, 1.0),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_the_sparse_epochs_penalty_is_penalty_py_compiled(n, seed, alpha, l1_ratio, dtype):
    """sparse_epoch_drivers compiles penalty.py's functions (no copy of its
    own): the per-weight gradient is bit for bit penalty.penalty_grad, the
    value (its sums reassociated, in lanes) the oracle's to rounding."""
    from optkern.kernels import sparse_epoch_drivers as sed
    assert sed.penalty_grad.py_func is P.penalty_grad
    rng = np.random.default_rng(seed)
    W = rng.normal(size=n).astype(dtype)
    W[rng.random(n) < 0.3] = 0
    value, _ = reference(W, alpha, l1_ratio)
    assert sed.penalty_value(W, alpha, l1_ratio) == pytest.approx(
        float(value), rel=1e-6 if dtype == np.float32 else 1e-12, abs=1e-300)
    # the CSR epoch's weight-by-weight form: alpha * sum of penalty_per_alpha
    per = sum(P.penalty_per_alpha(float(w), l1_ratio) for w in W)
    assert alpha * per == pytest.approx(float(value), rel=1e-6 if dtype == np.float32 else 1e-12,
                                        abs=1e-300)


def test_no_template_or_driver_writes_the_penalty_by_hand():
    """The penalty's formula stands in penalty.py (and the NumPy oracles) only:
    the Numba drivers and the Cython/C templates take it from there."""
    files = [os.path.join(KERNELS, "sparse_epoch_drivers.py"),
             os.path.join(KERNELS, "loss_drivers.py")]
    for root in (os.path.join(KERNELS, "templates"), os.path.join(KERNELS, "cython", "templates")):
        files += [os.path.join(root, f) for f in sorted(os.listdir(root))
                  if f.endswith((".py", ".tp"))]
    import io
    import re
    import tokenize

    formula = re.compile(r"-\s*l1_ratio\s*\)|l1_ratio\s*\*\s*f?abs\s*\(")
    for path in files:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if path.endswith(".py"):   # the code, not its docstrings and comments
            toks = tokenize.generate_tokens(io.StringIO(text).readline)
            text = " ".join(t.string for t in toks
                            if t.type not in (tokenize.STRING, tokenize.COMMENT))
        else:                      # a template's comment lines: # and {{# ...}} (.pyx), /* */ (C)
            text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
            text = "\n".join(ln for ln in text.splitlines()
                              if not ln.lstrip().startswith(("#", "{{#")))
        assert not formula.search(text), (path, formula.search(text))


def test_the_dense_c_epoch_holds_c_twins_translated_from_penalty_py():
    pytest.importorskip("Cython")
    ge = load_by_path("_optkern_gene_penalty_c", os.path.join(KERNELS, "cython", "generate_epochs.py"))
    text = ge.generate()["_epochs.pyx"]
    for name in P.C_FUNCTIONS:
        assert f"OKX_INLINE double okx_{name}(" in text, name
    assert "okx_penalty_of_sums(alpha, l1_ratio, l1, l2);" in text
    assert "okx_l1_strength(alpha, l1_ratio);" in text
    assert "_penalty_per_alpha(wv, l1_ratio)" in text


def _host_statements(a, b):
    """Every statement form of the host subset, for the C emitter's test."""
    x, y = b, a
    if a > b and not b < 0.0:
        x = x * 2.0
    elif a == b or b > 3.0:
        y = -y
    else:
        pass
    x += y
    return x - (y if a < 0.5 else 1.5)


def test_the_c_host_emitter_compiles_and_agrees_with_python(tmp_path):
    """rulelang.c.CHostEmitter's C, compiled (no contraction: Python's
    rounding), returns what Python's functions return, bit for bit: the
    penalty's KERNEL_FUNCTIONS and a function with every host statement."""
    import ctypes
    import shutil
    import subprocess
    import sys

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    from optkern.kernels import rulelang
    tpl = load_by_path("_optkern_templates_c_test", os.path.join(KERNELS, "cython", "_templates.py"))
    twins = tpl.penalty_twins(rulelang.c.CHostEmitter)
    tr = rulelang.c.CHostEmitter(_host_statements, int_first=False, globals_={})
    twins.append(type(twins[0])(
        name="host_statements", args=", ".join(f"double {tr.var(p)}" for p in tr.params),
        body=tr.local_decls() + tr.stmts(tr.fdef.body, 4,
                                         lambda t, s: [f"return {t.expr(s.value)};"])))
    src = ["#include <math.h>"]
    for fn in twins:
        src += [f"double okx_{fn.name}({fn.args}) {{", *fn.body, "}"]
    (tmp_path / "twins.c").write_text("\n".join(src) + "\n")
    lib = tmp_path / ("twins.dll" if sys.platform == "win32" else "twins.so")
    subprocess.run([cc, "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(lib),
                    str(tmp_path / "twins.c"), "-lm"], check=True)
    so = ctypes.CDLL(str(lib))
    funcs = {fn.name: getattr(so, "okx_" + fn.name) for fn in twins}
    py = {name: getattr(P, name) for name in P.KERNEL_FUNCTIONS}
    py["host_statements"] = _host_statements
    rng = np.random.default_rng(0)
    values = [0.0, -0.0, 1.0, -1.0, 0.5, 3.5, 1e-300, -2.5] + list(rng.normal(size=40) * 3)
    for name, f in funcs.items():
        n = len(twins[[t.name for t in twins].index(name)].args.split(","))
        f.restype = ctypes.c_double
        f.argtypes = [ctypes.c_double] * n
        for i in range(len(values)):
            args = [values[(i + 7 * j) % len(values)] for j in range(n)]
            got, want = f(*args), py[name](*args)
            assert np.float64(got).tobytes() == np.float64(want).tobytes(), (name, args, got, want)
