"""What cluster/ ships for real clusters, parsed and checked field by field: the Ray
cluster launcher configs (against the JSON schema Ray ships), the KubeRay manifests
(against KubeRay's CRD schema, tests/cluster/kuberay_crd_v1.yaml), the Dockerfile and the
pinned set it installs (requirements.lock), the job runtime_env, the GPU config.yaml,
local.sh and submit.py."""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHER_CONFIGS = ["onprem.yaml", "aws-gpu.yaml"]


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def load_all(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc}


def commands(config: dict, key: str) -> str:
    return "\n".join(config.get(key, []))


# --- Ray cluster launcher configs -------------------------------------------------

@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_matches_rays_schema(name):
    import ray.autoscaler
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = load(name)
    jsonschema.validate(config, schema)              # the file as written
    validate_config(prepare_config(copy.deepcopy(config)))   # as `ray up` fills and checks it


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_security_and_job_stop(name):
    config = load(name)
    head, worker = commands(config, "head_start_ray_commands"), commands(
        config, "worker_start_ray_commands")
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_JOB_STOP_WAIT_TIME_S=60" in head
    assert not re.search(r"(?<![\d.])0\.0\.0\.0(?![\d/])", (CLUSTER / name).read_text())
    # The token reaches every node as ~/.ray/auth_token, copied from the user's machine.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in commands(config, "setup_commands")


def test_onprem_config_installs_the_project_on_private_addresses():
    config = load("onprem.yaml")
    provider = config["provider"]
    assert provider["type"] == "local"
    ips = [provider["head_ip"], *provider["worker_ips"]]
    assert all(ipaddress.ip_address(ip).is_private for ip in ips)
    assert len(set(ips)) == len(ips)
    assert config["max_workers"] == len(provider["worker_ips"])
    # The head advertises the head_ip given to the launcher.
    assert f"--node-ip-address={provider['head_ip']}" in commands(config, "head_start_ray_commands")
    assert config["file_mounts"]["~/themetune"] == "."
    setup = commands(config, "setup_commands")
    # The tested versions: requirements.lock as constraints (see test_lock_* below).
    assert "pip install -q -c ~/themetune/requirements.lock -e ~/themetune" in setup
    assert "/mnt/shared" in setup                      # the NFS share for storage_path
    for excluded in (".venv", "*.db", "mlruns"):
        assert excluded in config["rsync_exclude"]


def test_aws_config_autoscales_gpu_workers_privately():
    config = load("aws-gpu.yaml")
    provider = config["provider"]
    assert provider["type"] == "aws" and provider["use_internal_ips"] is True
    for rule in provider.get("security_group", {}).get("IpPermissions", []):
        for ip_range in rule.get("IpRanges", []):
            assert ipaddress.ip_network(ip_range["CidrIp"]).is_private
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types
    for t in gpu_types:
        assert t["min_workers"] == 0 and t["max_workers"] >= 1     # scale from zero
        assert t["resources"]["CPU"] >= 8 * t["resources"]["GPU"]  # 8 trials/GPU, 1 CPU each
    assert "--gpus all" in config["docker"]["worker_run_options"]
    assert config["docker"]["image"].endswith("themetune:latest")


def test_aws_config_pins_subnets_and_security_groups_so_ray_opens_nothing(monkeypatch):
    """Ray's AWS provider creates a security group with SSH open to 0.0.0.0/0 for every
    node type that names no SecurityGroupIds, and picks default-VPC subnets for one that
    names no SubnetIds: every node type must name both."""
    from ray.autoscaler._private.aws import config as aws_config

    # What Ray would add to a group it creates: the claim the config must not rely on.
    assert any(r["CidrIp"] == "0.0.0.0/0" for rule in
               aws_config._create_default_ssh_inbound_rules() for r in rule["IpRanges"])
    config = load("aws-gpu.yaml")
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert node.get("SubnetIds") and node.get("SecurityGroupIds"), name
        assert all(isinstance(x, str) and x for x in node["SubnetIds"] + node["SecurityGroupIds"])
        assert "NetworkInterfaces" not in node           # would replace both
    # Ray's own step: with every node type pinned it creates no group and adds no rule.
    def no_aws(*args, **kwargs):
        raise AssertionError("Ray would create a security group (SSH from 0.0.0.0/0)")

    monkeypatch.setattr(aws_config, "_upsert_security_groups", no_aws)
    monkeypatch.setattr(aws_config, "_resource", no_aws)
    prepared = aws_config._configure_security_group(copy.deepcopy(config))
    assert prepared["available_node_types"] == config["available_node_types"]
    # No ingress rule in the file admits the internet.
    assert "0.0.0.0/0" not in yaml.safe_dump(config)
    # The header tells what is pinned and why, and no longer promises a group Ray makes.
    header = (CLUSTER / "aws-gpu.yaml").read_text().split("\ncluster_name:")[0]
    for claim in ("SubnetIds", "SecurityGroupIds", "0.0.0.0/0", "private subnets"):
        assert claim in header
    assert "admits nothing from outside the VPC" not in header


# --- KubeRay ----------------------------------------------------------------------

CRD = yaml.safe_load((Path(__file__).with_name("kuberay_crd_v1.yaml")).read_text())
KUBERAY_MANIFESTS = {"RayCluster": "kuberay/raycluster.yaml", "RayJob": "kuberay/rayjob.yaml"}


def closed(schema):
    """The CRD schema with every object that lists `properties` closed to other names
    (the API server would prune them silently), unless it preserves unknown fields."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def crd_errors(kind: str, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(closed(CRD["schemas"][kind]["openAPIV3Schema"]))
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(doc))


@pytest.mark.parametrize("kind", sorted(KUBERAY_MANIFESTS))
def test_kuberay_manifests_match_the_crd_they_name(kind):
    doc = load_all(KUBERAY_MANIFESTS[kind])[kind]
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_errors(kind, doc) == []
    # The header names the CRD file and commit it was checked against.
    source = CRD["schemas"][kind]["source"]
    repo_path, commit = source.split("@")
    header = (CLUSTER / KUBERAY_MANIFESTS[kind]).read_text().split("\napiVersion:")[0]
    assert commit in header and repo_path.split()[-1] in header
    assert "tests/cluster/kuberay_crd_v1.yaml" in header


def test_crd_check_refuses_fields_the_crd_does_not_have():
    cluster = load_all("kuberay/raycluster.yaml")["RayCluster"]
    bad = copy.deepcopy(cluster)
    bad["spec"]["authOptions"]["secretName"] = "themetune-ray-token"   # KubeRay >= 1.6.0
    assert any("secretName" in e for e in crd_errors("RayCluster", bad))
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    assert any("resource" in e for e in crd_errors("RayCluster", bad))
    bad = copy.deepcopy(cluster)
    bad["spec"]["authOptions"]["mode"] = "password"
    assert crd_errors("RayCluster", bad)
    bad = copy.deepcopy(cluster)
    del bad["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert crd_errors("RayCluster", bad)
    job = load_all("kuberay/rayjob.yaml")["RayJob"]
    bad = copy.deepcopy(job)
    bad["spec"]["runtimeEnv"] = "{}"
    assert crd_errors("RayJob", bad)


def test_kuberay_network_policy_admits_the_operator_from_its_namespace():
    docs = load_all("kuberay/raycluster.yaml")
    cluster_label = {"ray.io/cluster": docs["RayCluster"]["metadata"]["name"]}
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"] and policy["podSelector"]["matchLabels"] == cluster_label
    peers = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert all(rule.get("from") and "ports" not in rule for rule in policy["ingress"])
    # No ipBlock and no namespace admitted as a whole: every peer selects pods.
    assert all(set(peer) <= {"podSelector", "namespaceSelector"} and "podSelector" in peer
               for peer in peers)
    # This cluster's pods: a podSelector alone means the policy's own namespace.
    assert {"podSelector": {"matchLabels": cluster_label}} in peers
    # The operator: pod label AND namespace, in one peer (two peers would be an OR).
    operator = [p for p in peers if p["podSelector"].get("matchLabels") ==
                {"app.kubernetes.io/name": "kuberay-operator"}]
    assert len(operator) == 1
    namespace = operator[0].get("namespaceSelector", {}).get("matchLabels", {})
    assert set(namespace) == {"kubernetes.io/metadata.name"} and namespace[
        "kubernetes.io/metadata.name"]
    # Every other peer is this cluster's own pods.
    assert all(p in operator or p == {"podSelector": {"matchLabels": cluster_label}}
               for p in peers)



def test_kuberay_raycluster():
    docs = load_all("kuberay/raycluster.yaml")
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    # The operator makes the token (a Secret named after the cluster); authOptions.secretName
    # is KubeRay >= 1.6.0 only, and the manifest promises >= 1.5.1.
    assert spec["authOptions"] == {"mode": "token"}
    assert "KubeRay >= 1.5.1" in (CLUSTER / "kuberay/raycluster.yaml").read_text()
    assert tuple(map(int, spec["rayVersion"].split(".")[:2])) >= (2, 52)
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    head_env = {e["name"]: e.get("value") for e in head_container["env"]}
    assert head_env["RAY_JOB_STOP_WAIT_TIME_S"] == "60"
    # Secrets (the token, DATABASE_URL, MLFLOW_TRACKING_URI) come from k8s Secrets only.
    assert head_container["envFrom"][0]["secretRef"]["name"] == "themetune-services"
    assert not {"RAY_AUTH_TOKEN", "DATABASE_URL", "MLFLOW_TRACKING_URI"} & set(head_env)

    pvc = docs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    storage_path = load("config.gpu.yaml")["ray"]["storage_path"]

    def mounts_shared(pod_spec, container) -> bool:
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        for m in container["volumeMounts"]:
            claim = volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
            if claim == pvc["metadata"]["name"] and storage_path.startswith(m["mountPath"] + "/"):
                return True
        return False

    assert mounts_shared(head["template"]["spec"], head_container)
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
                      "nvidia.com/gpu")]
    assert gpu_groups
    for group in gpu_groups:
        pod = group["template"]["spec"]
        assert mounts_shared(pod, pod["containers"][0])
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
    assert spec["enableInTreeAutoscaling"] is True
    policy = docs["NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "Service" not in docs                      # no LoadBalancer/NodePort exposure


def test_kuberay_rayjob_runs_launch_py_on_the_cluster():
    job = load_all("kuberay/rayjob.yaml")["RayJob"]
    cluster = load_all("kuberay/raycluster.yaml")["RayCluster"]
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entry = shlex.split(spec["entrypoint"])
    assert entry[:3] == ["cd", "/app", "&&"] and entry[3:5] == ["python", "launch.py"]
    theme = entry[entry.index("--theme-id") + 1]
    study = entry[entry.index("--study-name") + 1]
    config = entry[entry.index("--config") + 1]
    assert (ROOT / config).is_file()
    assert spec["jobId"].startswith(f"themetune-theme{theme}-{study}-")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_JOB_SUBMISSION_ID"] == spec["jobId"]
    assert runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "60"
    assert spec["metadata"] == {"theme_id": theme, "study_name": study}


# --- Dockerfile (no Docker engine here: parsed and checked statically) -------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (CLUSTER / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)                 # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), " ".join(args.split())))
    return out


def test_dockerfile_builds_a_node_image_with_the_project():
    steps = dockerfile_instructions()
    ops = [op for op, _ in steps]
    assert ops[0] == "FROM" and steps[0][1].startswith("python:3.11")
    known = {"FROM", "RUN", "COPY", "WORKDIR", "ENV", "ARG", "USER", "ENTRYPOINT", "CMD"}
    assert set(ops) <= known, set(ops) - known
    runs = " ".join(args for op, args in steps if op == "RUN")
    # torch first; what it brings (sympy, filelock...) and every other dependency at the
    # version the tests ran with.
    assert "pip install --no-cache-dir -c requirements.lock ${TORCH_SPEC}" in runs
    assert "pip install --no-cache-dir -c requirements.lock ." in runs and "pip check" in runs
    assert runs.index("${TORCH_SPEC}") < runs.index("-c requirements.lock .")
    for needed in ("rsync", "openssh-client", "procps", "tini"):
        assert needed in runs
    copies = [args.split() for op, args in steps if op == "COPY"]
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    copied = {s for *sources, _ in copies for s in sources}
    assert {"pyproject.toml", "requirements.lock", "launch.py", "tuning", "data_access", "web",
            "configs"} <= copied
    assert not any("auth_token" in s for s in copied)          # no token in the image
    # Dependencies are installed before the code is copied (layer caching).
    first_code = next(i for i, (op, a) in enumerate(steps) if op == "COPY" and "tuning" in a)
    pip = next(i for i, (op, a) in enumerate(steps) if op == "RUN" and "pip install" in a)
    assert pip < first_code
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "RAY_AUTH_MODE=token" in env and "PYTHONPATH" not in env
    # The project is installed as packages once its code is in the image.
    install = next(i for i, (op, a) in enumerate(steps) if op == "RUN" and "-e ." in a)
    assert install > first_code
    assert "RAY_JOB_STOP_WAIT_TIME_S=60" in env
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert dict(steps)["WORKDIR"] == "/app"
    assert "tini" in dict(steps)["ENTRYPOINT"]
    arg = next(a for op, a in steps if op == "ARG" and a.startswith("TORCH_SPEC"))
    make_spec = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make_spec and make_spec.group(1) in arg      # the same torch as `make install`


# --- requirements.lock: the one pinned set for the tests, the image and the nodes ----

LOCK = ROOT / "requirements.lock"
# TORCH_SPEC installs these (the build is the machine's choice); pip, setuptools: the venv's.
UNPINNED = re.compile(r"^(torch|torchvision|triton|nvidia-.+|themetune|pip|setuptools|wheel)$")


def canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and name and version and " " not in line, f"not name==version: {line}"
            assert canonical(name) not in pins, f"pinned twice: {name}"
            pins[canonical(name)] = version
    return pins


def pyproject_requirements():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in
            project["dependencies"] + project["optional-dependencies"]["test"]]


def test_lock_pins_every_dependency_named_in_pyproject():
    pins = lock_pins()
    assert not [n for n in pins if UNPINNED.match(n)], "torch & co. come from TORCH_SPEC"
    missing, outside = [], []
    for req in pyproject_requirements():
        name = canonical(req.name)
        if UNPINNED.match(name):
            continue
        if name not in pins:
            missing.append(req.name)
        elif not req.specifier.contains(pins[name], prereleases=True):
            outside.append(f"{req} (lock: {pins[name]})")
    assert not missing, f"not in requirements.lock (run cluster/lock.sh): {missing}"
    assert not outside, f"lock outside pyproject's range (run cluster/lock.sh): {outside}"


def test_venv_runs_the_locked_versions():
    """The tests run with what the image ships: every installed distribution is pinned
    in the lock at the installed version (a fresh `make install` installs a subset)."""
    import importlib.metadata as md
    import sysconfig

    pins = lock_pins()
    # The environment's own site-packages (Ray puts its vendored thirdparty_files on
    # sys.path, which are not distributions pip installed).
    site = list({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {canonical(d.metadata["Name"]): d.version for d in md.distributions(path=site)}
    differs = {n: (v, pins.get(n)) for n, v in installed.items()
               if not UNPINNED.match(n) and pins.get(n) != v}
    assert not differs, f"installed vs requirements.lock (run cluster/lock.sh): {differs}"
    for req in pyproject_requirements():
        assert canonical(req.name) in installed, req.name


def test_one_ray_version_everywhere():
    import ray

    cluster = load_all("kuberay/raycluster.yaml")["RayCluster"]
    assert cluster["spec"]["rayVersion"] == lock_pins()["ray"] == ray.__version__


def test_make_install_and_lock_script_use_the_lock():
    make = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\): (.*)\n((?:\t.*\n)+)", make, re.M)
    assert stamp and "requirements.lock" in stamp.group(1).split()   # a new lock reinstalls
    recipe = stamp.group(2)
    assert "-m pip install -q -c requirements.lock $(TORCH_SPEC)" in recipe
    assert '-m pip install -q -c requirements.lock -e ".[test]"' in recipe
    assert recipe.index("$(TORCH_SPEC)") < recipe.index('-e ".[test]"')
    subprocess.run(["bash", "-n", str(CLUSTER / "lock.sh")], check=True)
    assert "pip freeze --exclude-editable" in (CLUSTER / "lock.sh").read_text()


# --- the job's runtime_env and the GPU config ---------------------------------------

def test_runtime_env_is_valid_and_uploads_no_state():
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    RuntimeEnv(**env)                                   # Ray's own validation
    for must in (".venv", ".git", "db.sqlite3", "mlflow.db", "mlruns", "mlartifacts",
                 "media", ".cache", "ray_results"):
        assert must in env["excludes"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
    # Machine-specific values are added by cluster/submit.py, never fixed here.
    for key in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN"):
        assert key not in env["env_vars"]


def test_gpu_config_packs_small_trials_and_loads():
    from tuning.config import ConfigFiles, Overrides, load_study_config

    defaults = ConfigFiles.in_folder(ROOT / "configs")
    files = ConfigFiles(optuna_params=defaults.optuna_params, params=defaults.params,
                        config=CLUSTER / "config.gpu.yaml", augments=defaults.augments)
    config = load_study_config(files, Overrides(theme_id=7))
    infra = config.infra
    assert infra.resources.gpu == 0.125 and infra.resources.cpu == 1
    assert infra.ray.dashboard_host == "127.0.0.1"
    assert Path(infra.ray.storage_path).is_absolute()     # a shared mount, not node-local
    assert infra.max_concurrent_trials % int(1 / infra.resources.gpu) == 0


# --- local.sh and submit.py ---------------------------------------------------------

def test_local_sh_is_valid_bash_with_safe_defaults():
    script = (CLUSTER / "local.sh").read_text()
    subprocess.run(["bash", "-n", str(CLUSTER / "local.sh")], check=True)
    help_text = subprocess.run([str(CLUSTER / "local.sh"), "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "up --workers" in help_text and "--net MODE" in help_text
    assert 'echo "RAY_AUTH_MODE=token"' in script
    assert "--dashboard-host 127.0.0.1" in script
    assert "RAY_JOB_STOP_WAIT_TIME_S" in script
    assert "0.0.0.0" not in script
    # Ends only what it started: no broad kills, no machine-wide `ray stop`.
    for broad in ("pkill", "killall", "ray stop", "kill 0", "kill -9 -1"):
        assert broad not in script


def test_submission_id_names_theme_and_study():
    spec = importlib.util.spec_from_file_location("submit", CLUSTER / "submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    import datetime as dt

    at = dt.datetime(2026, 1, 2, 3, 4, 5)
    assert submit.submission_id(7, "resnet study/v2", at) == \
        "themetune-theme7-resnet-study-v2-20260102-030405"
    assert submit._absolute_sqlite("sqlite:///mlflow.db") == f"sqlite:///{ROOT / 'mlflow.db'}"
    assert submit._absolute_sqlite("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert submit._absolute_sqlite("postgresql://h/db") == "postgresql://h/db"


def test_submit_print_only_shows_the_full_command(tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(RAY_AUTH_TOKEN_PATH=str(token), DATABASE_URL="postgresql://db/themes",
               RAY_ADDRESS="http://127.0.0.1:8265")
    out = subprocess.run([sys.executable, str(CLUSTER / "submit.py"), "--theme-id", "7",
                          "--print-only", "--", "--n-trials", "4"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    cmd = shlex.split(out.splitlines()[1])
    assert cmd[1:3] == ["job", "submit"]
    sid = cmd[cmd.index("--submission-id") + 1]
    study = yaml.safe_load((ROOT / "configs/optuna_params.yaml").read_text())["study"]["name"]
    assert sid.startswith(f"themetune-theme7-{study}-")
    assert cmd[cmd.index("--working-dir") + 1] == str(ROOT)
    runtime_env = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    env_vars = runtime_env["env_vars"]
    assert env_vars["DATABASE_URL"] == "postgresql://db/themes"
    assert env_vars["MLFLOW_TRACKING_URI"] == f"sqlite:///{ROOT / 'mlflow.db'}"
    assert env_vars["RAY_JOB_SUBMISSION_ID"] == sid
    assert ".venv" in runtime_env["excludes"]
    assert cmd[cmd.index("--") + 1:] == ["python", "launch.py", "--theme-id", "7",
                                          "--n-trials", "4"]


# --- tuning/cluster.py pieces that need no cluster ------------------------------------

def test_storage_kinds():
    from tuning.cluster import is_remote_storage, local_storage_path

    for uri in ("s3://bucket/p", "gs://b/p", "abfs://c@a.dfs.core.windows.net/p", "hdfs://nn/p"):
        assert is_remote_storage(uri)
    for path in ("ray_results", "/mnt/shared/r", "file:///mnt/shared/r", "C:/x"):
        assert not is_remote_storage(path)
    assert local_storage_path("file:///mnt/shared/r") == Path("/mnt/shared/r")
    assert local_storage_path("rel") == Path.cwd() / "rel"


def test_job_submission_id_from_rays_job_config(monkeypatch):
    from tuning.cluster import in_ray_job, job_submission_id

    for var in ("RAY_JOB_SUBMISSION_ID", "RAY_JOB_ID", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(var, raising=False)
    assert job_submission_id() is None and not in_ray_job()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}}))
    assert in_ray_job() and job_submission_id() == "raysubmit_abc"
    monkeypatch.setenv("RAY_JOB_SUBMISSION_ID", "themetune-theme7-x-1")
    assert job_submission_id() == "themetune-theme7-x-1"


def test_submit_labels_a_hostile_optuna_params_file_without_reading_it_whole(tmp_path):
    """cluster/submit.py only reads study.name for the job id: a file the driver will
    refuse (a name built from nested aliases, nesting past Python's recursion limit)
    must not hang or crash it before the driver can say what is wrong."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("submit", CLUSTER / "submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"{k}: &{k} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
               for p, k in zip("abcdefgh", "bcdefghi")]
    bodies = {"bomb": "\n".join(laughs) + "\nstudy: {name: *i}\n",
              "deep": "study: {name: " + "[" * 20000 + "]" * 20000 + "}\n",
              "fine": "study: {name: my_study}\n"}
    for label, body in bodies.items():
        (tmp_path / label).mkdir()
        (tmp_path / label / "optuna_params.yaml").write_text(body)
        args = submit.argparse.Namespace(study_name=None, configs=str(tmp_path / label))
        assert submit.study_name(args) == ("my_study" if label == "fine" else "study")
