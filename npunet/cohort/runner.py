"""Cohort runs: `npunet segment INPUT_DIR -o OUTPUT_DIR --workers N` (a local Dask cluster), `--scheduler
tcp://HOST:PORT` (a running one, many machines), `--list FILE` (inputs spread over a shared file system), and
their Python twin `npunet.segment_many`. Without --workers or --scheduler the cases run in this process.

Every case is one task that calls the unit of work a serial `npunet segment` calls (npunet.case.run_case),
so a case comes out byte-identical however it is run. Around it:
  - an exclusive claim per case (npunet.cohort.claims), so that two runs on the same OUTPUT_DIR never write
    the same case, and a case whose worker died is taken over by the retry;
  - a completion record per case, written after its outputs (npunet.cohort.manifest): a re-run skips the
    cases whose record and files verify, and redoes the others (unless --overwrite, which redoes all);
  - the manifest OUTPUT_DIR/npunet_manifest.csv and .json, one row per case, rewritten as cases finish;
  - progress on stderr (done, failed, remaining, rate, ETA). A failing case fails alone: exit code 1 then.
Dask itself (npunet.cohort.cluster) is imported only when a cluster is used: the core needs no extra.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

from npunet.case import label_names, run_case
from npunet.cohort.claims import STALE_AFTER_SECONDS, CaseBusy, acquire, describe_holder, owner_record
from npunet.cohort.manifest import (file_digest, foreign_files, lock_path, read_record, record_path, record_problem,
                                    write_manifest, write_record)
from npunet.cohort.planning import RunSettings, case_row, plan_cohort, skipped_row
from npunet.errors import NpunetError
from npunet.io.cases import Job
from npunet.io.ct import check_assumed_orientation
from npunet.machine import check_batch_size, check_threads, max_threads, use_threads
from npunet.network import from_file
from npunet.pipeline import segment_array, warm_up
from npunet.publish import check_writable
from npunet.text import one_line
from npunet.version import __version__
from npunet.weights import default_weights_path

INSTALL_HINT = "pip install 'npunet[cluster]'"
MANIFEST_EVERY_SECONDS = 1.0


# ------------------------------------------------------------------------------------------- one case --

def process_case(model, worker: str, job: Job, settings: RunSettings, segment_volume=segment_array) -> dict:
    """One case of a cohort run, wherever it runs: claim it, skip it if complete, else segment it
    (npunet.case.run_case, as a serial run does) and write its completion record; returns its manifest row.

    Existing output files are replaced without --overwrite only when the record shows that npunet wrote them
    as they are, with this run's input, weights and options (the case is redone because another of its
    files is missing), or when the claim was taken over from a holder that died (its own files, possibly
    incomplete). Others (no record, other settings, or other bytes: a label map corrected by hand) make the
    case fail with a message that says so."""
    out_dir = Path(settings.output_dir)
    files = list(settings.outputs().files(job.output).values())
    try:
        claim = acquire(lock_path(out_dir, job.case), owner_record(settings.run, worker),
                        stale_after=settings.stale_after)
    except CaseBusy as busy:
        return case_row(job, "busy", worker=worker,
                        error=f"claimed by {describe_holder(busy.holder)} ({busy.lock}); run again once it is done")
    with claim:
        if claim.previous is not None:
            _remove_leftovers(files + [record_path(out_dir, job.case), claim.path])
        record = read_record(out_dir, job.case)
        problem = record_problem(record, settings.expected_record(job), files)
        if problem is None and not settings.overwrite:
            return skipped_row(job, record)
        same_settings = record_problem(record, settings.expected_record(job), []) is None
        foreign = foreign_files(record if same_settings else None, files)
        if foreign and not settings.overwrite and claim.previous is None:
            return case_row(job, "failed", worker=worker, attempt=claim.attempt,
                            error=f"{foreign[0]} exists and is not as npunet wrote it ({problem}); "
                                  f"pass --overwrite to replace it")
        existing = [f for f in files if f.exists()]
        record_path(out_dir, job.case).unlink(missing_ok=True)   # a half-replaced case must not verify
        result = run_case(job, model, settings.outputs(), batch_size=settings.batch_size,
                          postprocess=settings.postprocess, tta=settings.tta, overwrite=bool(existing),
                          assume_orientation=settings.assume_orientation, segment_volume=segment_volume)
        if not result.ok:
            return case_row(job, "failed", error=result.error, seconds=result.seconds, worker=worker,
                            attempt=claim.attempt)
        if not claim.held():
            return case_row(job, "busy", seconds=result.seconds, worker=worker, attempt=claim.attempt,
                            error="another run took the case over while it ran (its heartbeat was late)")
        row = case_row(job, "done", seconds=result.seconds, worker=worker, attempt=claim.attempt,
                       slices=result.slices, volumes_ml=result.volumes_ml,
                       report=str(result.report) if result.report else None)
        write_record(out_dir, {**settings.expected_record(job), "input": str(job.input),
                               "files": [file_digest(f) for f in files], "run": settings.run,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               **{k: row[k] for k in ("seconds", "worker", "attempt", "slices", "volumes_ml",
                                                      "report")}})
        return row


def _remove_leftovers(paths: list[Path]) -> None:
    """Temporary files that a dead holder's writes left beside `paths`: npunet.publish's `.NAME.*.tmp*` (NAME cut
    to 40 characters there) and the claim's `.NAME.*.tmp` and `.NAME.*.stale`."""
    for path in paths:
        for pattern in (f".{path.name[:40]}.*.tmp*", f".{path.name}.*.tmp", f".{path.name}.*.stale"):
            for leftover in path.parent.glob(pattern):
                leftover.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ the runner --

def segment_many(inputs, output_dir, *, client=None, workers: int | None = None, scheduler: str | None = None,
                 threads: int | None = None, weights=None, batch_size: int = 8, postprocess: bool = True,
                 tta: bool = False,
                 statistics: bool = False, preview: bool = False, overwrite: bool = False, quiet: bool = True,
                 assume_orientation: str | None = None, report: bool = False, on_case=None,
                 stale_after: float = STALE_AFTER_SECONDS, model=None, load_model=None,
                 segment_volume=segment_array) -> list[dict]:
    """Segment many CTs into `output_dir`; returns the manifest rows (dicts), in case order.

    inputs: a folder of CASE_0000.nii.gz files or of DICOM series folders, or a list of NIfTI files and
    DICOM series folders. Where the cases run: `client` (a dask.distributed Client), or a new LocalCluster of
    `workers` processes, or the Dask scheduler at `scheduler`; none of them: in this process, one case
    after another. threads: Numba threads per worker (default: the cores / workers for a LocalCluster, all
    of a worker's cores otherwise). A row's status is done, skipped (complete from an earlier run),
    failed (with its one-line error), busy (claimed by another live run) or pending (not run: interrupted).
    report: each case's provenance report as OUTPUT/CASE.report.json (npunet.io.report), named in its row.
    on_case(row) is called as each case finishes. Raises NpunetError before any work for bad options,
    weights or output folder. For the cases run in this process: model, a loaded network (else
    load_model(weights), npunet.network.from_file by default), and segment_volume, the volume -> labels
    function (tests give stand-ins).
    """
    batch_size = check_batch_size(batch_size)
    assume_orientation = check_assumed_orientation(assume_orientation)
    threads = check_threads(threads, here=client is None and not scheduler)     # workers elsewhere have their own
    if workers is not None and int(workers) < 1:
        raise NpunetError(f"--workers must be at least 1, got {workers}")
    if sum(x is not None and x != "" for x in (client, workers, scheduler)) > 1:
        raise NpunetError("give one of --workers and --scheduler (or a client), not several")
    if client is None and (workers or scheduler):
        require_dask("--scheduler" if scheduler else "--workers")
    jobs, rows_failed = plan_cohort(inputs, output_dir)
    out = Path(output_dir).absolute()
    if jobs:   # an output folder that cannot be created or written stops the run here, with nothing written
        check_writable(jobs[0].output)

    weights_path = Path(weights).absolute() if weights else default_weights_path()
    if model is None:
        model = (load_model or from_file)(weights_path)                   # WeightsError here, before any work
    weights_sha256 = getattr(model, "weights_sha256", None) or file_digest(weights_path)["sha256"]
    organs = [name for k, name in sorted(label_names(model).items()) if k != 0]
    settings = RunSettings(uuid.uuid4().hex, str(out), weights_sha256, batch_size, postprocess, statistics,
                           preview, overwrite, stale_after, assume_orientation, tta, bool(report))

    rows = {job.case: case_row(job, "pending") for job in jobs}
    rows.update({row["case"]: row for row in rows_failed})
    order = sorted(rows)
    todo = []
    for job in jobs:
        files = list(settings.outputs().files(job.output).values())
        record = None if overwrite else read_record(out, job.case)
        if record is not None and record_problem(record, settings.expected_record(job), files) is None:
            rows[job.case] = skipped_row(job, record)
        else:
            todo.append(job)

    close = None
    if todo and client is None and (workers or scheduler):
        from npunet.cohort import cluster
        if workers and threads is None:
            threads = max(1, max_threads() // int(workers))
        client, close = cluster.connect(workers=workers, scheduler=scheduler)   # NpunetError if unreachable
    where = ("nowhere (nothing to segment)" if not todo else
             f"LocalCluster of {workers} workers x {threads} threads" if workers and client is not None else
             f"Dask scheduler {scheduler or client.scheduler.address}" if client is not None else
             f"this process ({threads or max_threads()} threads)")
    manifest = _Manifest(out, organs, {
        "id": settings.run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None,
        "inputs": str(inputs) if isinstance(inputs, (str, os.PathLike)) else f"{len(order)} listed inputs",
        "output": str(out), "weights": str(weights) if weights else None, "weights_sha256": settings.weights_sha256,
        "batch_size": settings.batch_size, **settings.options(), "overwrite": overwrite, "cluster": where,
        "npunet_version": __version__})
    results = iter(())
    try:
        manifest.write([rows[c] for c in order])
        progress = _Progress(len(order), quiet)
        progress.start(list(rows.values()), len(todo))
        if todo and client is not None:
            results = _on_cluster(client, todo, settings, weights, threads, progress)
        elif todo:
            results = _in_process(model, todo, settings, threads, segment_volume)
        for job, row in results:
            rows[job.case] = row
            progress.update(row)
            manifest.write([rows[c] for c in order], throttle=True)
            if on_case is not None:
                on_case(row)
        manifest.run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    finally:
        if hasattr(results, "close"):
            results.close()                     # cancels the cluster tasks not yet started
        if out.is_dir():
            manifest.write([rows[c] for c in order])
        if close is not None:
            close()
    return [rows[c] for c in order]


def require_dask(option: str) -> None:
    """A one-line NpunetError when Dask's distributed scheduler is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise NpunetError(f"{option} runs on Dask, an optional extra that is not installed: {INSTALL_HINT}") from None


def _in_process(model, jobs: list[Job], settings: RunSettings, threads: int | None, segment_volume):
    """(job, row) for each case, run here one after another."""
    use_threads(threads)
    warm_up(model)
    worker = f"local:{os.getpid()}"
    for job in jobs:
        try:
            row = process_case(model, worker, job, settings, segment_volume)
        except Exception as exc:
            row = case_row(job, "failed", error=one_line(exc), worker=worker)
        yield job, row


def _on_cluster(client, jobs: list[Job], settings: RunSettings, weights, threads: int | None, progress):
    """(job, row) for each case, as the cluster finishes them; the largest inputs go first."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker
    from npunet.cohort import cluster
    plugin = cluster.ModelOnWorker(str(Path(weights).absolute()) if weights else None, settings.weights_sha256,
                                   threads)
    cluster.install(client, plugin)
    progress.say_cluster(cluster.dashboard_link(client), cluster.worker_count(client))
    futures = {}
    for job in sorted(jobs, key=_input_size, reverse=True):
        key = f"npunet-{job.case}-{settings.run[:8]}"
        futures[client.submit(cluster.run_task, plugin.name, process_case, job, settings, key=key, pure=False)] = job
    try:
        for future in as_completed(futures):
            job = futures[future]
            try:
                row = future.result()
            except KilledWorker:
                row = case_row(job, "failed", error="its worker died on each try (out of memory, or killed); "
                                                    "see the Dask workers' logs")
            except Exception as exc:
                row = case_row(job, "failed", error=one_line(exc))
            future.release()
            yield job, row
    finally:
        client.cancel([f for f in futures if not f.done()])


def _input_size(job: Job) -> int:
    try:
        return Path(job.input).stat().st_size if Path(job.input).is_file() else 0
    except OSError:
        return 0


class _Manifest:
    """Writes the manifest, at most once every MANIFEST_EVERY_SECONDS when throttled."""

    def __init__(self, output_dir: Path, organs: list[str], run: dict):
        self.output_dir, self.organs, self.run = output_dir, organs, run
        self._last = 0.0

    def write(self, rows: list[dict], throttle: bool = False) -> None:
        now = time.monotonic()
        if throttle and now - self._last < MANIFEST_EVERY_SECONDS:
            return
        self._last = now
        self.run["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_manifest(self.output_dir, rows, self.organs, self.run)


class _Progress:
    """The cohort's progress on stderr: a line per finished case at most every few seconds (always for a
    failure or a retry), with the counts, the rate of this run and the time left."""

    EVERY_SECONDS = 5.0

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet
        self.counts = {"done": 0, "skipped": 0, "failed": 0, "busy": 0}
        self._t0, self._last, self._worked = time.monotonic(), 0.0, 0

    def count(self, row: dict) -> None:
        if row["status"] in self.counts:
            self.counts[row["status"]] += 1
        if row["status"] in ("failed", "busy") and row.get("error"):
            kind = "error" if row["status"] == "failed" else "busy"
            print(f"npunet segment: {row['case']}: {kind}: {row['error']}", file=sys.stderr, flush=True)

    def start(self, rows: list[dict], to_run: int) -> None:
        """Count the rows known before any case runs (skipped, failed at planning) and say what is to do."""
        self._t0 = time.monotonic()
        if not self.quiet:
            skipped = sum(r["status"] == "skipped" for r in rows)
            print(f"npunet segment: {self.total} cases, {skipped} complete already, {to_run} to segment",
                  file=sys.stderr, flush=True)
        for row in rows:
            self.count(row)

    def say_cluster(self, dashboard: str | None, workers: int) -> None:
        if not self.quiet:
            where = f"; dashboard {dashboard}" if dashboard else ""
            print(f"npunet segment: Dask cluster of {workers} workers{where}", file=sys.stderr, flush=True)

    def update(self, row: dict) -> None:
        self.count(row)
        if row["status"] in ("done", "failed"):
            self._worked += 1
        if self.quiet:
            return
        if (row.get("attempt") or 1) > 1:
            print(f"npunet segment: {row['case']}: attempt {row['attempt']} ({row['status']}) after its previous "
                  f"worker died", file=sys.stderr, flush=True)
        now = time.monotonic()
        finished = sum(self.counts.values())
        if now - self._last >= self.EVERY_SECONDS or row["status"] == "failed" or finished == self.total:
            self._last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        c = self.counts
        remaining = self.total - sum(c.values())
        elapsed = max(now - self._t0, 1e-9)
        rate = self._worked / elapsed * 60
        eta = f", ETA {_duration(remaining / rate * 60)}" if rate > 0 and remaining else ""
        busy = f", {c['busy']} busy" if c["busy"] else ""
        return (f"npunet segment: {c['done']} segmented, {c['failed']} failed, {c['skipped']} skipped{busy}, "
                f"{remaining} remaining of {self.total}; {rate:.1f} cases/min{eta}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
