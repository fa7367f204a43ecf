"""The ecosystem's front doors: the `ddpipe` command (stages/console.py) and dvc.yaml's `artifacts:`, which
`dvc artifacts get <repo> <name>` reads to fetch one teacher or set by name from a DVC remote."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tomllib

import pytest
import yaml

from stages import console
from stages.layout import dvc_yaml
from stages.pipeline import cli
from tests.conftest import REPO, dvc, git, stage_env


@pytest.fixture
def ddpipe(monkeypatch, capsys):
    """Run `ddpipe <args>` in this process → (exit code, stdout, stderr); what a command sets is put back."""
    import torch

    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(sys, "argv", ["ddpipe"])
    monkeypatch.setattr(cli, "PROG", None)

    def call(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            console.run(list(args))
            raise SystemExit(0)
        out, err = capsys.readouterr()
        return exited.value.code or 0, out, err

    yield call
    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, handler)


def test_the_entry_point_is_the_console():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"ddpipe": "stages.console:main"}


def test_help_lists_every_command_and_imports_none():
    probe = ("import sys\nfrom stages import console\nsys.argv = ['ddpipe', '--help']\ntry:\n    console.main()\n"
             "except SystemExit as e:\n    assert not e.code\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('stages', 'torch')))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=stage_env(), capture_output=True,
                            text=True, check=True)
    *usage, imported = result.stdout.strip().split("\n")
    assert imported == "['stages', 'stages.console']"  # the chosen command's module only: none for --help
    listed = [line.split()[0] for line in usage[usage.index("commands:") + 1:]]
    assert listed == ["verify", "import", "export", "preset", "report", "params", "dvc-yaml"] == list(console.COMMANDS)


def test_each_command_has_its_modules_help(ddpipe):
    for command, (module, _) in console.COMMANDS.items():
        code, out, _ = ddpipe(command, "--help")
        assert code == 0 and out.startswith(f"usage: ddpipe {command} "), (command, out[:200])
        first = (sys.modules[module].__doc__ or "").strip().split("\n")[0]
        assert " ".join(first.split()[:4]) in " ".join(out.split()), command  # the module's own description


def test_unknown_command_and_bad_argument_are_one_line(ddpipe):
    code, out, err = ddpipe("frobnicate", "x")
    assert code == 2 and out == ""
    assert err == ("error: ParamsError: ddpipe: unknown command 'frobnicate' (one of: verify, import, export, "
                   "preset, report, params, dvc-yaml)\n")
    code, _, err = ddpipe("verify")
    assert code == 2 and err == ("error: ParamsError: ddpipe verify: the following arguments are required: set "
                                 "(--help lists the arguments)\n")
    code, _, err = ddpipe()
    assert code == 2 and "commands:" in err


def test_params_prints_the_effective_recover_blocks(ddpipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: the ipc-vs-class-size check waits for prepare
    shared = yaml.safe_load((REPO / "params.yaml").read_text())["recover"]
    code, out, _ = ddpipe("params", "--params", str(REPO / "params.yaml"), "--section", "delt")
    assert code == 0
    delt = yaml.safe_load(out)
    assert list(delt) == ["delt"] and list(delt["delt"]["recover"]) == list(shared)
    assert delt["delt"]["recover"] == {**shared, "jitter": 0, "crop_min_scale": 0.5, "crop_schedule": "cosine"}
    code, out, _ = ddpipe("params", "--params", str(REPO / "params.yaml"))
    every = yaml.safe_load(out)
    assert code == 0 and every["sre2l"]["recover"] == {**shared, "r_bn": 1.0} and every["ipc"] == 10
    code, _, err = ddpipe("params", "--params", str(REPO / "params.yaml"), "--section", "nope")
    assert code == 2 and err.startswith("error: ParamsError: ") and "no section 'nope'" in err


def test_dvc_yaml_command_checks(ddpipe, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, _ = ddpipe("dvc-yaml", "--check")
    assert code == 0 and "match" in out


def test_artifacts_section_is_written_and_a_stale_one_is_seen(tmp_path):
    whole = dvc_yaml.DVC_YAML.read_text()
    without = re.sub(r"(?m)^# Named outputs.*\n(?:#.*\n)*artifacts:\n(?: .*\n)+\n?", "", whole)
    assert "artifacts:" not in without and len(without) < len(whole)
    target = tmp_path / "dvc.yaml"
    target.write_text(without)
    assert any(line.startswith("artifacts: missing ['teacher-convnet'") for line in dvc_yaml.differences(target))
    dvc_yaml.write(target)
    assert target.read_text() == whole  # put back at the end, comment and all

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace(
        "archs: [convnet, resnet18_modified]", "archs: [convnet, resnet18.a1_in1k]"))
    assert dvc_yaml.differences(target, params) == [
        "artifacts: missing ['teacher-resnet18-a1_in1k'], not made ['teacher-resnet18_modified'], changed [] "
        "(from teacher.archs and the method registry)"]
    dvc_yaml.write(target, params)
    assert dvc_yaml.differences(target, params) == []
    written = yaml.safe_load(target.read_text())["artifacts"]["teacher-resnet18-a1_in1k"]
    assert written["path"] == "artifacts/${dataset}/teachers/resnet18.a1_in1k" and written["type"] == "model"


def test_every_distilled_set_and_teacher_is_named():
    declared = yaml.safe_load(dvc_yaml.DVC_YAML.read_text())["artifacts"]
    assert list(declared) == ["teacher-convnet", "teacher-resnet18_modified", "random", "sre2l", "delt", "infer", "edc",
                              "d4m", "vlcp", "rded", "podd"]
    assert declared["podd"]["path"] == "artifacts/${dataset}/podd${podd.ipc}/distilled/podd"
    assert declared["delt"]["labels"] == ["delt", "distilled"] and declared["delt"]["type"] == "dataset"


# A tiny DVC project: its stage writes a small folder where the `delt` artifact points, whose content depends on
# ipc; dvc.yaml's artifacts section is the one ddpipe generates (paths interpolated from params).
STAGE = """stages:
  make:
    cmd: >-
      mkdir -p artifacts/${dataset}/ipc${ipc}/distilled/delt/0 &&
      printf 'ipc ${ipc}\\n' > artifacts/${dataset}/ipc${ipc}/distilled/delt/card.json &&
      printf 'image of ipc ${ipc}' > artifacts/${dataset}/ipc${ipc}/distilled/delt/0/0.png
    params: [dataset, ipc]
    outs:
      - artifacts/${dataset}/ipc${ipc}/distilled/delt
"""


def tiny_params(ipc: int) -> str:
    return f"dataset: tiny\nipc: {ipc}\npodd: {{ipc: 0.5}}\nteacher: {{archs: [convnet]}}\n"


def files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def release(project, ipc: int, version: str) -> dict[str, bytes]:
    """Make the set at `ipc`, commit, push to the remote, register `delt@<version>`; → the set's files."""
    (project / "params.yaml").write_text(tiny_params(ipc))
    dvc(project, "repro", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", f"ipc {ipc}")
    dvc(project, "push", "-q")
    git(project, "tag", "-a", f"delt@{version}", "-m", f"delt at ipc {ipc}")
    return files(project / f"artifacts/tiny/ipc{ipc}/distilled/delt")


def test_dvc_artifacts_get_fetches_a_set_by_name_from_the_remote(tmp_path):
    project, remote = tmp_path / "project", tmp_path / "remote"
    project.mkdir()
    git(project, "init", "-q")
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")
    dvc(project, "remote", "add", "-d", "store", str(remote))
    (project / "params.yaml").write_text(tiny_params(2))
    (project / "dvc.yaml").write_text(STAGE + "\n" + "\n".join(dvc_yaml.artifacts_lines(project / "params.yaml")))
    first = release(project, 2, "v1.0.0")
    second = release(project, 3, "v1.1.0")
    assert first["card.json"] == b"ipc 2\n" and second["0/0.png"] == b"image of ipc 3"
    # nothing left but git and the remote: the bytes must come from the remote
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "artifacts")

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    log = dvc(consumer, "artifacts", "get", str(project), "delt", "-o", "latest")
    assert "Downloaded 2 file(s)" in log
    assert files(consumer / "latest") == second  # the highest registered version, its path at that revision
    dvc(consumer, "artifacts", "get", str(project), "delt", "--rev", "v1.0.0", "-o", "older")
    assert files(consumer / "older") == first
    # a declared artifact with no registered version (no `<name>@v...` tag) is not found
    untagged = subprocess.run([sys.executable, "-m", "dvc", "artifacts", "get", str(project), "sre2l"], cwd=consumer,
                              env=stage_env(), capture_output=True, text=True)
    assert untagged.returncode != 0 and "Unable to find artifact 'sre2l'" in untagged.stderr
