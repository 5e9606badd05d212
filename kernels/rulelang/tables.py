"""The tables every emitter is driven by: operators, and which name each of
the language's functions becomes on each target."""

import ast

# arithmetic operators every target spells as Python does (``**`` is per target)
BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
          ast.NotEq: "!="}

# the language's functions, in every target
FUNCTIONS = ("sign", "floor", "log1p", "exp", "log", "sqrt", "abs", "min", "max")
# host functions (prepare, schedule_factor) may use these too
HOST_FUNCTIONS = ("cos", "sin", "ceil", "float")
MATH_CONSTANTS = {"pi": repr(3.141592653589793), "e": repr(2.718281828459045)}

# "sign" is never a call on any target: it becomes the conditional expression
# of frontend.sign_expansion, which each target translates as its own.
SIGN = None

# Numba lane form (Python text compiled by Numba); exp and log are the
# vectorising _helpers.exp_fast / log_fast
NUMBA_LANES = {"exp": "exp_fast", "log": "log_fast", "log1p": "math.log1p",
               "sqrt": "math.sqrt", "floor": "math.floor", "abs": "abs",
               "min": "min", "max": "max", "sign": SIGN}
# the scalar rules' lane form: log1p vectorises as epoch_drivers.log1p_lanes
NUMBA_SCALAR_LANES = dict(NUMBA_LANES, log1p="log1p_lanes")

# Cython update rules, per C type (libc's float and double families);
# min/max are the generated min_f32/max_f32 helpers (Python's tie rule)
CYTHON_UPDATE = {
    "float": {"exp": "expf", "log": "logf", "log1p": "log1pf", "sqrt": "sqrtf",
              "floor": "floorf", "abs": "fabsf", "pow": "powf", "fabs": "fabsf"},
    "double": {"exp": "exp", "log": "log", "log1p": "log1p", "sqrt": "sqrt",
               "floor": "floor", "abs": "fabs", "pow": "pow", "fabs": "fabs"},
}

# Cython loss rules over the fused type ``floating`` (libc's double family;
# Cython's own min/max)
CYTHON_LOSS = {"exp": "exp", "log": "log", "log1p": "log1p", "sqrt": "sqrt",
               "floor": "floor", "abs": "fabs", "min": "min", "max": "max",
               "sign": SIGN}

# C's spelling of the language's functions that are a libm call of one
# argument, for every C target (host code and the lane form)
C_FUNCTIONS = {"exp": "exp", "log": "log", "log1p": "log1p", "sqrt": "sqrt",
               "cos": "cos", "sin": "sin", "abs": "fabs", "floor": "floor", "ceil": "ceil"}

# C host code (Cython, every real a double): floor and ceil are Numba's
# float -> int64; min/max the epoch module's _pymin/_pymax
C_HOST = dict(C_FUNCTIONS, min="_pymin", max="_pymax", sign=SIGN)

# C text of the Numba lane form (c.LaneToC): a call in the lane form's Python
# text is read back to the language's function by NUMBA_LANES (``exp_fast`` is
# "exp"), then spelled by C_FUNCTIONS, except what the lane form does its own
# way (formats over the call's arguments ``a``/``b``, ``x``, the C type
# ``ct``, its suffix ``sfx`` and the SIMD level ``lvl``):
C_LANES = {
    # exp_fast: the epoch's own vectorising exp, per type and ISA level
    "exp": "okx_exp_{sfx}_{lvl}({x})",
    # log_fast works in float64 and rounds the result once
    "log": "(({ct})log((double)({x})))",
    # Python's min/max: the first of equal (or unordered) values, as a select
    "min": "((({b}) < ({a})) ? ({b}) : ({a}))",
    "max": "((({b}) > ({a})) ? ({b}) : ({a}))",
    # the lane form's own names: dt() the data's type, the block's arrays
    # (ZT, DT, S, SI are (slots, R) in lane form, row r in column r)
    "dt": "(({ct})({x}))",
    "array2": "{arr}[({i}) * R + ({r})]",
    "array1": "{arr}[{i}]",
    # an assignment inside the lane loop under the condition ``cond``
    "select": "{target} = {cond} ? ({value}) : {target};",
}
LANE_ARRAYS2 = ("ZT", "DT", "S", "SI")
LANE_ARRAYS1 = ("Y", "LOSS")
# the lane form's names of scalars: the block's k, n, epsilon, the lane r,
# and the integer locals j*
LANE_NAMES = ("k", "n", "epsilon", "r")

# how the host emitters spell what Cython and plain C write differently
# (rulelang.cython.CythonSyntax reads SYNTAX; c.CHostEmitter takes C_SYNTAX)
CYTHON_SYNTAX = {"not": "(not {})", "and": " and ", "or": " or ", "pass": "pass",
                 "end": "", "ifexp": "({body} if {test} else {orelse})",
                 "cast": "<{ctype}>{text}", "if": "if {}:", "else": "else:",
                 "endif": None, "decl": "cdef "}
C_SYNTAX = {"not": "(!{})", "and": " && ", "or": " || ", "pass": ";",
            "end": ";", "ifexp": "(({test}) ? ({body}) : ({orelse}))",
            "cast": "(({ctype}){text})", "if": "if ({}) {{", "else": "} else {",
            "endif": "}", "decl": ""}

# ---- the minibatch epoch (kernels/epoch_rules.py, kind "epoch": rulelang/epoch.py)
#
# The epoch's loop is written once; the steps whose code is the target's own
# (the batch pass's row-block kernels, the penalty pass, the update loops) are
# primitives, which each target binds to its code through the tables below.

# its parameters' types ("int": int64, "real": double, "reals": an array of
# doubles read at constant indices, "key": the noise seed)
EPOCH_PARAMS = {"n": "int", "batch_size": "int", "step0": "int", "avg_count0": "int",
                "avg_start": "int", "sched": "reals", "base_lr": "real", "plateau": "real",
                "w_mean": "real", "seed": "key"}

# block primitives, statements: name -> (arguments, results).  The call is
# ``results = name(arguments)`` spelled with exactly these names: the
# primitive's code reads and writes the epoch's own variables of those names.
EPOCH_BLOCKS = {
    "batch_pass": (("start", "stop"), ("lsum", "wsum")),   # losses, dW, db of the rows
    "finish_gradients": (("inv",), ("pen",)),   # dW, db scaled by inv; the penalty added
    "prepare_w": (("step", "lr"), ()),          # the rule's prepare for W's group
    "update_w": (("w_avg", "key"), ()),         # its update loop on W (and the average)
    "prepare_b": (("step", "lr"), ()),          # ... for the intercept's group
    "update_b": (("w_avg", "key"), ()),
}
# function primitives, expressions: name -> (number of arguments, result type)
EPOCH_FUNCTIONS = {"schedule_factor": (7, "real"), "noise_key": (2, "key"),
                   "has_intercept": (0, "bool")}
# math functions an epoch may call besides the language's own
EPOCH_MATH = ("isfinite",)
# the result types of the epoch's return, (mean loss, steps done, averaging count)
EPOCH_RETURN = ("real", "int", "int")

# Numba: a block is the body of that function of kernels/templates/epoch_parts.py
# (its HOLE_* filled by epoch_drivers.py per layout); a function, the format of
# its call; "return", how (mean, steps, avg_count) leave the epoch.  The rest
# of the epoch's text is pasted as written.
NUMBA_EPOCH = {"batch_pass": "batch_pass", "finish_gradients": "finish_gradients",
               "prepare_w": "prepare_w", "update_w": "update_w", "prepare_b": "prepare_b",
               "update_b": "update_b",
               "schedule_factor": "_schedule({})", "noise_key": "noise_key_jit({})",
               "has_intercept": "b is not None",
               "return": "return {}, scalarsW, scalarsB"}

# Cython: a block is the section of that name in
# kernels/cython/templates/epoch_primitives.pyx.tp; "return" is a section
# too (the out-parameters, the buffers freed) whose ``{0}``-``{2}`` are the
# returned values; functions and the math names as formats of their arguments
CYTHON_EPOCH = {"batch_pass": "batch_pass", "finish_gradients": "finish_gradients",
                "prepare_w": "prepare_w", "update_w": "update_w", "prepare_b": "prepare_b",
                "update_b": "update_b",
                "schedule_factor": "_schedule_factor({})",
                "noise_key": "(_step_key({}) if has_seed else 0)",
                "has_intercept": "(b != NULL)", "isfinite": "isfinite({})", "nan": "NAN",
                "return": "epoch_return"}
# C types of the epoch's values in Cython
CYTHON_EPOCH_TYPES = {"int": "int64_t", "real": "double", "bool": "bint", "key": "uint64_t"}

# ---- the sparse epochs (kernels/sparse_epoch_rules.py, kind "epoch")
#
# The lazy/linear ("rows") and scaled epochs on wide CSR data, whose steps
# touch only a minibatch's rows of W: one written loop, the modes' steps
# primitives.  It trains on the rows order[start:stop] (a block of the epoch)
# and resumes where the previous block stopped.
SPARSE_EPOCH_PARAMS = dict({"start": "int", "stop": "int"}, **EPOCH_PARAMS)

SPARSE_EPOCH_BLOCKS = {
    "begin_block": (("start",), ()),            # the mode's state at the block's start
    "collect_touched": (("r0", "r1"), ()),      # the touched rows listed (the slot table)
    "bring_touched": (("step",), ()),           # rows: caught up; scaled: the L1 owed
    "batch_pass": (("r0", "r1"), ("lsum", "wsum")),   # scores, losses, compact G, db
    "release_touched": ((), ()),                # the slot table's rows freed
    "prepare_w": (("step", "lr"), ()),          # the rule's prepare for W's group
    "update_touched": (("step", "lr", "inv", "w_avg", "key"), ()),  # the mode's update
    "prepare_b": (("step", "lr"), ()),          # ... for the intercept's group
    "update_b": (("inv", "w_avg", "key"), ()),  # db scaled by inv, the rule's update
    "end_block": ((), ()),                      # what the next block resumes from
    "end_epoch": ((), ("pen",)),                # every row brought up to date; the penalty
}
SPARSE_EPOCH_FUNCTIONS = EPOCH_FUNCTIONS

# Numba: a block is the body of that function of kernels/templates/
# sparse_epoch_parts.py (its HOLE_* filled per mode by sparse_epoch_drivers.py)
NUMBA_SPARSE_EPOCH = dict({name: name for name in SPARSE_EPOCH_BLOCKS},
                          schedule_factor=NUMBA_EPOCH["schedule_factor"],
                          noise_key=NUMBA_EPOCH["noise_key"],
                          has_intercept=NUMBA_EPOCH["has_intercept"],
                          **{"return": NUMBA_EPOCH["return"]})
# Cython: a block is the section of that name in
# kernels/cython/templates/sparse_epoch_primitives.pyx.tp (per mode)
CYTHON_SPARSE_EPOCH = dict({name: name for name in SPARSE_EPOCH_BLOCKS},
                           **{n: CYTHON_EPOCH[n] for n in
                              ("schedule_factor", "noise_key", "has_intercept", "isfinite",
                               "nan", "return")})
