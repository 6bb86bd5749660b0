"""ImageNet label lists: bundled files, head order, names, and class_names_for."""
import hashlib
from importlib.resources import files

import pytest

import largekernel as lk
from largekernel.labels import class_names_for, imagenet_lemmas, imagenet_names, imagenet_synsets

# The SHA-256 the data README records for the files copied from timm 1.0.31's wheel.
SHA256 = {
    "imagenet_synsets.txt": "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15",
    "imagenet22k_synsets.txt": "0ae24538751973797b29d8dec412b2bdc61bc4ec3ecd081eba0735804236bbd2",
    "imagenet_synset_to_lemma.txt": "1b8babda187421a4bde0c9c5a197c36f6bdda962f7ca11ffb2813806cbb2178f",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_bundled_files_are_the_recorded_ones(name):
    data = (files("largekernel") / "data" / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256[name]
    assert SHA256[name] in (files("largekernel") / "data" / "README.md").read_text()


def test_in1k_names_at_known_indices():
    names = imagenet_names(1000)
    assert len(names) == 1000
    known = {0: "tench", 1: "goldfish", 2: "great white shark", 207: "golden retriever",
             281: "tabby", 285: "Egyptian cat", 409: "analog clock", 530: "digital clock",
             850: "teddy", 999: "toilet tissue"}
    assert {i: names[i] for i in known} == known
    assert lk.imagenet_names() == names  # 1000 is the default


def test_in1k_synsets_are_the_sorted_ilsvrc_ids():
    synsets = imagenet_synsets(1000)
    assert synsets[0] == "n01440764" and synsets[207] == "n02099601" and synsets[999] == "n15075141"
    assert synsets == sorted(synsets) and len(set(synsets)) == 1000
    assert imagenet_lemmas(1000)[0] == "tench, Tinca tinca"


def test_in22k_is_the_sorted_fall11_list():
    synsets, names = imagenet_synsets(21841), imagenet_names(21841)
    assert len(synsets) == len(names) == 21841 == len(set(synsets))
    assert synsets == sorted(synsets)
    assert (synsets[0], names[0]) == ("n00004475", "organism")
    assert (synsets[-1], names[-1]) == ("n15102894", "knothole")
    # every in1k class but the teddy bear synset is a 22k class, under the same name
    in1k = dict(zip(imagenet_synsets(1000), imagenet_names(1000)))
    in22k = dict(zip(synsets, names))
    assert sorted(set(in1k) - set(in22k)) == ["n04399382"]
    assert in22k["n02099601"] == "golden retriever" == in1k["n02099601"]


def test_first_lemmas_are_not_unique_but_synsets_are():
    names = imagenet_names(1000)
    assert [i for i, n in enumerate(names) if n == "crane"] == [134, 517]  # the bird and the machine


@pytest.mark.parametrize("bad", [0, 10, 999, 11821, 21843])
def test_other_class_counts_are_refused(bad):
    with pytest.raises(ValueError, match=rf"no ImageNet label list has {bad} classes.*1000.*21841"):
        imagenet_names(bad)
    with pytest.raises(ValueError, match="21841"):
        imagenet_synsets(bad)


def test_lists_are_copies():
    imagenet_names(1000)[0] = "changed"
    imagenet_synsets(1000).clear()
    assert imagenet_names(1000)[0] == "tench" and len(imagenet_synsets(1000)) == 1000


def test_class_names_for_models():
    meta = dict(device="meta")  # built without memory or init: only the head size matters
    assert class_names_for(lk.create_model("unireplknet_a", **meta))[207] == "golden retriever"
    assert class_names_for(lk.create_model("unireplknet_s.in22k", **meta))[0] == "organism"
    # a 21841-class head under an in1k tag (an authors' 22K file loaded as unireplknet_s, say)
    assert len(class_names_for(lk.create_model("unireplknet_a", num_classes=21841, **meta))) == 21841
    assert class_names_for(lk.create_model("unireplknet_a", num_classes=10, **meta)) is None
    assert class_names_for(lk.create_model("unireplknet_a", num_classes=0, **meta)) is None
    bare = lk.UniRepLKNet((1, 1, 1, 1), (8, 16, 32, 64), kernel_sizes=(3, 3, 3, 3), num_classes=1000)
    assert class_names_for(bare) is None  # not from the registry: nothing says it is ImageNet
