"""Every `fedlab` command line in deploy/ (and the README's deployment sections) exists in
the CLI: parse each one with fedlab's own argparse parser, so the files cannot rot."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from fedlab.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMMANDS = {"server", "client", "provision", "check-data", "demo", "simulate", "report", "audit"}


def _dockerfile_argvs(path: Path) -> list[list[str]]:
    entry, cmd = None, None
    for line in path.read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            entry = json.loads(line.removeprefix("ENTRYPOINT "))
        if line.startswith("CMD "):
            cmd = json.loads(line.removeprefix("CMD "))
    assert entry == ["fedlab"], f"{path}: ENTRYPOINT must be [\"fedlab\"]"
    assert cmd, f"{path}: no CMD"
    return [cmd]


def _yaml_argvs(path: Path) -> list[list[str]]:
    out: list[list[str]] = []
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and isinstance(doc.get("services"), dict):  # compose
            for name, svc in doc["services"].items():
                if name.startswith("x-"):
                    continue
                build = svc.get("build", {})
                if isinstance(build, dict) and "dockerfile" in build:
                    assert (ROOT / build["dockerfile"]).is_file(), build["dockerfile"]
                assert isinstance(svc.get("command"), list), f"{path}: {name} has no command list"
                out.append(svc["command"])
            continue
        stack = [doc]
        while stack:  # Kubernetes: every container's args (the image's entrypoint is fedlab)
            node = stack.pop()
            if isinstance(node, dict):
                if "image" in node and "name" in node and ("args" in node or "command" in node):
                    if "args" in node and "command" not in node:
                        out.append(node["args"])
                    elif node["command"][0] == "fedlab":
                        out.append(node["command"][1:])
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return out


def _systemd_argvs(path: Path) -> list[list[str]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("ExecStart="):
            tokens = shlex.split(line.removeprefix("ExecStart=").replace("%i", "lab"))
            assert tokens[0].endswith("/fedlab"), line
            out.append(tokens[1:])
    assert out, f"{path}: no ExecStart"
    return out


# `fedlab ARGS`, `/opt/fedlab/bin/fedlab ARGS`, or an image whose entrypoint is fedlab
_FEDLAB = re.compile(r"(?:^|[\s(])(?:\S*/)?fedlab(?:-lab|-server)?(?::\S+)?\s+(?=[a-z])")


def _markdown_argvs(path: Path, sections: tuple[str, ...] = ()) -> list[list[str]]:
    text = path.read_text()
    if sections:  # only the named "## " sections
        parts = re.split(r"(?m)^## ", text)
        text = "\n".join(p for p in parts if p.startswith(sections))
    out = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            m = _FEDLAB.search(line)
            if not m or "$(" in line[m.end():]:
                continue
            rest = re.split(r"\s(?:#|&&|\|\||;|\|)\s?", line[m.end():])[0]
            argv = shlex.split(rest)
            if argv and argv[0] in COMMANDS:
                out.append(argv)
    return out


def _all() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix == ".Dockerfile":
            found += [(str(path), a) for a in _dockerfile_argvs(path)]
        elif path.suffix in (".yml", ".yaml"):
            found += [(str(path), a) for a in _yaml_argvs(path)]
        elif path.suffix == ".service":
            found += [(str(path), a) for a in _systemd_argvs(path)]
        elif path.suffix == ".md":
            found += [(str(path), a) for a in _markdown_argvs(path)]
    readme = ROOT / "README.md"
    found += [(f"{readme} (lab/host)", a) for a in
              _markdown_argvs(readme, ("For the coordinator", "For a partner lab",
                                      "For the aggregation host"))]
    return found


ALL = _all()


def test_files_are_found():
    where = {Path(p.split(" ")[0]).parent.name for p, _ in ALL}
    assert {"docker", "compose", "systemd", "kubernetes"} <= where, where
    used = {argv[0] for _, argv in ALL}
    assert {"server", "client", "provision", "check-data"} <= used, used


@pytest.mark.parametrize("where,argv", ALL, ids=[f"{Path(p).name}:{' '.join(a)[:60]}" for p, a in ALL])
def test_command_exists_in_the_cli(where, argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports unknown commands and flags this way
        pytest.fail(f"{where}: `fedlab {' '.join(argv)}` is not a valid command ({exc})")
    assert getattr(args, "func", None) is not None, f"{where}: `fedlab {' '.join(argv)}`"
