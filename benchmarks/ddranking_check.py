"""DD-Ranking's own evaluator (PyPI `ddranking`, not a ddpipe dependency) on one ddpipe set, on the CPU.

    PYTHONPATH=<where ddranking is installed> python benchmarks/ddranking_check.py \
        --data data/digits --set artifacts/digits/ipc10/distilled/sre2l --ipc 10 --full-hard 0.985 [--epochs 40]

Runs `LabelRobustScoreHard.compute_metrics` (hard labels: the one DD-Ranking metric that needs no teacher in
its own checkpoint format) on the set's folder as an ImageFolder, against DD-Ranking's own random draws of
data/<ds>/train. ddranking 0.2.0 knows only CIFAR-10/100, Tiny-ImageNet, ImageNet subsets and ImageNet-1K,
so digits goes through its Tiny-ImageNet branch (train/ and val/ ImageFolders; a 200-way head of which 10
classes are used, and its random draws are cut to those; ImageNet mean/std). Its full-data accuracy is
trained for 100 epochs from a table with no entry for this data; `--full-hard` hands it ddpipe's `full` hard
top-1 instead (its REAL_DATA_ACC_CACHE).
It prints ddranking's HLR, IOR and LRS as ddranking computes them (accuracies in percent, so α is in
points and its LRS leaves [0, 1]), and the LRS of the same HLR and IOR as fractions, DD-Ranking's
definition and ddpipe's.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", required=True, help="a distilled set folder whose class folders hold the images")
    parser.add_argument("--ipc", type=int, required=True)
    parser.add_argument("--full-hard", type=float, required=True, help="full data's hard-label top-1, a fraction")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-eval", type=int, default=1)
    parser.add_argument("--model", default="ConvNet-4-BN")
    args = parser.parse_args()

    import torch
    from torchvision import transforms
    import ddranking.metrics.hard_label as hard_label
    from ddranking.metrics import LabelRobustScoreHard

    torch.set_num_threads(1)
    meta = json.loads((Path(args.data) / "meta.json").read_text())
    size = meta["image_size"]
    tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406],
                                                                             [0.229, 0.224, 0.225])])
    hard_label.REAL_DATA_ACC_CACHE[f"TinyImageNet-{args.model}"] = 100 * args.full_hard
    with tempfile.TemporaryDirectory() as tmp:
        metric = LabelRobustScoreHard(
            dataset="TinyImageNet", real_data_path=args.data, ipc=args.ipc, model_name=args.model,
            data_aug_func="cutmix", aug_params={"beta": 1.0}, optimizer="sgd", lr_scheduler="step",
            step_size=args.epochs // 2, num_eval=args.num_eval, im_size=(size, size), num_epochs=args.epochs,
            real_batch_size=256, syn_batch_size=min(256, 10 * args.ipc), num_workers=0, device="cpu",
            random_data_format="image", random_data_path=f"{tmp}/random", save_path=f"{tmp}/scores.csv",
            custom_train_trans=tensor, custom_val_trans=tensor, eval_full_data=False)
        # its Tiny-ImageNet branch hard-codes 200 classes: DD-Ranking's random draws would sample the 190 empty ones
        classes = sum(1 for folder in metric.class_to_samples if folder)
        metric.num_classes, metric.class_to_samples = classes, metric.class_to_samples[:classes]
        # LabelRobustScoreHard appends each run's LRS twice, and its CSV writer then refuses the unequal columns:
        # the numbers are returned anyway, so the CSV is skipped
        hard_label.save_results = lambda results, path: None
        out = metric.compute_metrics(image_path=args.set, lrs_lambda=0.5)
    hlr, ior = out["hard_label_recovery_mean"] / 100, out["improvement_over_random_mean"] / 100
    alpha = 0.5 * ior - 0.5 * hlr
    print(json.dumps({
        "ddranking (percent)": {"hlr": out["hard_label_recovery_mean"], "ior": out["improvement_over_random_mean"],
                                "lrs": out["label_robust_score_mean"]},
        "same as fractions": {"hlr": hlr, "ior": ior,
                              "lrs": (np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1))},
    }, indent=1, default=float))


if __name__ == "__main__":
    main()
