"""What a DFT actor asks Ray for follows `execution.resources`: numbers left out keep their defaults
(one CPU per slot), so reserving memory never turns the CPU request into zero."""

import pytest

from discovery.config import ExecutionConfig, ResourceConfig


@pytest.mark.parametrize("entry, cpus, memory", [
    ({}, 1, None),
    ({"memory_gb": 8}, 1, 8 * 1024**3),
    ({"num_cpus": 4}, 4, None),
])
def test_dft_placement_keeps_defaults_for_what_the_entry_leaves_out(entry, cpus, memory):
    from discovery.actors.executor import RayExecutor
    from discovery.build import ComponentSpec
    from discovery.oracles.emt_oracle import EMTConfig

    execution = ExecutionConfig(resources={"dft": ResourceConfig(**entry)} if entry else {})
    spec = ComponentSpec("dft", EMTConfig(), ("Cu",), 4, seed=0)
    options = RayExecutor(execution=execution)._placement("dft", spec)
    assert options["num_cpus"] == cpus and options.get("memory") == memory
    assert options.get("num_gpus", 0) == 0
