"""Batch job metrics (`control/batch_runner.py`): rows by outcome, jobs by status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BatchMetrics:
    """`inferd_batch_rows_total{outcome}` (rows this server ran: `succeeded`, `failed`),
    `inferd_batch_jobs{status}` (every node's batch jobs, as of the runner's last sweep),
    `inferd_batch_jobs_running` (on this server) and `inferd_batch_jobs_finished_total{status}`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter("inferd_batch_rows", "Batch job rows this server ran, by outcome "
                            "(counted when their chunk is stored)", ["outcome"],
                            registry=registry)  # fmt: skip
        self.by_status = Gauge("inferd_batch_jobs", "Batch jobs in the database by status "
                               "(every node's; as of the last sweep, every few seconds)",
                               ["status"], registry=registry)  # fmt: skip
        self.running = Gauge("inferd_batch_jobs_running", "Batch jobs running on this server",
                             registry=registry)  # fmt: skip
        self.finished = Counter("inferd_batch_jobs_finished",
                                "Batch jobs that ended on this server, by how they ended",
                                ["status"], registry=registry)  # fmt: skip
