"""ray_cluster.yaml passes Ray's own offline validation (schema, node types, worker counts)."""

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_is_valid_for_ray_up():
    util = pytest.importorskip("ray.autoscaler._private.util")
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    prepared = util.prepare_config(copy.deepcopy(cfg))
    util.validate_config(prepared)
    assert prepared["available_node_types"]["cpu_dft"]["resources"]["dft"] >= 1
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["cpu_dft"]["min_worker"] = 1
    with pytest.raises(Exception):
        util.validate_config(util.prepare_config(broken))
