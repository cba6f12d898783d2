"""Cell ids stay short and keep one '/' per field, whatever path names the model or the data."""

from __future__ import annotations

import pytest

from harness.plan.cells import Cell, short_name
from harness.run.baseline import baseline_path


@pytest.mark.parametrize("spec, shown", [
    ("lenet5", "lenet5"), ("torchvision:resnet50", "torchvision:resnet50"), ("random:3x224x224", "random:3x224x224"),
    ("pkg.nets:build", "pkg.nets:build"),
])
def test_plain_names_are_their_own_short_names(spec, shown):
    assert short_name(spec) == shown


@pytest.mark.parametrize("spec, readable", [
    ("./mynet.py:build_net", "mynet.build_net-"), ("/home/me/nets/mynet.py:build_net", "mynet.build_net-"),
    ("mypackage.models.resnet_variants:build_resnet_small", "resnet_variants.build_resnet_small-"),
    ("folder:/data/shapes", "folder:shapes-"),
])
def test_paths_become_a_readable_name_and_a_hash(spec, readable):
    short = short_name(spec)
    assert short.startswith(readable) and len(short) == len(readable) + 6 and "/" not in short
    assert short_name(spec) == short  # stable
    assert short_name(spec + "2") != short  # and distinct


def test_a_file_model_on_a_folder_has_a_seven_field_id_and_a_visible_cache_file(tmp_path):
    cell = Cell("native", "./mynet.py:build_net", "folder:/data/shapes", "tucker2", "conv", 4.0, 0)
    assert cell.cell_id.count("/") == 6
    assert cell.cell_id.startswith("native/mynet.build_net-") and "/folder:shapes-" in cell.cell_id
    path = baseline_path(tmp_path, cell.model, cell.dataset, 0, {"epochs": 1})
    assert not path.name.startswith(".") and path.name.startswith("mynet.build_net-")
