"""Learning-rate schedules as one scalar function of the step.

``schedule_factor(kind, t, a, b, c, warmup, start)`` returns the multiplier
of the base learning rate at optimizer step ``t`` (0-based: the first step
uses t = 0).  It is plain Python (imports only ``math``) so the same text
runs in the Python API, inside a compiled Numba training epoch, and is
readable as the specification:

=======  ==========================  ========================================
kind     name                        factor at step t (before warm-up)
=======  ==========================  ========================================
0        constant                    1
1        inverse scaling             1 / (1 + a*t)^b       (a=decay, b=power)
2        step (staircase)            a^floor(t / b)        (a=gamma, b=step)
3        exponential                 a^t                   (a=gamma)
4        cosine                      c + (1-c)*(1+cos(pi*min(t,b)/b))/2
                                                           (b=total steps,
                                                            c=final factor)
=======  ==========================  ========================================

Linear warm-up composes with any kind: for t < warmup the factor rises
linearly from ``start`` to 1 (every base schedule starts at 1), then the
base schedule runs on t - warmup.  A single function, no helpers, so that
Numba can compile it as it stands.
"""

import math

CONSTANT = 0
INVERSE_SCALING = 1
STEP = 2
EXPONENTIAL = 3
COSINE = 4


def schedule_factor(kind, t, a, b, c, warmup, start):
    if t < warmup:
        # every base schedule starts at 1, so the ramp ends where it begins
        return start + (1.0 - start) * (t / warmup)
    t = t - warmup
    if kind == INVERSE_SCALING:
        return 1.0 / (1.0 + a * t) ** b
    if kind == STEP:
        return a ** math.floor(t / b)
    if kind == EXPONENTIAL:
        return a ** t
    if kind == COSINE:
        tt = min(t, b)
        return c + (1.0 - c) * 0.5 * (1.0 + math.cos(math.pi * tt / b))
    return 1.0
