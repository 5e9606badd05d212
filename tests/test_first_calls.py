"""The first-call harness shared by ``optkern bench --rows first-call`` and
asv_benchmarks/first_call.py (optkern.first_calls)."""

import textwrap

import pytest

from optkern import bench, first_calls


@pytest.mark.parametrize("name", sorted(first_calls.ENTRIES))
def test_every_entry_is_code_with_a_label(name):
    setup, call, label = first_calls.ENTRIES[name]
    compile(textwrap.dedent(setup), f"<{name} setup>", "exec")
    compile(call, f"<{name} call>", "exec")
    assert label.startswith("`") and "`" in label[1:]


def test_bench_entries_are_the_shared_ones():
    for label, (setup, call) in bench.FIRST_CALL_ENTRIES.items():
        assert any((setup, call) == e[:2] and label == e[2].replace("`", "")
                   for e in first_calls.ENTRIES.values())


def test_child_times_a_call_on_its_own_cache(tmp_path):
    res = first_calls.run_child(*first_calls.ENTRIES["predict_scores"][:2], str(tmp_path),
                                settle=False, timeout=300)
    assert res["first"] > 0 and res["second"] > 0
    assert set(res["served"]) >= {"twin", "numba"}


def test_child_caches_are_the_directory_given(tmp_path):
    import os

    check = (f"assert os.environ['OPTKERN_CACHE_DIR'] == {os.path.join(str(tmp_path), 'generated')!r}"
             f" and os.environ['NUMBA_CACHE_DIR'] == {os.path.join(str(tmp_path), 'numba')!r}")
    res = first_calls.run_child("import os", check, str(tmp_path), settle=False, timeout=120)
    assert res["first"] >= 0


def test_a_failing_child_reports_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="NameError"):
        first_calls.run_child("", "undefined_name_here", str(tmp_path), settle=False,
                              timeout=60)
