"""The cluster files pass Ray's own offline validation (schema, node types, worker counts), ship no
virtual environment or campaign folder, and pin Python and Ray."""

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["ray_cluster.yaml", "ray_cluster_onprem.yaml"])
def test_cluster_yaml_is_valid_for_ray_up(name):
    util = pytest.importorskip("ray.autoscaler._private.util")
    cfg = yaml.safe_load((REPO / name).read_text())
    prepared = util.prepare_config(copy.deepcopy(cfg))
    util.validate_config(prepared)
    assert {".venv", "runs"} <= set(cfg["rsync_exclude"])
    assert cfg["docker"]["image"].startswith("rayproject/ray:2.60.0-py311")  # the pinned Ray and Python
    assert any("torch==2.13.0" in c for c in cfg["setup_commands"])
    broken = copy.deepcopy(cfg)
    broken["max_workers"] = "many"
    with pytest.raises(Exception):
        util.validate_config(util.prepare_config(broken))


def test_aws_cluster_has_dft_and_gpu_node_types():
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert types["cpu_dft"]["resources"]["dft"] == types["cpu_dft"]["resources"]["CPU"]
    assert types["gpu"]["resources"]["GPU"] >= 1 and "dft" not in types["head"]["resources"]
    # GPU nodes replace the common CPU wheel of torch with the CUDA one
    assert any("torch==2.13.0" in c and "whl/cpu" not in c for c in types["gpu"]["worker_setup_commands"])
    onprem = yaml.safe_load((REPO / "ray_cluster_onprem.yaml").read_text())
    assert any('"dft"' in c for c in onprem["worker_start_ray_commands"])
