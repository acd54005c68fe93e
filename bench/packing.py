"""Small trials sharing one GPU through Ray's fractional GPUs (GPU only).

    python -m bench.packing [--quick] [--ks 1,2,4,8] [--batches 8,36] [--seconds S]

For each k, one Ray Tune run of k trials with resources {"cpu": 1, "gpu": 1/k}, all on
one GPU at once. Each trial trains ResNet18 (32 px RGB, 10 classes, synthetic uint8
data on the GPU) with this repo's loop (tuning.trial.trainable: DeviceSplit, make_optimizer,
train_epoch), for each batch size in turn: it warms up (cudnn.benchmark picks its
kernels), waits at a barrier until all k trials are warm, then trains for `seconds`
and counts images. Aggregate images/s = the sum over the k trials.

Compared with ../shared/anchors/h100-resnet-bare-pytorch.json ("packed": 1, 4 and 8
bare processes on an H100: 8 processes gave 6.1x one at batch 8, 7.0x at batch 36).
Ratio = our scaling at k=8 / the anchor's, the lower over the batch sizes; target >= 0.9.
On a machine without CUDA it prints why it skips and emits ratio null.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from bench.common import REPO, emit, machine_info, parser, print_machine, quiet_logs, table

ANCHOR = REPO.parent / "shared" / "anchors" / "h100-resnet-bare-pytorch.json"
TARGET = 0.90
BARRIER = "themetune_bench_packing_barrier"


def _barrier_class():
    import ray

    @ray.remote(num_cpus=0)
    class Barrier:
        """Phase -> trials arrived; trials poll until all k are there."""

        def __init__(self):
            self.arrived: dict[str, int] = {}

        def arrive(self, phase: str) -> int:
            self.arrived[phase] = self.arrived.get(phase, 0) + 1
            return self.arrived[phase]

        def count(self, phase: str) -> int:
            return self.arrived.get(phase, 0)

    return Barrier


def packed_trial(config: dict[str, Any]) -> None:
    """One of k trials on a GPU share: per batch size, warm up, meet, train, count."""
    import numpy as np
    import ray
    import torch
    from ray import tune

    from tuning.config.params import TrainingParams
    from tuning.data import Split
    from tuning.trial.batches import channel_stats
    from tuning.trial.model import build_model
    from tuning.trial.trainable import DeviceSplit, make_optimizer, train_epoch

    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    device = torch.device(config["device"])
    barrier = ray.get_actor(config["barrier"])
    k = config["k"]
    out: dict[str, Any] = {"epoch": 1}
    for batch in config["batches"]:
        steps = config["steps_per_chunk"]
        n = batch * steps
        rng = np.random.default_rng(batch)
        split = Split(images=rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                      labels=rng.integers(0, 10, n).astype(np.int64), sources=np.arange(n))
        data = DeviceSplit(split, device)
        mean, std = channel_stats(data.images)
        torch.manual_seed(0)
        model = build_model("ResNet18", num_classes=10, in_channels=3).to(device)
        optimizer = make_optimizer(TrainingParams(training={"optimizer": "SGD",
                                                            "learning_rate": 0.01}), model)
        gen = torch.Generator().manual_seed(0)

        def chunk():
            # train_epoch ends with .item(): the GPU has finished when it returns.
            train_epoch(model, optimizer, data, mean, std, batch_size=batch, augments=None,
                        generator=gen)

        warm_end = time.perf_counter() + config["warmup_s"]
        chunk()
        while time.perf_counter() < warm_end:
            chunk()
        phase = f"batch{batch}"
        ray.get(barrier.arrive.remote(phase))
        while ray.get(barrier.count.remote(phase)) < k:
            time.sleep(0.02)
        images, t0 = 0, time.perf_counter()
        end = t0 + config["seconds"]
        while time.perf_counter() < end:
            chunk()
            images += n
        elapsed = time.perf_counter() - t0
        out[f"img_s_b{batch}"] = images / elapsed
        model = optimizer = data = None   # frees the GPU memory before the next batch size
        torch.cuda.empty_cache()
    out.update({"train_loss": 0.0, "train_acc": 0.0, "valid_loss": 0.0, "valid_acc": 0.0,
                "test_loss": 0.0, "test_acc": 0.0})
    tune.report(out)


def run_k(k: int, *, batches: list[int], seconds: float, warmup_s: float,
          steps_per_chunk: int, device: str = "cuda") -> dict[int, float]:
    import ray
    from ray import tune

    name = f"{BARRIER}_{k}"
    barrier = _barrier_class().options(name=name).remote()
    try:
        tuner = tune.Tuner(
            tune.with_resources(packed_trial,
                                {"cpu": 1, "gpu": 1.0 / k if device == "cuda" else 0}),
            param_space={"k": k, "barrier": name, "batches": batches, "seconds": seconds,
                         "device": device,
                         "warmup_s": warmup_s, "steps_per_chunk": steps_per_chunk},
            tune_config=tune.TuneConfig(num_samples=k, max_concurrent_trials=k),
            run_config=tune.RunConfig(name=f"bench-packing-k{k}-{time.strftime('%H%M%S')}",
                                      verbose=0, storage_path="/tmp/themetune-bench-packing"))
        grid = tuner.fit()
    finally:
        ray.kill(barrier)
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"k={k}: {errors[0]}")
    return {b: sum(r.metrics[f"img_s_b{b}"] for r in grid) for b in batches}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--ks", default="1,2,4,8", help="trials sharing the GPU (1,2,4,8)")
    p.add_argument("--batches", default="8,36", help="batch sizes (the anchor's: 8,36)")
    p.add_argument("--seconds", type=float, help="measured seconds per batch size (quick 8, "
                                                 "else 20)")
    p.add_argument("--warmup", type=float, help="warm-up seconds (quick 5, else 10)")
    p.add_argument("--plumbing-on-cpu", action="store_true",
                   help="check the Ray/barrier plumbing on CPU (figures mean nothing)")
    args = p.parse_args(argv)
    quiet_logs()
    import torch

    info = machine_info()
    print("bench.packing: k small-batch trials sharing one GPU through Ray fractional GPUs")
    print_machine(info)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.plumbing_on_cpu:
        reason = ("skipped: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
                  "run `python -m bench.packing` on a GPU machine")
        print(reason)
        emit({"bench": "packing", "ratio": None, "skipped": True, "reason": reason,
              "target": TARGET, "machine": info})
        return 0

    ks = [int(k) for k in args.ks.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    warmup = args.warmup or (5.0 if args.quick else 10.0)
    import ray

    ray.init(address="local", num_gpus=1 if device == "cuda" else 0,
             num_cpus=max(max(ks) + 1, os.cpu_count() or 1),
             include_dashboard=False, log_to_driver=False)
    agg: dict[int, dict[int, float]] = {}
    try:
        for k in ks:
            agg[k] = run_k(k, batches=batches, seconds=seconds, warmup_s=warmup,
                           steps_per_chunk=20 if device == "cuda" else 1, device=device)
            print(f"  k={k}: " + ", ".join(f"batch {b}: {v:,.0f} img/s"
                                          for b, v in agg[k].items()), flush=True)
    finally:
        ray.shutdown()

    anchor = json.loads(ANCHOR.read_text()) if ANCHOR.exists() else None
    anchor_agg = {}
    if anchor:
        for row in anchor["packed"]:
            anchor_agg[(row["batch"], row["procs"])] = row["agg_img_s"]
    rows, scaling = [], {}
    for b in batches:
        base = agg[ks[0]][b]
        for k in ks:
            ours_scale = agg[k][b] / base
            ref = anchor_agg.get((b, k))
            ref_base = anchor_agg.get((b, 1))
            ref_scale = ref / ref_base if ref and ref_base else None
            rows.append([b, k, agg[k][b], ours_scale, ref, ref_scale,
                         ours_scale / ref_scale if ref_scale else None])
            if k == max(ks) and ref_scale:
                scaling[b] = ours_scale / ref_scale
    print()
    print(table(["batch", "k", "agg img/s", "x k=1", "anchor agg img/s", "anchor x 1",
                 "ours/anchor scaling"], rows,
                title=f"GPU: {info['gpu']} (anchor: {anchor['gpu'] if anchor else '-'}, "
                      f"bare processes)"))
    ratio = min(scaling.values()) if scaling else None
    print(f"\nratio (our scaling at k={max(ks)} / anchor's, lowest over batch sizes): "
          f"{ratio if ratio is None else round(ratio, 3)}, target >= {TARGET}")
    emit({"bench": "packing", "ratio": round(ratio, 4) if ratio else None, "target": TARGET,
          "met": bool(ratio and ratio >= TARGET),
          "ratio_meaning": "aggregate-throughput scaling at max k vs the bare-process anchor",
          "agg_img_s": {str(k): {str(b): v for b, v in d.items()} for k, d in agg.items()},
          "scaling_vs_anchor": {str(b): v for b, v in scaling.items()},
          "seconds": seconds, "warmup_s": warmup, "quick": args.quick, "machine": info})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
