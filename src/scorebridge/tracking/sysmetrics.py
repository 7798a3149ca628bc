"""System metrics of a job's run: CPU, memory, disk, network and GPU utilisation.

MLflow's own monitors (`mlflow.system_metrics`, what `log_system_metrics=True` starts)
sample the machine; the samples go through the job's `TrackedRun` (buffered, batched,
retried while SQLite is locked, kept in the pending file when the store is down) as
`system/<name>` metrics, e.g. `system/cpu_utilization_percentage`,
`system/system_memory_usage_megabytes`, `system/gpu_0_utilization_percentage` (GPU metrics
need `nvidia-ml-py`; MLflow skips them without it or without a GPU). One sample every
`tracking.system_metrics.interval` seconds (env `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`
overrides it) at steps 0, 1, ..., and a last one when the job ends, so that a job shorter
than the interval still shows its utilisation. With env `MLFLOW_SYSTEM_METRICS_NODE_ID`
the names are `system/<node>/<name>`.
"""

from __future__ import annotations

import logging
import threading

from .options import SystemMetricsOptions

__all__ = ["SystemMetrics", "PREFIX"]

log = logging.getLogger(__name__)

PREFIX = "system/"


class SystemMetrics:
    """Samples the machine into `run` from a daemon thread between `start()` and `stop()`."""

    def __init__(self, run, options: SystemMetricsOptions):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.run = run
        # MLflow's monitor: its monitors (CPU, disk, network, GPU when available), the
        # interval (the environment's, else ours) and node id; it logs nothing itself here.
        self._mlflow = SystemMetricsMonitor(run.run_id, sampling_interval=float(options.interval), tracking_uri=run.uri)
        self.interval = float(self._mlflow.sampling_interval)
        node = self._mlflow.node_id
        self.prefix = PREFIX + (f"{node}/" if node else "")
        self.step = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _sample(self) -> None:
        """Read every monitor once, log the values at the next step, clear the monitors."""
        with self._lock:
            self._mlflow.collect_metrics()
            values = self._mlflow.aggregate_metrics()
            for monitor in self._mlflow.monitors:
                monitor.clear_metrics()
            if values:
                self.run.log_metrics({self.prefix + k: v for k, v in values.items()}, step=self.step)
                self.step += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception as err:  # noqa: BLE001 - monitoring never stops the job
                log.warning("system metrics: sampling failed (%s: %s); no more samples", type(err).__name__, err)
                return

    def start(self) -> SystemMetrics:
        # prime the counters that report usage since their previous read (psutil.cpu_percent)
        self._mlflow.collect_metrics()
        for monitor in self._mlflow.monitors:
            monitor.clear_metrics()
        self._thread = threading.Thread(target=self._loop, name="scorebridge-system-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and log a last sample."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=max(30.0, self.interval))
        self._thread = None
        try:
            self._sample()
        except Exception as err:  # noqa: BLE001
            log.warning("system metrics: the last sample failed (%s: %s)", type(err).__name__, err)
