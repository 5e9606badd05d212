"""The sparse epochs, written once (the rule language's kind "epoch").

``sparse_epoch`` is the one definition of what the training epochs of wide
CSR data compute, whose steps touch only a minibatch's rows of W
(kernels/sparse_epoch_drivers.py): the "lazy" and "linear" modes (the rows
epoch) and the "scaled" mode (plain SGD, W = s V).  Per minibatch, in this
order: the touched rows listed, brought up to date (the linear mode's
catch-up, the scaled mode's cumulative L1), the batch pass (scores, the loss
rule, the compact gradient), the skip of a batch without weight, the finite
check of the batch loss, the running mean, the schedule's learning rate, the
step count, the noise key, the rule's ``prepare``, averaging's weight, the
mode's update of the touched rows, the slot table freed, the intercept's
update, Polyak averaging's count.  It trains on the rows order[start:stop]
(a block of the epoch) and resumes where the previous block stopped; the
epoch's end brings every row up to date and adds the penalty's value.

Every compiled target is generated from its text (kernels/rulelang/epoch.py,
tables ``rulelang.epoch.SPARSE``):

* Numba (kernels/sparse_epoch_drivers.py) pastes the text as the body of
  ``epoch_rows``/``epoch_scaled`` (and their one-output twins), each
  primitive replaced by its code in templates/sparse_epoch_parts.py for the
  mode; the scaled epoch's per-example path (batch 1, a row's features
  distinct, no L1) is the same text bound to the per-example primitives
  (no touched list, no compact gradient);
* Cython (kernels/cython/generate_sparse_epochs.py) translates it with
  ``rulelang.epoch.CythonEpochEmitter`` into the loop of
  ``_rows_<sfx>_<isfx>`` / ``_scaled_sgd_<sfx>_<isfx>``, the primitives the
  sections of templates/sparse_epoch_primitives.pyx.tp for the mode.

The primitives' names, what they read and write and each target's spelling
are tables (kernels/rulelang/tables.py: SPARSE_EPOCH_BLOCKS,
NUMBA_SPARSE_EPOCH, CYTHON_SPARSE_EPOCH).  The stand-ins below only let this
module import and lint; nothing calls them.  The NumPy reference
(kernels/sparse_reference.py) is a separate, independent oracle on purpose.

Imports nothing of optkern: the Cython generator loads it by file path.
"""

import math


def sparse_epoch(start, stop, n, batch_size, step0, avg_count0, avg_start, sched, base_lr,
                 plateau, w_mean, seed):
    step = step0
    avg_count = avg_count0
    total = 0.0
    weight = 0.0
    begin_block(start)
    for r0 in range(start, stop, batch_size):
        r1 = min(r0 + batch_size, stop)
        collect_touched(r0, r1)
        bring_touched(step)
        lsum, wsum = batch_pass(r0, r1)
        if wsum <= 0.0:
            release_touched()
            continue
        inv = 1.0 / ((r1 - r0) * w_mean)
        batch_loss = lsum * inv
        if not math.isfinite(batch_loss):
            # (the table is left free for the next call)
            release_touched()
            return math.nan, step - step0, avg_count
        total += batch_loss * (r1 - r0)
        weight += r1 - r0
        lr = base_lr * schedule_factor(sched[0], float(step), sched[1], sched[2], sched[3],
                                       sched[4], sched[5]) * plateau
        step += 1
        key = noise_key(seed, step)
        prepare_w(step, lr)
        averaging = avg_start >= 0 and step > avg_start
        w_avg = 1.0 / (avg_count + 1) if averaging else 0.0
        update_touched(step, lr, inv, w_avg, key)
        release_touched()
        if has_intercept():
            prepare_b(step, lr)
            update_b(inv, w_avg, key)
        if averaging:
            avg_count += 1
    if stop < n:
        # a block of the epoch: the next call resumes at ``stop``
        end_block()
        return total / weight if weight > 0.0 else 0.0, step - step0, avg_count
    pen = end_epoch()
    mean = total / weight if weight > 0.0 else 0.0
    return mean + pen, step - step0, avg_count


# ---- stand-ins for the primitives (each target binds its own code) ----

def _primitive(*args):
    raise NotImplementedError("a sparse epoch primitive: each target binds its own code")


# the mode's state at a block's start: the catch-up timestamps (rows, start
# == 0), the scale s and the L1 amount owed (scaled, from ``carry``)
begin_block = _primitive
# the features of rows order[r0:r1] listed once (the slot table), unless the
# batch pass lists them; brought up to date before they are read
collect_touched = bring_touched = _primitive
# the rows order[r0:r1]: their loss sum and weight sum; the compact gradient G
# of the touched rows and db their (weighted) gradient sums
batch_pass = _primitive
# the slot table's rows of the touched features freed
release_touched = _primitive
# the rule's prepare for W's (b's) group at this step and learning rate
prepare_w = prepare_b = _primitive
# the mode's update of the touched rows of W (G scaled by inv, the penalty);
# db scaled by inv and the rule's update of b
update_touched = update_b = _primitive
# what the next block resumes from (the scaled mode's s and L1 amount)
end_block = _primitive
# every row brought up to date at the epoch's end; the penalty's value
end_epoch = _primitive
# schedule_rules.schedule_factor; the noise key of a step; whether b exists
schedule_factor = noise_key = has_intercept = _primitive
