"""The command line: one-line usage errors with exit 2, `list`, `--version`, `--help`."""

from __future__ import annotations

import pytest

from harness.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "--backends", "nosuch"], "unknown backend 'nosuch' (installed: "),
        (["run", "--ratios", "1"], "must be a finite number above 1"),
        (["run", "--ratios", "0.5"], "must be a finite number above 1"),
        (["run", "--ratios", "abc"], "ratio 'abc' is not a number"),
        (["run", "--models", "resnet9000"], "unknown model 'resnet9000'"),
        (["run", "--datasets", "imagenet"], "unknown dataset 'imagenet'"),
        (["run", "--methods", "magic"], "unknown method 'magic'"),
        (["run", "--targets", "everything"], "unknown target 'everything'"),
        (["run", "--datasets", "mnist", "--data-dir", "/nonexistent/dir"], "does not exist"),
        (["run", "--epochs", "-1"], "is below 0"),
        (["run", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["report", "/nonexistent/run"], "is not a run directory"),
        (["run", "--resume", "/nonexistent/run"], "cannot resume"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out


def test_unknown_backend_lists_installed(capsys):
    _, _, err = run_cli(capsys, "run", "--backends", "nosuch")
    assert "native" in err


@pytest.mark.parametrize("content, expected", [
    ("ratios = [2, 4\nmodels = 'x'", "is not valid TOML"),
    ("wibble = 3", "unknown setting 'wibble'"),
    ("ratios = ['0.9']", "above 1"),
])
def test_bad_config_file(capsys, tmp_path, content, expected):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    code, _, err = run_cli(capsys, "run", "--config", str(path))
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "does not exist" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("harness ")


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["list", "--help"], ["report", "--help"]])
def test_help_everywhere(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: harness" in capsys.readouterr().out


def test_list_shows_backends_models_datasets_reports_and_plugins(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for needle in ("native", "svd", "tucker2", "lenet5", "vgg-small", "mlp", "mnist-embedded", "cifar10",
                   "tables", "harness_decompose_layer"):
        assert needle in out


def test_list_records_a_plugin_that_fails_to_import(capsys):
    code, out, _ = run_cli(capsys, "-p", "no_such_plugin_module", "list")
    assert code == 0
    assert "no_such_plugin_module" in out and "FAILED: ModuleNotFoundError" in out
    assert "native" in out  # the others still load


def test_blocking_a_plugin(capsys):
    code, out, _ = run_cli(capsys, "-p", "no:native", "list")
    assert code == 0
    assert "harness_native" not in out


def test_unavailable_backend_is_listed_with_hint_and_skipped_by_all(capsys):
    code, out, _ = run_cli(capsys, "-p", "fake_backend", "list")
    assert "missing" in out and "unavailable (pip install nonexistent-lib)" in out
    code, _, err = run_cli(capsys, "-p", "fake_backend", "run", "--backends", "missing")
    assert code == 2 and "unavailable" in err
