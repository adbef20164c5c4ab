"""The PyTorch side of npunet: the torch mirror of the network (torch_model), training (train, training/),
leave-one-patient-out cross-validation (cv), conversion of a checkpoint into npunet weights (convert), the
golden fixtures (make_fixtures), the segmentation pipeline in torch ops (torch_pipeline), the report
screenshotter (screenshot_report) and the benchmarks (bench, bench_cohort).

Each tool runs from the repository root as a module: `python -m tools.train --help`. npunet itself never
imports this package; this file imports nothing heavy, so `import tools.cv` stays free of torch.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent      # the repository root: runs/, weights/, tests/fixtures/
