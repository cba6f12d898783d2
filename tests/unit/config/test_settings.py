"""Each setting is declared once, beside its RunConfig field: the flag, its help with the default, and the TOML key
are all derived from that one declaration, so they cannot drift apart."""

from __future__ import annotations

import dataclasses
import re

import pytest

from harness.cli.parser import build_parser
from harness.config.settings import SETTINGS, ConfigError, RunConfig, build_config, shown_default


def run_parser():
    parser = build_parser(None)
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    return commands["run"]


def test_every_field_is_a_declared_setting():
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"plugin_options"}
    assert fields == set(SETTINGS)


def test_every_flag_is_derived_from_its_setting_with_the_default_in_its_help():
    actions = {action.dest: action for action in run_parser()._actions}
    for name, setting in SETTINGS.items():
        if setting.flag is None:
            assert name not in actions
            continue
        action = actions[name]
        assert action.option_strings == [setting.flag or "--" + name.replace("_", "-")]
        assert action.help == setting.help + shown_default(name)
    assert shown_default("ratios") == " [2,4,8]" and shown_default("cell_timeout") == " [900]"


def test_the_flag_and_the_toml_key_give_the_same_config():
    parsed = run_parser().parse_args(["--ratios", "2,4", "--epochs", "3", "--tt-pad", "--no-dense-control",
                                      "--mix", "conv=tucker2", "--lr", "0.02"])
    from_flags = build_config({k: v for k, v in vars(parsed).items() if k in SETTINGS and v is not None})
    from_toml = build_config({"ratios": [2, 4], "epochs": 3, "tt_pad": True, "dense_control": False,
                              "mix": "conv=tucker2", "lr": 0.02})
    assert dataclasses.replace(from_flags, jobs=None) == dataclasses.replace(from_toml, jobs=None)
    assert from_flags.ratios == [2.0, 4.0] and from_flags.mix == ["conv=tucker2"] and not from_flags.dense_control


def test_a_weights_file_that_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    """Without read permission (simulated: the tests run as root, whom permissions do not stop)."""
    import builtins

    from harness.config import values

    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"x")

    def refuse(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(values, "open", refuse, raising=False)
    with pytest.raises(ConfigError, match="weights file .* cannot be read: Permission denied"):
        build_config({"weights": str(path)})


@pytest.mark.parametrize("text, words", [
    ("[run]\nratios = nan", "ratio nan must be a finite number"),
    ("[run]\nratios = [[2, 4]]", "ratios must be a list of numbers"),
    ("[run]\nlr = true", "lr: true is not a number"),
    ("[run]\nepochs = true", "epochs: True is not an integer"),
    ("[run]\ncache_dir = { path = '/tmp' }", "cache_dir takes one value, not a table"),
    ("epoch = 3\n[run]\nseeds = [0]", "'epoch' outside the [run] table"),
])
def test_a_config_file_is_checked_value_by_value(tmp_path, text, words):
    from harness.config.settings import check_values, load_toml

    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        check_values(load_toml(str(tmp_path / "c.toml")), "config file")
