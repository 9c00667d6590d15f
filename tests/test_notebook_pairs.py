"""Each teaching notebook is paired with a jupytext ``py:percent`` file (the reviewable text):
the two must hold the same cells, so an edit to one that was not synced to the other fails here."""
import re
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
VERSION = re.compile(r"^#\s+jupytext_version: .*$", re.MULTILINE)  # the writer's version only


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_its_py_percent_file_hold_the_same_cells(ipynb):
    paired = ipynb.with_suffix(".py")
    assert paired.exists(), f"{ipynb.name} has no paired {paired.name} (jupytext --set-formats ipynb,py:percent)"
    from_ipynb = jupytext.writes(jupytext.read(ipynb), fmt="py:percent")
    on_disk = paired.read_text()
    assert VERSION.sub("", from_ipynb) == VERSION.sub("", on_disk), (
        f"{paired.name} is out of sync with {ipynb.name}: run `jupytext --sync {ipynb}`")


PIN = re.compile(r"^if os\.path\.exists\(\"/proc/cpuinfo\"\).*?\n(?:    .*\n)+", re.MULTILINE)
LOADS_TORCH = re.compile(r"^[ \t]*(import torch|from torch|import workbench|from workbench)\b", re.MULTILINE)


def _first_code_cell(ipynb):
    return next(c.source for c in jupytext.read(ipynb).cells if c.cell_type == "code")


def test_every_notebook_pins_the_same_cpu_kernels_before_torch_loads():
    """The AVX2 kernel pin is copied into each notebook's first cell (it must run before torch is
    imported, so no library helper can do it): the copies must agree, and precede any import of
    torch or workbench, or a notebook's stored outputs depend on the CPU again."""
    blocks = {}
    for ipynb in NOTEBOOKS:
        first = _first_code_cell(ipynb)
        pin = PIN.search(first)
        assert pin, f"{ipynb.name}: its first code cell does not pin the CPU kernels (see 00_tour)"
        loads = LOADS_TORCH.search(first)
        assert loads and loads.start() >= pin.end(), \
            f"{ipynb.name}: torch is imported before the CPU kernels are pinned"
        blocks[ipynb.name] = pin.group(0)
    reference = blocks[NOTEBOOKS[0].name]
    assert "ATEN_CPU_CAPABILITY" in reference and "MKL_CBWR" in reference and "ONEDNN_MAX_CPU_ISA" in reference
    differing = [name for name, block in blocks.items() if block != reference]
    assert not differing, f"these notebooks pin other kernels than {NOTEBOOKS[0].name}: {differing}"
