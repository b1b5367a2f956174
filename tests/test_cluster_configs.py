"""Cluster configs (cluster/): checked with Ray's own code, offline.

- Launcher YAMLs: ``validate_config`` (Ray's JSON schema) and ``prepare_config`` (merge with the provider's
  defaults), then Ray's autoscaler bin-packing (``get_nodes_for``) decides which node types it would add for
  the teacher actors, the Ray Train workers and CPU-only work of the sa1b-1pct recipe.
- KubeRay manifests: kinds and ``ray.io/v1``; the autoscaling config that Ray's KubeRay autoscaler derives
  from each RayCluster spec (``_derive_autoscaling_config_from_ray_cr``, which also runs ``validate_config``);
  RayJob entrypoints name files of this repository and configs that load; the RayService's serveConfigV2
  validates with Ray Serve's ``ServeDeploySchema`` and its app config with ``serve.config``.
"""
from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHERS = sorted(CLUSTER.glob("launcher-*.yaml"))
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}

# Logical resources Ray's AWS provider auto-detects for these instance types (vCPUs, NVIDIA GPUs).
AWS_INSTANCE_RESOURCES = {"m5.4xlarge": {"CPU": 16}, "g5.xlarge": {"CPU": 4, "GPU": 1},
                          "p4d.24xlarge": {"CPU": 96, "GPU": 8}, "g5.48xlarge": {"CPU": 192, "GPU": 8}}


# ---- helpers ---------------------------------------------------------------------------------------

def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ray_objects() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in _docs(p) if d.get("kind") in RAY_KINDS]


def _cluster_spec(obj: dict) -> dict:
    """The RayCluster spec inside a RayCluster, RayJob or RayService."""
    spec = obj["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}[obj["kind"]]


def _autoscaler_view(spec: dict) -> dict:
    """What Ray's KubeRay autoscaler makes of a RayCluster spec (node types with resources, min/max)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr({"metadata": {"name": "edgesam", "namespace": "default"},
                                                   "spec": copy.deepcopy(spec)})


def _nodes_to_add(node_types: dict, head_type: str, demands: list[dict]) -> tuple[dict, list]:
    """Ray's autoscaler bin-packing: node types (and counts) it would launch for pending resource demands."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    scorer = functools.partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    to_add, residual = get_nodes_for(node_types, {head_type: 1}, head_type, 100, demands, scorer)
    return dict(to_add), residual


@functools.lru_cache(maxsize=1)
def _recipe():
    """configs/sa1b-1pct.yaml, the recipe the cluster files are sized for."""
    from edgesam.config import load_config
    from pipelines.distill_config import DistillConfig

    return load_config(DistillConfig, "sa1b-1pct")


def _demands() -> dict[str, list[dict]]:
    """Resource requests of the recipe's teacher actors, Ray Train workers, and some CPU-only tasks."""
    cfg = _recipe()
    comp = cfg.cache.compute
    teacher = {"CPU": comp.num_cpus_per_actor, "GPU": comp.num_gpus_per_actor, **comp.teacher_resources}
    scaling = cfg.train.scaling
    train = dict(scaling.resources_per_worker)
    if scaling.use_gpu:
        train.setdefault("GPU", 1)
    return {"teacher": [teacher] * comp.max_actors, "train": [train] * scaling.num_workers, "cpu": [{"CPU": 1}] * 8}


def _image_version(image: str) -> str:
    m = re.search(r":(\d+\.\d+\.\d+)", image)
    assert m, f"image {image!r} has no x.y.z version tag"
    return m.group(1)


def _dockerfile() -> tuple[str, str]:
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    workdir = re.findall(r"^WORKDIR\s+(\S+)", text, re.M)[-1]
    return base, workdir


# ---- cluster launcher ------------------------------------------------------------------------------

def test_launcher_files_exist() -> None:
    assert [p.name for p in LAUNCHERS] == ["launcher-aws-gpu.yaml", "launcher-gcp-gpu.yaml"]


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.stem)
def test_launcher_passes_ray_validation(path: Path) -> None:
    pytest.importorskip("jsonschema")  # validate_config needs it (a dependency of ray[default])
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    validate_config(raw)
    prepared = prepare_config(copy.deepcopy(raw))  # merges the provider's defaults.yaml, offline
    validate_config(prepared)

    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    workers = {k: v for k, v in types.items() if k != prepared["head_node_type"]}
    # Every worker type scales from zero, and the global cap admits every type's maximum at once.
    assert all(t["min_workers"] == 0 for t in workers.values())
    assert prepared["max_workers"] == sum(t["max_workers"] for t in workers.values())
    assert 0 < prepared["idle_timeout_minutes"] <= 30 and prepared["upscaling_speed"] >= 1
    # Exactly one type carries the custom resource the teacher actors request; the head has none of it.
    teacher_key, teacher_units = next(iter(_recipe().cache.compute.teacher_resources.items()))
    teacher_types = [k for k, t in workers.items() if teacher_key in t["resources"]]
    assert teacher_types == ["teacher_gpu"]
    assert workers["teacher_gpu"]["resources"][teacher_key] == teacher_units
    assert workers["teacher_gpu"]["max_workers"] >= _recipe().cache.compute.max_actors
    assert teacher_key not in head["resources"] and head["resources"].get("GPU", 0) == 0
    # Same Ray inside the cluster as here (job submission and the dashboard API are version-sensitive).
    assert _image_version(prepared["docker"]["image"]) == ray.__version__
    # The project is synced from this repository and installed on every node.
    mount = next(remote for remote, local in prepared["file_mounts"].items() if local == ".")
    assert any("pip install" in c and mount in c for c in prepared["setup_commands"])
    # Token auth on both node kinds or on neither; with it, the token file is mounted on every node.
    head_token = all("RAY_AUTH_MODE=token" in c for c in prepared["head_start_ray_commands"] if "ray start" in c)
    worker_token = all("RAY_AUTH_MODE=token" in c for c in prepared["worker_start_ray_commands"] if "ray start" in c)
    assert head_token == worker_token
    if head_token:
        assert "~/.ray/auth_token" in prepared["file_mounts"]
    assert any("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in prepared["head_start_ray_commands"])


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.stem)
def test_launcher_autoscaler_adds_the_right_node_types(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config

    cfg = prepare_config(yaml.safe_load(path.read_text()))
    types = copy.deepcopy(cfg["available_node_types"])
    for t in types.values():  # AWS fills CPU/GPU from the instance type at launch time; do the same here
        if "InstanceType" in t["node_config"]:
            t["resources"] = {**AWS_INSTANCE_RESOURCES[t["node_config"]["InstanceType"]], **t["resources"]}
    demands = _demands()
    head = cfg["head_node_type"]
    assert _nodes_to_add(types, head, demands["teacher"]) == ({"teacher_gpu": len(demands["teacher"])}, [])
    assert _nodes_to_add(types, head, demands["train"]) == ({"trainer_8gpu": 1}, [])
    assert _nodes_to_add(types, head, demands["cpu"]) == ({"cpu_worker": 1}, [])
    # The custom resource is what keeps the teacher off the trainer type: a bare {GPU: 1} actor would start
    # the 8-GPU node. (Documented in cluster/README.md.)
    bare = [{k: v for k, v in demands["teacher"][0].items() if k in ("CPU", "GPU")}]
    assert set(_nodes_to_add(types, head, bare)[0]) == {"trainer_8gpu"}


# ---- KubeRay ---------------------------------------------------------------------------------------

def test_kuberay_manifests_parse_with_expected_kinds() -> None:
    kinds = {p.name: [(d["apiVersion"], d["kind"]) for d in _docs(p)] for p in MANIFESTS}
    assert kinds == {
        "raycluster-autoscaling.yaml": [("ray.io/v1", "RayCluster")],
        "rayjob-cache-teacher.yaml": [("ray.io/v1", "RayJob")],
        "rayjob-distill.yaml": [("ray.io/v1", "RayJob")],
        "rayservice-edgesam.yaml": [("v1", "ConfigMap"), ("ray.io/v1", "RayService")],
        "shared-storage.yaml": [("v1", "PersistentVolumeClaim")],
    }
    for path, obj in _ray_objects():
        assert obj["metadata"]["name"] and _cluster_spec(obj), path


def test_kuberay_image_and_versions_agree() -> None:
    import ray

    base, _ = _dockerfile()
    images, versions = set(), set()
    for _, obj in _ray_objects():
        spec = _cluster_spec(obj)
        versions.add(spec["rayVersion"])
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1, images  # one image, built from cluster/Dockerfile
    assert versions == {ray.__version__} == {_image_version(base)}


def test_kuberay_custom_resource_survives_the_shell() -> None:
    """KubeRay appends ``--resources=<value>`` to a shell command line: the value must come out as JSON."""
    for path, obj in _ray_objects():
        for group in _cluster_spec(obj)["workerGroupSpecs"]:
            value = group.get("rayStartParams", {}).get("resources")
            if value is None:
                continue
            (arg,) = shlex.split(f"--resources={value}")
            assert json.loads(arg.split("=", 1)[1]) == {"teacher": 1}, (path.name, group["groupName"])


@pytest.mark.parametrize("path", [p for p in MANIFESTS if any(d.get("kind") in RAY_KINDS for d in _docs(p))],
                         ids=lambda p: p.stem)
def test_kuberay_autoscaling_as_ray_derives_it(path: Path) -> None:
    pytest.importorskip("jsonschema")
    for obj in (d for d in _docs(path) if d.get("kind") in RAY_KINDS):
        spec = _cluster_spec(obj)
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
        assert spec["autoscalerOptions"]["upscalingMode"] in ("Default", "Aggressive", "Conservative")
        view = _autoscaler_view(spec)  # raises if Ray's autoscaler could not read the spec
        types = view["available_node_types"]
        assert view["idle_timeout_minutes"] == spec["autoscalerOptions"]["idleTimeoutSeconds"] / 60
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        if obj["kind"] == "RayService":
            assert types["serve-gpu"]["resources"]["GPU"] == 1 and groups["serve-gpu"]["minReplicas"] >= 1
            continue
        # Batch clusters: every worker group scales from zero (pods only while work is pending).
        assert all(g["minReplicas"] == 0 and g["replicas"] == 0 for g in groups.values())
        assert types["teacher-gpu"]["resources"]["teacher"] == 1 and types["teacher-gpu"]["resources"]["GPU"] == 1
        assert "teacher" not in types["headgroup"]["resources"] and "GPU" not in types["headgroup"]["resources"]
        demands = _demands()
        assert types["teacher-gpu"]["max_workers"] >= len(demands["teacher"])
        assert _nodes_to_add(types, "headgroup", demands["teacher"]) == ({"teacher-gpu": len(demands["teacher"])}, [])
        assert _nodes_to_add(types, "headgroup", demands["cpu"]) == ({"cpu": 1}, [])
        if "trainer-8gpu" in types:
            assert _nodes_to_add(types, "headgroup", demands["train"]) == ({"trainer-8gpu": 1}, [])


def test_kuberay_pods_mount_the_shared_volume() -> None:
    (pvc,) = _docs(KUBERAY / "shared-storage.yaml")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    recipe = _recipe()
    for path, obj in _ray_objects():
        spec = _cluster_spec(obj)
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            claims = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]}
            mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"] if m["name"] in claims}
            assert "/mnt/shared" in mounts, (path.name, group.get("groupName", "head"))
            if obj["kind"] == "RayJob":  # the recipe's inputs and outputs are all on the shared volume
                for p in (recipe.cache.data.source, recipe.cache.teacher.checkpoint, recipe.cache.output.dir,
                          recipe.train.storage_path):
                    assert any(p.startswith(m + "/") for m in mounts), (path.name, p)


@pytest.mark.parametrize("name", ["rayjob-cache-teacher.yaml", "rayjob-distill.yaml"])
def test_rayjob_entrypoint_runs_a_repo_pipeline_with_a_valid_config(name: str) -> None:
    from edgesam.config import load_config

    (job,) = _docs(KUBERAY / name)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submitterConfig"]["backoffLimit"] >= 1 and spec.get("backoffLimit", 0) >= 1
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python"
    _, workdir = _dockerfile()
    script = Path(argv[1])
    assert script.is_absolute() and script.is_relative_to(workdir), "use the image's absolute path"
    assert (REPO / script.relative_to(workdir)).is_file(), f"{script} is not in this repository"
    assert argv[2] == "--config"
    if script.name == "cache_teacher.py":
        from pipelines.cache_teacher import CacheConfig as Model
    elif script.name == "distill.py":
        from pipelines.distill_config import DistillConfig as Model
    else:
        pytest.fail(f"unexpected pipeline {script}")
    cfg = load_config(Model, argv[3], argv[4:])  # a missing configs/<name>.yaml fails here
    cache = cfg if script.name == "cache_teacher.py" else cfg.cache
    assert cache.compute.teacher_resources == {"teacher": 1.0}


def test_cache_job_makes_the_cache_the_distill_job_uses() -> None:
    """Same cache config in both RayJobs, so distill.py finds the cache complete instead of recomputing it."""
    from edgesam.config import load_config
    from pipelines.cache_teacher import CacheConfig

    def config_args(name: str) -> list[str]:
        (job,) = _docs(KUBERAY / name)
        return shlex.split(job["spec"]["entrypoint"])[3:]

    cache_name, *cache_overrides = config_args("rayjob-cache-teacher.yaml")
    distill_name, *distill_overrides = config_args("rayjob-distill.yaml")
    assert not cache_overrides and not distill_overrides
    assert load_config(CacheConfig, cache_name) == _recipe().cache


def test_rayservice_serve_config_validates_with_ray_serve() -> None:
    from ray.serve.schema import ServeDeploySchema

    configmap, service = _docs(KUBERAY / "rayservice-edgesam.yaml")
    schema = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = schema.applications
    module, attr = app.import_path.split(":")
    assert (REPO / (module.replace(".", "/") + ".py")).is_file() and attr == "edgesam"
    # Same deployments as serve/serve_config.yaml (the names serve.app builds).
    local = yaml.safe_load((REPO / "serve" / "serve_config.yaml").read_text())
    assert {d.name for d in app.deployments} == {d["name"] for d in local["applications"][0]["deployments"]}
    # The application config comes from the ConfigMap, mounted where EDGESAM_SERVE_CONFIG points.
    config_path = Path(app.runtime_env["env_vars"]["EDGESAM_SERVE_CONFIG"])
    spec = service["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        cm_volumes = {v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]}
        assert any(m["name"] in cm_volumes and Path(m["mountPath"]) == config_path.parent
                   for c in pod["containers"] for m in c["volumeMounts"])
    assert config_path.name in configmap["data"]
    assert "EDGESAM_API_KEY" not in app.runtime_env["env_vars"]  # would override the pod's secret with ""


def test_rayservice_app_config_and_gpu_shares(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve.config import load_serve_config
    from serve.deployments import everything_config

    configmap, service = _docs(KUBERAY / "rayservice-edgesam.yaml")
    path = tmp_path / "serve.yaml"
    path.write_text(configmap["data"]["serve.yaml"])
    cfg = load_serve_config(path)
    assert cfg.model.device == "cuda"
    everything_config(cfg, has_rpn=True)  # the generator options are valid EverythingConfig fields
    # One replica of each GPU deployment fits one serve-gpu pod, and the deploy config agrees with the app config.
    schema = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    gpus = {d.name: d.ray_actor_options.num_gpus for d in schema.applications[0].deployments}
    pod_gpus = _autoscaler_view(service["spec"]["rayClusterConfig"])["available_node_types"]["serve-gpu"]["resources"]["GPU"]
    assert 0 < sum(gpus.values()) <= pod_gpus
    assert (gpus["ImageEncoder"], gpus["MaskDecoder"], gpus["Everything"]) == (
        cfg.encoder.num_gpus, cfg.decoder.num_gpus, cfg.everything.num_gpus)


def test_readme_references_existing_files() -> None:
    text = (CLUSTER / "README.md").read_text()
    paths = set(re.findall(r"\b((?:cluster|pipelines|serve|configs)/[\w./-]+\.(?:yaml|py|md)|cluster/Dockerfile)\b", text))
    assert len(paths) >= 8
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert not missing, missing
