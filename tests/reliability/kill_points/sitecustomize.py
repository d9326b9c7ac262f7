"""Fault injection for the kill-anywhere suite: imported at start-up by every Python process that
has this folder on PYTHONPATH; in the ``discovery`` driver it SIGKILLs the process at the event named
by ``DISCOVERY_KILL_AT="<point>:<n>"`` (the n-th time the event happens). Test code only: nothing
in the package knows about it."""

import os
import signal
import sys


def _die() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str, n: int) -> None:
    from discovery.campaign.driver import Campaign
    from discovery.executor import LocalExecutor
    from discovery.ledger.sqlite import SqliteLedger
    from discovery.tracking.mlflow_tracker import MlflowTracker

    seen = {"count": 0}

    def hit(weight: int = 1) -> bool:
        """Count ``weight`` more events; True once, when the count reaches n."""
        before = seen["count"]
        seen["count"] += weight
        return before < n <= seen["count"]

    def wrap(cls, name, *, before=None, after=None):
        real = getattr(cls, name)

        def patched(self, *args, **kwargs):
            if before is not None and before(*args) and hit():
                _die()
            out = real(self, *args, **kwargs)
            if after is not None and after(*args) and hit():
                _die()
            return out

        setattr(cls, name, patched)

    def calls(component: str, method: str):
        return lambda name, meth, *rest: name.startswith(component) and meth == method

    every = lambda *args: True  # noqa: E731
    points = {
        # while planning a round (inside its ledger transaction)
        "after-proposal": lambda: wrap(Campaign, "_propose", after=every),
        "generator-update": lambda: wrap(LocalExecutor, "call", before=calls("generator:", "update")),
        "during-mlip": lambda: wrap(LocalExecutor, "call", before=calls("mlip", "evaluate_many")),
        "surrogate-training": lambda: wrap(LocalExecutor, "call", before=calls("surrogate", "fit")),
        "after-checkpoint": lambda: wrap(LocalExecutor, "call", after=calls("surrogate", "save")),
        "mlflow-logging": lambda: wrap(MlflowTracker, "log_metrics", before=every),
        "ledger-write": lambda: wrap(SqliteLedger, "append", after=every),
        # after a round committed: between its DFT submissions
        "after-dft-submission": lambda: wrap(LocalExecutor, "submit_dft", after=every),
        # while results come back: after the batch holding the n-th result is recorded
        "between-dft-results": lambda: _after_results(Campaign, hit),
        # the resume itself
        "during-resume": lambda: wrap(Campaign, "_restore", after=every),
    }
    points[point]()


def _after_results(campaign_class, hit) -> None:
    real = campaign_class._record

    def patched(self, evaluations):
        real(self, evaluations)
        if evaluations and hit(len(evaluations)):
            _die()

    campaign_class._record = patched


_where = os.environ.get("DISCOVERY_KILL_AT")
if _where and os.path.basename(sys.argv[0]) == "discovery":
    _point, _n = _where.rsplit(":", 1)
    _install(_point, int(_n))
