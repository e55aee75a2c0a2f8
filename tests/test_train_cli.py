"""`taxoclip train`: thin CLI over taxoclip.train."""
from __future__ import annotations

import json
import subprocess
import sys

from taxoclip.cli import main


def test_cli_module_imports_nothing_heavy():
    code = "import sys, taxoclip.cli.train; print(sorted(m for m in ('torch', 'open_clip', 'yaml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_print_config_applies_overrides_and_flags(capsys):
    assert main(["train", "run", "data.train=[x.tar]", "optim.lr=3e-4", "--steps", "7", "--no-local-loss",
                 "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["steps"] == 7 and cfg["loss"]["local"] is False


def test_bad_override_is_a_one_line_error(capsys):
    assert main(["train", "run", "optim.nope=1", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("taxoclip train: error: unknown config key 'optim.nope'") and err.count("\n") == 1


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "run", f"data.train=[{tmp_path / 'none'}]", "steps=1", f"out={tmp_path / 'r'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
