"""The trial's training loop against a bare PyTorch loop: same model, batch, data, device.

    python -m bench.loop [--quick] [--batch 64] [--threads 1] [--rounds N]

ours  = tuning.trial.trainable.train_epoch over a DeviceSplit (uint8 on the device, converted,
        optionally augmented and normalized per batch, loss/accuracy kept on the device)
bare  = the loop a user would write: the split already as normalized float32 on the
        device, randperm, index, forward, cross-entropy, backward, step

Ratio = ours / bare images per second, the median over adjacent (ours, bare) pairs: the
variants alternate (ABBA), so load from other processes hits both alike. Target >= 0.95.

Also shown: ours with the demo's augments (their cost), and the rest of a trial's epoch
(evaluate on the valid split, the checkpoint file) per training epoch.

CPU: the demo digits theme (32 px, grayscale), ResNet18, torch threads = a trial's CPUs
(1 by default). CUDA: the same, plus the setting of
../shared/anchors/h100-resnet-bare-pytorch.json (ResNet18, 32 px RGB, batch 512, fp32,
data on the GPU), compared with that anchor.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Workspace, emit, machine_info, median, parser, print_machine, quiet_logs, table

TARGET = 0.95
ANCHOR = REPO.parent / "shared" / "anchors" / "h100-resnet-bare-pytorch.json"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_variants(split, *, device, model_name: str, num_classes: int, in_channels: int,
                  batch: int, augments, limit: int | None, lr: float = 1e-3):
    """Each variant: a fresh model/optimizer from the same seed, and a function that runs
    one epoch over the same `limit` training images and returns images/s."""
    import torch
    import torch.nn.functional as F

    from tuning.config.params import TrainingParams
    from tuning.data import Split
    from tuning.trial.batches import channel_stats
    from tuning.trial.model import build_model
    from tuning.trial.trainable import DeviceSplit, make_optimizer, train_epoch

    if limit is not None and limit < len(split.labels):
        split = Split(images=split.images[:limit], labels=split.labels[:limit],
                      sources=split.sources[:limit])
    n = len(split.labels)

    def fresh(fused: bool | None = None):
        """ours: the optimizer train_trial makes; bare: torch's default Adam (or fused)."""
        torch.manual_seed(0)
        model = build_model(model_name, num_classes=num_classes,
                            in_channels=in_channels).to(device)
        if fused is None:
            return model, make_optimizer(TrainingParams(training={"optimizer": "Adam",
                                                                  "learning_rate": lr}), model)
        return model, torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)

    ours_split = DeviceSplit(split, device)
    mean, std = channel_stats(ours_split.images)
    # The bare loop's data: normalized float32 once, up front (4x the memory of uint8).
    bare_x = ((ours_split.images.float() / 255) - mean) / std
    bare_y = ours_split.labels

    def ours_runner(augment_settings):
        model, opt = fresh()
        gen = torch.Generator().manual_seed(0)

        def epoch() -> tuple[float, float]:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            train_epoch(model, opt, ours_split, mean, std, batch_size=batch,
                        augments=augment_settings, generator=gen)   # ends in .item(): synced
            return time.perf_counter() - t0, time.process_time() - c0
        return epoch, model, opt

    def bare_runner(fused: bool = False):
        model, opt = fresh(fused=fused)
        gen = torch.Generator().manual_seed(0)

        def epoch() -> tuple[float, float]:
            model.train()
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            order = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                if idx.numel() < 2:
                    continue
                loss = F.cross_entropy(model(bare_x[idx]), bare_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            _sync(device)
            return time.perf_counter() - t0, time.process_time() - c0
        return epoch, model, opt

    variants = {"ours": ours_runner(None)[0], "bare": bare_runner()[0],
                "bare (fused Adam)": bare_runner(fused=True)[0]}
    if augments is not None:
        variants["ours+augments"] = ours_runner(augments)[0]
    return variants, n, (ours_split, mean, std)


def run_pairs(variants: dict[str, Any], rounds: int, warmup: int = 1
              ) -> dict[str, list[tuple[float, float]]]:
    """(wall s, CPU s) per measured epoch and variant; the order alternates (ABC CBA ...)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            results[name].append(variants[name]())
    return results


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b: the rounds were taken side by side."""
    return median(x / y for x, y in zip(a, b))


def epoch_extras(valid, mean, std, *, device, model_name, num_classes, in_channels,
                 rounds: int) -> dict[str, float]:
    """What a trial does per epoch besides training: evaluate, and the checkpoint file."""
    import torch

    from tuning.config.params import TrainingParams
    from tuning.trial.model import build_model
    from tuning.trial.trainable import evaluate, make_optimizer, save_checkpoint

    torch.manual_seed(0)
    model = build_model(model_name, num_classes=num_classes, in_channels=in_channels).to(device)
    opt = make_optimizer(TrainingParams(training={"optimizer": "Adam"}), model)
    # One step so that Adam's state (2 tensors per parameter) exists, as after an epoch.
    model(valid.images[:8].float()).sum().backward()
    opt.step()
    eval_s, save_s, size = [], [], 0
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        evaluate(model, valid, mean, std)
        eval_s.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            save_checkpoint(Path(folder), model, opt, 1, mean=mean, std=std)
            save_s.append(time.perf_counter() - t0)
            size = sum(p.stat().st_size for p in Path(folder).iterdir())
    return {"evaluate_valid_s": median(eval_s), "valid_images": len(valid),
            "checkpoint_save_s": median(save_s), "checkpoint_mb": size / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64, help="batch size (64, a demo choice)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 = what a trial with resources.cpu: 1 uses)")
    p.add_argument("--rounds", type=int, help="measured epochs per variant (quick 6, else 12)")
    p.add_argument("--limit", type=int,
                   help="training images per measured epoch (CPU: 320 quick, 640 full; "
                        "CUDA: the whole split)")
    p.add_argument("--model", default="ResNet18")
    args = p.parse_args(argv)
    quiet_logs()
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    rounds = args.rounds or (6 if args.quick else 12)
    limit = args.limit or ((320 if args.quick else 640) if device.type == "cpu" else None)
    # On a shared CPU machine the wall clock mostly measures the other processes' load;
    # the process's CPU time measures the loop. Both are shown; CPU time decides on CPU.
    clock = "cpu" if device.type == "cpu" else "wall"
    print(f"bench.loop: {args.model}, batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} CPU thread(s), {rounds} measured epochs per variant "
          f"of {limit or 'all'} images; ratio on {clock} time")
    print_machine(info)

    from tuning.data import prepare_data
    from tuning.data.augment import AugmentSettings
    from tuning.study import preprocess_settings
    from tuning.trial.trainable import DeviceSplit

    rows, cases = [], []
    with Workspace("loop", keep=args.keep) as ws:
        ws.setup_django()
        theme = ws.demo_theme()
        config = ws.load_config(ws.configs(), theme_id=theme.id)
        with contextlib.redirect_stdout(io.StringIO()):
            data = prepare_data(theme, preprocess_settings(config.params),
                                cache_dir=ws.root / "cache")
        a = config.augments
        augments = AugmentSettings(horizontal_flip=a.horizontal_flip,
                                   vertical_flip=a.vertical_flip,
                                   random_crop_padding=a.random_crop_padding,
                                   brightness=a.brightness, contrast=a.contrast)
        settings = [("demo digits 32px gray", data.train, data.valid, theme.num_classes,
                     config.params.data.channels, args.batch, limit, augments)]
        if device.type == "cuda":
            settings.append(_anchor_setting())
        for (label, train, valid, classes, channels, batch, lim, aug) in settings:
            variants, n, (_, mean, std) = make_variants(
                train, device=device, model_name=args.model, num_classes=classes,
                in_channels=channels, batch=batch, augments=aug, limit=lim)
            results = run_pairs(variants, rounds)
            wall = {k: [n / w for w, _ in v] for k, v in results.items()}
            cpu = {k: [n / c for _, c in v] for k, v in results.items()}
            primary = cpu if clock == "cpu" else wall
            case = {"setting": label, "batch": batch, "images_per_epoch": n, "clock": clock,
                    "img_s_wall": {k: median(v) for k, v in wall.items()},
                    "img_per_cpu_s": {k: median(v) for k, v in cpu.items()},
                    "ratio": paired_ratio(primary["ours"], primary["bare"]),
                    "ratio_wall": paired_ratio(wall["ours"], wall["bare"]),
                    "ratio_cpu": paired_ratio(cpu["ours"], cpu["bare"]),
                    "ratio_vs_bare_fused": paired_ratio(primary["ours"],
                                                        primary["bare (fused Adam)"]),
                    "raw_s": results}
            if "ours+augments" in primary:
                case["augments_cost"] = 1 - paired_ratio(primary["ours+augments"],
                                                         primary["ours"])
            case["epoch_extras"] = epoch_extras(
                DeviceSplit(valid, device), mean, std, device=device, model_name=args.model,
                num_classes=classes, in_channels=channels, rounds=max(2, rounds // 3))
            case["train_epoch_s_full_split"] = len(train.labels) / median(wall["ours"])
            cases.append(case)
            for name in results:
                rows.append([label, batch, name, median(wall[name]), median(cpu[name]),
                             f"{paired_ratio(wall[name], wall['bare']):.3f}",
                             f"{paired_ratio(cpu[name], cpu['bare']):.3f}"])

    print()
    print(table(["setting", "batch", "loop", "img/s (wall)", "img/CPU-s", "vs bare (wall)",
                 "vs bare (CPU)"], rows,
                title="training throughput, medians over epochs; ratios = median of "
                      "side-by-side epochs"))
    print()
    extra_rows = []
    for c in cases:
        e = c["epoch_extras"]
        extra_rows.append([c["setting"], c["train_epoch_s_full_split"], e["evaluate_valid_s"],
                           e["valid_images"], e["checkpoint_save_s"], e["checkpoint_mb"]])
    print(table(["setting", "train epoch s (full split)", "evaluate valid s", "valid imgs",
                 "checkpoint save s", "checkpoint MB"], extra_rows,
                title="the rest of a trial's epoch (Ray then copies the checkpoint once more)"))
    anchor_note = None
    if device.type == "cuda" and ANCHOR.exists():
        anchor = json.loads(ANCHOR.read_text())
        ref = next(r["img_s"] for r in anchor["single"] if r["model"] == "resnet18"
                   and r["size"] == 32 and r["batch"] == 512 and not r["bf16"])
        ours = cases[-1]["img_s_wall"]["ours"]
        anchor_note = {"anchor_img_s": ref, "anchor_gpu": anchor["gpu"],
                       "anchor_torch": anchor["torch"], "ours_img_s": ours,
                       "ours_vs_anchor": ours / ref, "gpu": info["gpu"]}
        print(f"\nanchor ({anchor['gpu']}, torch {anchor['torch']}): ResNet18 32px batch 512 "
              f"fp32 bare {ref:,} img/s; ours on {info['gpu']}: {ours:,.0f} img/s "
              f"= {ours / ref:.2f}x the anchor")
    first = cases[0]
    verdict = "met" if first["ratio"] >= TARGET else f"missed by {TARGET - first['ratio']:.3f}"
    print(f"\nratio ours/bare ({first['setting']}, batch {first['batch']}, {clock} time): "
          f"{first['ratio']:.3f} (wall {first['ratio_wall']:.3f}), target >= {TARGET}: "
          f"{verdict}; vs a bare loop with fused Adam: {first['ratio_vs_bare_fused']:.3f}")
    emit({"bench": "loop", "ratio": round(first["ratio"], 4), "target": TARGET,
          "met": first["ratio"] >= TARGET,
          "ratio_meaning": f"ours / bare images per second ({clock} time), median of paired "
                           f"epochs",
          "device": str(device), "model": args.model, "threads": torch.get_num_threads(),
          "rounds": rounds, "quick": args.quick, "cases": cases, "anchor": anchor_note,
          "machine": info})
    return 0


def _anchor_setting():
    """The anchor's setting: ResNet18, 32 px RGB, batch 512, 10 classes, data on the GPU."""
    import numpy as np

    from tuning.data import Split

    rng = np.random.default_rng(0)
    n = 512 * 50
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    train = Split(images=images, labels=labels, sources=np.arange(n))
    valid = Split(images=images[:5000], labels=labels[:5000], sources=np.arange(5000))
    return ("anchor: 32px RGB synthetic", train, valid, 10, 3, 512, None, None)


if __name__ == "__main__":
    raise SystemExit(main())
