"""The teaching pages in docs/ run as tests, so they cannot go stale.

Every docs/*.md page is run with doctest (its `>>>` examples must print exactly what the page shows, up to
ELLIPSIS and whitespace), from the repository root, so paths like tests/fixtures/... resolve. Every
```console block whose lines start with `$ npunet ...` is re-run through npunet.cli.main and its output
compared with the block, line by line (trailing spaces ignored; `...` stands for any text, as in doctest's
ELLIPSIS, for figures that depend on the machine). A `$ echo $?` right after a command gives the exit code it
must end with (0 otherwise). A page's commands run in order, in a folder of their own laid out as a fresh
clone beside the data (tests/, weights/ and docs/ linked in, ../shared/data the real CT data of $NPUNET_DATA),
so what one command writes the next one reads, and nothing is written into the repository.
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
DATA = "../shared/data"
EXTRAS = {"ports.md": ("onnx", "onnxruntime", "openvino")}      # optional packages a page's examples run


def needs_extras(page: Path) -> None:
    for module in EXTRAS.get(page.name, ()):
        pytest.importorskip(module, reason=f"{page.name} runs {module}, in the onnx extra: pip install -e '.[onnx]'")


def console_examples(page: Path):
    """(command, expected output lines, expected exit code) for each `$ npunet ...` command in the page's
    console blocks, in order."""
    out = []
    for block in CONSOLE.findall(page.read_text()):
        for chunk in re.split(r"^(?=\$ )", block, flags=re.M):
            cmd, _, rest = chunk.partition("\n")
            lines = [line.rstrip() for line in rest.rstrip("\n").split("\n")]
            if chunk.startswith("$ npunet "):
                out.append([cmd[2:], lines, 0])
            elif cmd.strip() == "$ echo $?" and out:
                out[-1][2] = int(lines[0])
    return [tuple(example) for example in out]


CONSOLE_CASES = [(p, i, cmd, want, code) for p in PAGES for i, (cmd, want, code) in enumerate(console_examples(p))]


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    saved = np.get_printoptions()
    yield
    np.set_printoptions(**saved)


def test_pages_exist():
    assert {p.name for p in PAGES} >= {"README.md", "depthwise_separable.md", "eca.md", "groupnorm.md",
                                       "network_walkthrough.md", "parity.md", "ports.md"}


@pytest.mark.parametrize("page", DOCTEST_PAGES, ids=[p.name for p in DOCTEST_PAGES])
def test_page_examples_run(page, at_root, request):
    needs_extras(page)
    if DATA in page.read_text():
        request.getfixturevalue("data_dir")       # the page reads real CTs: skips (or fails) without them
    result = doctest.testfile(str(page), module_relative=False, report=True,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{page.name}: no examples found"
    assert result.failed == 0, f"{page.name}: {result.failed} of {result.attempted} examples failed (see above)"


@pytest.fixture(scope="module")
def console_folders(tmp_path_factory):
    """page -> [the folder its commands run in, how many of them have run there]"""
    folders = {}

    def folder_of(page: Path, data_dir: Path | None):
        if page not in folders:
            base = tmp_path_factory.mktemp(page.stem)
            clone = base / "npunet"
            clone.mkdir()
            for name in ("tests", "weights", "docs"):
                (clone / name).symlink_to(ROOT / name)
            (base / "shared").mkdir()
            folders[page] = [clone, 0]
        data = folders[page][0].parent / "shared" / "data"
        if data_dir is not None and not data.exists():
            data.symlink_to(data_dir.resolve())
        return folders[page]
    return folder_of


def run_console(cmd: str) -> int:
    argv = shlex.split(cmd)
    assert argv[0] == "npunet"
    return main(argv[1:])


@pytest.mark.parametrize("page,index,cmd,want,code", CONSOLE_CASES,
                         ids=[f"{p.name}:{c}" for p, _, c, _, _ in CONSOLE_CASES])
def test_console_blocks_match_cli(page, index, cmd, want, code, console_folders, monkeypatch, capsys, request):
    needs_extras(page)
    needs_data = any(DATA in c for p, i, c, _, _ in CONSOLE_CASES if p == page and i <= index)
    data_dir = request.getfixturevalue("data_dir") if needs_data else None     # skips (or fails) without it
    saved = np.get_printoptions()
    folder = console_folders(page, data_dir)
    monkeypatch.chdir(folder[0])
    try:
        for earlier, earlier_cmd, _, earlier_code in [(i, c, w, k) for p, i, c, w, k in CONSOLE_CASES
                                                      if p == page and folder[1] <= i < index]:
            assert run_console(earlier_cmd) == earlier_code, f"{page.name}: `{earlier_cmd}`, run before `{cmd}`"
        capsys.readouterr()
        assert run_console(cmd) == code, f"{page.name}: `{cmd}` should exit {code}"
        folder[1] = index + 1
    finally:
        np.set_printoptions(**saved)
    got = "\n".join(line.rstrip() for line in capsys.readouterr().out.rstrip("\n").split("\n")) + "\n"
    expected = "\n".join(want) + "\n"
    assert doctest.OutputChecker().check_output(expected, got, doctest.ELLIPSIS), \
        f"{page.name}: output of `{cmd}` changed; paste the new output into the page:\n{got}"


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
