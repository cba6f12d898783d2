"""Real networks, offline, on files the tests write: torchvision architectures, the user's own builder and weights,
image folders and CIFAR-format files, layers left dense with their reason, ``--layers`` and the data-free study.

Images and checkpoints are tiny and made here; nothing is downloaded. The runs keep to a few layers
(``--layers``) and one epoch so the file stays quick on two cores.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from harness.run.baseline import WeightsError, baseline_path, load_weights
from harness.cli.main import main
from harness.config.settings import ConfigError, build_config
from harness.run.data import FolderData
from harness.run.models import ModelUnavailable, lenet5, resolve_model
from harness.results.store import load_results

CLASSES = ("cat", "dog", "owl")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ and test/ with three classes of 40x48 RGB images, a class told apart by its mean colour."""
    root = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = generator.integers(0, 80, (40, 48, 3)) + 60 * index
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """CIFAR-10 in its python-pickle layout (five train batches, a test batch, the meta file), 8 images each."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    generator = np.random.default_rng(1)

    def batch(name: str, count: int) -> None:
        data = generator.integers(0, 255, (count, 3 * 32 * 32)).astype(np.uint8)
        labels = [int(v) for v in generator.integers(0, 10, count)]
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels}, handle)

    for i in range(1, 6):
        batch(f"data_batch_{i}", 8)
    batch("test_batch", 8)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return root


def run(tmp_path, cache_dir, *args: str) -> tuple[int, object]:
    out = tmp_path / "run"
    code = main(["run", "--epochs", "1", "--baseline-epochs", "1", "--ratios", "4", "--no-dense-control",
                 "--latency-passes", "1",
                 "--executor", "inprocess", "--cache-dir", str(cache_dir), "--out", str(out), *args])
    return code, (load_results(out) if (out / "results.sqlite").exists() else None)


def layer_infos(results, backend: str | None = None) -> dict[str, dict]:
    rows = results.layers if backend is None else results.layers[results.layers["backend"] == backend]
    return {row.layer: json.loads(row.info) for row in rows.itertuples()}


def test_folder_data_streams_a_subset_with_standard_normalisation(image_folder):
    data = FolderData(image_folder, image_size=32, subset=2, workers=0)
    assert data.num_classes == 3 and data.input_shape == (3, 32, 32)
    assert (data.train_size, data.test_size) == (6, 6)  # 2 per class in each split
    batches = list(data.train_batches(4, torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [4, 2]
    x, y = data.head("train", 3)
    assert x.shape == (3, 3, 32, 32) and sorted(y.tolist()) == [0, 1, 2]  # spread over the classes
    # ImageNet normalisation: (pixel/255 - mean) / std, so the brightest class sits well above the darkest.
    assert x[y == 2].mean() > x[y == 0].mean() + 1


def test_resnet18_and_mobilenet_v2_on_an_image_folder(tmp_path, cache_dir, image_folder):
    code, results = run(tmp_path, cache_dir, "--models", "torchvision:resnet18,torchvision:mobilenet_v2",
                        "--datasets", f"folder:{image_folder}", "--image-size", "32", "--subset", "4",
                        "--backends", "native", "--methods", "tucker2", "--targets", "conv",
                        "--layers", "layer1.0.*,layer2.0.*,features.2.*,features.3.*")
    assert code == 0
    cells = results.cells.set_index("model")
    assert set(cells["status"]) == {"ok"}
    resnet_rows = results.layers[results.layers["model"] == "torchvision:resnet18"].set_index("layer")
    # 3x3 convs get Tucker-2; the 1x1 downsample conv is a matrix and gets the SVD (two 1x1 convs).
    assert json.loads(resnet_rows.loc["layer1.0.conv1", "info"])["method"] == "tucker2"
    assert json.loads(resnet_rows.loc["layer2.0.downsample.0", "info"])["method"] == "svd"
    assert set(resnet_rows.index) == {"layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
                                      "layer2.0.downsample.0"}
    # MobileNet's depthwise convs stay dense with the reason; its pointwise convs are decomposed.
    mobile = results.layers[results.layers["model"] == "torchvision:mobilenet_v2"].set_index("layer")
    depthwise = json.loads(mobile.loc["features.2.conv.1.0", "info"])
    assert depthwise == {"method": None, "left_dense": "native cannot handle conv groups"}
    assert json.loads(mobile.loc["features.2.conv.0.0", "info"])["method"] == "svd"
    row = cells.loc["torchvision:mobilenet_v2"]
    assert row["layers_decomposed"] < row["layers_targeted"] and row["compression"] > 1


def test_resnet18_on_cifar_format_files(tmp_path, cache_dir, cifar_dir):
    code, results = run(tmp_path, cache_dir, "--models", "torchvision:resnet18", "--datasets", "cifar10",
                        "--data-dir", str(cifar_dir), "--backends", "native,tensorly", "--methods", "tucker2,tt",
                        "--targets", "conv", "--layers", "layer1.1.conv*")
    assert code == 0, results.cells[["cell_id", "status", "error"]] if results is not None else None
    assert list(results.cells["status"]) == ["ok"] * 4
    assert (results.cells["layers_decomposed"] == 2).all()


def test_mobilenet_v2_on_cifar_format_files(tmp_path, cache_dir, cifar_dir):
    code, results = run(tmp_path, cache_dir, "--models", "torchvision:mobilenet_v2", "--datasets", "cifar10",
                        "--data-dir", str(cifar_dir), "--backends", "native", "--methods", "svd",
                        "--targets", "conv", "--layers", "features.1*")
    assert code == 0
    infos = layer_infos(results)
    assert infos["features.1.conv.0.0"]["left_dense"] == "native cannot handle conv groups"
    assert infos["features.1.conv.1"]["method"] == "svd"


BUILDERS = '''
from torch import nn


def build(input_shape, num_classes):
    channels = input_shape[0]
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))


def fixed():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def needs_three(a, b, c):
    return None
'''


@pytest.fixture()
def builders(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(BUILDERS)
    return path


def test_a_user_builder_from_a_file_with_a_grouped_conv_left_dense(tmp_path, cache_dir, builders):
    code, results = run(tmp_path, cache_dir, "--models", f"{builders}:build", "--backends", "native",
                        "--methods", "tucker2", "--targets", "conv")
    assert code == 0
    rows = results.layers.set_index("layer")
    assert json.loads(rows.loc["2", "info"]) == {"method": None, "left_dense": "native cannot handle conv groups"}
    assert json.loads(rows.loc["4", "info"])["method"] == "tucker2"
    cell = results.cells.iloc[0]
    assert cell["status"] == "ok" and (cell["layers_targeted"], cell["layers_decomposed"]) == (2, 1)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "layers decomposed" in report  # the summary says this cell decomposed fewer layers than it targets


def test_a_builder_without_arguments_and_bad_builders(tmp_path, builders, capsys):
    spec = resolve_model(f"{builders}:fixed", {})
    assert isinstance(spec.build((1, 28, 28), 10), nn.Sequential)
    with pytest.raises(ModelUnavailable, match="must take"):
        resolve_model(f"{builders}:needs_three", {})
    with pytest.raises(ModelUnavailable, match="has no callable 'nothing'"):
        resolve_model(f"{builders}:nothing", {})
    with pytest.raises(ModelUnavailable, match="no classification model 'resnet19'"):
        resolve_model("torchvision:resnet19", {})
    assert main(["run", "--models", "torchvision:resnet19"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "did you mean" in err


def test_torchvision_models_adapt_to_one_channel_and_the_classes():
    model = resolve_model("torchvision:resnet18", {}).build((1, 28, 28), 7)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_weights_are_loaded_checked_and_keyed_by_their_hash(tmp_path, cache_dir):
    model = lenet5((1, 28, 28), 10)
    torch.manual_seed(3)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.1)
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, first)
    torch.save(lenet5((1, 28, 28), 10).state_dict(), second)
    fresh = lenet5((1, 28, 28), 10)
    load_weights(fresh, first)  # the usual key and a DataParallel prefix are both undone
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    training = build_config({}).training_spec()
    paths = {baseline_path(cache_dir, "lenet5", "mnist-embedded", 0, training, str(p)) for p in (first, second)}
    assert len(paths | {baseline_path(cache_dir, "lenet5", "mnist-embedded", 0, training)}) == 3

    code, results = run(tmp_path, cache_dir, "--weights", str(first), "--baseline-epochs", "0",
                        "--backends", "native", "--methods", "svd", "--targets", "linear")
    assert code == 0
    from harness.run.data import load_mnist_embedded
    from harness.run.training import evaluate_test

    expected = evaluate_test(model.eval(), load_mnist_embedded())[1]
    assert results.cells["acc_baseline"].iloc[0] == pytest.approx(expected)
    assert results.meta["config"]["weights"] == {"*": str(first.resolve())}


def test_a_checkpoint_that_does_not_fit_is_one_line_and_exit_2(tmp_path, cache_dir, capsys):
    wrong = tmp_path / "mlp.pt"
    torch.save({"state_dict": nn.Sequential(nn.Linear(3, 3)).state_dict()}, wrong)
    code, _ = run(tmp_path, cache_dir, "--weights", f"lenet5={wrong}", "--backends", "native", "--methods", "svd",
                  "--targets", "linear")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "does not fit the model: missing 10 keys (0.0.weight, 0.0.bias, 0.3.weight and 7 more)" in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be loaded with torch.load"):
        load_weights(lenet5((1, 28, 28), 10), garbage)
    with pytest.raises(ConfigError, match="does not exist"):
        build_config({"weights": str(tmp_path / "none.pt")})


def test_layers_picks_layers_by_path(tmp_path, cache_dir, capsys):
    code, results = run(tmp_path, cache_dir, "--backends", "native", "--methods", "svd", "--targets", "linear",
                        "--layers", "4,nothing*")
    assert code == 0
    assert list(results.layers["layer"]) == ["4"]
    assert "--layers 'nothing*' matches no conv or Linear layer of lenet5" in capsys.readouterr().out


def test_a_data_free_speed_study(tmp_path, cache_dir):
    code, results = run(tmp_path, cache_dir, "--models", "torchvision:resnet18", "--no-train", "--datasets",
                        "random:3x64x64", "--backends", "native", "--methods", "tucker2", "--targets", "conv",
                        "--layers", "layer4.1.conv2", "--latency-batch", "1")
    assert code == 0
    cell = results.cells.iloc[0]
    assert cell["status"] == "ok" and pd.isna(cell["acc_baseline"]) and pd.isna(cell["acc_final"])
    assert cell["latency_ms"] > 0 and cell["flops"] < cell["flops_dense"] and 0 < cell["recon_error"] < 1
    assert results.epochs.empty
