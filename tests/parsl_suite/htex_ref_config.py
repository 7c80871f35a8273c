"""Parsl's own test configuration (``parsl/tests/configs/htex_local.py``) with htex_ref's adapter in place of
Parsl's HighThroughputExecutor, for ``pytest --pyargs parsl.tests --config <this file>``: the imports and
the executor class are all that differ."""

from parsl.config import Config
from parsl.launchers import SimpleLauncher
from parsl.providers import LocalProvider

from htex_ref.parsl_adapter import HtexRefExecutor as HighThroughputExecutor


def fresh_config() -> Config:
    return Config(
        executors=[
            HighThroughputExecutor(
                label="htex_local",
                loopback_address="::1",
                worker_debug=True,
                cores_per_worker=1,
                encrypted=True,
                provider=LocalProvider(
                    init_blocks=1,
                    max_blocks=1,
                    launcher=SimpleLauncher(),
                ),
            )
        ],
        strategy='none',
    )
