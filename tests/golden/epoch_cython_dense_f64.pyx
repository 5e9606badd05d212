    cdef int64_t step, avg_count, start, stop
    cdef double total, weight, mean, inv, pen, batch_loss, lr, w_avg, lsum, wsum
    cdef bint averaging
    cdef uint64_t key

    step = step0
    avg_count = avg_count0
    total = 0.0
    weight = 0.0
    start = 0
    while start < n:
        stop = (n if n < (start + batch_size) else (start + batch_size))
        # ---- the fused pass over rows order[start:stop], in blocks of R rows.  A
        # minibatch of more than R rows runs as two parts, its first ceil(m / 2) rows
        # (PA) and the rest (PB), each summed from zero and then added (PA + PB);
        # with a helper thread PB runs on it (or here, if it has not reached PB when
        # PA is done), else here after PA: the same arithmetic either way.
        okx_transpose_f64(W, WT, d, k)
        PA.r0 = start
        PA.r1 = stop
        if stop - start > R:
            PA.r1 = start + (stop - start + 1) // 2
        PB.r0 = PA.r1
        PB.r1 = stop
        if PB.r0 >= stop:
            _part_f64(&PA)
        else:
            if threaded:
                okx_pool_pair(&pool, _part_f64, &PA, &PB)
                # a slow helper (the machine shared) stops the pool: one thread on
                threaded = pool.running != 0
            else:
                _part_f64(&PA)
                _part_f64(&PB)
            for idx in range(dk):
                dWT[idx] = dWT[idx] + PB.dWT[idx]
            for j in range(k):
                db[j] = db[j] + PB.db[j]
            PA.lsum = PA.lsum + PB.lsum
            PA.wsum = PA.wsum + PB.wsum
        lsum = PA.lsum
        wsum = PA.wsum
        if (wsum <= 0.0):
            start = start + batch_size
            continue
        # unbiased minibatch estimate of sum(w L)/sum(w) over the whole data set:
        # normalising by the batch's own weight sum would cancel the weights of a
        # batch holding one class only
        inv = (1.0 / ((stop - start) * w_mean))
        pen = okx_grad_f64(dWT, W, dW, d, k, inv, alpha, l1_ratio)
        for j in range(k):
            db[j] = <double>(db[j] * inv)
        batch_loss = ((lsum * inv) + pen)
        if (not isfinite(batch_loss)):
            steps_out[0] = (step - step0)
            avg_count_io[0] = avg_count
            okx_pool_stop(&pool)
            free(WT)
            free(dWT)
            free(ZT)
            free(DT)
            free(S)
            free(SI)
            free(LS)
            free(YB)
            free(PBf)
            free(PBi)
            free(PBd)
            return NAN
        total = (total + (batch_loss * (stop - start)))
        weight = (weight + (stop - start))
        lr = ((base_lr * _schedule_factor(sched[0], (<double>step), sched[1], sched[2], sched[3], sched[4], sched[5])) * plateau)
        step = (step + 1)
        key = (_step_key(seed, step) if has_seed else 0)
        prepare(step, scalarsW, lr, userW, hyper, new_scalars)
        for s in range(n_scalars):
            scalarsW[s] = new_scalars[s]
        averaging = ((avg_start >= 0) and (step > avg_start))
        w_avg = ((1.0 / (avg_count + 1)) if averaging else 0.0)
        # before averaging starts w_avg is 0 and the average is left as it is; one
        # call signature (not two) keeps the compile time down
        update(W, dW, sW, avgW, dk, hyper, w_avg, has_seed, key, offW)
        if (b != NULL):
            prepare(step, scalarsB, lr, userB, hyper, new_scalars)
            for s in range(n_scalars):
                scalarsB[s] = new_scalars[s]
            update(b, db, sB, avgB, k, hyper, w_avg, has_seed, key, offB)
        if averaging:
            avg_count = (avg_count + 1)
        start = start + batch_size
    mean = ((total / weight) if (weight > 0.0) else 0.0)
    steps_out[0] = (step - step0)
    avg_count_io[0] = avg_count
    okx_pool_stop(&pool)
    free(WT)
    free(dWT)
    free(ZT)
    free(DT)
    free(S)
    free(SI)
    free(LS)
    free(YB)
    free(PBf)
    free(PBi)
    free(PBd)
    return mean
