"""The Dockerfile and compose.yaml stay in step with the CLI: every `insession` command and option
they use exists (as `insession COMMAND --help` lists it), the compose file runs Redis, two servers
and two workers on it, and the health check asks an endpoint the server has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer
import yaml

from insession.cli import app

ROOT = Path(__file__).resolve().parents[2]


def options_of(command: Any) -> set[str]:
    return {"--help"} | {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def check_invocation(args: list[str]) -> None:
    """``args`` (after the ``insession`` entrypoint) name a command and only options it has."""
    commands: dict[str, Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    command = commands.get(args[0])
    assert command is not None, f"no command `insession {args[0]}`"
    known = options_of(command)
    for arg in args[1:]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"`insession {args[0]}` has no option {arg} (has {sorted(known)})"


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_image_runs_insession_commands_that_exist() -> None:
    text = dockerfile()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entrypoint == ["insession"]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    check_invocation(cmd)
    for line in re.findall(r"^#\s+docker run .* insession\b([^#]*)", text, re.M):
        if line.split():  # the documented `docker run ... insession COMMAND --option` lines
            check_invocation(line.split())


def test_the_health_check_asks_an_endpoint_the_server_has(engine: Any) -> None:
    from insession.serving.app import create_app

    paths = {getattr(r, "path", "") for r in create_app(engine).routes}
    asked = re.findall(r"http://127\.0\.0\.1:8000(/[a-z/]+)", dockerfile())
    assert asked and set(asked) <= paths


def test_compose_runs_redis_two_servers_and_two_workers_with_real_commands() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    roles: dict[str, list[str]] = {}
    for name, service in services.items():
        if "build" not in service:
            continue  # redis: its own image
        command = service["command"]
        check_invocation(command)
        roles.setdefault(command[0], []).append(name)
        if "--store" in command:
            url = command[command.index("--store") + 1]
            host = re.match(r"redis://([^:/]+)", url).group(1)  # type: ignore[union-attr]
            assert host in services and services[host]["image"].startswith("redis"), url
    assert len(roles["serve"]) == 2 and len(roles["worker"]) == 2
    ports = [services[s]["ports"][0] for s in roles["serve"]]
    assert len(set(ports)) == 2
    model = next(s for s in services.values() if s.get("command", [None])[0] == "demo")
    assert "--workdir" in model["command"]
    workdir = model["command"][model["command"].index("--workdir") + 1]
    for server in roles["serve"]:
        command = services[server]["command"]
        assert command[command.index("--model") + 1] == f"{workdir}/model"  # where `demo --workdir` keeps it


def test_the_license_is_the_one_pyproject_declares() -> None:
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    head = (ROOT / "LICENSE").read_text().split()[:5]
    assert head == ["Apache", "License", "Version", "2.0,", "January"]
