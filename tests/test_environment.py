"""The setup files agree with each other, and the core imports without the plotting stack."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

# The core: what a bare GPU machine (torch, numpy, pandas; no plotly/panel/jupyter) must import.
CORE_MODULES = ["workbench", "workbench.norms", "workbench.models", "workbench.data",
                "workbench.train", "workbench.store", "workbench.probes"]
# Front-end packages the core must not import at module level.
BLOCKED = ["plotly", "panel", "ipywidgets", "bokeh", "IPython", "matplotlib"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _constraint(name: str) -> str:
    """The ``name==x.y.z`` line of constraints.txt."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if re.match(rf"^{re.escape(name)}\s*==", line):
            return line.replace(" ", "")
    raise AssertionError(f"constraints.txt pins no {name}")


def _allows(requires_python: str, version: tuple[int, int]) -> bool:
    """Whether a ``>=3.10,<3.14``-style specifier admits ``major.minor`` (only >=, >, <, <=, ==)."""
    ops = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
           "<": lambda a, b: a < b, "==": lambda a, b: a == b}
    for spec in requires_python.split(","):
        m = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*(\d+)\.(\d+)(?:\.\*|\.\d+)?\s*", spec)
        assert m, f"cannot read requires-python clause {spec!r}"
        if not ops[m[1]](version, (int(m[2]), int(m[3]))):
            return False
    return True


def test_environment_yml_shape(env):
    assert env["name"] == "normlab"
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    names = sorted(re.split(r"[=<>! ]", d)[0] for d in conda)
    assert names == ["pip", "python"], f"conda should only bring python and pip, got {conda}"


def test_environment_python_matches_requires_python(env, pyproject):
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    python = next(d for d in conda if d.startswith("python"))
    m = re.fullmatch(r"python\s*=+\s*(\d+)\.(\d+)(?:\.\*)?", python)
    assert m, f"environment.yml should pin python to major.minor, got {python!r}"
    requires = pyproject["project"]["requires-python"]
    assert _allows(requires, (int(m[1]), int(m[2]))), f"{python} is outside requires-python {requires}"


def test_environment_pip_section_matches_constraints_and_extras(env, pyproject):
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip) == 1 and list(pip[0]) == ["pip"], "expected exactly one `pip:` section"
    lines = [line.replace(" ", "") for line in pip[0]["pip"]]
    torch = [line for line in lines if re.match(r"^torch\b", line)]
    assert torch == [_constraint("torch")], "environment.yml must pin torch like constraints.txt"
    editable = [line for line in lines if line.startswith("-e")]
    assert len(editable) == 1, f"expected one editable install of the project, got {editable}"
    m = re.fullmatch(r"-e\.(?:\[([\w,-]+)\])?", editable[0])
    assert m, f"editable install should be `-e .[extras]`, got {editable[0]!r}"
    extras = set(filter(None, (m[1] or "").split(",")))
    known = set(pyproject["project"].get("optional-dependencies", {}))
    assert "dev" in extras and extras <= known, f"extras {sorted(extras)} vs pyproject {sorted(known)}"
    make = re.search(r"^EXTRAS \?= ([\w,-]+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make and extras == set(make[1].split(",")), \
        f"environment.yml installs extras {sorted(extras)}, the Makefile {make and make[1]}"


def test_torch_is_a_floor_in_pyproject_and_a_pin_in_constraints(pyproject):
    torch = [d for d in pyproject["project"]["dependencies"] if re.match(r"^torch\b", d)]
    assert torch and "==" not in torch[0], "pyproject keeps a torch floor; the pin is constraints.txt"
    assert _constraint("torch").startswith("torch==")


def test_core_imports_without_frontend_packages():
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        BLOCKED = {BLOCKED!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked in this test: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        for mod in {CORE_MODULES!r}:
            importlib.import_module(mod)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_make_serve_stops_closed_tabs_as_soon_as_the_test_server():
    """`make serve` and the in-process server destroy a closed tab's session equally fast."""
    pytest.importorskip("panel")
    from workbench.dashboard.server import CHECK_UNUSED_MS, UNUSED_SESSION_MS

    make = (ROOT / "Makefile").read_text()
    assert f"--check-unused-sessions {CHECK_UNUSED_MS}" in make
    assert f"--unused-session-lifetime {UNUSED_SESSION_MS}" in make
    assert "--address 127.0.0.1" in make


def test_server_entry_points_freeze_the_startup_heap():
    """Every app script and serve_apps freeze the imported libraries out of the cyclic GC (a
    closed tab's gc.collect() then does not stall training threads), once per process and never
    on a plain library import."""
    code = textwrap.dedent("""
        import gc, runpy, sys
        import workbench.dashboard.server as server
        assert gc.get_freeze_count() == 0, "importing the library must not freeze"
        server.freeze_startup_heap()
        frozen = gc.get_freeze_count()
        assert frozen > 100_000, frozen  # torch, pandas, panel, plotly... are in
        assert "workbench.dashboard.arena" in sys.modules and "workbench.dashboard.runs" in sys.modules
        server.freeze_startup_heap()
        # (frozen objects can still be freed, e.g. by the forkserver warm-up thread: <=, not ==)
        assert gc.get_freeze_count() <= frozen, "a second call must not freeze session objects"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=False, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for app in sorted((ROOT / "apps").glob("*.py")):
        text = app.read_text()
        assert "freeze_startup_heap()" in text.split(".servable()")[0], app.name
