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
        # ---- the fused pass over rows order[start:stop], in blocks of R rows
        okx_transpose_f64(W, WT, d, k)
        memset(dWT, 0, dk * sizeof(double))
        memset(db, 0, k * sizeof(double))
        lsum = 0.0
        wsum = 0.0
        r0 = start
        while r0 < stop:
            m = stop - r0
            if m > R:
                m = R
            # the next block's rows, across the minibatch's end
            m_next = n - r0 - m
            if m_next > m:
                m_next = m
            # the next block's labels and weights: like its rows (prefetched by
            # okx_scores), they sit at random places of arrays larger than L1
            for q in range(m_next):
                i = order[r0 + m + q]
                OKX_PREFETCH(sw + i)
                if Ti != NULL:
                    OKX_PREFETCH(Ti + i)
                elif Tf != NULL:
                    OKX_PREFETCH(Tf + i * k)
            okx_scores_f64(X, d, order + r0, m, order + r0 + m, m_next, WT, b, ZT, k, R)
            if lanes != NULL:
                for q in range(m):
                    YB[q] = Ti[order[r0 + q]]
                lanes(ZT, YB, eps, DT, LS, m, S, SI, k, R)
            else:
                for q in range(m):
                    i = order[r0 + q]
                    for j in range(k):
                        z[j] = ZT[j * R + q]
                    LS[q] = loss(z, Tf + i * k if Tf != NULL else NULL,
                                 Ti[i] if Ti != NULL else 0, eps, dz, k)
                    for j in range(k):
                        DT[j * R + q] = dz[j]
            weighted = False
            for q in range(m):
                w = sw[order[r0 + q]]
                lsum += w * LS[q]
                wsum += w
                if w != 1.0:
                    weighted = True
            if weighted:
                for j in range(k):
                    for q in range(m):
                        DT[j * R + q] = DT[j * R + q] * sw[order[r0 + q]]
            for j in range(k):
                acc_s = db[j]
                for q in range(m):
                    acc_s = acc_s + DT[j * R + q]
                db[j] = acc_s
            okx_accumulate_f64(X, d, order + r0, m, DT, dWT, k, R)
            r0 += m
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
            free(WT)
            free(dWT)
            free(ZT)
            free(DT)
            free(S)
            free(SI)
            free(LS)
            free(YB)
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
    free(WT)
    free(dWT)
    free(ZT)
    free(DT)
    free(S)
    free(SI)
    free(LS)
    free(YB)
    return mean
