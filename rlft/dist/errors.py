"""Errors of distributed runs (importable without Ray)."""


class WorkerLostError(RuntimeError):
    """A Ray actor (rollout engine, learner rank, reference or reward worker) died or became unreachable.
    The message names the actor; the loop adds the last checkpoint and how to resume."""


class ClusterTooSmallError(RuntimeError):
    """The Ray cluster cannot host the requested roles (checked before any actor starts)."""
