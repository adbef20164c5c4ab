"""Cohort runs: `npunet segment INPUT_DIR -o OUTPUT_DIR --workers N` (a local Dask cluster), `--scheduler
tcp://HOST:PORT` (a running one, many machines), `--list FILE` (inputs spread over a shared file system), and
their Python twin `npunet.segment_many`. Without --workers or --scheduler the cases run in this process.

Every case is one task that calls the function a serial `npunet segment` calls for a case
(npunet.segment_cli.segment_case), so a case comes out byte-identical however it is run. Around it:
  - an exclusive claim per case (npunet.io.claim), so that two runs on the same OUTPUT_DIR never write the
    same case, and a case whose worker died is taken over by the retry;
  - a completion record per case, written after its outputs (npunet.io.manifest): a re-run skips the cases
    whose record and files verify, and redoes the others (unless --overwrite, which redoes all);
  - the manifest OUTPUT_DIR/npunet_manifest.csv and .json, one row per case, rewritten as cases finish;
  - progress on stderr (done, failed, remaining, rate, ETA). A failing case fails alone: exit code 1 then.
Dask itself (npunet.cluster) is imported only when a cluster is used: the core needs no extra.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from npunet import segment_cli
from npunet.errors import InputError, NpunetError
from npunet.io.cases import Job, case_name, plan_jobs
from npunet.io.claim import STALE_AFTER_SECONDS, CaseBusy, acquire, describe_holder, owner_record
from npunet.io.manifest import (file_digest, foreign_files, input_identity, lock_path, read_record, record_path,
                                record_problem, write_manifest, write_record)
from npunet.io.nifti import is_nifti_name, one_line
from npunet.publish import check_writable

INSTALL_HINT = "pip install 'npunet[cluster]'"
MANIFEST_EVERY_SECONDS = 1.0


# ------------------------------------------------------------------------------------------ command line --

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The cohort options of `npunet segment`."""
    g = p.add_argument_group(
        "cohort runs", "With any of these, OUTPUT is a folder that also receives npunet_manifest.csv/.json; "
        "a re-run skips the cases already complete (see docs/cohort.md).")
    g.add_argument("--workers", type=int, metavar="N", default=None,
                   help="segment the cases on a local Dask cluster of N worker processes, each using --threads "
                        f"threads (default: the cores / N); needs {INSTALL_HINT}")
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                   help="segment on a running Dask cluster (`dask scheduler`, and `dask worker` on each machine, "
                        "all seeing INPUT and OUTPUT at the same paths); each worker uses --threads threads "
                        "(default: all its cores)")
    g.add_argument("--list", metavar="FILE", dest="list_file", default=None,
                   help="segment the inputs named in FILE, one NIfTI file or DICOM series folder per line "
                        "(relative to FILE's folder; blank lines and # comments skipped), instead of INPUT")


def wanted(args: argparse.Namespace) -> bool:
    """Whether `npunet segment` was asked for a cohort run."""
    return args.workers is not None or bool(args.scheduler) or bool(args.list_file)


def run(args: argparse.Namespace) -> int:
    if args.input is not None and args.list_file:
        raise NpunetError("give INPUT or --list FILE, not both")
    chosen = [o for o, on in (("--output-type dicom-seg", getattr(args, "output_type", "nifti") != "nifti"),
                              ("--split", getattr(args, "split", False)),
                              ("--organs", getattr(args, "organs", None) is not None)) if on]
    if chosen:
        raise NpunetError(f"{chosen[0]} is for serial runs; a cohort run (--workers, --scheduler, --list) "
                          f"writes NIfTI label maps of every organ")
    inputs = read_list(args.list_file) if args.list_file else args.input
    rows = segment_many(inputs, args.output, workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                        weights=args.weights, batch_size=args.batch_size, postprocess=not args.no_postprocess,
                        statistics=args.statistics, preview=args.preview, overwrite=args.overwrite,
                        quiet=args.quiet, assume_orientation=args.assume_orientation)
    line, ok = summary(rows)
    if not ok or not args.quiet:
        print(line, file=sys.stderr)
    return 0 if ok else 1


def summary(rows: list[dict]) -> tuple[str, bool]:
    """('N cases: a segmented, b skipped (complete already), c failed (names)', whether all are complete)."""
    by = {s: [r["case"] for r in rows if r["status"] == s] for s in ("done", "skipped", "failed", "busy", "pending")}
    def names(cases: list[str]) -> str:
        return f" ({', '.join(cases[:10])}{' ...' if len(cases) > 10 else ''})" if cases else ""
    parts = [f"{len(by['done'])} segmented", f"{len(by['skipped'])} skipped (complete already)",
             f"{len(by['failed'])} failed{names(by['failed'])}"]
    if by["busy"]:
        parts.append(f"{len(by['busy'])} busy in another run{names(by['busy'])}")
    if by["pending"]:
        parts.append(f"{len(by['pending'])} not run")
    return f"{len(rows)} cases: {', '.join(parts)}", not (by["failed"] or by["busy"] or by["pending"])


def read_list(path: str | os.PathLike) -> list[Path]:
    """The inputs named in a --list file: one per line, relative to the file's folder; blank lines and lines
    starting with # skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (the --list of inputs)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the --list of inputs ({one_line(exc)})") from None
    inputs = [path.parent / line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not inputs:
        raise InputError(f"{path}: the --list names no inputs")
    return inputs


# ----------------------------------------------------------------------------------------------- planning --

def plan_cohort(inputs, output_dir: str | os.PathLike) -> tuple[list[Job], list[dict]]:
    """(jobs, rows of inputs that failed already): `inputs` is a folder (or file) as for `npunet segment`, or
    a list of NIfTI files and DICOM series folders (each planned alone; a missing one becomes a failed row).
    Raises InputError when the output is not a folder, or two inputs would write the same case."""
    out = Path(output_dir)
    if is_nifti_name(out) or (out.exists() and not out.is_dir()):
        raise InputError(f"{out}: a cohort run writes into a folder; give a folder as the output")
    folder = os.fspath(out) + os.sep
    if isinstance(inputs, (str, os.PathLike)):
        return [_absolute(j) for j in plan_jobs(inputs, folder)], []
    jobs, failed, seen = [], [], {}

    def one_input_per_case(case: str, source) -> None:
        if case in seen:
            raise InputError(f"two inputs for case {case!r}: {seen[case]} and {source}; their outputs would "
                             f"collide (rename one)")
        seen[case] = source

    for given in map(Path, inputs):
        try:
            planned = [_absolute(job) for job in plan_jobs(given, folder)]
        except InputError as exc:
            job = _absolute(Job(case_name(given), given, out / f"{case_name(given)}.nii.gz", "nifti"))
            one_input_per_case(job.case, job.input)
            failed.append(case_row(job, "failed", error=str(exc)))
            continue
        for job in planned:
            one_input_per_case(job.case, job.input)
            jobs.append(job)
    return jobs, failed


def _absolute(job: Job) -> Job:
    """The job with absolute paths, as workers with another working folder need them."""
    return Job(job.case, Path(job.input).absolute(), Path(job.output).absolute(), job.kind)


@dataclass(frozen=True)
class RunSettings:
    """What every case of a run shares; travels to the workers with each task."""
    run: str
    output_dir: str
    weights_sha256: str
    batch_size: int = 8
    postprocess: bool = True
    statistics: bool = False
    preview: bool = False
    overwrite: bool = False
    stale_after: float = STALE_AFTER_SECONDS
    assume_orientation: str | None = None

    def options(self) -> dict:
        """The options that change a case's output files (recorded, and compared on a re-run)."""
        return {"postprocess": self.postprocess, "statistics": self.statistics, "preview": self.preview,
                "assume_orientation": self.assume_orientation}

    def expected_record(self, job: Job) -> dict:
        return {"case": job.case, "input_identity": input_identity(job.input), "weights_sha256": self.weights_sha256,
                "options": self.options()}


def case_row(job: Job, status: str, *, error: str = "", seconds: float | None = None, worker: str = "",
             attempt: int | None = None, slices: int | None = None, volumes_ml: dict | None = None) -> dict:
    """One manifest row."""
    return {"case": job.case, "input": str(job.input), "output": str(job.output), "status": status,
            "error": " ".join(str(error).split()), "seconds": None if seconds is None else round(seconds, 3),
            "worker": worker, "attempt": attempt, "slices": slices, "volumes_ml": dict(volumes_ml or {})}


def _skipped_row(job: Job, record: dict) -> dict:
    return case_row(job, "skipped", seconds=record.get("seconds"), worker=record.get("worker", ""),
                    attempt=record.get("attempt"), slices=record.get("slices"), volumes_ml=record.get("volumes_ml"))


# ------------------------------------------------------------------------------------------- one case --

def process_case(model, worker: str, job: Job, settings: RunSettings) -> dict:
    """One case of a cohort run, wherever it runs: claim it, skip it if complete, else segment it
    (segment_cli.segment_case, as a serial run does) and write its completion record; returns its manifest row.

    Existing output files are replaced without --overwrite only when the record shows that npunet wrote them
    as they are, with this run's input, weights and options (the case is redone because another of its
    files is missing), or when the claim was taken over from a holder that died (its own files, possibly
    incomplete). Others (no record, other settings, or other bytes: a label map corrected by hand) make the
    case fail with a message that says so."""
    out_dir = Path(settings.output_dir)
    files = list(segment_cli.output_files(job.output, settings.statistics, settings.preview).values())
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
            return _skipped_row(job, record)
        same_settings = record_problem(record, settings.expected_record(job), []) is None
        foreign = foreign_files(record if same_settings else None, files)
        if foreign and not settings.overwrite and claim.previous is None:
            return case_row(job, "failed", worker=worker, attempt=claim.attempt,
                            error=f"{foreign[0]} exists and is not as npunet wrote it ({problem}); "
                                  f"pass --overwrite to replace it")
        existing = [f for f in files if f.exists()]
        record_path(out_dir, job.case).unlink(missing_ok=True)   # a half-replaced case must not verify
        result = segment_cli.segment_case(job, model, batch_size=settings.batch_size,
                                          postprocess=settings.postprocess,
                              overwrite=bool(existing), statistics=settings.statistics, preview=settings.preview,
                              assume_orientation=settings.assume_orientation)
        if not result.ok:
            return case_row(job, "failed", error=result.error, seconds=result.seconds, worker=worker,
                            attempt=claim.attempt)
        if not claim.held():
            return case_row(job, "busy", seconds=result.seconds, worker=worker, attempt=claim.attempt,
                            error="another run took the case over while it ran (its heartbeat was late)")
        row = case_row(job, "done", seconds=result.seconds, worker=worker, attempt=claim.attempt,
                       slices=result.slices, volumes_ml=result.volumes_ml)
        write_record(out_dir, {**settings.expected_record(job), "input": str(job.input),
                               "files": [file_digest(f) for f in files], "run": settings.run,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               **{k: row[k] for k in ("seconds", "worker", "attempt", "slices", "volumes_ml")}})
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
                 statistics: bool = False, preview: bool = False, overwrite: bool = False, quiet: bool = True,
                 assume_orientation: str | None = None, on_case=None,
                 stale_after: float = STALE_AFTER_SECONDS) -> list[dict]:
    """Segment many CTs into `output_dir`; returns the manifest rows (dicts), in case order.

    inputs: a folder of CASE_0000.nii.gz files or of DICOM series folders, or a list of NIfTI files and
    DICOM series folders. Where the cases run: `client` (a dask.distributed Client), or a new LocalCluster of
    `workers` processes, or the Dask scheduler at `scheduler`; none of them: in this process, one case
    after another. threads: Numba threads per worker (default: the cores / workers for a LocalCluster, all
    of a worker's cores otherwise). A row's status is done, skipped (complete from an earlier run),
    failed (with its one-line error), busy (claimed by another live run) or pending (not run: interrupted).
    on_case(row) is called as each case finishes. Raises NpunetError before any work for bad options,
    weights or output folder.
    """
    assume_orientation = segment_cli.check_options(batch_size, assume_orientation)
    if threads is not None and int(threads) < 1:
        raise NpunetError(f"--threads must be at least 1, got {threads}")
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

    import npunet
    weights_path = Path(weights).absolute() if weights else npunet.default_weights_path()
    model = segment_cli.load_model(str(weights_path))                     # WeightsError here, before any work
    organs = [name for k, name in sorted(segment_cli._label_names(model).items()) if k != 0]
    settings = RunSettings(uuid.uuid4().hex, str(out), file_digest(weights_path)["sha256"], int(batch_size),
                           postprocess, statistics, preview, overwrite, stale_after, assume_orientation)

    rows = {job.case: case_row(job, "pending") for job in jobs}
    rows.update({row["case"]: row for row in rows_failed})
    order = sorted(rows)
    todo = []
    for job in jobs:
        files = list(segment_cli.output_files(job.output, statistics, preview).values())
        record = None if overwrite else read_record(out, job.case)
        if record is not None and record_problem(record, settings.expected_record(job), files) is None:
            rows[job.case] = _skipped_row(job, record)
        else:
            todo.append(job)

    close = None
    if todo and client is None and (workers or scheduler):
        from npunet import cluster
        if workers and threads is None:
            threads = max(1, _cores() // int(workers))
        client, close = cluster.connect(workers=workers, scheduler=scheduler)   # NpunetError if unreachable
    where = ("nowhere (nothing to segment)" if not todo else
             f"LocalCluster of {workers} workers x {threads} threads" if workers and client is not None else
             f"Dask scheduler {scheduler or client.scheduler.address}" if client is not None else
             f"this process ({threads or _cores()} threads)")
    manifest = _Manifest(out, organs, {
        "id": settings.run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None,
        "inputs": str(inputs) if isinstance(inputs, (str, os.PathLike)) else f"{len(order)} listed inputs",
        "output": str(out), "weights": str(weights) if weights else None, "weights_sha256": settings.weights_sha256,
        "batch_size": settings.batch_size, **settings.options(), "overwrite": overwrite, "cluster": where,
        "npunet_version": npunet.__version__})
    results = iter(())
    try:
        manifest.write([rows[c] for c in order])
        progress = _Progress(len(order), quiet)
        progress.start(list(rows.values()), len(todo))
        if todo and client is not None:
            results = _on_cluster(client, todo, settings, weights, threads, progress)
        elif todo:
            results = _in_process(model, todo, settings, threads)
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


def _cores() -> int:
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


def _in_process(model, jobs: list[Job], settings: RunSettings, threads: int | None):
    """(job, row) for each case, run here one after another."""
    from npunet.pipeline import warm_up
    segment_cli._set_threads(threads)
    warm_up(model)
    worker = f"local:{os.getpid()}"
    for job in jobs:
        try:
            row = process_case(model, worker, job, settings)
        except Exception as exc:
            row = case_row(job, "failed", error=one_line(exc), worker=worker)
        yield job, row


def _on_cluster(client, jobs: list[Job], settings: RunSettings, weights, threads: int | None, progress):
    """(job, row) for each case, as the cluster finishes them; the largest inputs go first."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker
    from npunet import cluster
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
