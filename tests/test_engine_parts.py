"""Engine building blocks: config, optimizer groups, lr schedule, mixup, EMA, checkpoints, sampler."""
import math

import pytest
import torch
import yaml

import largekernel as lk
from largekernel.engine.config import PRESETS, parse_overrides, resolve_config
from largekernel.engine.ema import ModelEma
from largekernel.engine.evaluate import evaluate
from largekernel.engine.mixup import classification_loss, mix_batch, soft_cross_entropy
from largekernel.engine.optim import build_optimizer, cosine_lr, param_groups, scheduled_lr, set_lr
from largekernel.engine.state import (EpochSampler, SeededSamples, latest_checkpoint,
                                      load_training_state, rng_state, save_training_state,
                                      set_rng_state, step_checkpoints)


def test_presets_reproduce_spec_recipes():
    t = resolve_config("in1k_t")
    assert (t.model, t.epochs, t.warmup_epochs, t.weight_decay, t.mixup, t.cutmix, t.drop_path) == \
        ("unireplknet_t", 300, 20, 0.05, 0.8, 1.0, 0.2)
    assert t.blr * 4096 / 256 == pytest.approx(4e-3)  # lr 4e-3 at batch 4096
    ft = resolve_config("in22k_ft_in1k_384_xl")
    assert (ft.input_size, ft.layer_decay, ft.head_init_scale, ft.weight_decay, ft.mixup) == \
        (384, 0.8, 0.001, 1e-8, 0.0)
    assert ft.blr * 512 / 256 == pytest.approx(5e-5) and ft.ema_decay == 0.9999
    assert resolve_config("in1k_a").drop_path == 0.0 and resolve_config("in1k_s").drop_path == 0.4
    assert {f"in1k_{v}" for v in "afpnts"} | {f"in22k_ft_in1k_384_{v}" for v in ("s", "b", "l", "xl")} <= set(PRESETS)


def test_config_layers_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 7, "lr": 0.01, "scale": [0.5, 1.0]}))
    cfg = resolve_config("in1k_t", path, parse_overrides(["lr=0.002", "clip_grad=none", "amp=bf16"]))
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.scale, cfg.clip_grad, cfg.amp) == \
        ("unireplknet_t", 7, 0.002, (0.5, 1.0), None, "bf16")
    off = resolve_config("in1k_t", overrides={"randaug": None, "ema_decay": None})
    assert off.randaug is None and resolve_config("in1k_t").randaug == "m9"
    with pytest.raises(ValueError, match="unknown config option.*'lrr'"):
        resolve_config(overrides={"lrr": 1})
    with pytest.raises(ValueError, match="unknown preset 'nope'; available: ade20k_upernet_t, digits, finetune, forecast_s, .*in1k_a"):
        resolve_config("nope")
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


def test_param_groups_weight_decay_and_layer_decay():
    model = lk.create_model("unireplknet_a", device="meta")
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.8)
    by_name = {n: g for g in groups for n in g["names"]}
    assert len(by_name) == len(list(model.parameters()))
    assert by_name["stages.2.0.pwconv1.1.weight"]["weight_decay"] == 0.05
    for n in ("stages.2.0.pwconv1.1.bias", "stages.2.0.act.1.gamma", "stages.2.0.gamma",
              "norm.weight", "stages.2.0.dwconv.origin_bn.weight"):
        assert by_name[n]["weight_decay"] == 0.0, n
    assert by_name["downsample_layers.0.0.weight"]["lr_scale"] == pytest.approx(0.8 ** 13)
    assert by_name["stages.2.4.pwconv2.0.weight"]["lr_scale"] == pytest.approx(0.8 ** (13 - 4))
    assert by_name["head.weight"]["lr_scale"] == 1.0
    opt = build_optimizer(model, "adamw", 1e-3, 0.05, 0.8, (0.9, 0.999))
    set_lr(opt, 1e-3)
    assert sorted({round(g["lr"], 12) for g in opt.param_groups})[-1] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "lamb", 1e-3, 0.05, None, (0.9, 0.999))


def test_cosine_schedule():
    kw = dict(total_steps=110, base_lr=1.0, min_lr=0.01, warmup_steps=10, warmup_lr=0.0)
    assert cosine_lr(0, **kw) == 0.0
    assert cosine_lr(5, **kw) == pytest.approx(0.5)
    assert cosine_lr(10, **kw) == pytest.approx(1.0)
    assert cosine_lr(60, **kw) == pytest.approx(0.01 + 0.99 * 0.5)
    assert cosine_lr(110, **kw) == pytest.approx(0.01)
    assert all(cosine_lr(s, **kw) >= cosine_lr(s + 1, **kw) for s in range(10, 110))


def test_mixup_cutmix_soft_targets():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    y = torch.tensor([0, 1, 2, 3])
    xm, t = mix_batch(x, y, 5, mixup=0.0, cutmix=0.0, prob=1.0, smoothing=0.1,
                      gen=torch.Generator().manual_seed(0))
    assert torch.equal(xm, x)
    assert t[0].tolist() == pytest.approx([0.92, 0.02, 0.02, 0.02, 0.02])
    for seed in range(5):
        xm, t = mix_batch(x, y, 5, mixup=0.0, cutmix=1.0, prob=1.0, smoothing=0.0,
                          gen=torch.Generator().manual_seed(seed))
        # cutmix: the weight of the partner's label equals the pasted area
        pasted = (xm[0] == 3.0).float().mean().item()
        assert t[0, 3].item() == pytest.approx(pasted)
        assert torch.allclose(t.sum(1), torch.ones(4))
    a = mix_batch(x, y, 5, 0.8, 0.0, 1.0, 0.1, torch.Generator().manual_seed(3))
    b = mix_batch(x, y, 5, 0.8, 0.0, 1.0, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    lam = (a[1][0, 0].item() - 0.02) / 0.9  # mixup weight of sample 0 from its label (0.92 on, 0.02 off)
    assert a[0][0, 0, 0, 0].item() == pytest.approx(lam * 0.0 + (1 - lam) * 3.0, abs=1e-5)  # images agree
    logits = torch.tensor([[2.0, 0.0]])
    assert soft_cross_entropy(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(
        math.log(1 + math.exp(-2.0)))


def test_ema_update_math():
    model = torch.nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.module.weight.requires_grad


def test_training_checkpoints_atomic_keep_last(tmp_path):
    for step in (5, 10, 15, 20):
        save_training_state(tmp_path, step, dict(step=step, w=torch.ones(2) * step), keep_last=2)
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step00000015.pt", "step00000020.pt"]
    assert load_training_state(latest_checkpoint(tmp_path))["step"] == 20
    assert not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "step00000025.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot resume from .*step00000025.pt"):
        load_training_state(latest_checkpoint(tmp_path))


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    import random

    import numpy as np
    save_training_state(tmp_path, 1, dict(rng=rng_state()), keep_last=1)
    a = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(load_training_state(latest_checkpoint(tmp_path))["rng"])
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_epoch_sampler_is_deterministic_sharded_and_resumable():
    full = EpochSampler(10, seed=1)
    full.set_epoch(3)
    order = list(full)
    assert sorted(order) == list(range(10))
    again = EpochSampler(10, seed=1)
    again.set_epoch(3, start=4)
    assert list(again) == order[4:] and len(again) == 6
    other = EpochSampler(10, seed=1)
    other.set_epoch(4)
    assert list(other) != order
    shards = [EpochSampler(10, seed=1, rank=r, world=3) for r in range(3)]
    for s in shards:
        s.set_epoch(3)
    seen = [i for s in shards for i in s]
    assert len(seen) == 12 and set(seen) == set(range(10))
    # blocks of 2 over 2 ranks: step k's rank-r batch is the single-process micro-batch 2k+r
    ranks = [EpochSampler(12, seed=1, rank=r, world=2, block=2) for r in range(2)]
    single = EpochSampler(12, seed=1)
    for s in ranks + [single]:
        s.set_epoch(0)
    flat = list(single)
    for k in range(3):
        for r in range(2):
            assert list(ranks[r])[2 * k:2 * k + 2] == flat[(2 * k + r) * 2:(2 * k + r) * 2 + 2]


def test_seeded_samples_do_not_touch_global_rng():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(1)

    ds = SeededSamples(Noisy(), seed=0)
    torch.manual_seed(123)
    a = [ds[i] for i in range(4)]
    after = torch.rand(1)
    torch.manual_seed(123)
    b = [ds[i] for i in reversed(range(4))][::-1]
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and torch.equal(after, torch.rand(1))
    ds.epoch = 1
    assert not torch.equal(ds[0], a[0])


def test_step_schedule_decays_per_epoch_after_start():
    # the authors' audio recipe: lr x0.85 per epoch from epoch 5 (epochs 0-4 at the base lr)
    lrs = [scheduled_lr(s, 100, 10, 1e-3, 1e-9, 0, sched="step", decay=0.85, decay_start=5)
           for s in range(0, 100, 10)]
    assert lrs[:5] == [1e-3] * 5
    assert lrs[5:] == pytest.approx([1e-3 * 0.85 ** k for k in range(1, 6)])
    assert scheduled_lr(3, 100, 10, 1e-3, 0, 5, sched="step") == pytest.approx(1e-3 * 3 / 5)
    assert scheduled_lr(40, 100, 10, 1e-3, 0, 5, sched="cosine") == cosine_lr(40, 100, 1e-3, 0, 5)
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        scheduled_lr(0, 10, 1, 1e-3, 0, 0, sched="linear")


def test_classification_losses():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    target = torch.tensor([[0.8, 0.1, 0.1], [0.0, 1.0, 0.0]])
    assert classification_loss(logits, target, "ce") == soft_cross_entropy(logits, target)
    manual = -(target * torch.log(torch.sigmoid(logits)) +
               (1 - target) * torch.log(1 - torch.sigmoid(logits))).mean()
    assert torch.allclose(classification_loss(logits, target, "bce"), manual, atol=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        classification_loss(logits, target, "focal")


class _Fixed(torch.nn.Module):
    """Logits read off the input: x[:, :3]."""

    def forward(self, x):
        return x[:, :3]


def test_evaluate_averages_test_time_copies():
    # two samples, two copies each; copy 0 right on both, copy 1 wrong on sample 1
    x = torch.tensor([[[5.0, 0, 0], [4.0, 0, 0]],       # label 0: both copies say 0
                      [[0, 3.0, 0], [0, 0, 9.0]]])       # label 1: copy 0 says 1, copy 1 says 2
    data = [(x[0], 0), (x[1], 1)]
    m = evaluate(_Fixed(), data, 3, 2, torch.device("cpu"), copies=True)
    assert m["copy_top1"] == [100.0, 50.0]
    # averaged softmax for sample 1: copy 1's confident 2 outweighs copy 0's 1
    p = (torch.softmax(x[1, 0], 0) + torch.softmax(x[1, 1], 0)) / 2
    assert p.argmax() == 2 and m["top1"] == 50.0
    assert m["loss"] == pytest.approx((-torch.log((torch.softmax(x[0, 0], 0) + torch.softmax(x[0, 1], 0))[0] / 2)
                                       - torch.log(p[1])).item() / 2, rel=1e-5)
    # mean class accuracy over present classes only (class 2 has no samples)
    assert m["mean_class_acc"] == 50.0 and m["per_class"][:2] == [100.0, 0.0]
