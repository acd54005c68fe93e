"""Scale: themes of 2k, 8k and 32k 224 px RGB JPEGs, preprocessed into shards on one and
two Ray nodes, and trained from in the resident and the streaming data path.

    python -m bench.scale [--quick] [--sizes 2000,8000,32000] [--steps 8] [--batch 16]

The images (10 classes of random shapes on noisy gradients, JPEG quality 90) are
generated once, with every core, under the cluster's shared folder; a smaller theme is
the first N of them. A real Ray cluster (cluster/local.sh, every node 1 CPU, its own
state dir, ports, bridge and token) runs the measured work:

  preprocess   prepare_shards(use_ray=True) into a fresh shard root, on 1 node and on 2
               nodes, interleaved (1,2,2,1 ...); each run is a fresh driver process that
               reports its own peak RSS (VmHWM), so the driver figure is not the bench's
  resident     prepare_data in a fresh process without Ray (decode in the driver): its
               seconds and peak RSS, for comparison; it also fills the resident cache
  trials       2 concurrent Ray tasks (1 CPU each, one per node, fresh worker processes)
               that each train ResNet18 from open_splits as train_trial does: a warm-up
               step, then `steps` timed steps; each reports VmHWM, RssAnon, RssFile,
               RssShmem at the end. Resident: the PreparedData put in the object store
               once and passed by reference (as tune.with_parameters does); streaming:
               the ShardedData, batches read from the shards.

Targets (streaming): per-trial and driver peak RSS grow <= 10 % from the middle to the
largest size; images/s >= 0.8 x resident; 2 nodes preprocess >= 1.6x faster than 1.
ratio = streaming / resident images per CPU-second (median over sizes of each size's
ratio of medians); `met` = all four targets met.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, Workspace, emit, machine_info, median, parser, print_machine, quiet_logs, table

LOCAL_SH = REPO / "cluster" / "local.sh"
SIDE = 224
CLASSES = 10
QUALITY = 90
FULL_SIZES = (2000, 8000, 32000)
QUICK_SIZES = (1000, 4000)
TARGET_RATIO = 0.8          # streaming / resident images per second
TARGET_RSS_GROWTH = 1.10    # peak RSS, largest / middle size
TARGET_NODES_SPEEDUP = 1.6  # 1-node / 2-node preprocessing seconds
MEMORY_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")
NOT_MEASURED = (
    "not measured: GPUs; a real network or NFS (all nodes share this disk, and the JPEGs "
    "and fresh shards are in the page cache); full epochs, evaluation, augments and "
    "Tune's own trial overhead (plain Ray tasks run open_splits + train_epoch); the "
    "generation of the images.")


# --- the generated theme ----------------------------------------------------------------

def image_path(folder: Path, i: int) -> Path:
    return folder / f"c{i % CLASSES}" / f"{i:06d}.jpg"


def _write_images(job: tuple[str, int, int]) -> int:
    """Images start..stop-1: class c draws 1 + c // 5 shapes of kind c % 5 in random
    colours and places on a noisy gradient, so that JPEG files and decode cost look like
    photos' rather than flat colour."""
    from PIL import Image, ImageDraw

    folder, start, stop = Path(job[0]), job[1], job[2]
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    for i in range(start, stop):
        c = i % CLASSES
        gx, gy = rng.uniform(-80, 80, 2)
        base = rng.uniform(30, 200, 3).astype(np.float32)
        pixels = base + (gx * xx + gy * yy)[..., None]
        pixels += rng.standard_normal((SIDE, SIDE, 3), dtype=np.float32) * 12
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(1 + c // 5):
            x0, y0 = rng.integers(0, SIDE - 60, 2)
            w, h = rng.integers(30, 120, 2)
            box = [int(x0), int(y0), int(min(x0 + w, SIDE - 1)), int(min(y0 + h, SIDE - 1))]
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = c % 5
            if kind == 0:
                draw.ellipse(box, fill=colour)
            elif kind == 1:
                draw.rectangle(box, fill=colour)
            elif kind == 2:
                draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2,
                                                                   box[1])], fill=colour)
            elif kind == 3:
                draw.line(box, fill=colour, width=int(rng.integers(4, 12)))
            else:
                draw.pieslice(box, 30, 300, fill=colour)
        path = image_path(folder, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=QUALITY)
    return stop - start


def generate(folder: Path, count: int) -> float:
    """The first `count` images under folder (kept between runs of one bench); seconds."""
    t0 = time.perf_counter()
    done = folder / f".generated-{count}"
    if done.exists():
        return 0.0
    for c in range(CLASSES):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), a, min(a + 500, count)) for a in range(0, count, 500)]
    # spawn: the bench has imported torch, and forked children would inherit its threads.
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        written = sum(pool.map(_write_images, jobs))
    assert written == count
    done.touch()
    return time.perf_counter() - t0


def theme_of(folder: Path, count: int):
    from tuning.data.theme import Sample, ThemeSpec

    samples = tuple(Sample(path=str(image_path(folder, i)), label=i % CLASSES)
                    for i in range(count))
    return ThemeSpec(id=count, name=f"scale_{count}",
                     class_names=tuple(f"c{c}" for c in range(CLASSES)), samples=samples,
                     media_root=str(folder))


def settings(image_size: int = SIDE):
    from tuning.data import PreprocessSettings

    return PreprocessSettings(image_size=image_size, channels=3, brightness=None, patch_size=None,
                              patch_stride=None, split=(0.8, 0.1, 0.1), seed=0,
                              skip_unreadable=False)


def memory_status() -> dict[str, float]:
    """This process's peak and current memory (MB) from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in MEMORY_FIELDS:
            out[key] = int(value.split()[0]) / 1024
    return out


# --- child processes: a driver's own figures --------------------------------------------

def ray_connect(spec: dict[str, Any]) -> None:
    import ray

    # _node_ip_address: the head's address, which in loopback mode is not the one Ray
    # would guess for this process (127.0.0.1). Workers import bench and tuning as
    # installed packages (`pip install -e .`).
    ray.init(address=spec["gcs"], _node_ip_address=spec["gcs"].rsplit(":", 1)[0],
             log_to_driver=False)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One preparation in this fresh process: seconds and this process's peak RSS."""
    if spec["kind"] == "trials":
        return run_trials(spec)
    theme = theme_of(Path(spec["images"]), spec["count"])
    marks: list[tuple[float, int]] = []
    if spec["kind"] == "shards":
        from tuning.data.shards import prepare_shards

        if spec.get("gcs"):
            ray_connect(spec)
        t0 = time.perf_counter()
        data = prepare_shards(theme, settings(), root=Path(spec["root"]),
                              use_ray=bool(spec.get("gcs")),
                              progress=lambda message: _mark(marks, t0, message))
        seconds = time.perf_counter() - t0
        nodes = _disconnect() if spec.get("gcs") else 0
    else:
        from tuning.data import prepare_data

        t0 = time.perf_counter()
        data = prepare_data(theme, settings(), cache_dir=Path(spec["root"]))
        seconds, nodes = time.perf_counter() - t0, 0
    assert not data.from_cache, "a measured preparation found its output already there"
    first, steady = _rates(marks)
    return {"seconds": seconds, "nodes": nodes, "train": len(data.train.labels),
            "first_shard_s": first, "steady_img_s": steady, **memory_status()}


def _mark(marks: list, t0: float, message: str) -> None:
    if message.startswith("decoded "):
        marks.append((time.perf_counter() - t0, int(message.split()[1].split("/")[0])))


def _rates(marks: list[tuple[float, int]]) -> tuple[float | None, float | None]:
    """Seconds to the first finished shard (workers start, imports), and images/s from
    there to the last: the startup and the rate, apart."""
    if not marks:
        return None, None
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    steady = (n_last - n_first) / (t_last - t_first) if t_last > t_first else None
    return t_first, steady


def _disconnect() -> int:
    import ray

    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    ray.shutdown()
    return nodes


def run_child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scale", "--child", json.dumps(spec)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                            env=env or os.environ.copy(), timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"child {spec['kind']} {spec['count']} failed:\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the trial probe (runs in a Ray worker, or here in the test) ------------------------

def trial_probe(data, *, steps: int, batch: int, seed: int = 0) -> dict[str, Any]:
    """What train_trial does up to its training steps, with ResNet18 on one thread: one
    warm-up step, `steps` timed ones; then this process's memory."""
    import torch

    from tuning.config.params import TrainingParams
    from tuning.trial.batches import stats_from_sums
    from tuning.trial.model import build_model
    from tuning.trial.trainable import make_optimizer, open_splits, train_epoch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    device = torch.device("cpu")
    model = build_model("ResNet18", num_classes=len(data.class_names), in_channels=3)
    optimizer = make_optimizer(TrainingParams(), model)
    before = memory_status()
    t0 = time.perf_counter()
    train, valid, test = open_splits(data, device)
    mean, std = stats_from_sums(data.train_sums, device)   # as train_trial does
    open_s = time.perf_counter() - t0
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(batch_size=batch, augments=None, generator=generator)
    train_epoch(model, optimizer, train, mean, std, max_steps=1, **kwargs)
    wall, cpu = time.perf_counter(), time.process_time()
    train_epoch(model, optimizer, train, mean, std, max_steps=steps, **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for split in (train, valid, test):
        getattr(split, "close", lambda: None)()
    images = min(steps * batch, len(train))
    return {"mode": data.mode, "pid": os.getpid(), "node": _node_id(),
            "img_s": images / wall, "img_cpu_s": images / cpu, "steps_wall_s": wall,
            "open_splits_s": open_s, "rss_before_data_mb": before["VmRSS"],
            **memory_status()}


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[:8]
    except Exception:   # not in a Ray worker (the test calls the probe directly)
        return "local"


# --- the cluster ------------------------------------------------------------------------

def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    """cluster/local.sh with its own state dir, token, ports, bridge name and subnet, so
    that the other clusters on this machine are untouched; every node 1 CPU, so that the
    figures show scale-out, not this machine's cores."""

    DROP = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
            "MLFLOW_RUN_ID", "DJANGO_SETTINGS_MODULE", "PYTHONPATH")

    def __init__(self, state: Path, net: str = "auto"):
        self.state, self.net = state, net
        self.workers: int | None = None
        self.net_used: str | None = None
        rng = random.Random()
        for _ in range(50):
            base = rng.randrange(30000, 45000, 500)
            if all(_free(base + k) for k in list(range(0, 300, 7)) + [450, 451, 452]):
                break
        else:
            raise RuntimeError("no free port range found")
        self.options = ["--port", str(base + 450), "--dashboard-port", str(base + 451),
                        "--client-port", str(base + 452), "--port-base", str(base),
                        "--subnet", f"10.214.{rng.randrange(100, 250)}",
                        "--name", f"sc{rng.randrange(1000)}",
                        "--token-file", str(state / "auth_token"), "--net", net]
        self.gcs: str | None = None

    def _local_sh(self, *args: str, timeout: int = 300) -> str:
        env = {k: v for k, v in os.environ.items() if k not in self.DROP}
        env["THEMETUNE_PYTHON"] = sys.executable
        result = subprocess.run([str(LOCAL_SH), *args, "--state-dir", str(self.state)],
                                env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"local.sh {args[0]} failed:\n{result.stdout[-2000:]}\n"
                               f"{result.stderr[-2000:]}")
        return result.stdout

    def shape(self, workers: int) -> None:
        """Bring the cluster to head + `workers` (adding nodes while up, else down/up)."""
        if self.workers == workers:
            return
        if self.workers is not None and self.workers < workers:
            while self.workers < workers:
                self._local_sh("add-worker", "--worker-cpus", "1")
                self.workers += 1
            return
        self.down()
        out = self._local_sh("up", "--workers", str(workers), "--head-cpus", "1",
                             "--worker-cpus", "1", *self.options)
        self.workers = workers
        self.net_used = "netns" if "(netns)" in out else "loopback"
        env = self._local_sh("env")
        self.gcs = next(line.split("=", 1)[1] for line in env.splitlines()
                        if line.startswith("export THEMETUNE_RAY_GCS_ADDRESS="))

    def client_env(self) -> dict[str, str]:
        """The environment `eval "$(cluster/local.sh env)"` gives a client shell."""
        env = {k: v for k, v in os.environ.items() if k not in self.DROP}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.state / "auth_token"))
        return env

    def down(self) -> None:
        if self.workers is not None:
            self.workers = None
            self._local_sh("down", timeout=180)


# --- the measured phases ----------------------------------------------------------------

def decoded_bytes(count: int) -> int:
    return count * 3 * SIDE * SIDE


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def resident_fits(count: int) -> str | None:
    """None, or why the resident path is skipped at this size: it needs about 3x the
    decoded theme at once (prepare_data's image array and split copies, later the bench's
    copy, the head's object store and the worker node's pulled copy)."""
    need, have = 3 * decoded_bytes(count), mem_available()
    if need > have:
        return (f"skipped: needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available")
    return None


def resident_runs(images: Path, sizes, cache: Path, skip_above: int | None) -> dict:
    """prepare_data in a fresh process per size (decode in the driver, no Ray)."""
    out = {}
    for size in sizes:
        reason = ("skipped: --skip-resident-above" if skip_above and size > skip_above
                  else resident_fits(size))
        if reason:
            out[size] = {"skipped": reason}
        else:
            out[size] = run_child({"kind": "resident", "images": str(images), "count": size,
                                   "root": str(cache)})
        done = out[size].get("skipped") or f"{out[size]['seconds']:.1f} s"
        print(f"  resident prepare_data {size}: {done}", flush=True)
    return out


def preprocess_runs(cluster: LocalCluster, images: Path, sizes, shards: Path,
                    repeats_for) -> tuple[list[dict], dict[int, Path]]:
    """prepare_shards(use_ray=True) per size on 1 and 2 nodes, ABBA over rounds; keeps
    each size's last shards for the trials and deletes the rest (32k is 4.8 GB)."""
    runs, kept = [], {}
    rounds = max(repeats_for(size) for size in sizes)
    for r in range(rounds):
        for workers in ((0, 1) if r % 2 == 0 else (1, 0)):
            cluster.shape(workers)
            for size in sizes:
                if r >= repeats_for(size):
                    continue
                root = shards / f"{workers + 1}n-{size}-r{r}"
                result = run_child({"kind": "shards", "images": str(images), "count": size,
                                    "root": str(root), "gcs": cluster.gcs},
                                   env=cluster.client_env())
                assert result["nodes"] == workers + 1, result
                runs.append({"size": size, "nodes": workers + 1, "round": r, **result})
                print(f"  shards {size} on {workers + 1} node(s), round {r}: "
                      f"{result['seconds']:.1f} s, driver peak {result['VmHWM']:.0f} MB",
                      flush=True)
                if size in kept:
                    shutil.rmtree(kept[size], ignore_errors=True)
                kept[size] = root
    return runs, kept


def trial_runs(cluster: LocalCluster, images: Path, sizes, cache: Path,
               kept: dict[int, Path], resident: dict, *, steps: int, batch: int) -> list:
    """The trials on the 2-node cluster, from a fresh driver process: Ray reads the
    token settings when it is imported, which the bench did before the cluster was up."""
    cluster.shape(1)
    spec = {"kind": "trials", "gcs": cluster.gcs, "images": str(images), "sizes": sizes,
            "cache": str(cache), "kept": {str(k): str(v) for k, v in kept.items()},
            "resident": [s for s in sizes if "skipped" not in resident[s]],
            "steps": steps, "batch": batch}
    rows = run_child(spec, env=cluster.client_env())["rows"]
    for row in rows:
        print(f"  trial {row['size']} {row['mode']} on node {row['node']}: peak "
              f"{row['VmHWM']:.0f} MB, {row['img_s']:.2f} img/s, "
              f"{row['img_cpu_s']:.2f} img/CPU-s", flush=True)
    return rows


def run_trials(spec: dict[str, Any]) -> dict[str, Any]:
    """2 concurrent probes per size and mode (1 CPU each: one per node), the modes'
    order alternating from size to size."""
    import ray

    ray_connect(spec)
    probe = ray.remote(num_cpus=1, max_calls=1)(trial_probe)   # a fresh process per trial
    rows = []
    try:
        for i, size in enumerate(spec["sizes"]):
            modes = ("resident", "streaming") if i % 2 == 0 else ("streaming", "resident")
            for mode in modes:
                if mode == "resident" and size not in spec["resident"]:
                    continue
                arg = _trial_data(mode, theme_of(Path(spec["images"]), size),
                                  Path(spec["cache"]), Path(spec["kept"][str(size)]))
                results = ray.get([probe.remote(arg, steps=spec["steps"],
                                                batch=spec["batch"], seed=k)
                                   for k in range(2)])
                del arg
                rows += [{"size": size, **result} for result in results]
                print(f"  trials {size} {mode} done", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    return {"rows": rows}


def _trial_data(mode: str, theme, cache: Path, root: Path | None):
    """Resident: the PreparedData put once, by reference (the driver drops its copy);
    streaming: the small ShardedData itself."""
    import ray

    if mode == "resident":
        from tuning.data import prepare_data

        data = prepare_data(theme, settings(), cache_dir=cache)
        assert data.from_cache
        return ray.put(data)
    from tuning.data.shards import prepare_shards

    data = prepare_shards(theme, settings(), root=root)
    assert data.from_cache
    return data


# --- figures ----------------------------------------------------------------------------

def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(sizes, pre: list, resident: dict, trials: list) -> dict[str, Any]:
    middle, largest = sizes[-2], sizes[-1]

    def pre_s(size, nodes):
        return median(r["seconds"] for r in pre if r["size"] == size and r["nodes"] == nodes)

    def steady(size, nodes):
        return median(r["steady_img_s"] for r in pre if r["size"] == size
                      and r["nodes"] == nodes and r["steady_img_s"])

    def driver_peak(size):
        return median(r["VmHWM"] for r in pre if r["size"] == size)

    def trial_peak(size, mode):
        return max((t["VmHWM"] for t in trials if t["size"] == size and t["mode"] == mode),
                   default=None)

    def speed(size, mode):
        return median(t["img_cpu_s"] for t in trials if t["size"] == size and t["mode"] == mode)

    per_size = {size: _ratio(speed(size, "streaming"), speed(size, "resident"))
                for size in sizes}
    figures = {
        "rss_growth": _ratio(trial_peak(largest, "streaming"), trial_peak(middle, "streaming")),
        "driver_rss_growth": _ratio(driver_peak(largest), driver_peak(middle)),
        "streaming_vs_resident": median(v for v in per_size.values() if v is not None),
        "nodes_speedup": _ratio(pre_s(largest, 1), pre_s(largest, 2)),
    }
    targets = {"rss_growth": ("<=", TARGET_RSS_GROWTH),
               "driver_rss_growth": ("<=", TARGET_RSS_GROWTH),
               "streaming_vs_resident": (">=", TARGET_RATIO),
               "nodes_speedup": (">=", TARGET_NODES_SPEEDUP)}
    met = {k: None if figures[k] is None else
           (figures[k] <= t if op == "<=" else figures[k] >= t)
           for k, (op, t) in targets.items()}
    return {**figures, "targets": {k: f"{op} {t}" for k, (op, t) in targets.items()},
            "met_each": met, "middle_size": middle, "largest_size": largest,
            "streaming_vs_resident_per_size": per_size,
            "nodes_speedup_per_size": {s: _ratio(pre_s(s, 1), pre_s(s, 2)) for s in sizes},
            # Apart from the workers' start: images/s after the first finished shard.
            "nodes_speedup_after_first_shard": {s: _ratio(steady(s, 2), steady(s, 1))
                                                for s in sizes},
            "preprocess_s": {s: {n: pre_s(s, n) for n in (1, 2)} for s in sizes},
            "driver_peak_mb": {s: driver_peak(s) for s in sizes},
            "trial_peak_mb": {s: {m: trial_peak(s, m) for m in ("resident", "streaming")}
                              for s in sizes}}


def print_tables(sizes, pre: list, resident: dict, trials: list, summary: dict) -> None:
    rows = []
    for size in sizes:
        for nodes in (1, 2):
            mine = [r for r in pre if r["size"] == size and r["nodes"] == nodes]
            s = summary["preprocess_s"][size][nodes]
            rows.append([size, f"shards, {nodes} node(s)", " / ".join(
                f"{r['seconds']:.1f}" for r in mine), s, size / s if s else None,
                median(r["first_shard_s"] for r in mine),
                median(r["steady_img_s"] for r in mine if r["steady_img_s"]),
                median(r["VmHWM"] for r in mine)])
        res = resident[size]
        rows.append([size, "resident prepare_data, driver", res.get("skipped") or
                     f"{res['seconds']:.1f}", res.get("seconds"),
                     size / res["seconds"] if "seconds" in res else None, None,
                     None, res.get("VmHWM")])
    print()
    print(table(["images", "preparation", "runs s", "median s", "img/s", "1st shard s",
                 "img/s after", "driver peak MB"],
                rows, title="preprocessing 224 px RGB JPEGs (1 CPU per node; each run a "
                            "fresh driver process; shards: Ray tasks, resident: no Ray)"))
    rows = [[t["size"], t["mode"], f"{t['node']} pid {t['pid']}", t["VmHWM"], t["RssAnon"],
             t["RssFile"], t["RssShmem"], t["rss_before_data_mb"], t["open_splits_s"],
             t["img_s"], t["img_cpu_s"]] for t in trials]
    for size in sizes:
        if "skipped" in resident[size]:
            rows.append([size, "resident", resident[size]["skipped"]] + [None] * 8)
    print()
    print(table(["images", "mode", "trial", "VmHWM MB", "RssAnon", "RssFile", "RssShmem",
                 "RSS before data", "open_splits s", "img/s", "img/CPU-s"], rows,
                title="2 concurrent trials, ResNet18 at 224 px, 1 thread each, one per node; "
                      "memory at the end of the trial"))
    rows = [[k, summary[k], summary["targets"][k], summary["met_each"][k]]
            for k in ("rss_growth", "driver_rss_growth", "streaming_vs_resident",
                      "nodes_speedup")]
    largest = summary["largest_size"]
    rows.append(["nodes_speedup after the first shard (workers started)",
                 summary["nodes_speedup_after_first_shard"][largest], "-", None])
    print()
    print(table(["figure", "value", "target", "met"], rows,
                title=f"targets ({summary['middle_size']} -> {summary['largest_size']} "
                      f"images for the growths, {summary['largest_size']} for the speedup)"))
    print(NOT_MEASURED)


# --- main -------------------------------------------------------------------------------

def arguments(argv):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", help="comma-separated theme sizes (full 2000,8000,32000; "
                                   "quick 1000,4000); growth is from the 2nd-largest")
    p.add_argument("--steps", type=int, help="timed training steps per trial (quick 4, else 8)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2,
                   help="preprocessing runs per size and cluster shape, interleaved")
    p.add_argument("--largest-repeats", type=int,
                   help="runs at the largest size (quick: --repeats, else 1)")
    p.add_argument("--skip-resident-above", type=int,
                   help="no resident runs above this many images")
    p.add_argument("--net", default="auto", choices=("auto", "netns", "loopback"))
    p.add_argument("--child", help=__import__("argparse").SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    quiet_logs()
    sizes = sorted(int(s) for s in args.sizes.split(",")) if args.sizes else \
        list(QUICK_SIZES if args.quick else FULL_SIZES)
    steps = args.steps or (4 if args.quick else 8)
    largest = args.largest_repeats or (args.repeats if args.quick else 1)

    def repeats_for(size):
        return largest if size == sizes[-1] else args.repeats

    info = machine_info()
    print(f"bench.scale: {', '.join(map(str, sizes))} generated {SIDE} px RGB JPEGs "
          f"(q{QUALITY}, {CLASSES} classes); ResNet18 batch {args.batch}, 1 + {steps} steps "
          f"per trial; {args.repeats} preprocessing runs per shape ({largest} at the largest)")
    print_machine(info)
    # A short state dir: Ray's socket paths under it must stay below 108 characters.
    state = Path(tempfile.mkdtemp(prefix="tts-", dir="/tmp"))
    cluster = LocalCluster(state, args.net)
    with Workspace("scale", keep=args.keep) as ws:
        try:
            images = state / "shared" / "images"
            generated = generate(images, sizes[-1])
            print(f"  generated {sizes[-1]} images in {generated:.1f} s (not measured); "
                  f"load avg {[round(x, 2) for x in os.getloadavg()]}", flush=True)
            resident = resident_runs(images, sizes, ws.root / "cache", args.skip_resident_above)
            pre, kept = preprocess_runs(cluster, images, sizes, state / "shared" / "shards",
                                        repeats_for)
            trials = trial_runs(cluster, images, sizes, ws.root / "cache", kept, resident,
                                steps=steps, batch=args.batch)
        finally:
            cluster.down()
            if args.keep:
                print(f"cluster state kept: {state}", file=sys.stderr)
            else:
                shutil.rmtree(state, ignore_errors=True)
    summary = summarize(sizes, pre, resident, trials)
    print_tables(sizes, pre, resident, trials, summary)
    met = all(v is True for v in summary["met_each"].values())
    ratio = summary["streaming_vs_resident"]
    print(f"\nload avg at the end {[round(x, 2) for x in os.getloadavg()]}; all targets "
          f"{'met' if met else 'not met'}")
    emit({"bench": "scale", "ratio": None if ratio is None else round(ratio, 4),
          "target": TARGET_RATIO, "met": met,
          "ratio_meaning": "streaming / resident training images per CPU-second per trial "
                           "(median over sizes of each size's ratio of medians)",
          **summary, "sizes": sizes, "steps": steps, "batch": args.batch,
          "net": cluster.net_used, "quick": args.quick, "generation_s": generated,
          "resident_skipped": {s: r["skipped"] for s, r in resident.items() if "skipped" in r},
          "not_measured": NOT_MEASURED, "preprocess_runs": pre, "resident_prepare": resident,
          "trials": trials, "machine": info,
          "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
