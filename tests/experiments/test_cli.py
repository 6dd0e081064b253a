"""The CLI: parsing, dispatch, errors that list what is valid, override typing."""

import json
import subprocess
import sys

import pytest

from experiments import cli, registry


def _run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code, capsys.readouterr()


def test_list_names_every_experiment_and_its_keys(dummy, capsys, monkeypatch):
    monkeypatch.setattr(registry, "EXPERIMENTS", {"dummy": registry.EXPERIMENTS["dummy"]})
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "dummy" in out and "squares of 0..n-1" in out
    assert "keys: n, scale, label, flag, sizes, limit, seed, hardware, chunk, interrupt_after" in out


def test_list_reports_a_module_that_cannot_load(dummy, capsys, monkeypatch):
    monkeypatch.setattr(registry, "EXPERIMENTS", {"dummy": registry.EXPERIMENTS["dummy"],
                                                  "broken": "experiments._no_such_module"})
    assert cli.main(["list"]) == 1
    out = capsys.readouterr().out
    assert "broken           (cannot load: ModuleNotFoundError" in out and "dummy" in out


def test_unknown_experiment_lists_valid_names(dummy, capsys):
    code, io = _run_cli(["run", "nosuch"], capsys)
    assert code == 2
    assert "unknown experiment 'nosuch'" in io.err
    for name in registry.names():
        assert name in io.err


def test_run_help_lists_config_keys_with_types_and_defaults(dummy, capsys):
    assert cli.main(["run", "dummy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: paretolab run" in out
    assert "  sizes=(1, 2)  [tuple[int, ...]]" in out and "  limit=None  [float | None]" in out
    assert "--quick sets: n=4, label='quick'" in out


def test_unknown_key_lists_valid_keys(dummy, capsys):
    code, io = _run_cli(["run", "dummy", "colour=red"], capsys)
    assert code == 2
    assert "no config key 'colour'" in io.err and "n, scale, label, flag, sizes" in io.err


@pytest.mark.parametrize("arg, message", [
    ("n=1.5", "'1.5' is not an integer"),
    ("flag=maybe", "'maybe' is not a boolean"),
    ("n=0", "n=0 must be >= 1"),             # the Config's own validation
    ("nokey", "not of the form key=value"),
    ("scale=abc", "'abc' is not a number"),
])
def test_bad_values_are_usage_errors(dummy, capsys, arg, message):
    code, io = _run_cli(["run", "dummy", arg], capsys)
    assert code == 2 and message in io.err


def test_overrides_parse_into_field_types(dummy):
    config = registry.make_config("dummy", overrides={
        "n": "7", "scale": "2.5", "label": "x=y", "flag": "yes", "sizes": "3, 4,5", "limit": "none"})
    assert config == dummy.Config(n=7, scale=2.5, label="x=y", flag=True, sizes=(3, 4, 5), limit=None)
    assert type(config.n) is int and type(config.scale) is float
    assert registry.make_config("dummy", overrides={"limit": "0.25", "sizes": ""}).limit == 0.25
    assert registry.make_config("dummy", overrides={"sizes": ""}).sizes == ()


def test_parse_value_types():
    from typing import Literal
    assert registry.parse_value("b", Literal["a", "b"]) == "b"
    assert registry.parse_value("2", Literal[1, 2]) == 2
    assert registry.parse_value("1,x", tuple[int, str]) == (1, "x")
    assert registry.parse_value("3", int | None) == 3
    with pytest.raises(ValueError, match="not one of"):
        registry.parse_value("c", Literal["a", "b"])
    with pytest.raises(ValueError, match="expected 2 comma-separated"):
        registry.parse_value("1", tuple[int, str])
    with pytest.raises(ValueError, match="cannot parse"):
        registry.parse_value("1", dict)


def test_quick_seed_hardware_and_precedence(dummy, tmp_path):
    assert registry.make_config("dummy", quick=True) == dummy.Config(n=4, label="quick")
    # explicit overrides win over QUICK
    assert registry.make_config("dummy", quick=True, overrides={"n": "5"}).n == 5
    assert registry.make_config("dummy", seed=9).seed == 9
    profile = tmp_path / "h.json"
    profile.write_text("{}")
    assert registry.make_config("dummy", hardware=str(profile)).hardware == str(profile)
    with pytest.raises(ValueError, match="is not a file"):
        registry.make_config("dummy", hardware=str(tmp_path / "missing.json"))


def test_option_style_overrides(dummy, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "dummy", "--quick", "--n", "3", "--label=z", "--out", str(out),
                     "--seed=4", "scale=2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["n"], config["label"], config["seed"], config["scale"]) == (3, "z", 4, 2.0)
    headline = json.loads((out / "summary.json").read_text())
    assert headline == {"total": 2.0 * (0 + 1 + 4), "n": 3}
    assert str(out) in capsys.readouterr().out


def test_config_mismatch_on_existing_out_is_an_error(dummy, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["run", "dummy", "--out", out, "n=3"]) == 0
    assert cli.main(["run", "dummy", "--out", out, "n=4"]) == 1
    assert "differs in ['n']" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "experiments", "run", "nosuch"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown experiment 'nosuch'; valid: " + ", ".join(registry.names()) in proc.stderr
