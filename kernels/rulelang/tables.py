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
