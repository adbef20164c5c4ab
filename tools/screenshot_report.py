"""Look at an `npunet explain` page as a person would: a full-page screenshot in headless Chromium, checked.

    python -m tools.screenshot_report REPORT.html -o shot.png      # screenshot one page, check it
    python -m tools.screenshot_report --example                    # build the example report of
        ../shared/data/imagesTr/ts_chest_0000.nii.gz, check its screenshot, and write docs/explain_report.png

Needs Chromium from the Debian packages (`apt-get install -y chromium`); NOT part of the test suite or CI,
which have no browser. Chromium runs headless, sandbox and GPU off, with no network services (background
networking, component updates, sync off), a fresh profile folder, and sRGB output so colours are exact.

The window is as wide as a laptop screen (1280 CSS px) and taller than the page (--height), so one
screenshot holds the whole page. Checks, each a one-line failure with exit code 1:
  - not cut: the footer's marker bar (6 px of #2e7d5b, the page's last element) is in the screenshot, with
    only background below it (else the page is taller than the window: raise --height);
  - not too wide: the columns at the right edge of the window are background (nothing overflows the page);
  - not blank: above the marker, a good share of the pixels is not background and there are many colours.
The screenshot is cropped below the marker. With --docs FILE, a copy scaled down by --docs-scale, of the
page's top --docs-height CSS px, is written (the small example in docs/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numba
import numpy as np

from npunet.preview import encode_png
from tools import REPO
from tools.training.description import default_data_dir

MARKER = (0x2E, 0x7D, 0x5B)         # the footer's bottom border in npunet/explain.py's CSS
BACKGROUND = (0xFA, 0xFA, 0xFA)     # the page's background
EXAMPLE_CT = "imagesTr/ts_chest_0000.nii.gz"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--force-color-profile=srgb", "--force-device-scale-factor=1", "--disable-extensions",
                  "--disable-default-apps", "--mute-audio"]


class Problem(Exception):
    """What is wrong with the screenshot (one line)."""


# ------------------------------------------------------------------------------------------- PNG reading --

@numba.njit(cache=True)
def _unfilter(raw, height, stride, bpp):
    """raw: the inflated PNG scanlines (height * (1 + stride)) -> (height, stride) uint8, filters undone."""
    out = np.zeros((height, stride), np.uint8)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)]
        for x in range(stride):
            a = np.int32(out[y, x - bpp]) if x >= bpp else 0
            b = np.int32(out[y - 1, x]) if y > 0 else 0
            c = np.int32(out[y - 1, x - bpp]) if (x >= bpp and y > 0) else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
            out[y, x] = (np.int32(row[x]) + pred) & 255
    return out


def read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) -> (H, W, 3) uint8."""
    blob = path.read_bytes()
    if blob[:8] != b"\x89PNG\r\n\x1a\n":
        raise Problem(f"{path}: not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos:pos + 4])
        kind, data = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat.append(data)
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise Problem(f"{path}: PNG of depth {depth}, colour type {colour}, interlace {interlace}: not read here")
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    return _unfilter(raw, h, w * bpp, bpp).reshape(h, w, bpp)[:, :, :3]


# ------------------------------------------------------------------------------------------ the browser --

def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise Problem("no Chromium found: install it with `apt-get install -y chromium` (Debian)")


def screenshot(page: Path, out: Path, width: int, height: int, timeout: float = 180) -> np.ndarray:
    """A width x height CSS px screenshot of `page` (a local file) in headless Chromium -> (H, W, 3)."""
    with tempfile.TemporaryDirectory(prefix="npunet-chromium-") as profile:
        cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out}", page.resolve().as_uri()]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0 or not out.exists():
        tail = " ".join((run.stderr or "").split())[-300:]
        raise Problem(f"chromium exited with {run.returncode} and no screenshot ({tail})")
    return read_png(out)


def check(shot: np.ndarray) -> int:
    """The row just below the page's marker bar, after checking the screenshot is whole and not blank."""
    is_marker = np.all(shot == np.array(MARKER, np.uint8), axis=2)
    bar_rows = np.flatnonzero(is_marker.sum(axis=1) > shot.shape[1] // 4)
    if bar_rows.size < 4:
        raise Problem(f"the footer's marker bar is not in the {shot.shape[1]}x{shot.shape[0]} screenshot: the page "
                      f"is cut (taller than the window; raise --height) or did not render")
    bottom = int(bar_rows[-1]) + 1
    below = shot[bottom:]
    background = np.array(BACKGROUND, np.uint8)
    if below.size and not np.all(below == background):
        raise Problem(f"something is drawn below the footer's marker (rows {bottom}..{shot.shape[0]})")
    right = shot[:bottom, -8:]
    if not np.all(right == background):
        rows = np.flatnonzero(~np.all(right == background, axis=(1, 2)))
        raise Problem(f"content reaches the window's right edge (rows {rows[0]}..{rows[-1]}): the page is wider "
                      f"than {shot.shape[1]} px")
    page = shot[:bottom]
    drawn = float(np.mean(np.any(page != background, axis=2)))
    colours = len(np.unique(page[::4, ::4].reshape(-1, 3), axis=0))
    if drawn < 0.15 or colours < 500:
        raise Problem(f"the page looks blank: {drawn:.0%} of its pixels drawn, {colours} colours")
    print(f"screenshot {shot.shape[1]}x{shot.shape[0]} px: page {bottom} px tall, {drawn:.0%} of it drawn, "
          f"{colours} colours (sampled), marker found, nothing cut")
    return bottom


def scale_down(rgb: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, 3) -> (H // factor, W // factor, 3), each pixel the mean of a factor x factor block."""
    h, w = (rgb.shape[0] // factor) * factor, (rgb.shape[1] // factor) * factor
    blocks = rgb[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).astype(np.float64)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def build_example(report: Path) -> None:
    data = default_data_dir()
    from npunet.cli import main
    ct = os.path.relpath(data / EXAMPLE_CT)          # the page names the CT as given: no machine's absolute path
    code = main(["explain", ct, "-o", str(report), "--overwrite"])
    if code:
        raise Problem(f"npunet explain failed with exit code {code}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.screenshot_report", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("report", nargs="?", help="the HTML page (with --example: built first, default a temp file)")
    p.add_argument("-o", "--output", help="the checked full-page screenshot (default: REPORT.png)")
    p.add_argument("--example", action="store_true",
                   help=f"build the report of $NPUNET_DATA/{EXAMPLE_CT} and write the docs screenshot")
    p.add_argument("--width", type=int, default=1280, help="window width, CSS px (default 1280)")
    p.add_argument("--height", type=int, default=24000, help="window height, CSS px, above the page's (24000)")
    p.add_argument("--docs", help="also write a small copy here (default with --example: docs/explain_report.png)")
    p.add_argument("--docs-scale", type=int, default=2, help="the small copy's size divisor (default 2)")
    p.add_argument("--docs-height", type=int, default=1700,
                   help="the small copy shows the page's top this many CSS px (default 1700)")
    args = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="npunet-shot-") as tmp:
            report = Path(args.report) if args.report else Path(tmp) / "explain_example.html"
            if args.example:
                build_example(report)
                args.docs = args.docs or str(REPO / "docs" / "explain_report.png")
            elif not report.is_file():
                raise Problem(f"{report}: no such page (give a report, or --example)")
            output = Path(args.output) if args.output else report.with_suffix(".png")
            raw = Path(tmp) / "raw.png"
            shot = screenshot(report, raw, args.width, args.height)
            bottom = check(shot)
            output.write_bytes(encode_png(shot[:bottom + 16]))
            print(f"wrote {output}")
            if args.docs:
                small = scale_down(shot[:min(bottom + 16, args.docs_height)], args.docs_scale)
                png = encode_png(small)
                Path(args.docs).write_bytes(png)
                print(f"wrote {args.docs}: {small.shape[1]}x{small.shape[0]} px, {len(png) / 1024:.0f} KiB")
    except (Problem, subprocess.TimeoutExpired) as exc:
        print(f"screenshot_report: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
