"""Where TransferJobs run: a Kubernetes cluster (`kubernetes`) or this machine (`local`).

`TransferJobClient` picks one by name; both implement `Backend` (in `base`). The Kubernetes backend is
imported only when used, so local runs need no cluster configuration.
"""

from transferjob.backends.base import Backend, JobEvent

__all__ = ["Backend", "JobEvent"]
