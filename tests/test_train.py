"""End-to-end tests of `largekernel train/eval/predict/reparam`: the run directory, exact resume after
SIGKILL, SIGTERM, resume errors, unreadable images, fine-tuning, DDP vs gradient accumulation, presets.

Everything is tiny (UniRepLKNet-A, 1 channel, 32x32, 3 classes of striped images) so the file runs in
about a minute on 2 CPU cores. Subprocesses get OMP_NUM_THREADS=1: with 2 threads on 2 busy cores a
step takes seconds instead of ~0.2 s.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import largekernel
from largekernel.modalities.files import stratified_split
from largekernel.modalities.image import load_samples
from clitools import run_cli, sub_env

CLASSES = ["diag", "horiz", "vert"]
# 3 x 12 images, val_split 0.25 -> 27 train / 9 val; batch 6 -> 5 steps per epoch (sampler pads to 30)
TINY = ["--model", "unireplknet_a", "--in-chans", "1", "--input-size", "32", "--randaug", "none",
        "--reprob", "0", "--hflip", "0", "--warmup-epochs", "0", "--lr", "2e-3"]


# ---------------------------------------------------------------------------------------- helpers

def write_stripes(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """root/{diag,horiz,vert}/NN.png: 8-bit grayscale stripes whose orientation is the class."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for name in CLASSES:
        coord = {"diag": xx + yy, "horiz": yy, "vert": xx}[name]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            period = 4 + 2 * (i % 3)
            phase = rng.randint(period)
            stripes = ((coord + phase) // (period // 2)) % 2
            img = stripes * 180 + 30 + rng.randint(0, 40, (size, size))
            Image.fromarray(img.astype(np.uint8), "L").save(folder / f"{i:02d}.png")
    return root


def write_garbage(path: Path, n: int = 600, seed: int = 1) -> Path:
    path.write_bytes(np.random.RandomState(seed).bytes(n))
    return path


def train_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "largekernel", "train", *map(str, args)]


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 10 and im.size[1] > 10, (path, im.format, im.size)
        im.verify()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def params_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop BN running statistics (buffers) from a state dict."""
    return {k: v for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_stripes(tmp_path_factory.mktemp("stripes") / "data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """One CLI training run shared by the run-directory, eval, predict and reparam tests."""
    run = tmp_path_factory.mktemp("cli") / "run"
    t = time.perf_counter()
    code, out, err = run_cli(["train", "--data", data, "--output", run, *TINY, "--epochs", "2",
                              "--batch-size", "6", "--val-split", "0.25", "--log-every", "1",
                              "--save-every-steps", "2", "--keep-last", "2"])
    assert code == 0, err[-3000:]
    return dict(run=run, out=out, err=err, seconds=time.perf_counter() - t)


# ---------------------------------------------------------------------- 1. CLI end to end

def test_train_writes_the_run_directory(trained):
    run, out = trained["run"], trained["out"]
    # keep_last=2 with a checkpoint every 2 steps and at each epoch end (steps 5, 10): 8 and 10 stay
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step00000008.pt",
                                                                       "step00000010.pt"]
    records = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 11))
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in steps)
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 5), (2, 10)]
    assert all(0 <= r["val_top1"] <= 100 and r["val_n"] == 9 for r in epochs)
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "unireplknet_a" and config["in_chans"] == 1 and config["input_size"] == 32
    assert config["randaug"] is None and config["classes"] == CLASSES
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["epochs"] == 2 and summary["skipped"] == 0
    assert summary["best_epoch"] in (1, 2)
    assert summary["best_metric"] == max(r["val_top1"] for r in epochs)
    for name in ("best.safetensors", "last.safetensors"):
        sd = load_file(run / name)
        assert sd["head.weight"].shape[0] == 3
    last = load_file(run / "last.safetensors")
    final = torch.load(run / "checkpoints" / "step00000010.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], final[k]) for k in final)
    for name in ("loss.png", "lr.png", "accuracy.png"):
        assert_png(run / name)
    assert str(run) in out and "run directory" in out


def test_eval_reports_metrics_and_writes_confusion_png(trained, data):
    run = trained["run"]
    code, out, err = run_cli(["eval", run / "best.safetensors", "--data", data, "--json"])
    assert code == 0, err
    m = json.loads(out)
    n_images = len(list(data.rglob("*.png")))
    assert m["n"] == n_images == 36
    assert m["classes"] == CLASSES
    assert len(m["per_class"]) == 3 and all(0 <= a <= 100 for a in m["per_class"])
    conf = np.array(m["confusion"])
    assert conf.shape == (3, 3) and conf.sum() == 36 and conf.sum(1).tolist() == [12, 12, 12]
    assert m["top1"] == pytest.approx(100 * np.trace(conf) / 36)
    assert m["top5"] == 100.0  # 3 classes: top-5 is top-3
    assert m["top1"] <= m["top5"]
    assert_png(run / "confusion.png")
    assert json.loads((run / "eval.json").read_text())["n"] == 36


def test_predict_names_classes_and_reports_unreadable_files(trained, data, tmp_path):
    best = trained["run"] / "best.safetensors"
    img = data / "horiz" / "00.png"
    bad = write_garbage(tmp_path / "bad.png")
    # the CLI takes the checkpoint as --checkpoint CKPT (positional arguments are the files)
    code, out, err = run_cli(["predict", "--checkpoint", best, img, bad, "--json"])
    assert code == 0, err
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(img), str(bad)]
    good, broken = results
    assert "error" not in good
    assert sorted(t["label"] for t in good["top"]) == CLASSES
    assert sum(t["prob"] for t in good["top"]) == pytest.approx(1.0, abs=1e-5)
    assert good["top"][0]["prob"] >= good["top"][-1]["prob"]
    assert "bad.png" in broken["error"] and "top" not in broken
    code, out, err = run_cli(["predict", "--checkpoint", best, bad, "--json"])
    assert code == 1
    assert "error" in json.loads(out)[0]


def test_reparam_writes_an_equivalent_deploy_checkpoint(trained, data, tmp_path):
    last = trained["run"] / "last.safetensors"
    out_path = tmp_path / "deploy.safetensors"
    code, out, err = run_cli(["reparam", last, "-o", out_path])
    assert code == 0, err
    assert "relative error" in out and "OK" in out and "FAILED" not in out
    deploy = largekernel.model_from_checkpoint(out_path).eval()
    train_form = largekernel.model_from_checkpoint(last).eval()
    assert deploy.deploy is True and train_form.deploy is False
    assert sum(p.numel() for p in deploy.parameters()) < sum(p.numel() for p in train_form.parameters())
    # real images through the recorded eval preprocessing
    from largekernel.engine.inference import load_trained

    trained_model = load_trained(last)
    x = torch.stack([trained_model.modality.load(p, trained_model.cfg)
                     for p in sorted(data.rglob("*.png"))])
    with torch.no_grad():
        ref, got = train_form(x), deploy(x)
    assert torch.equal(ref.argmax(1), got.argmax(1))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    # the written file keeps the training metadata, so eval/predict work on it
    code, out, err = run_cli(["predict", "--checkpoint", out_path, data / "vert" / "01.png", "--json"])
    assert code == 0, err
    assert sorted(t["label"] for t in json.loads(out)[0]["top"]) == CLASSES


# --------------------------------------------------------------- 2. exact resume after SIGKILL

RESUME_ARGS = [*TINY, "--epochs", "2", "--batch-size", "4", "--val-split", "0.25", "--deterministic",
               "--save-every-steps", "1", "--drop-path", "0.1", "--mixup", "0.2", "--ema-decay", "0.9"]
STEPS_PER_EPOCH = 7  # 27 training images, batch 4: the sampler pads to 28


def test_sigkill_then_rerun_gives_bitwise_identical_weights(data, tmp_path):
    env = sub_env()
    ref = tmp_path / "ref"
    r = subprocess.run(train_cmd("--data", data, "--output", ref, *RESUME_ARGS), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    run = tmp_path / "killed"
    cmd = train_cmd("--data", data, "--output", run, *RESUME_ARGS)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = run / "checkpoints" / "step00000003.pt"
    deadline = time.monotonic() + 240
    try:
        while not target.exists():
            assert proc.poll() is None, f"training ended before step 3: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no step-3 checkpoint after 240 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "last.safetensors").exists()  # it really died mid-run

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"resumed from \S*step(\d+)\.pt: epoch (\d+), step (\d+)", r.stderr)
    assert m, r.stderr[-3000:]
    step = int(m.group(3))
    assert 3 <= step and step % STEPS_PER_EPOCH != 0 and m.group(2) == "0", m.group(0)  # mid-epoch

    a, b = load_file(ref / "last.safetensors"), load_file(run / "last.safetensors")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"
    # EMA weights and optimizer moments resumed exactly as well
    last_ckpt = f"step{2 * STEPS_PER_EPOCH:08d}.pt"
    sa = torch.load(ref / "checkpoints" / last_ckpt, weights_only=True)
    sb = torch.load(run / "checkpoints" / last_ckpt, weights_only=True)
    assert sa["step"] == sb["step"] == 2 * STEPS_PER_EPOCH
    assert all(torch.equal(v, sb["ema"][k]) for k, v in sa["ema"].items())
    assert not all(torch.equal(v, sa["model"][k]) for k, v in sa["ema"].items())  # EMA is in use
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])


# ------------------------------------------------------------------------------- 3. SIGTERM

def test_sigterm_writes_a_checkpoint_exits_130_and_rerun_completes(data, tmp_path):
    env = sub_env()
    run = tmp_path / "run"
    cmd = train_cmd("--data", data, "--output", run, *TINY, "--epochs", "2", "--batch-size", "4",
                    "--val-split", "0.25", "--save-every-steps", "1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while not (run / "checkpoints" / "step00000001.pt").exists():  # the loop is running
            assert proc.poll() is None, f"training ended early: {proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert re.search(r"checkpoint written", err) and "run the same command again to resume" in err, err
    m = re.search(r"interrupted at step (\d+)", err)
    assert m and (run / "checkpoints" / f"step{int(m.group(1)):08d}.pt").is_file(), err
    assert not (run / "summary.json").exists()

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 * STEPS_PER_EPOCH and summary["epochs"] == 2
    assert (run / "last.safetensors").is_file()


# ------------------------------------------------------------------ 4. resume refusals and errors

def test_no_resume_refuses_a_run_directory_with_checkpoints(trained, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    code, out, err = run_cli(["train", "--data", data, "--output", run, *TINY, "--epochs", "3",
                              "--batch-size", "6", "--val-split", "0.25", "--no-resume"])
    assert code == 2
    assert "already holds checkpoints" in err and str(run) in err and "--no-resume" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_corrupt_newest_checkpoint_is_a_clear_error_naming_it(trained, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    newest = run / "checkpoints" / "step00000010.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    code, out, err = run_cli(["train", "--data", data, "--output", run, *TINY, "--epochs", "3",
                              "--batch-size", "6", "--val-split", "0.25"])
    assert code == 2, err[-3000:]
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(newest) in err and "cannot resume" in err, err
    assert "previous checkpoint" in err  # says how to recover


# --------------------------------------------------------------------- 5. unreadable images

def _split(data: Path) -> tuple[list, list]:
    samples, _ = load_samples(data, None)
    return stratified_split(samples, 0.25, 0)


def _copy_data(data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(data, dst)
    return dst


def test_corrupt_training_image_is_skipped_and_reported(data, tmp_path):
    local = _copy_data(data, tmp_path)
    train, _ = _split(local)
    bad = write_garbage(Path(train[0][0]))  # same name, so the split does not change
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", local, "--output", run, *TINY, "--epochs", "1",
                              "--batch-size", "6", "--val-split", "0.25"])
    assert code == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped"] == 1 and summary["steps"] == 5
    assert (run / "skipped.txt").read_text().split("\t")[0] == str(bad)
    assert str(bad) in err  # logged
    assert "skipped        1 unreadable" in out


def test_corrupt_image_in_the_validation_split_is_counted(data, tmp_path):
    """An unreadable file of the training folder that the split puts into validation must not
    disappear silently either (val_n drops from 9 to 8 and nothing else says why)."""
    local = _copy_data(data, tmp_path)
    _, val = _split(local)
    bad = write_garbage(Path(val[0][0]))
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", local, "--output", run, *TINY, "--epochs", "1",
                              "--batch-size", "6", "--val-split", "0.25"])
    assert code == 0, err[-3000:]
    epoch = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert epoch["val_n"] == 8
    summary = json.loads((run / "summary.json").read_text())
    assert str(bad) in err, "the unreadable validation image is not logged"
    assert summary["skipped"] == 1, summary
    assert str(bad) in (run / "skipped.txt").read_text()


def test_strict_fails_naming_the_corrupt_image(data, tmp_path):
    local = _copy_data(data, tmp_path)
    train, _ = _split(local)
    bad = write_garbage(Path(train[0][0]))
    code, out, err = run_cli(["train", "--data", local, "--output", tmp_path / "run", *TINY,
                              "--epochs", "1", "--batch-size", "6", "--val-split", "0.25", "--strict"])
    assert code == 2, err[-3000:]
    # the run's recipe line, then the error alone
    assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    assert str(bad) in err and "cannot read image" in err, err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_empty_class_folder_fails_before_training(data, tmp_path):
    local = _copy_data(data, tmp_path)
    (local / "zebra").mkdir()
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", local, "--output", run, *TINY, "--epochs", "1",
                              "--batch-size", "6"])
    assert code == 2
    assert str(local / "zebra") in err and "no images" in err, err
    assert not run.exists()  # nothing started


# ----------------------------------------------------------------------- 6. fine-tuning

def test_init_checkpoint_from_a_1000_class_model_drops_the_head(data, tmp_path):
    torch.manual_seed(123)
    src = largekernel.create_model("unireplknet_a", in_chans=1)
    assert src.num_classes == 1000
    init = largekernel.save_checkpoint(src, tmp_path / "in1k.safetensors")
    run = tmp_path / "run"
    # lr 0: after one step every non-head parameter must still be the init checkpoint's
    code, out, err = run_cli(["train", "--data", data, "--output", run, *TINY, "--epochs", "1",
                              "--max-steps", "1", "--batch-size", "6", "--val-split", "0",
                              "--init-checkpoint", init, "--lr", "0", "--min-lr", "0",
                              "--weight-decay", "0"])
    assert code == 0, err[-3000:]
    assert "head dropped" in err and "1000" in err, err
    last = load_file(run / "last.safetensors")
    assert last["head.weight"].shape[0] == 3 and last["head.bias"].shape == (3,)
    ref = params_only(src.state_dict())
    body = [k for k in ref if not k.startswith("head.")]
    assert len(body) > 100
    same = [k for k in body if torch.equal(last[k], ref[k])]
    assert same == body, f"{len(body) - len(same)} tensors were not loaded from the init checkpoint"
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


# ---------------------------------------------------------------------------------- 7. DDP

DDP_ARGS = [*TINY, "--epochs", "2", "--batch-size", "4", "--val-split", "0", "--drop-path", "0",
            "--mixup", "0", "--cutmix", "0", "--log-every", "1"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """torchrun 2 x batch 4 vs 1 process x batch 4 x accum 2 on 24 images (a multiple of 8, so
    both have 3 steps per epoch and no padded samples)."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_stripes(root / "data", per_class=8)
    env = sub_env()
    ddp, single = root / "ddp", root / "single"
    t = time.perf_counter()
    r_ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node=2", "-m", "largekernel", "train", "--data", str(data),
                            "--output", str(ddp), *DDP_ARGS], env=env, capture_output=True, text=True,
                           timeout=600)
    t_ddp = time.perf_counter() - t
    assert r_ddp.returncode == 0, r_ddp.stderr[-3000:]
    r_single = subprocess.run(train_cmd("--data", data, "--output", single, *DDP_ARGS,
                                        "--accum-steps", "2"), env=env, capture_output=True,
                              text=True, timeout=600)
    assert r_single.returncode == 0, r_single.stderr[-3000:]
    return dict(ddp=ddp, single=single, r_ddp=r_ddp, r_single=r_single, t_ddp=t_ddp)


def test_ddp_matches_single_process_gradient_accumulation(ddp_runs):
    ddp, single = ddp_runs["ddp"], ddp_runs["single"]
    assert json.loads((ddp / "summary.json").read_text())["steps"] == 6
    assert json.loads((single / "summary.json").read_text())["steps"] == 6
    a, b = load_file(ddp / "last.safetensors"), load_file(single / "last.safetensors")
    model = largekernel.model_from_checkpoint(single / "last.safetensors")
    names = [n for n, _ in model.named_parameters()]
    assert len(names) > 100
    torch.manual_seed(0)  # the runs' seed: the initial weights, to show training moved them
    init = largekernel.create_model("unireplknet_a", in_chans=1, num_classes=3).state_dict()
    assert any(not torch.equal(b[n], init[n]) for n in names)
    worst = 0.0
    for n in names:
        scale = max(b[n].abs().max().item(), 1e-3)
        diff = (a[n] - b[n]).abs().max().item()
        worst = max(worst, diff / scale)
        assert diff <= 1e-5 * scale, f"{n}: max |ddp - single| = {diff:.3g} (scale {scale:.3g})"
    print(f"DDP vs accumulation: worst max-abs diff / param scale = {worst:.3g}")


def test_ddp_only_rank0_writes(ddp_runs):
    ddp, single = ddp_runs["ddp"], ddp_runs["single"]
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert not [p for p in ddp.rglob("*") if ".tmp" in p.name]
    records = read_jsonl(ddp / "metrics.jsonl")
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 7))  # one line per step: rank 1 did not append
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    out = ddp_runs["r_ddp"].stdout
    # one summary, from rank 0 (rank 1 has no weights to report)
    assert out.count("run directory") == 1, out
    assert "None (best)" not in out, out


# ------------------------------------------------------------------------------- 8. presets

def test_list_presets():
    code, out, err = run_cli(["train", "--list-presets"])
    assert code == 0
    names = [line.split(":")[0] for line in out.splitlines()]
    assert "in1k_t" in names and "in22k_ft_in1k_384_s" in names
    t = json.loads(out.splitlines()[names.index("in1k_t")].split(": ", 1)[1])
    assert t["model"] == "unireplknet_t" and t["drop_path"] == 0.2


def test_preset_runs_with_overrides_and_keeps_its_other_values(data, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--preset", "in1k_t", "--data", data, "--output", run,
                              "--epochs", "1", "--max-steps", "1", "--model", "unireplknet_a",
                              "--input-size", "32", "--in-chans", "1", "--batch-size", "4",
                              "--randaug", "none", "--mixup", "0", "--cutmix", "0"])
    assert code == 0, err[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    # overridden by flags
    assert (cfg["model"], cfg["input_size"], cfg["in_chans"], cfg["batch_size"]) == ("unireplknet_a", 32, 1, 4)
    assert (cfg["epochs"], cfg["max_steps"], cfg["randaug"], cfg["mixup"], cfg["cutmix"]) == (1, 1, None, 0, 0)
    # from the preset
    assert cfg["drop_path"] == 0.2 and cfg["warmup_epochs"] == 20 and cfg["weight_decay"] == 0.05
    assert cfg["reprob"] == 0.25 and cfg["smoothing"] == 0.1 and cfg["blr"] == pytest.approx(2.5e-4)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1
    meta_cfg = json.loads(largekernel.models.checkpoint.read_metadata(run / "last.safetensors")["train_config"])
    assert meta_cfg["drop_path"] == 0.2


# ---------------------------------------------------------------------- runtime options
def test_amp_channels_last_grad_checkpointing_accumulation_clipping_ema_run(data, tmp_path):
    """The engine's runtime options work together on CPU (bf16 autocast, channels_last, gradient
    checkpointing, accumulation, clipping, layer decay, EMA), and TensorBoard gets the metrics."""
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", data, "--output", run, *TINY, "--epochs", "1",
                              "--batch-size", "4", "--accum-steps", "2", "--max-steps", "2",
                              "--amp", "bf16", "--channels-last", "--grad-checkpointing",
                              "--clip-grad", "1.0", "--layer-decay", "0.8", "--ema-decay", "0.9",
                              "--val-split", "0.25", "--log-every", "1"])
    assert code == 0, err[-3000:]
    records = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)
    epoch = [r for r in records if r["kind"] == "epoch"][0]
    assert "ema_top1" in epoch and "val_top1" in epoch
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    code, _, err = run_cli(["train", "--data", data, "--output", tmp_path / "fp16", *TINY,
                            "--amp", "fp16", "--max-steps", "1"])
    assert code == 2 and "fp16 mixed precision needs CUDA" in err
