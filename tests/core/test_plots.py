"""`dvc plots show` / `dvc plots diff` on real (tiny) stage outputs, opened in a headless Chromium kept off the
network: every plot renders, every image loads, and a screenshot is kept as a test artifact."""
from __future__ import annotations

import html as html_module
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, dvc, git, merge, run_stage, stage_env, workdir, write_params

# Two sets are enough to exercise colours and panels: the random subset (at two IPCs, for the IPC axis) and the
# full train set; two protocols keep it fast.
PARAMS = {"evaluate": {"protocols": ["fkd", "hard"], "eval_points": 3}}
ART = "artifacts/digits"
ARTIFACT_DIR = Path(os.environ.get("DDPIPE_TEST_ARTIFACTS", REPO / "test-artifacts"))


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def evaluate(project: Path, ipc_dir: str, name: str) -> None:
    """baseline → relabel → evaluate of one set, with the arguments dvc.yaml gives them."""
    epochs = str(TINY["evaluate"]["full_epochs"] if name == "full" else TINY["evaluate"]["epochs"])
    where = f"{ART}/{ipc_dir}"
    run_stage(project, "baseline", name, "--data", "data/digits", "--out", f"{where}/distilled/{name}")
    common = ("--teacher", f"{ART}/teachers/convnet", "--data", "data/digits", "--epochs", epochs)
    run_stage(project, "relabel", "--set", f"{where}/distilled/{name}", *common, "--out", f"{where}/soft_labels/{name}")
    run_stage(project, "evaluate", "--set", f"{where}/distilled/{name}", "--labels", f"{where}/soft_labels/{name}",
              *common, "--out", f"{where}/metrics/{name}.json", "--curves", f"{where}/curves/{name}.csv")


def report(project: Path, ipc: int) -> None:
    run_stage(project, "report", "--metrics", f"{ART}/ipc{ipc}/metrics", f"{ART}/full/metrics",
              "--sets", f"{ART}/ipc{ipc}/distilled", f"{ART}/full/distilled", "--data", "data/digits",
              "--out", f"{ART}/ipc{ipc}/report", "--summary", f"{ART}/summary.json", "--table", f"{ART}/results.csv")


@pytest.fixture(scope="module")
def plotted(prepared) -> Path:
    """A git + DVC project with the shipped dvc.yaml, .dvc/config and templates, and two commits of real outputs
    (IPC 3, then IPC 2), committed to git directly so that `dvc plots diff` can read both revisions."""
    project = workdir(prepared, "plots", PARAMS)
    (project / ART).mkdir(parents=True)
    (project / ART / "teachers").symlink_to(prepared / ART / "teachers")
    shutil.copytree(prepared / ART / "teacher_curves", project / ART / "teacher_curves")
    run_stage(project, "teacher", "--arch", "resnet18_modified", "--data", "data/digits", "--out", "scratch/teacher",
              "--curves", f"{ART}/teacher_curves/resnet18_modified.csv")  # every arch in teacher.archs has its plot
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    git(project, "init", "-q")
    dvc(project, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", project / ".dvc" / "plots")
    run_stage(project, "plots_page", "--out", "artifacts/plots_page.html")
    evaluate(project, "full", "full")
    for ipc in (3, 2):
        write_params(project, merge(TINY, {**PARAMS, "ipc": ipc}))
        evaluate(project, f"ipc{ipc}", "random")
        report(project, ipc)
        git(project, "add", "-f", "params.yaml", "dvc.yaml", ".dvc/config", ".dvc/plots", ART, f":!{ART}/teachers")
        git(project, "commit", "-qm", f"ipc {ipc}")
    return project


def test_student_curves_file(plotted):
    lines = (plotted / ART / "ipc2" / "curves" / "random.csv").read_text().splitlines()
    assert lines[0] == "method,protocol,seed,epoch,top1,top5,loss"
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    # every protocol x seed x validation point, and the last point is the metrics file's final top-1
    assert len(rows) == 2 * TINY["evaluate"]["seeds"] * 3
    metrics = json.loads((plotted / ART / "ipc2" / "metrics" / "random.json").read_text())
    for protocol, result in metrics["protocols"].items():
        last = [float(r["top1"]) for r in rows if r["protocol"] == protocol and r["epoch"] == str(30)]
        assert last == pytest.approx(result["per_seed_top1"])


def plot_values(project: Path, *command: str) -> dict[str, list[dict]]:
    """The data points DVC hands each plot (JSON output of `dvc plots show/diff`)."""
    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", *command, "--json"], cwd=project, env=stage_env(),
                           capture_output=True, text=True)  # stdout only: DVC warns about absent sets on stderr
    assert shown.returncode == 0, shown.stderr
    out = json.loads(shown.stdout)
    return {plot_id: [v for entry in entries if entry["type"] == "vega" for v in entry["content"]["data"]["values"]]
            for plot_id, entries in out["data"].items()}


def test_plots_diff_puts_both_ipcs_on_one_axis(plotted):
    values = plot_values(plotted, "diff", "HEAD~1", "HEAD")
    points = {(v["rev"], v["method"], v["protocol"], v["ipc"]) for v in values["accuracy vs IPC"]}
    assert {("HEAD~1", "random", p, "3") for p in ("fkd", "hard")} <= points
    assert {("HEAD", "random", p, "2") for p in ("fkd", "hard")} <= points
    assert ("HEAD", "full", "fkd", "all") in points  # in the data, left off the IPC axis by the template
    # Student curves: their paths depend on ipc, and DVC reads a plot's paths from one revision, so they are
    # compared across experiments at the same IPC; the workspace has every set and protocol.
    curves = {(v["rev"], v["method"], v["protocol"]) for v in plot_values(plotted, "show")["student training loss"]}
    assert curves == {("workspace", m, p) for m in ("random", "full") for p in ("fkd", "hard")}


def render(check: Path, page: Path, screenshot: Path, browser: str) -> str:
    """The DOM of `check` after rendering, and a screenshot of `page`, both loaded with every host resolving to
    nothing and a closed port as the proxy: a page that needs the network renders nothing here."""
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             f"--user-data-dir={page.parent / 'chromium-profile'}", "--hide-scrollbars", "--window-size=1400,3600",
             "--virtual-time-budget=20000", "--allow-file-access-from-files"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox on
    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([browser, *flags, *extra], capture_output=True, text=True, timeout=120)

    dom = run("--dump-dom", check.as_uri())
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    shot = run(f"--screenshot={screenshot}", page.as_uri())
    assert shot.returncode == 0 and screenshot.stat().st_size > 0, shot.stderr[-2000:]
    return dom.stdout


# Runs in the page once it has loaded and Vega has had time to render: what each vega container holds and
# whether each image decoded, written into the DOM for --dump-dom.
CHECK = """<script>
setTimeout(() => {
  const plots = IDS.map(id => {
    const svg = document.getElementById(id).querySelector("svg.marks");
    return {id, svg: !!svg, marks: svg ? svg.querySelectorAll("path, line, rect").length : 0,
            text: svg ? svg.textContent : ""};
  });
  const images = [...document.images].map(i => ({src: i.getAttribute("src"),
                                                 loaded: i.complete && i.naturalWidth > 0}));
  const out = document.createElement("pre");
  out.id = "ddpipe-check";
  out.textContent = JSON.stringify({plots, images});
  document.body.appendChild(out);
}, 10000);
</script>
"""


@pytest.mark.skipif(chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium), "
                                               "which the offline rendering check needs")
def test_plots_page_renders_offline_in_chromium(plotted):
    dvc(plotted, "plots", "show")
    page = plotted / "dvc_plots" / "index.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page fetches from the network"
    # the teacher stage's plot (one per arch in teacher.archs, titled by its file), then dvc.yaml's plots
    expected = [f"{ART}/teacher_curves/convnet.csv", f"{ART}/teacher_curves/resnet18_modified.csv",
                "student validation top-1", "student training loss", "accuracy vs IPC"]
    check = page.with_name("check.html")
    ids = re.findall(r"vegaEmbed\('#([^']+)'", html)  # DVC's per-plot script: vegaEmbed('#<id>', spec)
    assert len(ids) == len(expected), ids
    end = html.rindex("</body>")  # the last one: the inlined Vega bundle has the string "</body>" in it too
    check.write_text(html[:end] + CHECK.replace("IDS", json.dumps(ids)) + html[end:])
    screenshot = ARTIFACT_DIR / "plots.png"
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    dom = render(check, page, screenshot, chromium())
    print(f"\nscreenshot of `dvc plots show`: {screenshot}")
    found = re.search(r'<pre id="ddpipe-check">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run: " + dom[-2000:]
    result = json.loads(html_module.unescape(found.group(1)))
    plots = {p["id"]: p for p in result["plots"]}
    for plot in plots.values():
        assert plot["svg"] and plot["marks"] > 10, plot  # axes, lines, points: drawn, not an empty frame
    text = {name: next(p["text"] for p in plots.values() if name in p["text"]) for name in expected}
    for name in ("student validation top-1", "student training loss"):
        assert all(word in text[name] for word in ("random", "full", "fkd", "hard")), text[name]
    # the full set has no IPC: in the data, off the IPC axis
    assert "random" in text["accuracy vs IPC"] and "full" not in text["accuracy vs IPC"]
    images = result["images"]
    assert len(images) == 3 and all(i["loaded"] for i in images), images  # accuracy.png and two grids


def test_plots_page_run_is_a_typed_function_tests_call_in_process(tmp_path, capsys):
    """plots_page.run(out) in this process: the page, with dvc-render's placeholders and the bundle inlined."""
    from stages import plots_page

    out = tmp_path / "page.html"
    size = plots_page.run(out)
    page = out.read_text(encoding="utf-8")
    assert size == out.stat().st_size > 100_000
    assert "{plot_divs}" in page and "{refresh_tag}" in page and "{scripts}" not in page
    assert "window.vegaEmbed" in page and "<script src" not in page
    assert capsys.readouterr().out == f"plots_page: {out} ({size / 1e6:.1f} MB)\n"
    assert not list(tmp_path.glob(".page.html*"))
