"""Running cohort cases on a Dask cluster (the optional extra `pip install 'npunet[cluster]'`): start a
LocalCluster or join a running scheduler, give each worker the network once, run one task per case.

- A WorkerPlugin (ModelOnWorker) loads the weights and warms the kernels when a worker starts, in a
  background thread so the worker keeps answering the scheduler; workers that join or restart later (a
  killed worker's nanny starts a new one) get it too. It checks that the worker's weights file has the
  SHA-256 the run was planned with, so a worker with another install cannot mix other weights in.
- A task is `fn(model, worker_address, *args)`, run by `run_task` on a worker holding the model; the plugin
  runs one at a time per worker process (Numba's thread pool is for one caller at a time), with the run's
  thread count. Inputs are paths: each worker reads its CT from the shared file system, and only file names
  and a manifest row travel through the scheduler.
- The worker's memory is kept as in a process of its own: the nanny's MALLOC_TRIM_THRESHOLD_ (Dask's default,
  65536) switched off glibc's reuse of large freed arrays, and a case ran 1.2-1.4x slower on a worker than
  in-process; the plugin restores it (npunet.resources.keep_freed_memory).
- When a worker dies holding a task, the scheduler gives the task to another worker (up to Dask's
  `distributed.scheduler.allowed-failures` times, 3 by default, then the future raises KilledWorker).
Nothing here knows what a case is; npunet.cohort.runner does, and imports this module only once it has
checked that Dask is installed.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from distributed import WorkerPlugin

from npunet.errors import NpunetError
from npunet.machine import use_threads
from npunet.resources import keep_freed_memory
from npunet.text import one_line


class ModelOnWorker(WorkerPlugin):
    """Holds the network on a Dask worker: loaded and warmed once per worker process."""

    def __init__(self, weights: str | None, sha256: str, threads: int | None):
        self.weights, self.sha256, self.threads = weights, sha256, threads
        self.name = f"npunet-{sha256[:12]}-threads-{threads or 'all'}"

    def setup(self, worker=None) -> None:
        keep_freed_memory()          # Dask's MALLOC_TRIM_THRESHOLD_ made a case 1.2-1.4x slower here
        self.model, self.error = None, None
        self._one_at_a_time = threading.Lock()
        self._loading = threading.Thread(target=self._load, name="npunet-load", daemon=True)
        self._loading.start()

    def _load(self) -> None:
        try:
            from npunet.network import from_file
            from npunet.pipeline import warm_up
            from npunet.weights import default_weights_path
            path = Path(self.weights) if self.weights else default_weights_path()
            if not path.is_file():
                self.error = (f"no weights file at {path} on host {socket.gethostname()}; give every worker the "
                              f"same file (--weights on the shared file system)")
                return
            model = from_file(path)
            found = model.weights_sha256
            if found != self.sha256:
                self.error = (f"the weights at {path} on host {socket.gethostname()} have SHA-256 {found[:12]}..., "
                              f"the run uses {self.sha256[:12]}...; give every worker the same file (--weights on "
                              f"the shared file system)")
                return
            self.model = model
            use_threads(self.threads)
            warm_up(self.model)
        except Exception as exc:   # reported by every task of this worker, as the case's error
            self.error = " ".join(f"{type(exc).__name__ if not isinstance(exc, NpunetError) else ''} {exc}".split())

    def call(self, fn, address: str, *args):
        with self._one_at_a_time:
            self._loading.join()
            if self.error:
                raise NpunetError(self.error)
            use_threads(self.threads)            # Numba's thread count belongs to the calling thread
            return fn(self.model, address, *args)


def run_task(plugin_name: str, fn, *args):
    """The Dask task: fn(model, this worker's address, *args) on the worker's loaded model."""
    from distributed import get_worker
    worker = get_worker()
    return worker.plugins[plugin_name].call(fn, worker.address, *args)


def connect(workers: int | None = None, scheduler: str | None = None):
    """(client, close): a Client of a new LocalCluster of `workers` processes (one task at a time each), or
    of the scheduler at `scheduler`; close() shuts down what this call started."""
    from distributed import Client, LocalCluster
    if scheduler:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError, ValueError) as exc:
            why = one_line(str(exc), limit=None)
            raise NpunetError(f"cannot reach the Dask scheduler at {scheduler} ({why})") from None
        return client, client.close
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                           dashboard_address=_dashboard_address(), silence_logs=logging.ERROR)
    client = Client(cluster)

    def close():
        client.close()
        cluster.close()
    return client, close


def install(client, plugin: ModelOnWorker) -> None:
    """Register the plugin unless the cluster already has it (a second run on a warm cluster reuses the
    loaded models instead of loading them again)."""
    name = plugin.name
    if not client.run_on_scheduler(lambda dask_scheduler: name in dask_scheduler.worker_plugins):
        client.register_plugin(plugin, name=name)


def dashboard_link(client) -> str | None:
    """The dashboard's address when the scheduler serves one."""
    try:
        if "dashboard" in client.scheduler_info().get("services", {}):
            return client.dashboard_link
    except Exception:
        pass
    return None


def worker_count(client) -> int:
    return len(client.scheduler_info().get("workers", {}))


def _dashboard_address() -> str:
    """Dask's usual :8787 when free, else any free port (Dask would say so in a warning)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8787))
            return ":8787"
        except OSError:
            return ":0"
