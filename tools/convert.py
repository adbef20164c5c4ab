"""Convert a PyTorch checkpoint into an npunet weights file (format 2), or upgrade an older weights file.

    python -m tools.convert CHECKPOINT.pt -o weights/dsconv_eca_unet.npuw
    python -m tools.convert --upgrade OLD.npuw -o NEW.npuw       # format 1 -> 2, numpy only (no torch)

The checkpoint is a torch.save'd dict holding at least {"spec": <architecture spec>, "state_dict": ...};
optional keys "labels", "preprocessing", "config" and "cases" (as `python -m tools.train` writes them) are carried
into the weights file's header. It is read with torch.load(weights_only=True): no arbitrary pickle.
The state_dict's names and shapes must be exactly those the spec describes (npunet.spec.expected_tensors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from npunet.errors import NpunetError
from npunet.labels import LABELS
from npunet.preprocess import DEFAULT_PREPROCESSING
from npunet.weights import read_weights, save_weights, upgrade_weights


def convert(checkpoint, output) -> Path:
    import torch
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NpunetError(f"checkpoint {checkpoint} does not exist") from None
    except Exception as exc:  # torch raises many kinds for a bad file
        raise NpunetError(f"cannot read checkpoint {checkpoint}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "spec" not in ckpt or "state_dict" not in ckpt:
        raise NpunetError(f"checkpoint {checkpoint} must be a dict with 'spec' and 'state_dict'")
    tensors = {k: v.detach().cpu().float().numpy() for k, v in ckpt["state_dict"].items()}
    metadata = {
        "source_checkpoint": Path(checkpoint).name,
        "training_config": ckpt.get("config", {}),
        "training_cases": ckpt.get("cases", []),
    }
    metadata.update(ckpt.get("metadata", {}))
    path = save_weights(output, ckpt["spec"], tensors, labels=ckpt.get("labels", LABELS),
                        preprocessing=ckpt.get("preprocessing", DEFAULT_PREPROCESSING), metadata=metadata)
    read_weights(path)  # verify what was written
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("checkpoint", help="torch checkpoint: a dict with 'spec' and 'state_dict' (with --upgrade: "
                                      "a format-1 npunet weights file)")
    p.add_argument("-o", "--output", required=True, help="npunet weights file to write (.npuw)")
    p.add_argument("--upgrade", action="store_true",
                   help="CHECKPOINT is an npunet weights file of format 1: re-write it as format 2 (the same "
                        "tensors and header, now all covered by the checksum); needs no torch")
    args = p.parse_args(argv)
    try:
        if args.upgrade:
            path = upgrade_weights(args.checkpoint, args.output)
            read_weights(path)  # verify what was written
        else:
            path = convert(args.checkpoint, args.output)
    except NpunetError as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
