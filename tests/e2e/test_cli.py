"""The command line: one-line usage errors with exit 2, `list`, `--version`, `--help`."""

from __future__ import annotations

import re

import pytest

from harness.cli.main import main


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
        (["run", "--latency-threads", "0"], "latency_threads: 0 is below 1"),
        (["run", "--memory-format", "nhwc"], "unknown memory format 'nhwc' (choose contiguous, channels_last)"),
        (["run", "--datasets", "mnist", "--data-dir", "/nonexistent/dir"], "does not exist"),
        (["run", "--epochs", "-1"], "is below 0"),
        (["run", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["report", "/nonexistent/run"], "is not a run directory"),
        (["run", "--resume", "/nonexistent/run"], "cannot resume"),
        (["frobnicate"], "invalid choice"),
        (["bench", "--only", "nope"], "unknown study 'nope' (choose from cp, latency, jobs, main, latency-aware)"),
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


def test_top_level_help_imports_neither_torch_nor_pandas():
    """`harness --help` lists the commands without loading plugins, so it starts in a fraction of a second."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\nfrom harness.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit as exc:\n        assert exc.code == 0\n"
            "assert 'usage: harness' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_list_shows_backends_models_datasets_reports_and_plugins(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for needle in ("native", "svd", "tucker2", "lenet5", "vgg-small", "mlp", "mnist-embedded", "cifar10",
                   "tables", "harness_register_backends", "harness_report"):
        assert needle in out


def test_a_misspelled_p_plugin_is_one_line_and_exit_2(capsys):
    code, out, err = run_cli(capsys, "-p", "no_such_plugin_module", "list")
    assert code == 2 and out == ""
    assert err == ("harness: error: cannot load plugin 'no_such_plugin_module' given with -p: "
                   "ModuleNotFoundError: No module named 'no_such_plugin_module'\n")
    code, _, err = run_cli(capsys, "-p", "no/such/file.py", "list")
    assert code == 2 and len(err.splitlines()) == 1 and "no such file" in err


def test_an_installed_plugin_that_fails_to_import_is_listed_not_fatal(capsys, monkeypatch):
    import importlib.metadata

    from harness.run import host as plugins

    broken = importlib.metadata.EntryPoint("broken", "no_such_installed_module", plugins.ENTRY_POINT_GROUP)
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real(group=group), broken])
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert "no_such_installed_module (entry point): FAILED: ModuleNotFoundError" in out
    assert "native" in out  # the others still load


def test_blocking_a_plugin_lists_it_as_blocked(capsys):
    code, out, _ = run_cli(capsys, "-p", "no:native", "plugins")
    assert code == 0
    assert re.search(r"  native +harness_native \(entry point of tensor-harness", out)
    assert out.splitlines()[[i for i, line in enumerate(out.splitlines()) if "harness_native" in line][0]].endswith(
        "blocked (-p no:NAME)")
    code, out, _ = run_cli(capsys, "-p", "no:native", "list")
    assert "  native " not in out.split("rank selectors")[0]  # no backend of a blocked plugin


def test_p_loads_a_module_from_the_current_folder_or_a_file(capsys, tmp_path, monkeypatch):
    (tmp_path / "my_local_plugin.py").write_text(
        "import harness\n"
        "from harness.run.models import ModelSpec, lenet5\n\n"
        "@harness.hookimpl\n"
        "def harness_register_models(register):\n"
        "    register(ModelSpec('local-lenet', lenet5, 'LeNet-5 from a plugin in the current folder'))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    code, out, _ = run_cli(capsys, "-p", "my_local_plugin", "list")
    assert code == 0 and "local-lenet" in out
    assert re.search(r"  my_local_plugin +\(loaded with -p\): harness_register_models", out)  # its name once, aligned
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "file_plugin.py").write_text(
        (tmp_path / "my_local_plugin.py").read_text().replace("local-lenet", "file-lenet"))
    code, out, _ = run_cli(capsys, "-p", "sub/file_plugin.py", "list")
    assert code == 0 and "file-lenet" in out and "(loaded with -p)" in out


def test_unavailable_backend_is_listed_with_hint_and_skipped_by_all(capsys):
    code, out, _ = run_cli(capsys, "-p", "fake_backend", "list")
    assert "missing" in out and "unavailable (pip install nonexistent-lib)" in out
    code, _, err = run_cli(capsys, "-p", "fake_backend", "run", "--backends", "missing")
    assert code == 2 and "unavailable" in err


def test_jobs_default_to_one_worker_per_available_core_and_one_on_a_gpu(monkeypatch):
    import torch

    from harness.config.settings import build_config
    from harness.core.resources import available_cores, threads_per_worker

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cores = available_cores()
    assert build_config({}).jobs == cores
    assert threads_per_worker(cores) == 1
    assert build_config({"jobs": "3"}).jobs == 3
    assert build_config({"device": "cuda"}).jobs == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert build_config({}).jobs == 1
    assert build_config({"device": "cpu"}).jobs == cores
