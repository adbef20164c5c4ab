"""Option types and options that several commands share (not a command itself)."""

from __future__ import annotations

import argparse

from npunet.io.validate import parse_axcodes


def axcodes(text: str) -> str:
    """argparse type of --assume-orientation: three axis codes, normalised ('ras' -> 'RAS')."""
    try:
        return parse_axcodes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_assume_orientation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--assume-orientation", metavar="AXES", type=axcodes, default=None,
                   help="for a NIfTI header without orientation (qform and sform codes 0, otherwise refused): "
                        "how its voxel axes run, as three axis codes (RAS, LPS, LAS, ...); ignored, with a "
                        "warning, for images whose header has its own orientation")
