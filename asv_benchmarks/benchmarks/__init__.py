"""optkern's asv benchmarks (see docs/benchmarks.md).

bench_updates  optimizer ``step`` throughput per optimizer x backend x size,
               and its fraction of a streaming-bandwidth probe (probes.py)
bench_losses   loss / gradient kernels
probes         the hardware-limit probes the ``track_fraction_*`` metrics use

Setting ``OPTKERN_BENCH_SMOKE=1`` shortens every in-benchmark measurement
loop to a few calls: the smoke test (tests/test_benchmarks_smoke.py) uses it
to prove the suite still runs, not to measure anything.
"""
