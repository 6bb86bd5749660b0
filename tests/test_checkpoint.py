"""Checkpoints: the authors' files reproduce the authors' outputs; adaptation and clear errors.

Every parity check runs on the tiny fixtures in the repository and, where ../shared is beside it, on
the UniRepLKNet-A fixtures too (tests/goldens.py).
"""
import pathlib

import pytest
import torch
from safetensors.torch import load_file

import largekernel as lk
from largekernel.models.checkpoint import adapt_input_conv, checkpoint_form, read_layout, read_state_dict

from goldens import GOLDEN_PARAMS, TINY, TOL, golden_param


@pytest.fixture(scope="module", params=GOLDEN_PARAMS)
def golden(request):
    return golden_param(request)


@pytest.fixture(scope="module")
def io(golden):
    return golden.load("io.pt")


@pytest.fixture(scope="module")
def backbone_io(golden):
    return golden.load("backbone_io.pt")


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("deploy", [False, True])
def test_train_checkpoint_reproduces_authors_logits(golden, io, deploy):
    model = golden.create(deploy=deploy,
                            checkpoint_path=golden.file("train.pth"))
    want = io["logits_deploy"] if deploy else io["logits"]
    assert (logits(model, io["input"]) - want).abs().max() <= TOL


def test_deploy_checkpoint_reproduces_authors_logits(golden, io):
    model = golden.create(deploy=True,
                            checkpoint_path=golden.file("deploy.pth"))
    assert (logits(model, io["input"]) - io["logits_deploy"]).abs().max() <= TOL


def test_our_reparameterization_matches_authors_deploy_file(golden, io):
    model = golden.create(checkpoint_path=golden.file("train.pth")).eval()
    model.reparameterize()
    ours = model.state_dict()
    theirs = read_state_dict(golden.file("deploy.pth"))
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6, msg=k)
    assert (logits(model, io["input"]) - io["logits_deploy"]).abs().max() <= TOL


@pytest.mark.parametrize("deploy", [False, True])
def test_segmentation_checkpoint_into_dense_backbone(golden, backbone_io, deploy):
    model = golden.create(features_only=True, deploy=deploy,
                            checkpoint_path=golden.file("backbone_mmseg.pth"))
    outs = logits(model, backbone_io["input"])
    assert len(outs) == 4
    for got, want in zip(outs, backbone_io["features"]):
        assert got.shape == want.shape
        assert (got - want).abs().max() <= TOL


def test_dense_backbone_subset_of_stages(golden, backbone_io):
    model = golden.create(features_only=True, out_indices=(1, 2),
                            checkpoint_path=golden.file("backbone_mmseg.pth"))
    assert len(model.stages) == 3 and not hasattr(model, "norm3") and not hasattr(model, "norm0")
    outs = logits(model, backbone_io["input"])
    for got, want in zip(outs, backbone_io["features"][1:3]):
        assert (got - want).abs().max() <= TOL


def test_checkpoint_forms_are_detected(golden):
    assert checkpoint_form(read_state_dict(golden.file("train.pth"))) == "train"
    assert checkpoint_form(read_state_dict(golden.file("deploy.pth"))) == "deploy"
    assert checkpoint_form(read_state_dict(golden.file("backbone_mmseg.pth"))) == "train"


def test_deploy_checkpoint_into_train_model_is_refused(golden):
    with pytest.raises(lk.CheckpointError, match="deploy=True"):
        golden.create(checkpoint_path=golden.file("deploy.pth"))


def test_other_class_count_drops_head(golden, io, caplog):
    ref = golden.create(checkpoint_path=golden.file("train.pth")).eval()
    torch.manual_seed(0)
    model = golden.create(num_classes=7).eval()
    fresh_head = model.head.weight.clone()
    with caplog.at_level("WARNING"):
        report = lk.load_checkpoint(model, golden.file("train.pth"))
    assert "head dropped" in caplog.text and f"{golden.num_classes} classes" in caplog.text
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert torch.equal(model.head.weight, fresh_head)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(io["input"]), pre_logits=True),
                                   ref.forward_head(ref.forward_features(io["input"]), pre_logits=True))


def test_features_model_from_classification_checkpoint_keeps_norm_init(golden):
    model = golden.create(features_only=True)
    report = lk.load_checkpoint(model, golden.file("train.pth"))
    assert "head.weight" in report.dropped and "norm.weight" in report.dropped
    assert "norm0.weight" in report.kept_init
    sd = read_state_dict(golden.file("train.pth"))
    last = len(model.stages[3]) - 1
    assert torch.equal(model.stages[3][last].pwconv2[0].weight, sd[f"stages.3.{last}.pwconv2.0.weight"])


@pytest.mark.parametrize("in_chans", [1, 2, 6])
def test_in_chans_adapts_first_conv(golden, io, in_chans):
    model = golden.create(in_chans=in_chans,
                            checkpoint_path=golden.file("train.pth")).eval()
    w3 = read_state_dict(golden.file("train.pth"))["downsample_layers.0.0.weight"]
    w = model.downsample_layers[0][0].weight
    assert w.shape == (w3.shape[0], in_chans, 3, 3)
    if in_chans == 1:
        torch.testing.assert_close(w, w3.sum(1, keepdim=True))
        # a grey image gives the same output as the RGB model on the image repeated 3x
        ref = golden.create(checkpoint_path=golden.file("train.pth"))
        grey = io["input"][:, :1]
        torch.testing.assert_close(logits(model, grey), logits(ref, grey.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-5)
    elif in_chans == 2:
        torch.testing.assert_close(w, w3[:, :2] * 1.5)  # timm's rule: repeat, slice, scale by 3/n
    else:
        # a multiple of 3: the total response to a constant input is preserved
        torch.testing.assert_close(w.sum(1), w3.sum(1), rtol=1e-5, atol=1e-6)


def test_adapt_input_conv_values():
    w = torch.arange(12.0).reshape(2, 3, 1, 2)
    assert torch.equal(adapt_input_conv(w, 3), w)
    six = adapt_input_conv(w, 6)
    torch.testing.assert_close(six, torch.cat([w, w], 1) * 0.5)


def test_wrong_architecture_lists_keys(golden):
    with pytest.raises(lk.CheckpointError) as e:
        lk.create_model("unireplknet_n", checkpoint_path=golden.file("train.pth"))
    msg = str(e.value)
    assert "missing:" in msg and "wrong shape:" in msg
    stem = read_state_dict(golden.file("train.pth"))["downsample_layers.0.0.weight"].shape[0]
    assert f"downsample_layers.0.0.weight: checkpoint ({stem}, 3, 3, 3) vs model (40, 3, 3, 3)" in msg
    assert {"official": "missing: stages.2.6.", "tiny": "missing: stages.0.1."}[golden.name] in msg


def test_unexpected_keys_are_listed(golden, tmp_path):
    sd = read_state_dict(golden.file("train.pth"))
    sd["stages.9.0.extra.weight"] = torch.zeros(1)
    del sd["stages.1.0.se.up.bias"]
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    with pytest.raises(lk.CheckpointError) as e:
        golden.create(checkpoint_path=path)
    assert "unexpected: stages.9.0.extra.weight" in str(e.value)
    assert "missing: stages.1.0.se.up.bias" in str(e.value)


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "trap": Evil()}, path)
    with pytest.raises(lk.CheckpointError, match="refused"):
        lk.load_checkpoint(TINY.create(), path)
    assert not marker.exists()


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(lk.CheckpointError, match="does not exist"):
        lk.load_checkpoint(TINY.create(), tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(lk.CheckpointError, match="junk.pth"):
        lk.load_checkpoint(TINY.create(), junk)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 4)
    with pytest.raises(lk.CheckpointError, match="safetensors"):
        lk.load_checkpoint(TINY.create(), bad_st)


def test_zip_files_are_memory_mapped_and_pre_1_6_files_load_whole(golden, tmp_path, io):
    """`torch_load` maps a zip-format .pth (reads of a big file for its keys, then its weights, cost
    little) and loads the older non-zip format whole; both give the authors' logits."""
    from largekernel.models.checkpoint import torch_load

    sd = read_state_dict(golden.file("train.pth"))
    old = tmp_path / "old.pth"
    torch.save({"model": sd}, old, _use_new_zipfile_serialization=False)
    new = tmp_path / "new.pth"
    torch.save({"model": sd}, new)
    for path in (old, new):
        model = golden.create(checkpoint_path=path)
        assert (logits(model, io["input"]) - io["logits"]).abs().max() <= TOL, path.name
    def mapped(path):  # whether the process maps the file while the loaded tensors live
        obj = torch_load(path)
        with open("/proc/self/maps") as f:
            return str(path) in f.read() and obj is not None

    assert mapped(new) and not mapped(old)


def test_module_prefix_and_model_key_are_unwrapped(golden, tmp_path, io):
    sd = read_state_dict(golden.file("train.pth"))
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = golden.create(checkpoint_path=path)
    assert (logits(model, io["input"]) - io["logits"]).abs().max() <= TOL


@pytest.mark.parametrize("deploy", [False, True])
def test_safetensors_round_trip(golden, tmp_path, io, deploy):
    model = golden.create(deploy=deploy,
                            checkpoint_path=golden.file("train.pth"))
    path = lk.save_checkpoint(model, tmp_path / "a.safetensors")
    assert set(load_file(path)) == set(model.state_dict())
    again = golden.create(deploy=deploy, checkpoint_path=path)
    assert torch.equal(logits(again, io["input"]), logits(model, io["input"]))
    with pytest.raises(ValueError, match=".safetensors"):
        lk.save_checkpoint(model, tmp_path / "a.pth")


def test_float64_and_bfloat16_models_load_train_checkpoint(golden, io):
    for dtype in (torch.float64, torch.bfloat16):
        model = golden.create(deploy=True, dtype=dtype,
                                checkpoint_path=golden.file("train.pth"))
        assert all(p.dtype == dtype for p in model.parameters())
    out = logits(model.float(), io["input"])
    assert (out - io["logits_deploy"]).abs().max() < 0.1  # bf16 weights: coarse, but finite and close


def test_model_from_authors_files_reads_layout_off_the_weights(golden, io, backbone_io):
    deploy = lk.model_from_checkpoint(golden.file("deploy.pth"), "unireplknet_a")
    assert deploy.deploy and deploy.num_classes == golden.num_classes
    assert (logits(deploy, io["input"]) - io["logits_deploy"]).abs().max() <= TOL
    dense = lk.model_from_checkpoint(golden.file("backbone_mmseg.pth"), "unireplknet_a")
    assert dense.features_only and dense.out_indices == (0, 1, 2, 3)
    assert (logits(dense, backbone_io["input"])[3] - backbone_io["features"][3]).abs().max() <= TOL
    with pytest.raises(lk.CheckpointError, match="pass the model name"):
        lk.model_from_checkpoint(golden.file("train.pth"))


def test_model_from_our_file_rebuilds_custom_model(tmp_path):
    model = lk.create_model("unireplknet_a", num_classes=7, in_chans=1, kernel_sizes=(3, 5, 7, 31)).eval()
    path = lk.save_checkpoint(lk.reparameterize(model), tmp_path / "custom.safetensors")
    again = lk.model_from_checkpoint(path)
    assert again.deploy and again.num_classes == 7 and again.in_chans == 1
    assert again.stages[3][0].dwconv.kernel_size == 31
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(logits(again, x), logits(model, x), rtol=1e-5, atol=1e-5)


def test_custom_architecture_by_name_and_off_the_weights(tmp_path):
    """A UniRepLKNet trained with the authors' code at other depths/widths loads both ways."""
    sd = read_state_dict(TINY.file("train.pth"))
    assert read_layout(sd) == dict(TINY.layout, depths=[1, 1, 2, 1], dims=[16, 32, 64, 128],
                                   kernel_sizes=[(3,), (13,), (13, 3), (7,)])
    io = TINY.load("io.pt")
    built = lk.create_model("unireplknet_a", num_classes=10, depths=(1, 1, 2, 1), dims=(16, 32, 64, 128),
                            kernel_sizes=((3,), (13,), (13, 3), (7,)), checkpoint_path=TINY.file("train.pth"))
    assert (logits(built, io["input"]) - io["logits"]).abs().max() <= TOL
    read = lk.model_from_checkpoint(TINY.file("train.pth"), "unireplknet_a")
    assert (read.depths, read.dims, read.num_classes, read.deploy) == (
        (1, 1, 2, 1), (16, 32, 64, 128), 10, False)
    assert (logits(read, io["input"]) - io["logits"]).abs().max() <= TOL
    # our safetensors of the custom model records and rebuilds the layout
    again = lk.model_from_checkpoint(lk.save_checkpoint(read, tmp_path / "tiny.safetensors"))
    assert again.depths == (1, 1, 2, 1) and torch.equal(logits(again, io["input"]), logits(read, io["input"]))
    with pytest.raises(ValueError, match="no default kernel layout for depths \\(1, 1, 2, 1\\)"):
        lk.create_model("unireplknet_a", depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))


def test_dense_backbone_cut_after_stage_two_reads_the_rest_from_the_name(tmp_path):
    sd = {k: v for k, v in read_state_dict(TINY.file("backbone_mmseg.pth")).items()
          if not k.startswith(("stages.3", "downsample_layers.3", "norm3", "norm2"))}
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in sd.items()}}, path)
    model = lk.model_from_checkpoint(path, "unireplknet_a")
    assert model.out_indices == (0, 1) and len(model.stages) == 2 and model.dims[:2] == (16, 32)
    io = TINY.load("backbone_io.pt")
    outs = logits(model, io["input"])
    for got, want in zip(outs, io["features"][:2]):
        assert (got - want).abs().max() <= TOL
