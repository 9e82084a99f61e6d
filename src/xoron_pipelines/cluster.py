"""The cluster engine of the data pipelines: ``engine: local`` (one process, the default) or ``ray``.

``data_processing`` and ``embedding_cache`` run on an existing distributed engine when one machine
is not enough: Ray Data (``ray.data``), the engine the field uses for batch preprocessing and
embedding at corpus scale (sharded reads of files, Parquet and Hugging Face datasets,
``map_batches`` over CPU or GPU actor pools, hash shuffles, task retries). Both pipelines take the
same :class:`EngineSettings` under their group's ``engine`` key; this module is the one place that
starts or joins a Ray cluster (:func:`ray_session`).

``address``: ``null`` starts a local Ray instance inside the process with ``num_cpus`` workers
(what the tests use: a local cluster of 2 workers); ``auto`` joins the cluster this machine belongs
to (``ray start --head`` / ``ray start --address=<head>:6379`` on the nodes); ``ray://host:10001``
connects through Ray Client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from pydantic import Field

from xoron_pipelines.validation import StrictModel

logger = logging.getLogger(__name__)


class EngineSettings(StrictModel):
    """``<group>.engine``: where a data pipeline's per-record work runs."""

    kind: Literal["local", "ray"] = Field(
        "local", description="local: this process (the default); ray: Ray Data on a Ray cluster"
    )
    address: str | None = Field(
        None,
        min_length=1,
        description="ray: null = start a local Ray instance in this process; 'auto' = join the running cluster; "
        "'ray://host:10001' = Ray Client",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="ray, address null: CPUs of the local instance (null = all of this machine)"
    )
    num_workers: int | None = Field(
        None, ge=1, description="ray: parallel tasks / actors per stage (null = the cluster's CPUs)"
    )
    max_retries: int = Field(3, ge=0, description="ray: times a failed or killed task is retried before the run fails")


@contextmanager
def ray_session(settings: EngineSettings) -> Iterator[None]:
    """Join or start the Ray cluster of ``settings`` for the duration of the block.

    A Ray instance this process already runs (``ray.is_initialized()``) is reused and left
    running; one started here is shut down on exit.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if settings.address is None:
        kwargs["num_cpus"] = settings.num_cpus
    else:
        kwargs["address"] = settings.address
    ray.init(**kwargs)
    resources = ray.cluster_resources()
    logger.info("Ray cluster: %s CPUs, %s GPUs", resources.get("CPU", 0), resources.get("GPU", 0))
    try:
        yield
    finally:
        ray.shutdown()
