"""antnest: fan Python work out over plain SSH, with nothing installed on the hosts.

Import direction (acyclic): runner <- bootstrap <- transport <- scheduler <- worker <- cluster
<- cli, with errors, inventory, taskunit and job beside them. Only the names below are public.
"""
import logging as _logging
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait
from typing import IO as _IO
from typing import Any as _Any
from typing import Optional as _Optional
from typing import Union as _Union

from antnest import errors
from antnest.cluster import Cluster, HostResults
from antnest.errors import AntnestError
from antnest.host import Host
from antnest.job import NO_VALUE as _NO_VALUE
from antnest.job import Job, load
from antnest.taskunit import TaskUnit

__version__ = "0.1.0"

# A library stays quiet until its user configures logging: without this, Python's last-resort
# handler would print antnest's warnings (one per host problem) to an API user's stderr.
_logging.getLogger("antnest").addHandler(_logging.NullHandler())

__all__ = [
    "ALL_COMPLETED",
    "AntnestError",
    "Cluster",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Host",
    "HostResults",
    "Job",
    "TaskUnit",
    "__version__",
    "as_completed",
    "errors",
    "load",
    "run",
    "wait",
]


def run(job: "_Union[str, Job]", input: "_Any" = None, *, output: "_Optional[_IO[str]]" = None,
        timeout: "_Optional[float]" = None, input_data: "_Any" = _NO_VALUE,
        **cluster_options: "_Any") -> "_Any":
    """One-shot: start a Cluster (keyword arguments as for Cluster), run the job, shut down.
    `input` and `input_data` as for Cluster.run.

    >>> antnest.run("jobs/reverse.py", inventory="inventory/hosts.yaml")
    """
    inventory = cluster_options.pop("inventory", None)
    with Cluster(inventory, **cluster_options) as cluster:
        cluster.last_call()
        return cluster.run(job, input=input, output=output, timeout=timeout, input_data=input_data)
