"""DD-Ranking's scores in the report (HLR, IOR, LRS, ARS), cross-checked against the `ddranking` package's own
compute_metrics when it is importable; random's per-seed draws; storage columns; the *_best fields."""
import json
from pathlib import Path

import numpy as np
import pytest

from stages.report import collect, markdown
from stages.training.loop import History

# per-seed top-1 of three students; random seed k trained on draw k
ACC = {
    ("random", "fkd"): [0.90, 0.93, 0.88], ("random", "hard"): [0.74, 0.78, 0.70],
    ("random", "noaug"): [0.80, 0.85, 0.79],
    ("sre2l", "fkd"): [0.77, 0.76, 0.78], ("sre2l", "hard"): [0.43, 0.40, 0.45],
    ("sre2l", "noaug"): [0.60, 0.62, 0.58],
    ("full", "fkd"): [0.99, 0.98, 0.99], ("full", "hard"): [0.985, 0.98, 0.99],
    ("full", "noaug"): [0.97, 0.97, 0.96],
}


def write_metrics(folder, students=("convnet",)):
    folder.mkdir(parents=True, exist_ok=True)
    for method in ("random", "sre2l", "full"):
        protocols = {}
        for arch_index, arch in enumerate(students):
            protocols[arch] = {}
            for (m, protocol), seeds in ACC.items():
                if m != method:
                    continue
                seeds = [s - 0.01 * arch_index for s in seeds]
                stat = {"mean": float(np.mean(seeds)), "std": float(np.std(seeds, ddof=1))}
                protocols[arch][protocol] = {"top1": stat, "top5": stat, "top1_best": stat, "top5_best": stat,
                                             "per_seed_top1": seeds}
        (folder / f"{method}.json").write_text(json.dumps({
            "method": method, "ipc": None if method == "full" else 1, "images": 10, "pixels": 2560, "bytes": 1000,
            "draws": 3 if method == "random" else None, "train_bytes": 100000,
            "label_bytes": {"fkd": 5000, "hard": 0, "noaug": 400}, "student": students[0], "epochs": 5,
            "seeds": 3, "teacher_fidelity": 1.0, "intra_class_cosine": None,
            "protocols": protocols[students[0]], "students": protocols}))


def expected_lrs(method, protocol, w=0.5):
    ior = np.array(ACC[method, protocol]) - np.array(ACC["random", protocol])
    hlr = np.array(ACC["full", "hard"]) - np.array(ACC[method, "hard"])
    a = w * ior - (1 - w) * hlr
    return (np.exp(a) - np.exp(-1)) / (np.exp(1) - np.exp(-1))


def test_scores_columns(tmp_path):
    write_metrics(tmp_path / "m")
    table = collect([tmp_path / "m"], 0.5, 0.5).set_index(["method", "protocol"])
    row = table.loc["sre2l", "fkd"]
    assert row.hlr == pytest.approx(np.mean(np.array(ACC["full", "hard"]) - ACC["sre2l", "hard"]))
    assert row.gain_vs_random == pytest.approx(np.mean(ACC["sre2l", "fkd"]) - np.mean(ACC["random", "fkd"]))
    assert row.lrs == pytest.approx(expected_lrs("sre2l", "fkd").mean())
    assert row.lrs_std == pytest.approx(expected_lrs("sre2l", "fkd").std(ddof=1))
    beta = 0.5 * (np.array(ACC["sre2l", "fkd"]) - ACC["random", "fkd"]) + 0.5 * (
        np.array(ACC["sre2l", "noaug"]) - ACC["random", "noaug"])
    assert row.ars == pytest.approx(((np.exp(beta) - np.exp(-1)) / (np.exp(1) - np.exp(-1))).mean())
    assert np.isnan(table.loc["sre2l", "hard"].ars)  # ARS: only for the teacher-labelled, augmented protocols
    assert table.loc["random", "fkd"].gain_vs_random == 0
    # storage: one set's images plus the protocol's labels, against the full train set
    assert row.budget_fraction == pytest.approx((1000 + 5000) / 100000)
    assert table.loc["sre2l", "hard"].budget_fraction == pytest.approx(1000 / 100000)
    text = markdown(table.reset_index(), "t")
    assert "over 3 independent draws" in text and "Students across architectures" not in text


def test_students_table(tmp_path):
    write_metrics(tmp_path / "m", students=("convnet", "resnetap10"))
    table = collect([tmp_path / "m"])
    row = table[(table.method == "sre2l") & (table.protocol == "fkd")].iloc[0]
    assert row.student_resnetap10 == pytest.approx(row.student_convnet - 0.01)
    assert row.top1_arch_mean == pytest.approx(row.student_convnet - 0.005)
    assert row.top1 == row.student_convnet  # the main table is the first student's
    assert "| method | protocol | convnet | resnetap10 | mean |" in markdown(table, "t")


def test_best_fields_mean_what_they_say():
    h = History(epochs=[1, 2, 3], top1=[0.5, 0.8, 0.7], top5=[0.9, 0.92, 0.97], loss=[1, 1, 1])
    s = h.summary()
    assert (s["top1_best"], s["top5_best"], s["best_epoch"], s["top5"]) == (0.8, 0.97, 2, 0.97)


class Runs:
    """Hands ddranking's compute_metrics our accuracies in the order it asks for them, one run per seed."""

    def __init__(self, queue):
        self.queue = list(queue)

    def __call__(self, *args, **kwargs):
        return self.queue.pop(0), 0.01


def test_lrs_and_ars_equal_ddrankings_own(tmp_path, monkeypatch):
    """ddranking's LabelRobustScoreSoft / AugmentationRobustScore.compute_metrics, fed the same per-seed
    accuracies (as fractions: DD-Ranking defines α, β in [-1, 1]), give the report's LRS and ARS."""
    metrics = pytest.importorskip("ddranking.metrics")
    write_metrics(tmp_path / "m")
    table = collect([tmp_path / "m"], 0.5, 0.5).set_index(["method", "protocol"])
    seeds = range(3)

    lrs = object.__new__(metrics.LabelRobustScoreSoft)
    vars(lrs).update(soft_label_mode="M", ipc=1, num_classes=10, num_eval=3, eval_full_data=True, use_dist=False,
                     rank=0, save_path=str(tmp_path / "lrs.csv"))
    hard = [x for k in seeds for x in (ACC["sre2l", "hard"][k], ACC["full", "hard"][k])]
    soft = [x for k in seeds for x in (ACC["sre2l", "fkd"][k], ACC["random", "fkd"][k])]
    monkeypatch.setattr(lrs, "_compute_hard_label_metrics_helper", Runs(hard), raising=False)
    monkeypatch.setattr(lrs, "_compute_soft_label_metrics_helper", Runs(soft), raising=False)
    monkeypatch.setattr(lrs, "_get_random_data_helper", lambda eval_iter: ("random", None, None), raising=False)
    theirs = lrs.compute_metrics(image_path="syn", lrs_lambda=0.5)
    assert theirs["label_robust_score_mean"] == pytest.approx(table.loc["sre2l", "fkd"].lrs)
    assert theirs["hard_label_recovery_mean"] == pytest.approx(table.loc["sre2l", "fkd"].hlr)
    assert theirs["improvement_over_random_mean"] == pytest.approx(table.loc["sre2l", "fkd"].gain_vs_random)

    ars = object.__new__(metrics.AugmentationRobustScore)
    vars(ars).update(label_type="soft", soft_label_mode="M", ipc=1, num_classes=10, num_eval=3, use_dist=False,
                     rank=0, save_path=str(tmp_path / "ars.csv"))
    with_aug = [x for k in seeds for x in (ACC["sre2l", "fkd"][k], ACC["random", "fkd"][k])]
    without = [x for k in seeds for x in (ACC["sre2l", "noaug"][k], ACC["random", "noaug"][k])]
    monkeypatch.setattr(ars, "_compute_with_aug_metrics_helper", Runs(with_aug), raising=False)
    monkeypatch.setattr(ars, "_compute_without_aug_metrics_helper", Runs(without), raising=False)
    monkeypatch.setattr(ars, "_get_random_data_helper", lambda eval_iter: ("random", None, None, None),
                        raising=False)
    theirs = ars.compute_metrics(image_path="syn", ars_lambda=0.5)
    assert theirs["augmentation_robust_score_mean"] == pytest.approx(table.loc["sre2l", "fkd"].ars)


@pytest.mark.slow
def test_random_draws_students_and_noaug_end_to_end(prepared):
    """baseline@random writes one draw per seed (same class balance, different images), relabel labels each draw,
    evaluate trains seed k on draw k with every student and the noaug protocol, and counts label bytes."""
    from tests.conftest import run_stage, workdir

    folder = workdir(prepared, "fairness", {"evaluate": {"students": ["convnet", "resnetap10"], "epochs": 4,
                                                         "protocols": ["fkd", "hard", "noaug"]},
                                            "models": {"resnetap10": {"width": 8, "norm": "instance"}}})
    out = "artifacts/digits/ipc3"
    run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", f"{out}/distilled/random")
    card = json.loads((folder / out / "distilled/random/card.json").read_text())
    assert card["draws"] == 2 and card["num_images"] == 30
    draws = [sorted(p.relative_to(folder / out / f"distilled/random/draw{k}").as_posix()
                    for p in (folder / out / f"distilled/random/draw{k}").rglob("*.png")) for k in range(2)]
    assert [len(d) for d in draws] == [30, 30] and draws[0] != draws[1]
    assert {p.split("/")[0] for p in draws[0]} == {p.split("/")[0] for p in draws[1]}
    teacher = str(prepared / "artifacts/digits/teachers/convnet")
    run_stage(folder, "relabel", "--set", f"{out}/distilled/random", "--teacher", teacher, "--data", "data/digits",
              "--epochs", "4", "--out", f"{out}/soft_labels/random")
    labelled = [json.loads((folder / out / f"soft_labels/random/draw{k}/fkd.json").read_text()) for k in range(2)]
    assert [f["set"]["draw"] for f in labelled] == [0, 1] and [f["num_images"] for f in labelled] == [30, 30]
    assert labelled[0]["set"]["paths"] != labelled[1]["set"]["paths"]
    run_stage(folder, "evaluate", "--set", f"{out}/distilled/random", "--labels", f"{out}/soft_labels/random",
              "--teacher", teacher, "--data", "data/digits", "--epochs", "4", "--out", f"{out}/metrics/random.json")
    m = json.loads((folder / out / "metrics/random.json").read_text())
    assert set(m["students"]) == {"convnet", "resnetap10"} and m["protocols"] == m["students"]["convnet"]
    assert set(m["protocols"]) == {"fkd", "hard", "noaug"} and m["draws"] == 2
    assert m["label_bytes"]["hard"] == 0 and m["label_bytes"]["noaug"] == 30 * 10 * 4
    assert m["label_bytes"]["fkd"] > 0 and m["train_bytes"] > m["bytes"] > 0


def test_report_run_is_a_typed_function_tests_call_in_process(tmp_path, monkeypatch, capsys):
    """report.run(params, ...) in this process: the table it returns is results.csv (also at the IPC-free
    path), summary.json holds its scores, and results.md is printed."""
    import pandas as pd

    from stages import report
    from stages.pipeline import params
    from tests.conftest import TINY, write_params

    write_metrics(tmp_path / "m")
    (tmp_path / "data" / "digits").mkdir(parents=True)
    (tmp_path / "data" / "digits" / "classes.json").write_text(json.dumps([str(c) for c in range(10)]))
    (tmp_path / "sets").mkdir()
    write_params(tmp_path, TINY)
    monkeypatch.chdir(tmp_path)
    p = params.load(tmp_path / "params.yaml", tmp_path / "data")
    table = report.run(p, [Path("m")], [Path("sets")], Path("data/digits"), Path("report"), Path("summary.json"),
                       Path("results.csv"))
    assert (tmp_path / "results.csv").read_bytes() == (tmp_path / "report" / "results.csv").read_bytes()
    written = pd.read_csv(tmp_path / "results.csv")
    assert list(written.columns) == list(table.columns)
    assert list(zip(written.method, written.protocol)) == list(zip(table.method, table.protocol))
    for column in ("top1", "top1_std", "gain_vs_random", "hlr", "lrs", "ars", "budget_fraction"):
        np.testing.assert_allclose(written[column], table[column], atol=1e-6)
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = table.set_index(["method", "protocol"]).loc["sre2l", "fkd"]
    assert summary["ipc"] == 1 and summary["sre2l"]["fkd"]["lrs"] == round(row.lrs, 4)
    assert summary["sre2l"]["fkd"]["lrs"] == round(expected_lrs("sre2l", "fkd").mean(), 4)
    assert (tmp_path / "report" / "accuracy.png").stat().st_size > 0
    assert capsys.readouterr().out.startswith("# digits, IPC 1\n")
