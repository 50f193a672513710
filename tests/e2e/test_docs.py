"""The docs as a new user reads them: the Python snippets of README.md and docs/api.md run as
pasted against a real server (only its address swapped in), and every ``--flag`` the docs give
``hardscore``, ``hardscore-server``, ``hardscore-export`` or the health check exists in that
command's ``--help``; the documented default ports are the configuration's."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from functools import cache
from pathlib import Path

import pytest

from hardscore_server.config import ServerConfig

from server_process import ServerProcess

REPO = Path(__file__).resolve().parents[2]
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
SNIPPET_DOCS = [REPO / "README.md", REPO / "docs" / "api.md"]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
EXTERNAL_FLAGS = frozenset({  # flags of other tools the docs show (docker, helm, kubectl, pip,
    # perf_analyzer, the install script, the demo and benchmark scripts)
    "--build-arg", "--cert", "--create-namespace", "--dry", "--dry-run", "--flavor",
    "--from-file", "--from-literal", "--gpus", "--health-cmd", "--input-data", "--install",
    "--key", "--model", "--namespace", "--noise", "--protocol", "--raw", "--report", "--rm",
    "--set", "--shared-memory", "--start-server", "--streaming", "--seed"})


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


SNIPPETS = [(doc, i) for doc in SNIPPET_DOCS for i in range(len(python_blocks(doc)))]


@pytest.mark.parametrize(("doc", "index"), SNIPPETS,
                         ids=[f"{d.name}#{i}" for d, i in SNIPPETS])
def test_python_snippets_run_as_pasted(doc: Path, index: int, image_server: ServerProcess,
                                       tmp_path: Path) -> None:
    """They used undefined names (logits, labels, paths) and class names the default model
    lacks ("cat", "dog"): a user pasting them got NameError, then an error per label."""
    code = python_blocks(doc)[index]
    assert code.count("localhost:8001") == 1, "the snippet names the default address once"
    code = code.replace("localhost:8001", image_server.target)
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@cache
def helps() -> dict[str, str]:
    """``--help`` of every command the docs may name: hardscore and its subcommands,
    hardscore-server, hardscore-export, the health check, the default model's training
    script."""
    def help_of(*module_and_args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", *module_and_args, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    top = help_of("hardscore_client.cli")
    found = re.search(r"\{([a-z,-]+)\}", top)
    assert found is not None
    out = {"hardscore": top}
    for sub in found[1].split(","):
        out[f"hardscore {sub}"] = help_of("hardscore_client.cli", sub)
    out["hardscore-server"] = help_of("hardscore_server.main")
    out["hardscore-export"] = help_of("hardscore_server.tools.export")
    out["hardscore-ray-score"] = help_of("hardscore_server.tools.ray_scorer")
    out["health_probe"] = help_of("hardscore_server.tools.health_probe")
    script = subprocess.run([sys.executable, str(REPO / "server" / "train_default_model.py"),
                             "--help"], capture_output=True, text=True, timeout=60)
    assert script.returncode == 0, script.stderr
    out["train_default_model"] = script.stdout
    return out


def flags_of(command: str) -> set[str]:
    return set(FLAG.findall(helps()[command]))


def code_lines(text: str) -> list[str]:
    """Lines of code blocks (continuations joined) and inline code spans."""
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return lines


INVOCATION = re.compile(
    r"(?<![\w/.-])(hardscore-server|hardscore-export|hardscore-ray-score"
    r"|hardscore_server\.tools\.health_probe"
    r"|hardscore(?= [a-z]))((?: +(?![|;#)]|&&)\S+)*)")


def test_every_flag_the_docs_give_a_command_is_in_its_help() -> None:
    """An invocation's flags are its command's; the flag tables of docs/api.md (the client's
    commands) and docs/label-studio.md (hardscore label-studio) too; any other flag is one of
    these commands' or of a tool named in EXTERNAL_FLAGS."""
    subcommands = {c.split()[1] for c in helps() if " " in c}
    wrong: list[str] = []
    for doc in DOCS:
        text = doc.read_text()
        for line in code_lines(text):
            for match in INVOCATION.finditer(line.split(" # ")[0]):
                command, words = match[1], match[2].split()
                if command == "hardscore":
                    if not words or words[0] not in subcommands:
                        continue
                    command = f"hardscore {words[0]}"
                elif command.endswith("health_probe"):
                    command = "health_probe"
                for flag in FLAG.findall(" ".join(words)):
                    if flag not in flags_of(command):
                        wrong.append(f"{doc.name}: {command} has no {flag}: {line.strip()}")
        for row in re.findall(r"^\| `(--[^|]*)\|", text, re.M):
            scope = {"label-studio.md": ["hardscore label-studio"],
                     "api.md": [c for c in helps() if c.startswith("hardscore ")]}.get(doc.name)
            if scope is None:
                continue
            known = set().union(*(flags_of(c) for c in scope))
            wrong += [f"{doc.name}: table row names {flag}, which {', '.join(scope)} lack"
                      for flag in FLAG.findall(row) if flag not in known]
        known_anywhere = set().union(*(flags_of(c) for c in helps())) | EXTERNAL_FLAGS
        wrong += [f"{doc.name}: {flag} is no flag of hardscore's commands"
                  for flag in sorted(set(FLAG.findall(text)) - known_anywhere)]
    assert not wrong, "\n".join(wrong)


def test_documented_defaults_and_ports_are_the_configurations() -> None:
    """docs/configuration.md's settings table against ServerConfig's defaults (numbers and
    addresses), and the ports the README, the image and the health check name."""
    defaults = {f.name: f.default for f in fields(ServerConfig)}
    table = (REPO / "docs" / "configuration.md").read_text()
    checked = 0
    for names, documented in re.findall(r"^\| ((?:`\w+`(?: / )?)+) \| ([^|]+) \|", table,
                                        re.M):
        keys = re.findall(r"`(\w+)`", names)
        values = [v.strip() for v in documented.split(" / ")]
        if len(values) != len(keys):
            continue
        for key, value in zip(keys, values, strict=True):
            default = defaults[key]
            number = re.fullmatch(r"-?[\d,]+(?:\.\d+)?", value.split(" (")[0])
            if number and isinstance(default, (int, float)) and not isinstance(default, bool):
                assert float(number[0].replace(",", "")) == default, (key, value)
                checked += 1
            elif key.endswith("host"):
                assert value == default, (key, value)
                checked += 1
    assert checked >= 15, checked
    assert (defaults["http_port"], defaults["port"], defaults["metrics_port"]) == \
        (8000, 8001, 8002)
    readme = (REPO / "README.md").read_text()
    assert ("gRPC listens on port 8001, the same Open Inference Protocol over HTTP/REST "
            "(KServe V2) on 8000,\nPrometheus metrics on http://localhost:8002/metrics") in readme
    from hardscore_server.tools.health_probe import DEFAULT_PORT

    assert defaults["port"] == DEFAULT_PORT
    for doc in DOCS:  # every `docker run` publishes the three ports
        for line in code_lines(doc.read_text()):
            if line.lstrip().startswith("docker run") and " -p " in line:
                for port in (8000, 8001, 8002):
                    assert f"-p {port}:{port}" in line, (doc.name, line)
