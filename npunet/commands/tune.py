"""`npunet tune`: measure this machine's convolution work sizes again and store them (npunet.tuning).

npunet does this by itself the first time it runs on a machine (or after an upgrade); run it again after a
change that the stored choice cannot see (a busy machine at the first run, another thread count)."""

from __future__ import annotations

from npunet import tuning
from npunet.errors import NpunetError
from npunet.machine import use_threads


def add_arguments(p) -> None:
    p.add_argument("--threads", type=int, help="threads to measure with (default: all cores)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per candidate; the fastest counts")


def run(args) -> int:
    use_threads(args.threads)
    if args.repeats < 1:
        raise NpunetError(f"--repeats must be at least 1, got {args.repeats}")
    choice = tuning.tune(repeats=args.repeats)
    for knob, times in choice["times"].items():
        row = "  ".join(f"{value}: {1000 * s:.1f} ms" for value, s in times.items())
        print(f"{knob}: {choice[knob]}   ({row})")
    print(f"stored in {tuning.wisdom_path()}")
    return 0
