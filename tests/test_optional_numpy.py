"""numpy is optional (pyproject's ``plot`` extra): every command works without it and
prints nothing about it; the two features that need it say so in one line.

"Without numpy" is a real torch in a process where ``import numpy`` fails
(``sys.modules["numpy"] = None``): torch sees it missing as it would in an environment
without it (its import warns "Failed to initialize NumPy", its ``Tensor.numpy()`` fails).
"""

from __future__ import annotations

import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.conftest import ROOT

PROBE = (
    "import sys\n"
    "sys.modules['numpy'] = None  # as if it were not installed\n"
    "sys.argv = ['optstate', *sys.argv[1:]]\n"
    "from optstate._entry import main\n"
    "main()\n"
)


def _without_numpy(*args: object, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "COLUMNS": "100"})


def test_torch_itself_warns_without_numpy():
    """What the commands must not show: torch's import warning."""
    r = subprocess.run([sys.executable, "-c", "import sys\nsys.modules['numpy'] = None\n"
                        "import torch"], capture_output=True, text=True, timeout=120)
    assert "Failed to initialize NumPy" in r.stderr


def test_commands_run_without_numpy_and_say_nothing_about_it(tmp_path):
    r = _without_numpy("simulate", "-O", "adam", "--steps", "3", "--save", "a.pt",
                       cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    r = _without_numpy("inspect", "a.pt", "--hist", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert "exp_avg_sq" in r.stdout


def test_plot_without_numpy_says_how_to_install_it(tmp_path):
    r = _without_numpy("simulate", "--plot", "run.png", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("Error: --plot needs matplotlib, which is not installed: "
                        "pip install 'optstate[plot]'\n")


def test_saving_a_sharded_run_without_numpy_says_so_before_starting(tmp_path):
    r = _without_numpy("simulate", "--world-size", "2", "--save", "dcp", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("Error: saving a sharded run needs numpy (torch.distributed."
                        "checkpoint gathers the ranks' save plans through it), which is "
                        "not installed: pip install numpy\n")
    assert list(tmp_path.iterdir()) == []


def test_numpy_is_an_extra_not_a_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("numpy")]
    assert any(d.startswith("numpy") for d in project["optional-dependencies"]["plot"])
