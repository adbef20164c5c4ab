"""The teaching pages in docs/ run as tests, so they cannot go stale.

Every docs/*.md page is run with doctest (its `>>>` examples must print exactly what the page shows, up to
ELLIPSIS and whitespace), from the repository root, so paths like tests/fixtures/... resolve. Every
```console block whose lines start with `$ npunet ...` is re-run through npunet.cli.main and its output
compared with the block, line by line (trailing spaces ignored).
"""

import doctest
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from npunet.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCTEST_PAGES = [p for p in PAGES if ">>> " in p.read_text()]
CONSOLE = re.compile(r"^```console\n(.*?)^```", re.S | re.M)


def console_examples(page: Path):
    """(command, expected output lines) for each `$ npunet ...` command in the page's console blocks."""
    out = []
    for block in CONSOLE.findall(page.read_text()):
        for chunk in re.split(r"^(?=\$ )", block, flags=re.M):
            if chunk.startswith("$ npunet "):
                cmd, _, rest = chunk.partition("\n")
                out.append((cmd[2:], [line.rstrip() for line in rest.rstrip("\n").split("\n")]))
    return out


CONSOLE_CASES = [(p, cmd, want) for p in PAGES for cmd, want in console_examples(p)]


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    saved = np.get_printoptions()
    yield
    np.set_printoptions(**saved)


def test_pages_exist():
    assert {p.name for p in PAGES} >= {"README.md", "depthwise_separable.md", "eca.md", "groupnorm.md",
                                       "network_walkthrough.md", "parity.md"}


@pytest.mark.parametrize("page", DOCTEST_PAGES, ids=[p.name for p in DOCTEST_PAGES])
def test_page_examples_run(page, at_root):
    result = doctest.testfile(str(page), module_relative=False, report=True,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{page.name}: no examples found"
    assert result.failed == 0, f"{page.name}: {result.failed} of {result.attempted} examples failed (see above)"


@pytest.mark.parametrize("page,cmd,want", CONSOLE_CASES, ids=[f"{p.name}:{c}" for p, c, _ in CONSOLE_CASES])
def test_console_blocks_match_cli(page, cmd, want, at_root, capsys):
    argv = shlex.split(cmd)
    assert argv[0] == "npunet"
    assert main(argv[1:]) == 0
    got = [line.rstrip() for line in capsys.readouterr().out.rstrip("\n").split("\n")]
    assert got == want, f"{page.name}: output of `{cmd}` changed; paste the new output into the page"


def test_readme_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    for p in PAGES:
        if p.name != "README.md":
            assert f"({p.name})" in index, f"docs/README.md does not link {p.name}"


def test_profile_layers_script_runs(at_root, capsys):
    """docs/profile_layers.py (whose output network_walkthrough.md quotes) still runs: a tiny, quick setting."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("profile_layers", ROOT / "docs" / "profile_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--batch", "1", "--size", "32", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "conv3x3" in out and "whole forward net(x)" in out
