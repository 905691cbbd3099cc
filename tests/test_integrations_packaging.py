"""The optional integrations stay optional: the core install does not depend on them, importing
ncollapse (and every module outside ncollapse.integrations) imports none of them, and the
package metadata agrees with LICENSE and CITATION.cff."""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import ncollapse

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("lightning", "pytorch_lightning", "transformers", "tensorboard", "accelerate")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_extras_declared_and_core_dependencies_free_of_them():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert {"lightning", "transformers", "tensorboard"} <= set(extras)
    core = " ".join(project["dependencies"]).lower()
    for name in HEAVY:
        assert name not in core, name


def test_no_module_outside_integrations_imports_an_optional_framework():
    modules = [m.name for m in pkgutil.walk_packages(ncollapse.__path__, "ncollapse.")
               if ".integrations" not in m.name and not m.name.endswith("__main__")]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    # ...and importing the integrations package itself imports none of them either.
    code = ("import json, sys, ncollapse.integrations\n"
            f"print(json.dumps([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout.strip()) == [], out.stderr[-2000:]


def test_license_and_citation_agree_with_the_package_metadata():
    project = pyproject()["project"]
    assert project["license"]["text"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    # top-level keys of the YAML file (no YAML parser in the core install)
    citation = dict(re.findall(r'^([a-z-]+): "?([^"\n]*)"?$', (ROOT / "CITATION.cff").read_text(),
                               flags=re.M))
    assert citation["cff-version"] == "1.2.0"
    assert citation["license"] == "MIT"
    assert citation["version"] == project["version"]
    assert citation["title"].startswith(project["name"])
