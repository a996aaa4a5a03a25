"""The deployment files (Containerfile, deploy/compose, deploy/k8s) checked without
Docker or a cluster: the Kubernetes manifests against the real API schemas
(kubernetes-validate, offline), and every file against the others and against
the code: the flags are those `ringkv node` and `ringkv alive` accept, the
ports are those the node derives from its client port, the server lists name
one node per replica or service, each in the order of --listen.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from ringkv.cli.main import alive, node
from ringkv.client import RetryPolicy
from ringkv.runtime.cluster import METRICS_PORT_OFFSET
from ringkv.servers import (
    GOSSIP_PORT_OFFSET,
    PEER_PORT_OFFSET,
    ServerListError,
    load_servers,
    parse_servers,
    resolve_addr,
)
from ringkv.wire import Addr

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
CONTAINERFILE = ROOT / "Containerfile"
WAITER = ROOT / "deploy" / "wait_for_names.py"
KUBERNETES_VERSION = "1.37"  # the newest schemas kubernetes-validate 1.37.0 bundles
# What a node takes besides --memory-mb (measured: about 35 MiB idle, and 1.1-1.3
# times the budget when the budget is full), with room for the reply cache.
MEMORY_FACTOR = 1.3
MEMORY_BASE_MIB = 64
PROBE_STARTUP_S = 1.0  # a Python process importing ringkv, before its first try

Doc = dict[str, Any]


# -- reading the files ---------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[Doc]:
    docs: list[Doc] = []
    for path in k8s_files():
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s_kind(kind: str) -> Doc:
    found = [d for d in k8s_docs() if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} manifests in {K8S}"
    return found[0]


def pod_spec() -> Doc:
    spec: Doc = k8s_kind("StatefulSet")["spec"]["template"]["spec"]
    return spec


def node_container() -> Doc:
    containers = [c for c in pod_spec()["containers"] if c["name"] == "ringkv"]
    assert len(containers) == 1
    return containers[0]


def configmap_servers() -> list[Addr]:
    data = k8s_kind("ConfigMap")["data"]
    return parse_servers(data[servers_key()])


def servers_key() -> str:
    """The ConfigMap key holding the list: the file name the node's --servers names."""
    return Path(node_params_k8s(0)["servers_file"]).name


def compose() -> Doc:
    doc: Doc = yaml.safe_load(COMPOSE.read_text())
    return doc


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        word, _, rest = whole.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "the Containerfile ends inside a continued instruction"
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for word, rest in containerfile() if word == name]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instruction("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


# -- the command lines, parsed by the commands themselves ----------------------------


def parse(command: click.Command, args: Sequence[str]) -> dict[str, Any]:
    """What `command` makes of `args` (types converted, nothing run); a flag it
    does not accept, or a bad value, fails the test with click's message."""
    try:
        with command.make_context(command.name or "ringkv", list(args)) as ctx:
            return dict(ctx.params)
    except click.ClickException as exc:
        pytest.fail(f"{command.name} {shlex.join(args)}: {exc.format_message()}")


def expand_k8s(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command and args ($$ escapes a dollar).
    An unknown variable stays as written, as Kubernetes leaves it."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def expand_shell(text: str, env: Mapping[str, str]) -> str:
    """A shell's $VAR and ${VAR}; an unset variable fails the test (it would be empty)."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in env, f"{text!r} uses ${name}, which is not set"
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", value, text)


def k8s_env(pod_name: str) -> dict[str, str]:
    """The node container's environment in pod `pod_name` (downward API filled in)."""
    downward = {"metadata.name": pod_name, "status.podIP": "192.0.2.7"}
    env: dict[str, str] = {}
    for var in node_container().get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = downward[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def node_params_k8s(ordinal: int) -> dict[str, Any]:
    name = k8s_kind("StatefulSet")["metadata"]["name"]
    env = k8s_env(f"{name}-{ordinal}")
    args = [expand_k8s(a, env) for a in node_container()["args"]]
    for arg in args:
        assert "$(" not in arg, f"{arg!r}: a variable that is not in the container's env"
    return parse(node, args)


def alive_params(argv: Sequence[str]) -> dict[str, Any]:
    """`ringkv alive ...` parsed; `argv` starts with `ringkv alive`."""
    assert list(argv[:2]) == ["ringkv", "alive"], argv
    return parse(alive, argv[2:])


def longest_alive_s(params: Mapping[str, Any]) -> float:
    return sum(RetryPolicy(params["timeout"], params["tries"]).waits())


def derived_ports(port: int) -> set[tuple[int, str]]:
    return {(port, "UDP"), (port + GOSSIP_PORT_OFFSET, "UDP"), (port + PEER_PORT_OFFSET, "UDP")}


def mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "k": 1e3 / 2**20, "M": 1e6 / 2**20}
    units |= {"G": 1e9 / 2**20, "m": 1 / 2**20, "b": 1 / 2**20}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(quantity))
    assert match, quantity
    number, unit = match.groups()
    return float(number) * units.get(unit, 1 / 2**20)


def docker_mib(size: str) -> float:
    """Compose's byte sizes: b, k, m, g, binary."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", size.lower())
    assert match, size
    number, unit = match.groups()
    return int(number) * {"": 2**-20, "b": 2**-20, "k": 2**-10, "m": 1, "g": 2**10}[unit]


def hosts_resolving_to_loopback(names: Sequence[str]) -> Callable[..., Any]:
    """A getaddrinfo that answers `names` with 127.0.0.N (N from 1), else fails."""
    table = {name: f"127.0.0.{i + 1}" for i, name in enumerate(names)}

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (table[host], port))]

    return getaddrinfo


# -- Kubernetes ----------------------------------------------------------------------


def test_the_manifests_are_valid_kubernetes_objects() -> None:
    docs = k8s_docs()
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "PodDisruptionBudget",
        "Service",
        "StatefulSet",
    ]
    for doc in docs:
        # strict: a field the schema does not know (a misspelling) is an error
        assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    """The validation above is live: the same StatefulSet with one typo fails."""
    statefulset = copy.deepcopy(k8s_kind("StatefulSet"))
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())
    images = {i["name"] for i in kustomization["images"]}
    for container in pod_spec()["containers"] + pod_spec()["initContainers"]:
        assert container["image"].split(":")[0] in images


def test_the_service_is_headless_and_names_pods_before_they_are_ready() -> None:
    service = k8s_kind("Service")
    statefulset = k8s_kind("StatefulSet")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget = k8s_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_one_server_line_per_replica_each_pod_listening_on_its_own() -> None:
    statefulset = k8s_kind("StatefulSet")
    service = k8s_kind("Service")["metadata"]["name"]
    name = statefulset["metadata"]["name"]
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    # a rolling update would leave the older nodes with the new pods' old IPs
    assert statefulset["spec"]["updateStrategy"]["type"] == "OnDelete"
    servers = configmap_servers()
    replicas = statefulset["spec"]["replicas"]
    assert len(servers) == replicas
    for ordinal in range(replicas):
        params = node_params_k8s(ordinal)
        assert params["listen"] == servers[ordinal]
        # the pod's DNS name under the headless Service
        assert params["listen"][0] == f"{name}-{ordinal}.{service}"
        assert params["key_file"] is not None and not params["insecure"]


def test_the_node_reads_the_list_and_key_where_the_volumes_are() -> None:
    spec = pod_spec()
    params = node_params_k8s(0)
    mounts = {m["name"]: Path(m["mountPath"]) for m in node_container()["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    servers_file = Path(params["servers_file"])
    (servers_volume,) = [n for n, p in mounts.items() if p == servers_file.parent]
    configmap = k8s_kind("ConfigMap")
    assert volumes[servers_volume]["configMap"]["name"] == configmap["metadata"]["name"]
    assert servers_file.name in configmap["data"]

    key_file = Path(params["key_file"])
    (key_volume,) = [n for n, p in mounts.items() if p == key_file.parent]
    secret = volumes[key_volume]["secret"]
    assert secret["defaultMode"] & 0o007 == 0, "the key is readable by others"
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    # docs/deployment.md makes that Secret, with that key
    command = f"kubectl create secret generic {secret['secretName']} --from-file={key_file.name}"
    assert command in (ROOT / "docs" / "deployment.md").read_text()


def test_the_pod_ports_are_those_the_node_derives() -> None:
    params = node_params_k8s(0)
    port = params["listen"][1]
    assert params["metrics_port"] == port + METRICS_PORT_OFFSET
    wanted = derived_ports(port) | {(params["metrics_port"], "TCP")}
    container = {(p["containerPort"], p["protocol"]) for p in node_container()["ports"]}
    service = {(p["port"], p["protocol"]) for p in k8s_kind("Service")["spec"]["ports"]}
    assert container == wanted
    assert service == wanted


def test_the_probes_ask_the_node_itself_and_wait_long_enough() -> None:
    container = node_container()
    env = k8s_env("ringkv-0")
    listen_port = node_params_k8s(0)["listen"][1]
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container[probe_name]
        shell, dash_c, script = probe["exec"]["command"]
        assert (shell, dash_c) == ("sh", "-c")
        argv = shlex.split(expand_shell(script, env))
        assert argv[0] == "exec"
        params = alive_params(argv[1:])
        assert params["server"] == (env["POD_IP"], listen_port)
        assert probe["timeoutSeconds"] >= longest_alive_s(params) + PROBE_STARTUP_S
    assert container["livenessProbe"]["failureThreshold"] >= 3


def test_memory_limits_fit_the_node_budget() -> None:
    container = node_container()
    budget = node_params_k8s(0)["memory_mb"]
    limit = mib(container["resources"]["limits"]["memory"])
    assert mib(container["resources"]["requests"]["memory"]) == limit
    assert limit >= budget * MEMORY_FACTOR + MEMORY_BASE_MIB
    assert "cpu" not in container["resources"].get("limits", {})


def test_the_pods_run_as_the_images_unprivileged_user() -> None:
    spec = pod_spec()
    (user,) = instruction("USER")[-1:]
    uid, _, gid = user.partition(":")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(uid) != 0
    assert spec["securityContext"]["runAsGroup"] == int(gid)
    assert spec.get("enableServiceLinks") is False
    for container in spec["containers"] + spec["initContainers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # the image's entrypoint (`ringkv node`) runs: the manifest gives arguments only
    assert "command" not in node_container()


def test_an_init_container_waits_for_the_servers_names() -> None:
    spec = pod_spec()
    (init,) = spec["initContainers"]
    assert init["image"] == node_container()["image"]
    command = init["command"]
    assert command[0] == image_waiter_path().name
    servers_file = Path(node_params_k8s(0)["servers_file"])
    assert command[1] == str(servers_file)
    assert float(command[command.index("--timeout") + 1]) > 0  # bounded
    mounted = {Path(m["mountPath"]) for m in init["volumeMounts"]}
    assert servers_file.parent in mounted


def test_the_configmap_list_loads_once_its_names_resolve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The ConfigMap's list, with each pod name answered by a loopback address,
    loads through load_servers (as the node would read it), and the node's
    --listen of each pod resolves to its own line."""
    text = k8s_kind("ConfigMap")["data"][servers_key()]
    path = tmp_path / "servers.txt"
    path.write_text(text)
    names = [host for host, _ in parse_servers(text)]
    monkeypatch.setattr(socket, "getaddrinfo", hosts_resolving_to_loopback([]))
    with pytest.raises(ServerListError, match="does not resolve"):
        load_servers(path)
    monkeypatch.setattr(socket, "getaddrinfo", hosts_resolving_to_loopback(names))
    resolved = load_servers(path)
    assert [addr for addr, _ in resolved] == [f"127.0.0.{i + 1}" for i in range(len(names))]
    for ordinal in range(len(names)):
        assert resolve_addr(node_params_k8s(ordinal)["listen"]) == resolved[ordinal]


def test_a_list_of_real_host_names_loads(tmp_path: Path) -> None:
    try:
        socket.getaddrinfo("localhost", 10001, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        pytest.skip("localhost does not resolve on this machine")
    path = tmp_path / "servers.txt"
    path.write_text("localhost:10001\n127.0.0.1:10002\n")  # names and addresses mixed
    servers = load_servers(path)
    assert servers[1] == ("127.0.0.1", 10002)
    assert servers[0][1] == 10001
    assert servers[0][0] != "localhost"  # resolved, once, here


# -- the waiting script (deploy/wait_for_names.py, ringkv-wait-names in the image) -----


@pytest.fixture
def waiter() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("wait_for_names", WAITER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


def test_the_waiter_returns_once_every_name_resolves(
    waiter: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "servers.txt"
    path.write_text("ringkv-0.ringkv:10001\nringkv-1.ringkv:10001\n")
    names = ["ringkv-0.ringkv"]
    monkeypatch.setattr(socket, "getaddrinfo", hosts_resolving_to_loopback(names))
    fake = FakeTime()
    said: list[str] = []

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        if fake.sleeps == 3:  # the second pod's record appears
            monkeypatch.setattr(
                socket, "getaddrinfo", hosts_resolving_to_loopback([*names, "ringkv-1.ringkv"])
            )

    status = waiter.wait_for_names(path, 60.0, 1.0, said.append, fake.clock, sleep)
    assert status == 0
    assert fake.sleeps == 3
    assert len(said) == 1 and "ringkv-1.ringkv" in said[0]  # said once, not per try


def test_the_waiter_gives_up_after_its_timeout(
    waiter: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "servers.txt"
    path.write_text("ringkv-0.ringkv:10001\n")
    monkeypatch.setattr(socket, "getaddrinfo", hosts_resolving_to_loopback([]))
    fake = FakeTime()
    said: list[str] = []
    status = waiter.wait_for_names(path, 10.0, 1.0, said.append, fake.clock, fake.sleep)
    assert status == waiter.EXIT_TIMEOUT != 0
    assert 10 <= fake.now <= 11
    assert "gave up" in said[-1]


def test_the_waiter_does_not_wait_for_a_list_that_does_not_parse(
    waiter: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "servers.txt"
    path.write_text("ringkv-0.ringkv\n")
    fake = FakeTime()
    said: list[str] = []
    status = waiter.wait_for_names(path, 60.0, 1.0, said.append, fake.clock, fake.sleep)
    assert status == waiter.EXIT_BAD_LIST
    assert fake.sleeps == 0
    assert "HOST:PORT" in said[0]


def test_the_waiter_runs_the_command_after_the_dashes(
    waiter: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "servers.txt"
    path.write_text("127.0.0.1:10001\n")
    run: list[list[str]] = []

    def execvp(file: str, args: list[str]) -> None:
        run.append(args)

    monkeypatch.setattr(waiter.os, "execvp", execvp)
    waiter.main([str(path), "--timeout", "1", "--", "ringkv", "node", "--listen", "x:1"])
    assert run == [["ringkv", "node", "--listen", "x:1"]]
    assert waiter.main([str(path), "--timeout", "1"]) == 0
    assert len(run) == 1


# -- Compose -------------------------------------------------------------------------


def compose_node_args(service: Doc) -> list[str]:
    """The node's arguments: what follows `ringkv node` in entrypoint + command."""
    argv = [str(a) for a in service["entrypoint"] + service["command"]]
    for i in range(len(argv) - 1):
        if argv[i : i + 2] == ["ringkv", "node"]:
            return argv[i + 2 :]
    pytest.fail(f"{argv}: does not run `ringkv node`")


def test_each_compose_service_listens_on_its_hostname_line() -> None:
    doc = compose()
    services = doc["services"]
    assert len(services) >= 3
    first = compose_node_args(next(iter(services.values())))
    servers_path = parse(node, first)["servers_file"]
    (mount,) = [
        v for v in next(iter(services.values()))["volumes"] if v.split(":")[1] == str(servers_path)
    ]
    servers = parse_servers((COMPOSE.parent / mount.split(":")[0]).read_text())
    assert len(servers) == len(services)
    for (name, service), line in zip(services.items(), servers, strict=True):
        params = parse(node, compose_node_args(service))
        assert service["hostname"] == name == line[0]
        assert params["listen"] == line
        assert params["servers_file"] == servers_path
        assert params["key_file"] is not None and not params["insecure"]


def test_compose_waits_for_the_names_then_runs_the_node() -> None:
    for service in compose()["services"].values():
        entrypoint = service["entrypoint"]
        assert entrypoint[0] == image_waiter_path().name
        params = parse(node, compose_node_args(service))
        assert entrypoint[1] == str(params["servers_file"])
        assert float(entrypoint[entrypoint.index("--timeout") + 1]) > 0
        assert entrypoint[entrypoint.index("--") + 1 :] == ["ringkv", "node"]


def test_compose_mounts_the_key_as_a_secret_kept_out_of_git() -> None:
    doc = compose()
    for service in doc["services"].values():
        key_file = Path(parse(node, compose_node_args(service))["key_file"])
        (secret,) = service["secrets"]
        assert key_file == Path("/run/secrets") / secret["target"]
        source = doc["secrets"][secret["source"]]["file"]
        ignored = (COMPOSE.parent / ".gitignore").read_text().split()
        assert Path(source).name in ignored


def test_compose_healthchecks_ask_each_node_at_its_listen_address() -> None:
    for service in compose()["services"].values():
        params = parse(node, compose_node_args(service))
        check = service["healthcheck"]
        assert check["test"][0] == "CMD"
        probe = alive_params(check["test"][1:])
        assert probe["server"] == params["listen"]
        timeout_s = float(check["timeout"].removesuffix("s"))
        assert timeout_s >= longest_alive_s(probe) + PROBE_STARTUP_S


def test_compose_services_share_a_user_defined_network_and_build_this_image() -> None:
    doc = compose()
    networks = set(doc["networks"])
    assert networks and "default" not in networks
    for service in doc["services"].values():
        assert set(service["networks"]) <= networks
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / service["build"]["dockerfile"]).resolve() == CONTAINERFILE
        budget = parse(node, compose_node_args(service))["memory_mb"]
        limit = docker_mib(str(service["mem_limit"]))
        assert limit >= budget * MEMORY_FACTOR + MEMORY_BASE_MIB


# -- the Containerfile ---------------------------------------------------------------


def image_waiter_path() -> Path:
    """Where the Containerfile puts deploy/wait_for_names.py in the image."""
    for rest in instruction("COPY"):
        parts = shlex.split(rest)
        if not parts[0].startswith("--") and parts[0] == "deploy/wait_for_names.py":
            return Path(parts[-1])
    pytest.fail("the Containerfile does not copy deploy/wait_for_names.py")


def test_the_image_runs_the_node_as_a_non_root_user() -> None:
    users = instruction("USER")
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it
    (entrypoint,) = instruction("ENTRYPOINT")
    assert json.loads(entrypoint) == ["ringkv", "node"]
    (cmd,) = instruction("CMD")
    params = parse(node, json.loads(cmd))
    assert params["listen"][1] == int(image_env()["RINGKV_PORT"])


def test_the_image_is_built_from_a_pinned_python_311_slim() -> None:
    args = dict(a.split("=", 1) for a in instruction("ARG") if "=" in a)
    bases = [rest.split()[0] for rest in instruction("FROM")]
    assert len(bases) >= 1
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        name, _, tag = image.partition(":")
        assert name == "python" and tag.startswith("3.11") and "slim" in tag
    installs = [r for r in instruction("RUN") if "pip install" in r]
    assert installs and not any("[test]" in r or "-e " in r for r in installs)


def test_the_image_exposes_the_derived_ports_and_checks_health() -> None:
    port = int(image_env()["RINGKV_PORT"])
    exposed = set()
    for rest in instruction("EXPOSE"):
        for item in rest.split():
            number, _, protocol = item.partition("/")
            exposed.add((int(number), (protocol or "tcp").upper()))
    assert derived_ports(port) | {(port + METRICS_PORT_OFFSET, "TCP")} == exposed

    (healthcheck,) = instruction("HEALTHCHECK")
    options, _, cmd = healthcheck.partition("CMD ")
    shell, dash_c, script = json.loads(cmd)
    assert (shell, dash_c) == ("sh", "-c")
    env = image_env() | {"HOSTNAME": "ringkv-0"}  # Docker and Kubernetes set HOSTNAME
    argv = shlex.split(expand_shell(script, env))
    assert argv[0] == "exec"
    probe = alive_params(argv[1:])
    assert probe["server"] == ("ringkv-0", port)
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout and int(timeout.group(1)) >= longest_alive_s(probe) + PROBE_STARTUP_S


def test_what_the_image_copies_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", ".git", "build", ".pytest_cache", ".mypy_cache"):
        assert needed in ignored
    for rest in instruction("COPY"):
        parts = shlex.split(rest)
        if parts[0].startswith("--from"):
            continue
        for source in parts[:-1]:
            assert (ROOT / source).exists(), source
            top = Path(source).parts[0]
            assert source not in ignored and top not in ignored, source
    assert (ROOT / "Dockerfile").resolve() == CONTAINERFILE


# -- the manual ----------------------------------------------------------------------


def test_the_readme_points_to_the_deployment_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, re.MULTILINE)
    assert "Deployment" in headings
    assert headings.index("Deployment") + 1 == headings.index("Architecture")
    section = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    assert "docs/deployment.md" in section
    assert (ROOT / "docs" / "deployment.md").exists()
