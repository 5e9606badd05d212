    cdef int64_t step, avg_count, r0, r1
    cdef double total, weight, pen, mean, inv, batch_loss, lr, w_avg, lsum, wsum
    cdef bint averaging
    cdef uint64_t key

    step = step0
    avg_count = avg_count0
    total = 0.0
    weight = 0.0
    if P != NULL and start == 0:
        for f in range(d):
            last[f] = step0
    r0 = start
    while r0 < stop:
        r1 = (stop if stop < (r0 + batch_size) else (r0 + batch_size))
        if direct:
            lo = indptr[order[r0]]
            nt = indptr[order[r0] + 1] - lo
            for u in range(nt):
                touched[u] = indices[lo + u]
                if inv_p != NULL:
                    tscale[u] = inv_p[lo + u] if per_nz else inv_p[indices[lo + u]]
        else:
            # touched[u]: the features in order of first appearance;
            # touched[cap + u]: their rows of the slot table
            nt = 0
            for r in range(r0, r1):
                i = order[r]
                for q in range(indptr[i], indptr[i + 1]):
                    f = indices[q]
                    h = _slot_at_i64(slot, n_slot, hashed, f)
                    if slot[2 * h] < 0:
                        slot[2 * h] = f
                        slot[2 * h + 1] = nt
                        touched[nt] = f
                        touched[cap + nt] = h
                        if inv_p != NULL:
                            tscale[nt] = inv_p[q] if per_nz else inv_p[f]
                        nt += 1
            for u in range(nt * k):
                G[u] = 0.0
        if P != NULL:
            for u in range(nt):
                _catch_up_f64(touched[u], step, last, avg_start, want_sum, W, sW, ns, avgW,
                                k, P, S, A, Ssum, tmp, x, y, m)
        for j in range(k):
            db[j] = 0.0
        lsum = 0.0
        wsum = 0.0
        for r in range(r0, r1):
            i = order[r]
            w = sw[i]
            lo = indptr[i]
            hi = indptr[i + 1]
            _row_scores_f64_i64(data, indices, lo, hi, W, b, z, k)
            l = loss(z, Tf + i * k if Tf != NULL else NULL, Ti[i] if Ti != NULL else 0,
                     eps, dz, k)
            lsum += w * l
            wsum += w
            if w != 1.0:
                for j in range(k):
                    dz[j] = dz[j] * w
            for j in range(k):
                db[j] += dz[j]
            if direct:
                for u in range(nt):
                    for j in range(k):
                        G[u * k + j] = data[lo + u] * dz[j]
            else:
                for q in range(lo, hi):
                    su = slot[2 * _slot_at_i64(slot, n_slot, hashed, indices[q]) + 1]
                    xf = data[q]
                    for j in range(k):
                        G[su * k + j] += xf * dz[j]
        if (wsum <= 0.0):
            if not direct:
                for u in range(nt):
                    slot[2 * touched[cap + u]] = -1
            r0 = r0 + batch_size
            continue
        inv = (1.0 / ((r1 - r0) * w_mean))
        batch_loss = (lsum * inv)
        if (not isfinite(batch_loss)):
            # (the table is left free for the next call)
            if not direct:
                for u in range(nt):
                    slot[2 * touched[cap + u]] = -1
            steps_out[0] = (step - step0)
            avg_count_io[0] = avg_count
            return NAN
        total = (total + (batch_loss * (r1 - r0)))
        weight = (weight + (r1 - r0))
        lr = ((base_lr * _schedule_factor(sched[0], (<double>step), sched[1], sched[2], sched[3], sched[4], sched[5])) * plateau)
        step = (step + 1)
        key = (_step_key(seed, step) if has_seed else 0)
        prepare(step, scalarsW, lr, userW, hyper, new_scalars)
        for s in range(n_scalars):
            scalarsW[s] = new_scalars[s]
        averaging = ((avg_start >= 0) and (step > avg_start))
        w_avg = ((1.0 / (avg_count + 1)) if averaging else 0.0)
        for u in range(nt):
            f = touched[u]
            scale = 1.0
            if inv_p != NULL:
                scale = tscale[u]
            for j in range(k):
                e = f * k + j
                gbuf[j] = <double>(G[u * k + j] * inv
                                 + _penalty_grad(<double>W[e], alpha, l1_ratio) * scale)
            for s in range(ns):
                sWf[s] = sW[s] + f * k if sW[s] != NULL else NULL
            update(W + f * k, gbuf, sWf, avgW + f * k if avgW != NULL else NULL, k, hyper,
                   w_avg, has_seed, key, offW + f * k)
            if P != NULL:
                last[f] = step
        if not direct:
            for u in range(nt):
                slot[2 * touched[cap + u]] = -1
        if (b != NULL):
            prepare(step, scalarsB, lr, userB, hyper, new_scalars)
            for s in range(n_scalars):
                scalarsB[s] = new_scalars[s]
            for j in range(k):
                db[j] = <double>(db[j] * inv)
            update(b, db, sB, avgB, k, hyper, w_avg, has_seed, key, offB)
        if averaging:
            avg_count = (avg_count + 1)
        r0 = r0 + batch_size
    if (stop < n):
        # a block of the epoch: the next call resumes at ``stop``
        pass
        steps_out[0] = (step - step0)
        avg_count_io[0] = avg_count
        return ((total / weight) if (weight > 0.0) else 0.0)
    if P != NULL:
        for f in range(d):
            _catch_up_f64(f, step, last, avg_start, want_sum, W, sW, ns, avgW, k, P, S, A,
                            Ssum, tmp, x, y, m)
    pen = _penalty_value_f64(W, d * k, alpha, l1_ratio)
    mean = ((total / weight) if (weight > 0.0) else 0.0)
    steps_out[0] = (step - step0)
    avg_count_io[0] = avg_count
    return (mean + pen)
