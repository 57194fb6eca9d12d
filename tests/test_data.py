"""camkit.data: generated digits (determinism, exact boxes), resizing, batching, ImageNet/folder parsing, photos."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.data import Sample, batches, digits, folder, imagenet, samples
from camkit.data.synsets import imagenet_wnids


# ---- digits ---------------------------------------------------------------------------------------

def test_digits_same_seed_gives_identical_tensors_and_other_seed_differs() -> None:
    a, b, c = digits(12, seed=3), digits(12, seed=3), digits(12, seed=4)
    for i in range(12):
        assert torch.equal(a[i].image, b[i].image) and torch.equal(a[i].boxes, b[i].boxes)
        assert a[i].label == b[i].label and a[i].id == b[i].id
    assert not all(torch.equal(a[i].image, c[i].image) for i in range(12))


def test_digits_items_are_well_formed() -> None:
    ds = digits(80, seed=7, split="train")
    assert len(ds) == 80
    counts = [len(s.boxes) for s in ds]
    assert set(counts) <= {1, 2} and 2 in counts and 1 in counts
    for s in ds:
        assert s.image.shape == (3, 64, 64) and s.image.dtype == torch.float32
        assert 0.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0
        assert isinstance(s.label, int) and 0 <= s.label < 10
        assert s.box_labels is not None and s.box_labels.tolist() == [s.label] * len(s.boxes)


def test_digits_boxes_are_tight_ink_boxes_and_nothing_else_changed() -> None:
    ds = digits(60, seed=11)
    for i in range(len(ds)):
        sample, background = ds.render(i)
        assert sample.mask is not None
        inside = torch.zeros(64, 64, dtype=torch.bool)
        for x0, y0, x1, y1 in sample.boxes.long().tolist():
            inside[y0:y1, x0:x1] = True
            ink = sample.mask[y0:y1, x0:x1] > 0
            # tight: every edge row/column of the box holds ink
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
        # no ink of the pasted digit outside the boxes, and the canvas is untouched there
        assert float(sample.mask[~inside].abs().max()) == 0.0
        changed = (sample.image != background).any(0)
        assert not (changed & ~inside).any()
        # the digit is really there: the image differs from the background on the ink
        assert changed[sample.mask > 0.5].float().mean() > 0.9


def test_digits_splits_use_disjoint_source_digits() -> None:
    train, test = digits(1, split="train"), digits(1, split="test")
    train_idx = set(np.concatenate(train._by_class).tolist())
    test_idx = set(np.concatenate(test._by_class).tolist())
    assert train_idx and test_idx and not train_idx & test_idx


# ---- resizing and batching ------------------------------------------------------------------------

def _rectangle_sample(box: tuple[int, int, int, int], size: tuple[int, int] = (100, 150)) -> Sample:
    image = torch.zeros(3, *size)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 1.0
    return Sample(image=image, label=0, boxes=torch.tensor([box], dtype=torch.float32), id="rect")


def _ink_box(image: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize("new_size", [(50, 300), (224, 224), (64, 64)])
def test_resize_keeps_boxes_on_the_drawn_rectangle(new_size: tuple[int, int]) -> None:
    sample = _rectangle_sample((30, 20, 90, 60))
    small = sample.resized(new_size)
    assert small.image.shape == (3, *new_size)
    assert torch.allclose(small.boxes[0], torch.tensor(_ink_box(small.image)), atol=1.0)
    assert sample.boxes.tolist() == [[30.0, 20.0, 90.0, 60.0]]  # the original is untouched


def test_batches_stack_resized_samples() -> None:
    out = list(batches(digits(10, seed=1), size=(32, 48), batch_size=4))
    assert [x.shape for x, _ in out] == [(4, 3, 32, 48)] * 2 + [(2, 3, 32, 48)]
    assert all(s.size == (32, 48) for _, chunk in out for s in chunk)


# ---- ImageNet layout ------------------------------------------------------------------------------

def _voc(filename: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    body = "".join(
        f"<object><name>{w}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for w, b in objects
    )
    return f"<annotation><filename>{filename}</filename><size><width>80</width><height>60</height></size>{body}</annotation>"


def _imagenet_fixture(image_dir, xml_dir) -> None:  # noqa: ANN001
    wnids = imagenet_wnids()
    rng = np.random.default_rng(0)

    def jpeg(name: str) -> None:
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image_dir / f"{name}.JPEG")

    def xml(name: str, text: str) -> None:
        (xml_dir / f"{name}.xml").write_text(text)

    jpeg("val_01"); xml("val_01", _voc("val_01", [(wnids[281], (10, 5, 49, 44))]))
    jpeg("val_02"); xml("val_02", _voc("val_02", [(wnids[7], (0, 0, 9, 9)), (wnids[7], (50, 30, 69, 59))]))
    jpeg("val_03"); xml("val_03", _voc("val_03", [(wnids[1], (60, 40, 120, 90))]))  # partly outside: clipped
    jpeg("val_04"); xml("val_04", _voc("val_04", [(wnids[2], (1, 1, 5, 5)), (wnids[3], (6, 6, 9, 9))]))
    jpeg("bad_xml"); xml("bad_xml", "<annotation><object><name>n0144")
    jpeg("unknown"); xml("unknown", _voc("unknown", [("n99999999", (1, 1, 5, 5))]))
    jpeg("no_xml")
    xml("no_image", _voc("no_image", [(wnids[5], (1, 1, 5, 5))]))
    (image_dir / "corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    xml("corrupt", _voc("corrupt", [(wnids[9], (1, 1, 5, 5))]))


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_imagenet_layout_is_parsed_and_problems_counted(tmp_path, layout: str) -> None:  # noqa: ANN001
    if layout == "flat":
        image_dir = xml_dir = tmp_path
    else:
        image_dir, xml_dir = tmp_path / "images", tmp_path / "annotations"
        image_dir.mkdir(), xml_dir.mkdir()
    _imagenet_fixture(image_dir, xml_dir)
    ds = imagenet(tmp_path)
    assert len(ds) == 5  # val_01..04 + corrupt (decoded only when iterated)
    items = {s.id: s for s in ds}
    assert sorted(items) == ["val_01", "val_02", "val_03", "val_04"]
    assert ds.problems == {"malformed_xml": 1, "unknown_wnid": 1, "no_valid_object": 1, "missing_xml": 1,
                           "missing_image": 1, "unreadable_image": 1, "box_clipped": 1}
    assert ds.skipped == ["corrupt"]
    assert len(list(ds)) == 4 and ds.problems["box_clipped"] == 1 and ds.skipped == ["corrupt"]  # counted once
    assert items["val_01"].label == 281 and items["val_01"].boxes.tolist() == [[10, 5, 50, 45]]
    assert items["val_01"].image.shape == (3, 60, 80)
    assert items["val_02"].label == 7 and items["val_02"].boxes.shape == (2, 4)
    assert items["val_03"].boxes.tolist() == [[60, 40, 80, 60]]
    assert items["val_04"].label == [2, 3] and items["val_04"].box_labels.tolist() == [2, 3]
    with pytest.raises(OSError, match="corrupt"):
        ds[[r.id for r in ds.records].index("corrupt")]


def test_imagenet_with_a_synsets_file(tmp_path) -> None:  # noqa: ANN001
    _imagenet_fixture(tmp_path, tmp_path)
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("\n".join(f"{w} name{i}" for i, w in enumerate(imagenet_wnids()[:10])))
    ds = imagenet(tmp_path, synsets=synsets)
    assert {s.id for s in ds} == {"val_02", "val_03", "val_04"}  # val_01's class 281 is not among the 10
    assert ds.categories == list(imagenet_wnids()[:10])


# ---- folder + boxes file --------------------------------------------------------------------------

def _two_images(root) -> None:  # noqa: ANN001
    for name, size in (("a.png", (40, 30)), ("b.png", (20, 50))):
        Image.new("RGB", size, (10, 20, 30)).save(root / name)


def test_folder_with_json(tmp_path) -> None:  # noqa: ANN001
    _two_images(tmp_path)
    spec = {"categories": ["cat", "dog"], "images": [
        {"file": "a.png", "label": "dog", "boxes": [[1, 2, 11, 12], [20, 5, 45, 25]]},
        {"file": "b.png", "label": [0, 1], "boxes": [[0, 0, 5, 5]], "box_labels": ["cat"]},
        {"file": "missing.png", "label": 0, "boxes": []},
        {"file": "a.png", "label": 0, "boxes": [[5, 5, 1, 1]]},
    ]}
    (tmp_path / "boxes.json").write_text(json.dumps(spec))
    ds = folder(tmp_path, tmp_path / "boxes.json")
    items = list(ds)
    assert [s.id for s in items] == ["a.png", "b.png"] and ds.categories == ["cat", "dog"]
    assert items[0].label == 1 and items[0].image.shape == (3, 30, 40)
    assert items[0].boxes.tolist() == [[1, 2, 11, 12], [20, 5, 40, 25]]  # second box clipped to the width
    assert items[1].label == [0, 1] and items[1].box_labels.tolist() == [0]
    assert ds.problems == {"missing_image": 1, "malformed_record": 1, "box_clipped": 1}


def test_folder_with_csv(tmp_path) -> None:  # noqa: ANN001
    _two_images(tmp_path)
    (tmp_path / "boxes.csv").write_text(
        "file,label,x0,y0,x1,y1\na.png,dog,1,2,11,12\na.png,dog,3,3,9,9\nb.png,cat,,,,\n")
    items = list(folder(tmp_path, tmp_path / "boxes.csv"))
    assert [(s.id, s.label, s.boxes.shape[0]) for s in items] == [("a.png", 1, 2), ("b.png", 0, 0)]


# ---- bundled photos -------------------------------------------------------------------------------

def test_bundled_photos_have_boxes_inside_and_imagenet_labels() -> None:
    photos = samples()
    assert len(photos) >= 6 and len({p.id for p in photos}) == len(photos)
    for p in photos:
        h, w = p.size
        assert p.image.shape[0] == 3 and 0 <= float(p.image.min()) and float(p.image.max()) <= 1
        assert len(p.boxes) >= 1 and p.box_labels is not None and len(p.box_labels) == len(p.boxes)
        assert (p.boxes[:, 0] >= 0).all() and (p.boxes[:, 2] <= w).all() and (p.boxes[:, 3] <= h).all()
        assert (p.boxes[:, 2] > p.boxes[:, 0]).all() and (p.boxes[:, 3] > p.boxes[:, 1]).all()
        assert all(0 <= c < 1000 for c in p.labels)
    with pytest.raises(KeyError, match="unknown photo"):
        samples(["no_such_photo"])
