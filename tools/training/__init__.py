"""Training in PyTorch, one concern per module; `python -m tools.train` (tools/train.py) is its command line.

    description  the data folder's dataset.json: labels, cases, annotated organs, --unknown (no torch)
    data         the training slices, made by npunet's own preprocessing (build_dataset)
    sampling     which slices make a batch (UniformSampler, OrganSampler)
    augment      random spatial and intensity augmentation of a batch, on the training device
    loss         the marginal Dice + cross-entropy loss for partial labels
    loop         the Trainer: one step at a time, with every piece of state a resumed run needs
    run          a training run on disk: checkpoints, log.jsonl, progress, clean stop on SIGINT/SIGTERM
    status       status.json beside a run's checkpoint.pt, readable without torch (tools/cv.py)
    predict      a volume segmented by the torch model in training, with a quick Dice

This file imports nothing, so `tools.training.description` and `tools.training.status` stay torch-free.
"""
