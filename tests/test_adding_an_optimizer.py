"""The documented way to add an optimizer (docs/adding_an_optimizer.md), done at
run time: one rule with its registry entry plus one NumPy reference, and
nothing else.  Every backend that compiles rules at run time, the optimizer
class, the estimators' name, the command line and the trajectories pick it up;
the ahead-of-time Cython backend says it cannot, and "auto" falls back to Numba.

The rule is sign descent, p <- p - lr * sign(d), with an optional momentum
(signum: d = m <- momentum*m + (1 - momentum)*g; d = g when momentum == 0).
The momentum buffer is optional state, so with the default momentum=0 the
optimizer holds no state at all; ``sign`` is written with comparisons.
"""

import ast
import contextlib
import inspect
import subprocess
import sys
import pickle
import warnings

import numba
import numpy as np
from numpy import sign
import pytest
from hypothesis import given, strategies as st

import optkern
from optkern import optimizers, trajectories
from optkern.cli import main
from optkern.kernels import reference, rulelang, rules

from conftest import assert_close


# --------------------------------------------------- the three things one writes
def signsgd_rule(p, g, momentum_buffer, lr, momentum, one_minus_momentum, z):
    d = g
    if momentum != 0:
        momentum_buffer = momentum * momentum_buffer + one_minus_momentum * g
        d = momentum_buffer
    if d > 0:
        p = p - lr
    elif d < 0:
        p = p + lr
    return p, momentum_buffer


def signsgd_prepare(step, scalars, lr, momentum):
    return (lr, momentum, 1.0 - momentum), scalars


SPEC = rules.RuleSpec(
    name="signsgd", rule=signsgd_rule, prepare=signsgd_prepare,
    states=("momentum_buffer?momentum",),
    kernel_hyper=("lr", "momentum", "one_minus_momentum"),
    user_hyper=("lr", "momentum"),
    scalar_states=(),
    options=(rules.real("lr", 1e-3, lo=0.0),
             rules.real("momentum", 0.0, lo=0.0, hi=1.0, hi_open=True)),
    classes=(rules.OptimizerClass("SignSGD", doc="Sign descent (signum with momentum)."),),
    estimator_names=(rules.EstimatorName("signsgd", "SignSGD", 0.01),),
)


def signsgd_reference(p, g, state, step, *, lr, momentum):
    """The independent oracle, in NumPy (np.sign, not the rule's comparisons)."""
    if momentum != 0:
        m = state["momentum_buffer"]
        m *= momentum
        m += (1 - momentum) * g
        g = m
    p -= lr * np.sign(g)


@contextlib.contextmanager
def registered(spec, reference_update):
    """``spec`` and its NumPy reference registered for the block, then removed."""
    rules.register(spec)
    reference.register(spec.name, reference_update)
    try:
        yield
    finally:
        rules.unregister(spec.name)
        reference.UPDATES.pop(spec.name)


@pytest.fixture(scope="module", autouse=True)
def signsgd():
    with registered(SPEC, signsgd_reference):
        yield SPEC


RUN_TIME_BACKENDS = ["numba", "numba-parallel", "cuda", "auto"]


# ------------------------------------------------------------------ every backend
@pytest.mark.parametrize("backend", RUN_TIME_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 300), lr=st.floats(1e-4, 0.5),
       momentum=st.sampled_from([0.0, 0.3, 0.9]), seed=st.integers(0, 2 ** 32 - 1))
def test_every_backend_agrees_with_the_reference(backend, dtype, n, lr, momentum, seed):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal((n,)).astype(dtype),
          np.asfortranarray(rng.standard_normal((3, 2))).astype(dtype)]
    grads = []
    for _ in range(4):
        gs = [rng.standard_normal(a.shape).astype(dtype) for a in p0]
        gs[0][rng.random(n) < 0.2] = 0           # sign(0) = 0: the parameter stays
        grads.append(gs)
    ref = [a.copy(order="K") for a in p0]
    got = [a.copy(order="K") for a in p0]
    o_ref = optkern.SignSGD(ref, lr=lr, momentum=momentum, backend="numpy")
    o_got = optkern.SignSGD(got, lr=lr, momentum=momentum, backend=backend)
    for gs in grads:
        o_ref.step([g.copy(order="K") for g in gs])
        o_got.step([g.copy(order="K") for g in gs])
    for a, b in zip(got, ref):
        assert a.dtype == dtype
        assert_close(a, b, dtype, f"{backend} momentum={momentum}")
    sd_got, sd_ref = o_got.state_dict(), o_ref.state_dict()
    for idx, entry in sd_ref["state"].items():
        assert sorted(sd_got["state"][idx]) == sorted(entry)
        if momentum:
            assert_close(sd_got["state"][idx]["momentum_buffer"], entry["momentum_buffer"],
                         dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_is_sign_descent(dtype):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(50).astype(dtype)
    g = rng.standard_normal(50).astype(dtype)
    g[::7] = 0
    want = p - dtype(0.05) * np.sign(g)
    optkern.SignSGD(p, lr=0.05, backend="numpy").step(g)
    np.testing.assert_array_equal(p, want)


def test_serial_backends_are_bit_identical_to_the_reference():
    rng = np.random.default_rng(2)
    p = rng.standard_normal(1000)
    q = p.copy()
    a = optkern.SignSGD(p, lr=0.01, momentum=0.5, backend="numba")
    b = optkern.SignSGD(q, lr=0.01, momentum=0.5, backend="numpy")
    for _ in range(5):
        g = rng.standard_normal(1000)
        a.step(g.copy())
        b.step(g.copy())
    np.testing.assert_array_equal(p, q)


# ---------------------------------------------------------------------- the class
def test_the_class_comes_from_the_registry_entry():
    cls = optkern.SignSGD
    assert cls is optimizers.optimizer_class("SignSGD") is optkern.OPTIMIZERS["signsgd"]
    assert issubclass(cls, optkern.Optimizer) and cls.__doc__.startswith("Sign descent")
    assert str(inspect.signature(cls)) == (
        "(params, lr=0.001, momentum=0.0, *, backend='auto', check_finite=True, "
        "average=False)")
    p = np.ones(4)
    opt = cls(p)
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["momentum"] == 0.0
    assert opt.state_dict()["state"][0] == {"step": 0}      # no state without momentum
    assert "momentum_buffer" in cls(np.ones(4), momentum=0.5).state_dict()["state"][0]
    # it pickles like a built-in class, state and all
    opt.step(np.full(4, 2.0))
    again = pickle.loads(pickle.dumps(opt))
    assert type(again) is cls
    np.testing.assert_array_equal(again.param_groups[0]["params"][0], p)


@pytest.mark.parametrize("kw, error, message", [
    (dict(lr=-1.0), ValueError, "defaults: lr must be >= 0.0, got -1.0"),
    (dict(momentum=1.0), ValueError, "defaults: momentum must be < 1.0, got 1.0"),
    (dict(momentum="0.5"), TypeError, "defaults: momentum must be a real number"),
    (dict(lr=float("nan")), ValueError, "defaults: lr must be finite"),
    (dict(nesterov=True), TypeError, "SignSGD(): got an unexpected keyword argument 'nesterov'"),
])
def test_validation_and_messages_come_from_the_options(kw, error, message):
    p = np.ones(3)
    with pytest.raises(error) as exc:
        optkern.SignSGD(p, **kw)
    assert message in str(exc.value)
    np.testing.assert_array_equal(p, 1.0)


def test_a_changed_option_is_validated_at_the_next_step():
    p = np.ones(3)
    opt = optkern.SignSGD(p, lr=0.1)
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr must be >= 0.0"):
        opt.step(np.ones(3))
    np.testing.assert_array_equal(p, 1.0)


# ------------------------------------------------------ Cython cannot, auto falls back
def test_cython_says_it_cannot_and_auto_falls_back_to_numba():
    if optkern._backend.cython_module() is None:
        pytest.skip("the Cython extension is not built here")
    with pytest.raises(ValueError, match="backend='cython' cannot run rule 'signsgd'.*"
                                         "registered at run time"):
        optkern.SignSGD(np.ones(3), backend="cython")
    # a small problem, where "auto" would pick the Cython kernels
    small = optkern.SignSGD(np.ones(3), backend="auto")
    assert optkern._backend.choose_auto(3) == "cython"
    assert small.backend == "numba"


# ----------------------------------------------------------- estimators and the CLI
def _data():
    from sklearn.datasets import make_classification

    X, y = make_classification(300, 6, n_informative=4, random_state=0)
    return (X - X.mean(0)) / X.std(0), y


@pytest.mark.parametrize("backend", ["numba", "auto", "numpy"])
def test_the_estimators_take_the_name(backend):
    assert "signsgd" in optkern.OPTIMIZER_NAMES
    cls, lr, fixed = optkern.OPTIMIZER_NAMES["signsgd"]
    assert (cls, lr, fixed) == (optkern.SignSGD, 0.01, {})
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = optkern.LinearClassifier(optimizer="signsgd", backend=backend, max_epochs=5,
                                       random_state=0).fit(X, y)
    # trained: well above the majority class (0.5) in 5 epochs of fixed steps
    assert est.score(X, y) > 0.7


def test_auto_estimator_runs_the_numba_epoch_bit_for_bit():
    X, y = _data()
    coefs = []
    for backend in ("numba", "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = optkern.LinearClassifier(optimizer="signsgd", backend=backend, max_epochs=3,
                                           random_state=0, tol=None).fit(X, y)
        coefs.append(est.coef_)
    np.testing.assert_array_equal(*coefs)


def test_the_command_line_takes_the_name(tmp_path, capsys):
    from sklearn.datasets import dump_svmlight_file

    X, y = _data()
    data, model = tmp_path / "train.svm", tmp_path / "model.npz"
    dump_svmlight_file(np.round(X, 4), y, str(data), zero_based=False)
    rc = main(["train", str(data), "-o", str(model), "--optimizer", "signsgd",
               "--epochs", "3", "--backend", "numba", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Traceback" not in err and model.exists()
    assert isinstance(optkern.load(str(model)), optkern.LinearClassifier)
    assert main(["train", "--help"]) == 0
    assert "signsgd" in capsys.readouterr().out


def test_the_trajectories_take_the_name():
    assert trajectories.OPTIMIZERS["signsgd"] == (optkern.SignSGD, {})
    # no tuned rate for the picture yet: the registry's estimator rate
    assert trajectories.FUNCTIONS["quadratic"].lrs["signsgd"] == 0.01
    path = trajectories.optimizer_path("quadratic", "signsgd", steps=50, backend="numba")
    assert path.shape == (51, 2)
    # sign descent moves every coordinate by exactly lr per step
    np.testing.assert_allclose(np.abs(np.diff(path, axis=0)), 0.01, rtol=1e-12)


# ------------------------------------------------------------ the contract, by name
def test_register_checks_the_entry_by_name():
    bad = SPEC._replace(name="signsgd_bad", options=(rules.real("lr", 1e-3, lo=0.0),))
    with pytest.raises(ValueError, match="options feed \\['lr'\\] but prepare takes "
                                         "user_hyper \\['lr', 'momentum'\\]"):
        rules.register(bad)
    bad = SPEC._replace(name="signsgd_bad",
                        estimator_names=(rules.EstimatorName("x", "NoSuchClass", 0.1),))
    with pytest.raises(ValueError, match="uses class 'NoSuchClass'"):
        rules.register(bad)
    bad = SPEC._replace(name="signsgd_bad", kernel_hyper=("lr", "one_minus_momentum",
                                                          "momentum"))
    with pytest.raises(ValueError, match="the rule's hyperparameters .* are not the entry's "
                                         "kernel_hyper"):
        rules.register(bad)
    bad = SPEC._replace(name="signsgd_bad", user_hyper=("lr", "momentum", "dampening"),
                        options=SPEC.options + (rules.real("dampening", 0.0),))
    with pytest.raises(ValueError, match="prepare takes .*expected \\(step, scalars, lr, "
                                         "momentum, dampening\\)"):
        rules.register(bad)
    assert "signsgd_bad" not in rules.RULES


# ------------------------------------------------- a rule without any state array
def sign_descent_rule(p, g, lr, z):
    return (p - lr * sign(g),)


def sign_descent_prepare(step, scalars, lr):
    return (lr,), scalars


def sign_descent_reference(p, g, state, step, *, lr):
    p -= lr * np.sign(g)


STATELESS = rules.RuleSpec(
    name="signdescent", rule=sign_descent_rule, prepare=sign_descent_prepare, states=(),
    kernel_hyper=("lr",), user_hyper=("lr",), scalar_states=(),
    options=(rules.real("lr", 1e-3, lo=0.0),),
    classes=(rules.OptimizerClass("SignDescent", doc="Plain sign descent, no state."),),
    estimator_names=(rules.EstimatorName("signdescent", "SignDescent", 0.01),),
)


@pytest.fixture(scope="module")
def stateless():
    with registered(STATELESS, sign_descent_reference):
        yield optimizers.optimizer_class("SignDescent")


@pytest.mark.parametrize("backend", RUN_TIME_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_rule_without_state_runs_on_every_backend(stateless, backend, dtype):
    """The drivers' state holes left empty (``p, g, , avg``) once made the
    generated module a SyntaxError; ``sign`` is the language's (numpy.sign)."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(257).astype(dtype)
    ref, got = p0.copy(), p0.copy()
    o_ref = stateless(ref, lr=0.05, backend="numpy")
    o_got = stateless(got, lr=0.05, backend=backend)
    for _ in range(3):
        g = rng.standard_normal(257).astype(dtype)
        g[::5] = 0
        o_ref.step(g.copy())
        o_got.step(g.copy())
    assert_close(got, ref, dtype, backend)
    # no state array: the step count only
    assert all(set(v) <= {"step"} for v in o_got.state_dict()["state"].values())


@pytest.mark.parametrize("sparse", [False, True])
def test_a_rule_without_state_trains_an_estimator(stateless, sparse):
    import scipy.sparse as sp
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    if sparse:
        X = sp.csr_matrix(X)
    kw = dict(optimizer="signdescent", max_epochs=4, tol=None, random_state=0)
    got = optkern.LinearClassifier(backend="numba", **kw).fit(X, y)
    ref = optkern.LinearClassifier(backend="numpy", **kw).fit(X, y)
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-12, atol=1e-12)
    assert got.score(X, y) > 0.5


# ------------------------------------------- a rule that declares the gradient's prologue
# The rule writes only its core step; maximize, the decoupled decay of p and the
# coupled decay of g are declared in the entry (``prologue``) and put in front of
# the body by the rule language's front end, on every target, and by
# ``reference.prologue_for`` in front of the reference.
def plain_gd_rule(p, g, lr, weight_decay, decay_factor, maximize, z):
    return (p - lr * g,)


def plain_gd_prepare(step, scalars, lr, weight_decay, maximize, decoupled):
    # decay_factor (and weight_decay 0 when decoupled) come from the prologue
    return (lr, weight_decay, maximize), scalars


def plain_gd_prepare_by_hand(step, scalars, lr, weight_decay, maximize, decoupled):
    if decoupled:
        coupled, decay_factor = 0.0, 1.0 - lr * weight_decay
    else:
        coupled, decay_factor = weight_decay, 1.0
    return (lr, coupled, decay_factor, maximize), scalars


def plain_gd_prepare_decays_twice(step, scalars, lr, weight_decay, maximize, decoupled):
    decay_factor = 1.0 - lr * weight_decay
    return (lr, weight_decay * decay_factor, maximize), scalars


def plain_gd_flips_twice(p, g, lr, weight_decay, decay_factor, maximize, z):
    if maximize:
        g = -g
    return (p - lr * g,)


def plain_gd_reference(p, g, state, step, *, lr, weight_decay, maximize, decoupled):
    p -= lr * g


PROLOGUED = rules.RuleSpec(
    name="plaingd", rule=plain_gd_rule, prepare=plain_gd_prepare, states=(),
    prologue=("maximize", "decoupled_weight_decay", "weight_decay"),
    kernel_hyper=("lr", "weight_decay", "decay_factor", "maximize"),
    user_hyper=("lr", "weight_decay", "maximize", "decoupled"), scalar_states=(),
    options=(rules.real("lr", 1e-3, lo=0.0), rules.real("weight_decay", 0.0, lo=0.0),
             rules.flag("maximize"), rules.flag("decoupled_weight_decay", into=("decoupled",))),
    classes=(rules.OptimizerClass("PlainGD", doc="Gradient descent with torch's prologue."),),
)


@pytest.fixture(scope="module")
def prologued():
    with registered(PROLOGUED, plain_gd_reference):
        yield optimizers.optimizer_class("PlainGD")


def test_the_declared_prologue_is_in_the_rule_that_runs(prologued):
    fn = rules.RULES["plaingd"].rule
    assert rules.plain_gd_rule is fn and fn.__wrapped__ is plain_gd_rule
    # Python (and so Numba) runs it: maximize flips, the decays scale p and add to g
    assert fn(2.0, 1.0, 0.5, 0.0, 1.0, 0.0, 0.0) == (1.5,)
    assert fn(2.0, 1.0, 0.5, 0.0, 1.0, 1.0, 0.0) == (2.5,)
    assert fn(2.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.0) == (2.0 - 0.5 * 1.5,)
    assert fn(2.0, 1.0, 0.5, 0.0, 0.5, 0.0, 0.0) == (1.0 - 0.5,)
    # every emitter reads the same statements, in front of the body as written
    text = rulelang.cython.UpdateEmitter(fn, rules.RULES["plaingd"], "double", "f64",
                                         {}).render()
    assert text.split("\n")[1:] == [
        "    if maximize:", "        g = (-g)", "    p = (p * decay_factor)",
        "    g = (g + (weight_decay * p))", "    return (p - (lr * g))"]
    shown = rulelang.source_text(fn)[2]
    assert shown.index("g = -g  # prologue") < shown.index("return (p - lr * g,)")


def test_the_declared_prologue_is_in_the_prepare_that_runs(prologued):
    """AdamW's decay factor is written once (rulelang.prologue.PROLOGUE): the
    prepare as written returns the other kernel hyperparameters, and the one
    that runs -- in Python, Numba and the C twin -- computes the factor and
    zeroes the coupled weight decay when ``decoupled``."""
    spec = rules.RULES["plaingd"]
    fn = spec.prepare
    assert rules.plain_gd_prepare is fn and fn.__wrapped__ is plain_gd_prepare
    assert spec.written_prepare is plain_gd_prepare
    for decoupled in (0.0, 1.0):
        user = (0.3, 0.25, 1.0, decoupled)
        assert fn(2, (), *user) == plain_gd_prepare_by_hand(2, (), *user)
    assert fn(2, (), 0.3, 0.25, 0.0, 1.0) == ((0.3, 0.0, 1.0 - 0.3 * 0.25, 0.0), ())
    jitted = numba.njit(fn)
    for decoupled in (0.0, 1.0):
        assert jitted(2, (), 0.3, 0.25, 1.0, decoupled) == fn(2, (), 0.3, 0.25, 1.0, decoupled)
    c_text = rulelang.c.HostEmitter(fn, True, vars(rules))
    body = "\n".join(c_text.stmts(c_text.fdef.body, 4, lambda t, st: [ast.unparse(st)]))
    assert body.index("v_decay_factor = (1.0 - (v_lr * v_weight_decay))") \
        < body.index("return ((lr, weight_decay, decay_factor, maximize), scalars)")
    assert "decay_factor = 1.0 - lr * weight_decay" in rulelang.source_text(fn)[2]


@pytest.mark.parametrize("backend", RUN_TIME_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 200), lr=st.floats(1e-3, 0.5), weight_decay=st.floats(0.0, 2.0),
       maximize=st.booleans(), decoupled=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_a_declared_prologue_runs_on_every_backend(prologued, backend, dtype, n, lr,
                                                   weight_decay, maximize, decoupled, seed):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(dtype)
    kw = dict(lr=lr, weight_decay=weight_decay, maximize=maximize,
              decoupled_weight_decay=decoupled)
    ref, got, hand = p0.copy(), p0.copy(), p0.astype(np.float64)
    o_ref = prologued(ref, backend="numpy", **kw)
    o_got = prologued(got, backend=backend, **kw)
    for _ in range(3):
        g = rng.standard_normal(n).astype(dtype)
        o_ref.step(g.copy())
        o_got.step(g.copy())
        # torch's prologue written out: the flip, then one of the two decays
        d = -g.astype(np.float64) if maximize else g.astype(np.float64)
        if decoupled:
            hand = hand * (1.0 - lr * weight_decay)
        else:
            d = d + weight_decay * hand
        hand = hand - lr * d
    assert_close(got, ref, dtype, f"{backend} {kw}")
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(ref, hand, rtol=tol, atol=tol)


@pytest.mark.parametrize("change, message", [
    (dict(prologue=("maximise",)), "prologue 'maximise' is not one of maximize, "
                                   "decoupled_weight_decay, weight_decay"),
    (dict(prologue=("weight_decay", "maximize")), "must name each item once, in the order "
                                                  "they run: \\('maximize', 'weight_decay'\\)"),
    (dict(prologue=("maximize", "maximize")), "must name each item once"),
    (dict(rule=plain_gd_flips_twice), "line \\d+: the rule reads 'maximize', which its "
                                      "declared prologue 'maximize' applies"),
    (dict(prologue=("decoupled_weight_decay",), rule=sign_descent_rule,
          prepare=sign_descent_prepare, kernel_hyper=("lr",), user_hyper=("lr",),
          options=(rules.real("lr", 1e-3, lo=0.0),)),
     "prologue 'decoupled_weight_decay' reads the kernel hyperparameter 'decay_factor', "
     "which kernel_hyper \\('lr',\\) lacks"),
    (dict(prologue=("decoupled_weight_decay",), user_hyper=("lr", "weight_decay", "maximize"),
          options=PROLOGUED.options[:3]),
     "prologue 'decoupled_weight_decay' needs the user hyperparameters \\['decoupled'\\]"),
    (dict(prepare=plain_gd_prepare_decays_twice),
     "line \\d+: the prepare uses 'decay_factor', which its declared prologue "
     "'decoupled_weight_decay' computes"),
])
def test_register_checks_the_declared_prologue(change, message):
    bad = PROLOGUED._replace(name="plaingd_bad", **change)
    with pytest.raises(rulelang.RuleError, match=message):
        rules.register(bad)
    assert "plaingd_bad" not in rules.RULES


def test_a_prepare_leaves_the_decay_factor_to_the_prologue():
    bad = PROLOGUED._replace(name="plaingd_bad", prepare=plain_gd_prepare_by_hand)
    with pytest.raises(ValueError, match="prepare returned 4 kernel hyperparameters and 0 "
                       "scalar states; the entry declares 4 but decay_factor \\(its "
                       "prologue computes them\\) and 0"):
        rules.register(bad)
    assert "plaingd_bad" not in rules.RULES
    assert not hasattr(rules, "plain_gd_prepare_by_hand")


# ----------------------- the rules as they run are built on first use, not at import
def test_import_parses_no_rule():
    """``import optkern`` registers the rules and checks their declared prologues
    without the front end: no rule is parsed or compiled until it is used."""
    code = ("import sys, optkern\n"
            "from optkern.kernels import rules\n"
            "assert 'optkern.kernels.rulelang.frontend' not in sys.modules\n"
            "assert not rules._RUNNING or all(k[1] == () for k in rules._RUNNING)\n"
            "assert 'adam_rule' not in vars(rules)\n"
            "waiting = {s.written.__name__ for s in rules.RULES.values() if s.prologue}\n"
            "assert sorted(rules._PENDING) == sorted(waiting), (rules._PENDING, waiting)\n"
            "print(len(waiting))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert int(out) == 8    # SGD (and SGLD, on SGD's rule) to RAdam; FTRL has none


@pytest.mark.parametrize("name", [n for n in sorted(rules.RULES) if rules.RULES[n].prologue])
def test_a_rule_is_built_once_with_its_prologue_and_held_by_name(name):
    spec = rules.RULES[name]
    fn = spec.rule
    # the name a generated driver imports, the entry and SGLD (sharing SGD's rule)
    # all give the one function that runs; the author's function is its __wrapped__
    assert getattr(rules, fn.__name__) is fn is spec.rule
    assert fn.__wrapped__ is spec.written and fn.__rule_prologue__ == spec.prologue
    assert not hasattr(spec.written, "__rule_prologue__")
    # an entry without lambdas pickles, as before, with the function that runs
    if not spec.requires and spec.zero_grad_identity is None:
        again = pickle.loads(pickle.dumps(spec))
        assert again.rule is fn and again.written is spec.written


def test_sharing_a_rule_with_another_prologue_is_refused():
    other = rules.RULES["sgld"]._replace(name="sgld_bad", prologue=("maximize",))
    with pytest.raises(ValueError, match="one function runs under one name"):
        rules.register(other)
    assert "sgld_bad" not in rules.RULES
