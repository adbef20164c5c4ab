"""Cohort runs: many CTs into one output folder, resumably, on a Dask cluster or in this process.

    planning.py   which cases, from which inputs, into which files, with which settings (RunSettings)
    claims.py     an exclusive claim per case, so two runs on one folder never write the same case
    manifest.py   the per-case completion records and OUTPUT/npunet_manifest.csv/.json
    cluster.py    Dask: a LocalCluster or a running scheduler, the network loaded once per worker
    runner.py     segment_many: plan, skip what is complete, run each case through npunet.case, record it

Reached from the `npunet segment --workers/--scheduler/--list` command and from npunet.segment_many, never
from below them. Dask is imported only when a cluster is used: the core needs no extra.
"""
