"""The minibatch epoch, written once (the rule language's kind "epoch").

``minibatch_epoch`` is the one definition of what a training epoch computes
on dense and CSR data: the order of its steps per minibatch (the batch pass,
the skip of a batch without weight, the gradient's scaling and penalty, the
finite check of the batch loss, the running mean, the schedule's learning
rate, the step count, the noise key, the rule's ``prepare`` and update of W
then b, Polyak averaging's count).  Every compiled target is generated from
its text (kernels/rulelang/epoch.py):

* Numba (kernels/epoch_drivers.py) pastes the text as the body of
  ``epoch_serial``/``epoch_parallel``, each primitive replaced by its code;
* Cython (kernels/cython/generate_epochs.py) translates it with the rule
  language's front end and ``rulelang.epoch.CythonEpochEmitter`` into the
  loop of ``_epoch_<f32|f64>_<dense|csr>``.

The primitives (``batch_pass``, ``finish_gradients``, ``prepare_w``, ...)
stand for the code each target writes its own way: the row-block kernels of
the batch pass, the penalty pass, the update loops.  Their names, what they
read and write and each target's spelling are tables
(kernels/rulelang/tables.py: EPOCH_BLOCKS, EPOCH_FUNCTIONS, NUMBA_EPOCH,
CYTHON_EPOCH).  The stand-ins below only let this module import and lint;
nothing calls them.  The NumPy reference (optkern's backend "numpy") is a
separate, independent oracle on purpose.

Imports nothing of optkern: the Cython generator loads it by file path.
"""

import math


def minibatch_epoch(n, batch_size, step0, avg_count0, avg_start, sched, base_lr, plateau,
                    w_mean, seed):
    step = step0
    avg_count = avg_count0
    total = 0.0
    weight = 0.0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        lsum, wsum = batch_pass(start, stop)
        if wsum <= 0.0:
            continue
        # unbiased minibatch estimate of sum(w L)/sum(w) over the whole data set:
        # normalising by the batch's own weight sum would cancel the weights of a
        # batch holding one class only
        inv = 1.0 / ((stop - start) * w_mean)
        pen = finish_gradients(inv)
        batch_loss = lsum * inv + pen
        if not math.isfinite(batch_loss):
            return math.nan, step - step0, avg_count
        total += batch_loss * (stop - start)
        weight += stop - start
        lr = base_lr * schedule_factor(sched[0], float(step), sched[1], sched[2], sched[3],
                                       sched[4], sched[5]) * plateau
        step += 1
        key = noise_key(seed, step)
        prepare_w(step, lr)
        averaging = avg_start >= 0 and step > avg_start
        w_avg = 1.0 / (avg_count + 1) if averaging else 0.0
        # before averaging starts w_avg is 0 and the average is left as it is; one
        # call signature (not two) keeps the compile time down
        update_w(w_avg, key)
        if has_intercept():
            prepare_b(step, lr)
            update_b(w_avg, key)
        if averaging:
            avg_count += 1
    mean = total / weight if weight > 0.0 else 0.0
    return mean, step - step0, avg_count


# ---- stand-ins for the primitives (each target binds its own code) ----

def _primitive(*args):
    raise NotImplementedError("an epoch primitive: each target binds its own code")


# the rows order[start:stop]: their loss sum and weight sum; dW and db their
# (weighted) gradient sums
batch_pass = _primitive
# dW and db scaled by inv, the penalty's (sub)gradient added to dW; its value
finish_gradients = _primitive
# the rule's prepare for W's (b's) group at this step and learning rate
prepare_w = prepare_b = _primitive
# the rule's update loop on W (b), averaging with weight w_avg, noise key key
update_w = update_b = _primitive
# schedule_rules.schedule_factor; the noise key of a step; whether b exists
schedule_factor = noise_key = has_intercept = _primitive
