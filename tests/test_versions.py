"""`vla --version` and the tested ranges (pipeline/versions.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from pipeline import __version__, versions
from pipeline.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _declared() -> dict[str, SpecifierSet]:
    """The specifier pyproject.toml declares per distribution, and requires-python."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    out = {"python": SpecifierSet(project["requires-python"])}
    for reqs in [project["dependencies"], *project["optional-dependencies"].values()]:
        for req in map(Requirement, reqs):
            if req.name != "vla-pipeline":
                assert out.setdefault(req.name, req.specifier) == req.specifier, req  # one range per name
    return out


def test_tested_ranges_follow_pyproject():
    declared = _declared()
    for name in ("python", "torch", "transformers"):
        assert SpecifierSet(versions.TESTED[name]) == declared[name], name
    assert declared["torch"] == SpecifierSet(">=2.11,<=2.14.1")
    # ray: any 2.x >= 2.60 installs (a driver must match its cluster's release); 2.60 is the tested one
    assert declared["ray"] == SpecifierSet(">=2.60,<3") and versions.TESTED["ray"] == ">=2.60,<2.61"


def test_this_environment_is_inside_the_tested_ranges():
    checks = versions.check_versions()
    assert [c.name for c in checks] == ["python", "torch", "transformers", "ray"]
    assert all(c.in_range for c in checks), [c.warning for c in checks]


def test_range_edges():
    def inside(v):
        return versions.VersionCheck("torch", v, versions.TESTED["torch"]).in_range

    assert [inside(v) for v in ("2.11.0", "2.14.1", "2.14.1+cu130", "2.10.0", "2.14.2", "2.15.0")] == \
        [True, True, True, False, False, False]
    assert versions.VersionCheck("ray", None, ">=2.60").in_range is None  # not installed: no warning


def test_version_command(capsys):
    assert main(["--version"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"vla-pipeline {__version__}"
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["python", "torch", "transformers", "ray"]
    assert f"python {sys.version.split()[0]} (tested >=3.11,<3.14)" in lines
    assert captured.err == ""


def test_version_command_warns_outside_the_range():
    code = ("import sys; from pipeline import versions; versions.TESTED['transformers'] = '<1'; "
            "from pipeline.cli import main; sys.exit(main(['--version']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("warning: transformers ") and "outside the tested range <1" in p.stderr


def test_version_and_help_need_no_heavy_library():
    """`vla --version` is what one runs in a broken environment: it reads package metadata only."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('omegaconf', 'torch', 'transformers', 'ray', 'tensorflow'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from pipeline.cli import main\n"
            "sys.exit(main(['--version']) or main(['--help']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"vla-pipeline {__version__}\npython ") and "usage: vla <verb>" in p.stdout
