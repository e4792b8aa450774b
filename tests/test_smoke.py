import subprocess
import sys

from tests.conftest import ROOT


def test_help_does_not_import_torch():
    code = ("import sys, runpy; sys.argv=['optstate','--help']\n"
            "try:\n    runpy.run_module('optstate', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0
    assert r.stdout.strip() == "optstate 0.1.0"
