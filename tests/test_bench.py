"""``optkern bench``: the side-by-side table has every promised row, absent
peers are reported as skipped, and the comparison is of the same computation.

Nothing here is timed: the runs use ``--sizes tiny`` and the assertions are
about structure and positivity, never about which implementation is faster.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from optkern import bench
from optkern.cli import main as cli_main

ROWS = ("update: Adam", "update: SGD-momentum", "gradient: softmax", "training:")
OPTKERN_ROWS = {
    "update: Adam": ["optkern numba", "NumPy reference", "torch.optim.Adam(foreach=True)",
                     "torch.optim.Adam(fused=True)", "roofline: streaming probe"],
    "update: SGD-momentum": ["optkern numba", "NumPy reference",
                             "torch.optim.SGD(foreach=True)", "torch.optim.SGD(fused=True)",
                             "roofline: streaming probe"],
    "gradient: softmax": ["optkern numba", "NumPy reference", "PyTorch autograd",
                          "roofline: GEMM probe"],
    "training:": ["optkern LinearClassifier(adam) numba", "NumPy reference",
                  "scikit-learn SGDClassifier", "PyTorch loop"],
}


def _table_lines(out):
    return [line for line in out.splitlines() if line.startswith("| ")]


def _rows_of(table):
    """{row title prefix: [cells of each line]} from the printed table."""
    rows, current = {}, None
    for line in table[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0]:
            current = next(p for p in ROWS if cells[0].startswith(p))
        rows.setdefault(current, []).append(cells)
    return rows


def test_quick_tiny_run_has_every_row_and_peer(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = cli_main(["bench", "--quick", "--sizes", "tiny", "--json", str(out_json),
                   "--plot", str(out_png)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    table = _table_lines(out)
    assert table[0].startswith("| row | implementation | median | best |")
    rows = _rows_of(table)
    assert set(rows) == set(ROWS)
    for row, wanted in OPTKERN_ROWS.items():
        impls = [cells[1] for cells in rows[row]]
        for name in wanted:
            assert any(i.startswith(name) for i in impls), (row, name, impls)
        # one best optkern backend per row, at 1.00x
        best = [cells for cells in rows[row] if cells[1].endswith("**(best)**")]
        assert len(best) == 1 and best[0][1].startswith("optkern")
        assert best[0][5] == "1.00x"

    data = json.loads(out_json.read_text())
    env = data["environment"]
    assert env["sizes"] == "tiny" and env["numba_threads"] >= 1
    assert len(env["load_average"]) == 3
    results = data["results"]
    assert {r["row"].split(",")[0].split(" ")[0] for r in results} == \
        {"update:", "gradient:", "training:"}
    measured = [r for r in results if r["status"] == "ok"]
    # only fused torch variants may be unsupported by a torch build
    assert all("fused" in r["implementation"] for r in results if r["status"] != "ok")
    for r in measured:
        for key in ("median_s", "best_s", "speedup"):
            assert math.isfinite(r[key]) and r[key] > 0, r
        assert r["best_s"] <= r["median_s"] * (1 + 1e-12)
        assert r["detail"]
    for row in {r["row"] for r in results}:
        ours = [r for r in measured if r["row"] == row and r["kind"] == "optkern"]
        best = [r for r in ours if r["optkern_best"]]
        assert len(best) == 1
        assert best[0]["speedup"] == pytest.approx(1.0)
        assert all(r["median_s"] >= best[0]["median_s"] for r in ours)
    assert out_png.stat().st_size > 1000
    import matplotlib.image as mpimg
    assert mpimg.imread(str(out_png))[..., :3].std() > 0.05


def test_absent_peers_are_skipped_and_openblas_note(monkeypatch, capsys):
    # hide PyTorch and scikit-learn's linear models: `import` raises ImportError
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    rc = bench.main(["--sizes", "tiny"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "OPENBLAS_CORETYPE=Haswell" in out and "unset them for a fair comparison" in out
    rows = _rows_of(_table_lines(out))
    assert set(rows) == set(ROWS)
    skipped = {cells[1]: cells[2] for cells in sum(rows.values(), [])
               if cells[2].startswith("skipped")}
    assert skipped == {
        "torch.optim.Adam(foreach=True)": "skipped (torch not installed)",
        "torch.optim.Adam(fused=True)": "skipped (torch not installed)",
        "torch.optim.SGD(foreach=True)": "skipped (torch not installed)",
        "torch.optim.SGD(fused=True)": "skipped (torch not installed)",
        "PyTorch autograd (cross_entropy + backward)": "skipped (torch not installed)",
        "PyTorch loop (nn.Linear, Adam)": "skipped (torch not installed)",
        "scikit-learn SGDClassifier(log_loss)": "skipped (scikit-learn not installed)",
    }
    # skipped lines have no numbers; the others have a positive speed-up
    for cells in sum(rows.values(), []):
        if cells[2].startswith("skipped"):
            assert cells[3:] == ["-", "-", "-"]
        else:
            assert float(cells[5].rstrip("x")) > 0
    assert "torch not installed" in out.splitlines()[-2]


def test_plot_without_matplotlib_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = cli_main(["bench", "--sizes", "tiny", "--plot", str(tmp_path / "x.png")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "optkern[plot]" in err
    assert "| row |" not in out          # stopped before measuring anything
    assert not (tmp_path / "x.png").exists()


def test_bad_arguments_exit_2(capsys):
    assert bench.main(["--sizes", "huge"]) == 2
    assert bench.main(["--repeats", "0"]) == 2
    assert bench.main(["--json", "/no/such/dir/x.json"]) == 2
    assert cli_main(["bench", "--rows", "nope"]) == 2
    capsys.readouterr()


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "optkern.bench", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--quick" in r.stdout and "--plot" in r.stdout and "roofline" in r.stdout


def test_torch_gradient_is_the_same_objective():
    """The PyTorch peer of the gradient row computes optkern's objective."""
    torch = pytest.importorskip("torch")
    from optkern.losses import loss_and_grad

    X, y, W, b = bench.softmax_problem(50, 7, 4, seed=3)
    b += np.float32(0.1)
    loss, dW, db = loss_and_grad(X, y, W, b, loss="softmax", alpha=bench.ALPHA,
                                 backend="numpy")
    t_loss, t_dW, t_db = bench.torch_softmax_grad(torch, X, y, W, b)(numpy=True)
    assert t_loss == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(t_dW, dW, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(t_db, db, rtol=1e-4, atol=1e-6)


def test_speedups_are_relative_to_the_best_optkern_backend():
    rs = [bench.Result("r", "optkern a", "optkern", 2.0, 1.5),
          bench.Result("r", "optkern b", "optkern", 1.0, 0.9),
          bench.Result("r", "peer", "peer", 4.0, 3.0),
          bench.Result("r", "gone", "peer", note="skipped (x not installed)")]
    bench._finish_row(rs)
    assert [r.speedup for r in rs] == [2.0, 1.0, 4.0, None]
    assert [r.best_backend for r in rs] == [False, True, False, False]
    table = bench.format_table(rs).splitlines()
    assert len(table) == 6
    assert table[3] == "|  | optkern b **(best)** | 1.00 s | 900.00 ms |  | 1.00x |"
    assert table[5].endswith("| gone | skipped (x not installed) | - | - | - |")
