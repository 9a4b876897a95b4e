"""The jobs on the service's ``/metrics``: read from the table every worker writes, so any
number of workers report through one scrape."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from tests.conftest import EPOCH
from tests.web.conftest import client
from tests.worker.conftest import Counting
from tokenbank import worker
from tokenbank.db import Database
from tokenbank.worker import Job

__all__ = ["client"]  # a fixture


def test_metrics_show_each_job_as_the_workers_recorded_it(client: TestClient, db: Database) -> None:
    assert "tokenbank_job_runs_total{" not in client.get("/metrics").text  # no job yet
    job_list = [
        Job("expire_holds", timedelta(seconds=30), Counting(items=3)),
        Job("reconcile", timedelta(minutes=15), Counting(failing=RuntimeError("down"))),
    ]
    worker.register(db, job_list, now=EPOCH)
    worker.run_due(db, job_list, now=EPOCH)
    worker.run_due(db, job_list, now=EPOCH + timedelta(minutes=1))  # holds again only

    metrics = client.get("/metrics").text

    assert 'tokenbank_job_runs_total{job="expire_holds"} 2.0' in metrics
    assert 'tokenbank_job_items_total{job="expire_holds"} 6.0' in metrics
    assert 'tokenbank_job_failures_total{job="expire_holds"} 0.0' in metrics
    assert 'tokenbank_job_runs_total{job="reconcile"} 1.0' in metrics
    assert 'tokenbank_job_failures_total{job="reconcile"} 1.0' in metrics
    assert 'tokenbank_job_last_success_timestamp_seconds{job="reconcile"} 0.0' in metrics
    succeeded = [
        line
        for line in metrics.splitlines()
        if line.startswith('tokenbank_job_last_success_timestamp_seconds{job="expire_holds"}')
    ]
    (line,) = succeeded
    at = float(line.rsplit(" ", 1)[1])
    assert (
        (EPOCH + timedelta(minutes=1)).timestamp()
        <= at
        < (EPOCH + timedelta(minutes=2)).timestamp()
    )
    assert 'tokenbank_job_last_failure_timestamp_seconds{job="reconcile"}' in metrics
