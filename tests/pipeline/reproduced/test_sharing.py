"""Sharing distilled sets with real DVC remotes on this machine: push to a local remote and pull one set into
a fresh clone, evaluate it there without recomputing upstream; read-only HTTP from a loopback server;
`dvc import` / `dvc get` into another repository; a set whose files disagree with its card is refused.

The reproduced tiny project is this folder's conftest.py's, shared with test_repro.py and test_determinism.py."""
import functools
import http.server
import json
import re
import subprocess
import sys
import threading

import pytest

from tests.conftest import dvc, git, ran, run_stage, stage_env

DELT = "artifacts/digits/ipc3/distilled/delt"
SRE2L = "artifacts/digits/ipc3/distilled/sre2l"


def dvc_fails(project, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=stage_env(),
                            capture_output=True, text=True)
    assert result.returncode != 0, f"dvc {' '.join(args)} should have failed:\n{result.stdout}"
    return result.stdout + result.stderr


def cached_files(clone) -> int:
    return sum(1 for p in (clone / ".dvc" / "cache").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def pushed(reproduced, tmp_path_factory):
    """The reproduced tiny project with a default local remote (committed to its .dvc/config), pushed."""
    project, _ = reproduced
    remote = tmp_path_factory.mktemp("remote")
    dvc(project, "remote", "add", "-d", "store", str(remote))
    git(project, "commit", "-qam", "default remote")
    log = dvc(project, "push")
    assert re.search(r"\d+ files? pushed", log), log
    return project, remote


def test_pull_one_set_into_a_fresh_clone_and_evaluate_it(pushed, tmp_path):
    project, _ = pushed
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))

    dvc(clone, "pull", DELT)  # the one set, not the whole cache
    files = [p for p in (clone / DELT).rglob("*") if p.is_file()]
    assert len(files) == 30 + 2  # 30 images, SHA256SUMS, card.json
    assert cached_files(clone) == len(files) + 1  # + the directory listing; nothing else came
    assert not (clone / "artifacts" / "digits" / "teachers").exists() and not (clone / "data").exists()
    verified = run_stage(clone, "verify", DELT)
    assert "ok - delt on digits, ipc 3, 30 images of 10 classes, 30 files match SHA256SUMS" in verified.stdout

    # To evaluate it, fetch what evaluate reads (its soft labels, the teacher, the val data) and run only
    # evaluate: nothing upstream is recomputed, and the numbers are the ones the producer got.
    dvc(clone, "pull", "artifacts/digits/ipc3/soft_labels/delt", "artifacts/digits/teachers/convnet", "data/digits")
    log = dvc(clone, "repro", "--single-item", "--force", "evaluate@delt")
    assert ran(log) == {"evaluate@delt"}
    mine = json.loads((clone / "artifacts/digits/ipc3/metrics/delt.json").read_text())
    theirs = json.loads((project / "artifacts/digits/ipc3/metrics/delt.json").read_text())
    for protocol in theirs["protocols"]:
        assert mine["protocols"][protocol]["per_seed_top1"] == theirs["protocols"][protocol]["per_seed_top1"]

    # A pulled set whose files no longer match its card is refused, never evaluated.
    victim = sorted((clone / DELT / "4").iterdir())[0]
    victim.write_bytes(sorted((clone / DELT / "9").iterdir())[0].read_bytes())
    refused = dvc_fails(clone, "repro", "--single-item", "--force", "evaluate@delt")
    assert f"error: ArtifactError: {DELT}/4/{victim.name}: content differs from SHA256SUMS" in refused


def test_read_only_http_remote_from_a_loopback_server(pushed, tmp_path):
    project, remote = pushed
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(remote))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clone = tmp_path / "clone"
        git(tmp_path, "clone", "-q", str(project), str(clone))
        url = f"http://127.0.0.1:{server.server_address[1]}"
        dvc(clone, "remote", "add", "--local", "-d", "web", url)  # .dvc/config.local: not committed
        dvc(clone, "pull", SRE2L)
        assert "ok - sre2l on digits, ipc 3, 30 images" in run_stage(clone, "verify", SRE2L).stdout
        assert cached_files(clone) == 30 + 2 + 1
    finally:
        server.shutdown()
        server.server_close()


def test_import_and_get_one_set_into_another_repository(pushed, tmp_path):
    project, _ = pushed
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    git(consumer, "init", "-q")
    dvc(consumer, "init", "-q")
    (consumer / "sets").mkdir()  # dvc import writes sets/delt.dvc there; it does not make the folder
    dvc(consumer, "import", str(project), DELT, "-o", "sets/delt")
    record = (consumer / "sets" / "delt.dvc").read_text()
    assert f"url: {project}" in record and "rev_lock:" in record and f"path: {DELT}" in record
    assert "ok - delt on digits, ipc 3, 30 images" in run_stage(consumer, "verify", "sets/delt").stdout

    dvc(consumer, "get", str(project), "artifacts/digits/ipc3/distilled/random", "-o", "random")
    assert "ok - random on digits, ipc 3, 30 images" in run_stage(consumer, "verify", "random").stdout
    # `dvc get` copies without tracking: a copy whose card was damaged is refused, naming the file and the key
    card = json.loads((consumer / "random" / "card.json").read_text())
    del card["classes"]
    (consumer / "random" / "card.json").write_text(json.dumps(card))
    failed = run_stage(consumer, "verify", "random", check=False)
    assert failed.returncode == 2 and "error: ArtifactError: random/card.json: classes: Field required" in failed.stderr
