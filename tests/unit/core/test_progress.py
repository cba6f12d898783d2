"""The heartbeat: after a silence it names what each running cell is doing, and stays quiet while output flows."""

from __future__ import annotations

import time

from harness.cli.main import main
from harness.run import progress
from harness.run.progress import Heartbeat


def test_the_heartbeat_speaks_only_after_a_silence():
    beat = Heartbeat(write=lambda line: None, every=20)
    start = beat.last
    beat.stage("native/resnet18/random:3x224x224/cp/conv/x4/s0", "decomposing layer 3/19 layer1.1.conv1 (cp)")
    assert beat.lines(start + 5) == []
    (line,) = beat.lines(start + 25)
    assert line.startswith("... native/resnet18/random:3x224x224/cp/conv/x4/s0: decomposing layer 3/19 "
                           "layer1.1.conv1 (cp) for ")
    assert beat.lines(start + 30) == []  # the silence restarts with each line
    beat.done("native/resnet18/random:3x224x224/cp/conv/x4/s0")
    assert beat.lines(start + 100) == []  # nothing running, nothing to say


def test_a_long_cell_is_named_while_it_runs(tmp_path, cache_dir, capsys, monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEAT_S", 1.0)
    started = time.monotonic()
    code = main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "hang", "--targets", "linear",
                 "--ratios", "4", "--no-train", "--datasets", "random:1x28x28", "--latency-passes", "1",
                 "--executor", "inprocess", "--cell-timeout", "4", "--cache-dir", str(cache_dir),
                 "--out", str(tmp_path / "run")])
    assert code == 1 and time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert "... fake/lenet5/random:1x28x28/hang/linear/x4/s0: decomposing layer 1/" in err, err
