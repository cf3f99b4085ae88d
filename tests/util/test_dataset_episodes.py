"""Tests of util/dataset.py, the episodes: the draw order, transforms, episode contents, bounding
boxes, loaders, and the errors of SemData. The lists are tested in test_dataset_lists.py."""

from __future__ import annotations

import os
import random

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from tests.support.datasets import SMALL, all_fold0_train_classes_dataset, block_label, write_mini_dataset
from util.dataset import (SemData, fill_bounding_boxes, get_class_lists, read_label, transform_supports,
                          write_fss_lists)
from util.episode import (EvaluationEpisode, TrainingEpisode, TrainingEpisodeWithBaseLabel,
                          class_indices)
from util.transform import ToTensor, build_train_transform, build_val_transform


# ----------------------------------------------------------------------------------- helpers
def toy_dataset(root, split=0, shot=1, mode="train", transform="small", **kwargs):
    if transform == "small":
        transform = build_val_transform(SMALL)
    base_list = os.path.join(root, "train.txt" if mode == "train" else "val.txt")
    return SemData(split, shot, root, base_list, data_set="pascal", transform=transform, mode=mode,
                   list_root=os.path.join(root, "fss_list"), show_progress=False, **kwargs)


def brute_force_lists(root, base_list, class_list, filter_intersection):
    """Independent FSS list rule: simple loops over lines and classes (paths joined with root)."""
    data_list, sub_lists = [], {c: [] for c in class_list}
    for line in open(base_list):
        if not line.strip():
            continue
        image_rel, label_rel = line.split()
        pair = (os.path.join(root, image_rel), os.path.join(root, label_rel))
        label = cv2.imread(pair[1], cv2.IMREAD_GRAYSCALE)
        present = [c for c in range(1, 255) if (label == c).any()]
        if filter_intersection and any(c not in class_list for c in present):
            continue
        counting = [c for c in present if c in class_list and int((label == c).sum()) >= 2048]
        if counting:
            data_list.append(pair)
        for c in counting:
            sub_lists[c].append(pair)
    return data_list, sub_lists


def replay_choices(rng, data_list, sub_lists, class_list, labels, index, shot):
    """Independent replay, with a `random.Random` stream, of the original's episode draws
    (util/dataset.py ``SemData.__getitem__``: class, query label, supports; docs/PROTOCOL.md
    section 2)."""
    query = data_list[index]
    label = labels[query[1]]
    candidates = [c for c in range(1, 255) if (label == c).any() and c in class_list]
    class_chosen = candidates[rng.randint(1, len(candidates)) - 1]
    files = sub_lists[class_chosen]
    taken = []
    for _ in range(shot):
        rng.randint(1, len(files))  # the original's discarded first draw
        while True:  # do-while: the original's loop always runs at least once
            candidate = rng.randint(1, len(files)) - 1
            if files[candidate] != query and candidate not in taken:
                break
        taken.append(candidate)
    return query, class_chosen, [files[i] for i in taken]


class DrawOnceStamp:
    """Transform that draws one random() per call and writes a call counter into the image.

    Lets a test see in which order the dataset transforms query and supports, and how the
    supports are stacked. Output: image float (3, 8, 8) filled with the call number, label (8, 8).
    """

    def __init__(self):
        self.calls = 0
        self.draws = []

    def __call__(self, image, label):
        self.draws.append(random.random())
        self.calls += 1
        stamped = np.full((8, 8, 3), float(self.calls), np.float32)
        return ToTensor()(stamped, np.ascontiguousarray(label[:8, :8]))


# ----------------------------------------------------------------------------------- episodes
@pytest.mark.parametrize("mode, shot, split", [("train", 1, 0), ("train", 5, 2), ("val", 5, 1), ("val", 1, 3)])
def test_draw_order_matches_an_independent_replay(toy_data_root, mode, shot, split):
    data = toy_dataset(toy_data_root, split=split, shot=shot, mode=mode)
    train_classes, val_classes = get_class_lists("pascal", split)
    class_list = train_classes if mode == "train" else val_classes
    base = os.path.join(toy_data_root, "train.txt" if mode == "train" else "val.txt")
    data_list, sub_lists = brute_force_lists(toy_data_root, base, class_list, filter_intersection=(mode == "train"))
    labels = {pair[1]: cv2.imread(pair[1], cv2.IMREAD_GRAYSCALE) for pair in data_list}

    random.seed(1234)
    replay = random.Random(1234)
    indices = [0, 5, 5, 17, len(data) - 1, 3, 9]
    for index in indices:
        query, class_chosen, supports = replay_choices(replay, data_list, sub_lists, class_list, labels, index, shot)
        episode = data.sample_episode(index)
        assert episode == {"query": query, "class_chosen": class_chosen, "supports": supports}
    # Interleave __getitem__ (whose transform draws nothing) with the same replayed stream.
    for index in indices:
        query, class_chosen, supports = replay_choices(replay, data_list, sub_lists, class_list, labels, index, shot)
        result = data[index]
        assert result[4] == [class_list.index(class_chosen)]
        expected_s_y = [build_val_transform(SMALL)(np.zeros((2, 2, 3), np.float32),
                                                   _binarised_support(s[1], class_chosen))[1] for s in supports]
        # Reverse shot order: s_y[0] is the last shot.
        assert torch.equal(result[3], torch.stack(expected_s_y[::-1]))
    assert random.getstate() == replay.getstate()


def _binarised_support(label_path, class_chosen):
    label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
    out = (label == class_chosen).astype(np.uint8)
    out[label == 255] = 255
    return out


def test_transforms_run_query_first_then_supports_and_stack_in_reverse(toy_data_root):
    stamp = DrawOnceStamp()
    data = toy_dataset(toy_data_root, split=1, shot=3, mode="train", transform=stamp)
    random.seed(99)
    episode = data.sample_episode(4)
    after_choice = random.getstate()
    random.seed(99)
    image, label, s_x, s_y, subcls = data[4]
    expected_draws = random.Random()
    expected_draws.setstate(after_choice)
    # The four transform draws come right after the choice draws: query, shot 0, 1, 2.
    assert stamp.draws == [expected_draws.random() for _ in range(4)]
    assert image[0, 0, 0].item() == 1.0  # query transformed first
    assert [s_x[k, 0, 0, 0].item() for k in range(3)] == [4.0, 3.0, 2.0]  # last shot stacked first
    assert subcls == [data.train_classes.index(episode["class_chosen"])]


def test_getitem_equals_load_of_sampled_episode_with_training_transform(toy_data_root):
    data = toy_dataset(toy_data_root, split=0, shot=2, mode="train",
                       transform=build_train_transform(96, 96, 0.9, 1.1, -10, 10))
    for seed in (0, 1, 2):
        random.seed(seed)
        direct = data[seed * 7]
        random.seed(seed)
        episode = data.sample_episode(seed * 7)
        loaded = data.load_episode(**episode)
        for a, b in zip(direct[:4], loaded[:4]):
            assert torch.equal(a, b)
        assert direct[4] == loaded[4]
        assert direct[0].shape == (3, 96, 96) and direct[2].shape == (2, 3, 96, 96) and direct[3].shape == (2, 96, 96)
        assert direct[1].dtype == torch.int64 and direct[2].dtype == torch.float32


@pytest.mark.parametrize("mode, shot", [("train", 1), ("train", 5), ("val", 5)])
def test_episode_contents_on_toy_data(toy_data_root, mode, shot):
    data = toy_dataset(toy_data_root, split=2, shot=shot, mode=mode)
    random.seed(5)
    for index in range(0, len(data), 3):
        episode = data.sample_episode(index)
        c = episode["class_chosen"]
        assert c in data.class_list
        query_label = cv2.imread(episode["query"][1], cv2.IMREAD_GRAYSCALE)
        assert (query_label == c).any()
        supports = episode["supports"]
        assert len(supports) == shot and len(set(supports)) == shot
        assert episode["query"] not in supports
        for _, support_label_path in supports:
            assert int((cv2.imread(support_label_path, cv2.IMREAD_GRAYSCALE) == c).sum()) >= 2048
    result = data[0]
    if mode == "val":
        raw_label = result[5]
        episode_label = cv2.imread(data.data_list[0][1], cv2.IMREAD_GRAYSCALE)
        assert raw_label.shape == episode_label.shape
        assert set(raw_label.unique().tolist()) <= {0, 1, 255} and (raw_label == 1).any()
        assert torch.equal(raw_label == 255, torch.from_numpy(episode_label == 255))


def test_bbox_supports(toy_data_root):
    data = toy_dataset(toy_data_root, split=0, shot=1, mode="train", transform=None, ann_type="bbox")
    checked_boxes = 0
    for seed in range(6):
        random.seed(seed)
        episode = data.sample_episode(seed)
        random.seed(seed)
        s_y = data[seed][3][0].numpy()
        raw = cv2.imread(episode["supports"][0][1], cv2.IMREAD_GRAYSCALE)
        target = raw == episode["class_chosen"]
        # Independent bbox: scipy 8-connected components, each box drawn with cv2.rectangle
        # (inclusive end point, as the original), then 255 restored.
        components, _ = ndimage.label(target, structure=np.ones((3, 3)))
        expected = np.zeros(raw.shape, np.uint8)
        for rows, cols in ndimage.find_objects(components):
            cv2.rectangle(expected, (cols.start, rows.start), (cols.stop, rows.stop), 1, -1)
        expected = expected.astype(np.int64)
        expected[raw == 255] = 255
        assert np.array_equal(s_y, expected)
        checked_boxes += int(((expected == 1) & ~target).sum() > 0)
    assert checked_boxes > 0  # boxes really add pixels beyond the masks


def test_fill_bounding_boxes_uses_8_connectivity_and_inclusive_rectangles():
    mask = np.zeros((10, 12), np.uint8)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = 1       # one diagonal component: x 1..3, y 1..3, w = h = 3
    mask[6:9, 8] = 1
    mask[8, 9:11] = 1                             # an L: x 8..10, y 6..8; its box reaches the last row and column
    expected = np.zeros_like(mask)
    # What the original draws: cv2.rectangle((x, y), (x + w, y + h), 1, -1) per component.
    cv2.rectangle(expected, (1, 1), (1 + 3, 1 + 3), 1, -1)
    cv2.rectangle(expected, (8, 6), (8 + 3, 6 + 3), 1, -1)
    filled = fill_bounding_boxes(mask)
    assert np.array_equal(filled, expected)
    assert filled[1:5, 1:5].all() and filled[6:10, 8:12].all() and filled.sum() == 16 + 16


# ----------------------------------------------------------------------------------- loaders
def _collect(loader, batches):
    out = []
    for i, batch in enumerate(loader):
        if i == batches:
            break
        out.append(batch)
    return out


def _same_stream(first, second):
    return all(
        all(torch.equal(a, b) for a, b in zip(x[:4], y[:4])) and torch.equal(x[4][0], y[4][0])
        for x, y in zip(first, second)
    )


def test_same_seed_same_stream_with_zero_and_two_workers(toy_data_root):
    data = toy_dataset(toy_data_root, split=0, shot=1, mode="train",
                       transform=build_train_transform(48, 48, 0.9, 1.1, -10, 10))

    def stream(workers, seed):
        generator = torch.Generator().manual_seed(seed)
        if workers == 0:
            random.seed(seed)
        loader = DataLoader(data, batch_size=2, shuffle=True, num_workers=workers, generator=generator, drop_last=True)
        return _collect(loader, 4)

    assert _same_stream(stream(0, 3), stream(0, 3))
    assert not _same_stream(stream(0, 3), stream(0, 4))
    two_workers = stream(2, 3)
    assert _same_stream(two_workers, stream(2, 3))
    assert not _same_stream(two_workers, stream(2, 4))


# ----------------------------------------------------------------------------------- errors
def test_missing_data_root_and_base_list(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/\*\.jpg.*SegmentationClassAug/\*\.png"):
        SemData(0, 1, str(tmp_path / "nowhere"), str(tmp_path / "train.txt"), list_root=str(tmp_path / "lists"))
    with pytest.raises(FileNotFoundError) as error:
        SemData(0, 1, str(tmp_path), str(tmp_path / "train.txt"), list_root=str(tmp_path / "lists"))
    assert "train.txt" in str(error.value) and "SegmentationClassAug/*.png" in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"annotations/train2014/\*\.png"):
        SemData(0, 1, str(tmp_path / "nowhere"), None, data_set="coco", list_root=str(tmp_path / "lists"))


@pytest.mark.parametrize("kwargs, message", [
    ({"data_set": "toy"}, "unknown data_set 'toy'; allowed: 'pascal', 'coco', 'semantic'"),
    ({"split": 5}, "unknown split 5; allowed: 0, 1, 2, 3"),
    ({"mode": "test"}, "unknown mode 'test'; allowed: 'train', 'val'"),
    ({"ann_type": "polygon"}, "unknown ann_type 'polygon'; allowed: 'mask', 'bbox'"),
    ({"shot": 0}, "shot must be a positive int, got 0"),
    ({"shot": 1.0}, "shot must be a positive int, got 1.0"),
    ({"base_label": True, "mode": "val"}, "base_label serves the base learner's training label: mode 'train' only"),
])
def test_unknown_options_are_rejected(tmp_path, kwargs, message):
    arguments = dict(split=0, shot=1, data_root=str(tmp_path), data_list=None, list_root=str(tmp_path))
    arguments.update(kwargs)
    with pytest.raises(ValueError) as error:
        SemData(**arguments)
    assert str(error.value) == message


def test_too_few_images_per_class_fails_at_construction(tmp_path):
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)
    # 1-shot works (2 images per class = shot + 1)...
    SemData(0, 1, root, base, list_root=os.path.join(root, "lists"), show_progress=False)
    # ...2-shot would loop forever in the original: error naming classes and counts.
    with pytest.raises(ValueError) as error:
        SemData(0, 2, root, base, list_root=os.path.join(root, "lists"), show_progress=False)
    lists = os.path.join(root, "lists", "train", "sub_class_file_list_0.txt")
    details = ", ".join(f"class {c}: 2 image(s)" for c in range(6, 21))
    assert str(error.value) == (f"{lists}: train split 0 needs at least shot+1 = 3 images per class for "
                                f"2-shot episodes; {details}")


def test_size_mismatch_and_unreadable_files_at_load(tmp_path):
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root, extra=[("bad", block_label([6]), (64, 70, 3))])
    data = SemData(0, 1, root, base, list_root=os.path.join(root, "lists"), show_progress=False)
    bad = (os.path.join(root, "JPEGImages", "bad.jpg"), os.path.join(root, "SegmentationClassAug", "bad.png"))
    good = data.sub_class_file_list[6][0]
    with pytest.raises(ValueError, match=r"query image and label sizes differ.*bad\.jpg.*64x70.*bad\.png.*64x64"):
        data.load_episode(bad, 6, [good])
    with pytest.raises(ValueError, match=r"support image and label sizes differ.*bad\.jpg.*bad\.png"):
        data.load_episode(good, 6, [bad])
    with open(os.path.join(root, "JPEGImages", "c7_a.jpg"), "wb") as handle:
        handle.write(b"garbage")
    with pytest.raises(FileNotFoundError, match=r"cannot read image .*c7_a\.jpg"):
        data.load_episode(data.sub_class_file_list[7][0], 7, [data.sub_class_file_list[7][1]])
    os.remove(os.path.join(root, "SegmentationClassAug", "c8_a.png"))
    with pytest.raises(FileNotFoundError, match=r"cannot read label .*c8_a\.png"):
        data.load_episode(data.sub_class_file_list[8][1], 8, [data.sub_class_file_list[8][0]])


def test_episode_refusals_name_the_file_its_size_and_the_class_exactly(tmp_path):
    """The checks of ``load_episode`` on non-square files (a swapped height/width shows), an
    episode class missing from the query or a support label, and a label value that is no PASCAL
    class, in the query and in a support."""
    root = str(tmp_path)
    odd = block_label([6])
    odd[0, 0] = 42
    base = all_fold0_train_classes_dataset(root, extra=[("wide", block_label([6, 9]), (70, 128, 3))])
    data = SemData(0, 1, root, base, list_root=os.path.join(root, "lists"), show_progress=False)
    write_mini_dataset(root, [("odd", odd, None)], list_name="odd.txt")  # after the lists: they refuse it

    def pair(name):
        return (os.path.join(root, "JPEGImages", f"{name}.jpg"), os.path.join(root, "SegmentationClassAug", f"{name}.png"))

    wide, six, seven = pair("wide"), pair("c6_a"), pair("c7_a")
    for call, message in (
            (lambda: data.load_episode(wide, 6, [six]),
             f"query image and label sizes differ: {wide[0]!r} is 70x128, {wide[1]!r} is 64x128"),
            (lambda: data.load_episode(six, 6, [wide]),
             f"support image and label sizes differ: {wide[0]!r} is 70x128, {wide[1]!r} is 64x128"),
            (lambda: data.load_episode(six, 7, [seven]),
             f"query label {six[1]!r} has no pixel of the episode's class 7"),
            (lambda: data.load_episode(seven, 7, [six]),
             f"support label {six[1]!r} has no pixel of the episode's class 7")):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == message
    for query, supports in ((pair("odd"), [six]), (six, [pair("odd")])):
        with pytest.raises(ValueError, match=r"odd\.png.* has values 42 outside 0 \(background\), 1\.\.20"):
            data.load_episode(query, 6, supports)


def test_a_label_value_refusal_says_what_a_label_of_the_dataset_holds(tmp_path):
    """read_label's whole message: the file, the stray values and what a PASCAL label should be
    (its class range and ignore value: the description util/image_files.describe_classes gives)."""
    root = str(tmp_path)
    odd = block_label([6])
    odd[0, 0], odd[0, 1] = 42, 21
    write_mini_dataset(root, [("odd", odd, None)], list_name="odd.txt")
    path = os.path.join(root, "SegmentationClassAug", "odd.png")
    with pytest.raises(ValueError) as error:
        read_label(path, "pascal")
    assert str(error.value) == (
        f"label {path!r} has values 21, 42 outside 0 (background), 1..20 (the classes) and 255 (ignored); "
        f"expected a single-channel 8-bit PNG of pascal class ids (0 background, 1..20, 255 ignored) as "
        f"python -m tools.prepare_pascal writes them")


def test_a_support_the_transform_refuses_is_named_and_unequal_supports_are_refused():
    image, label = np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8)

    def refuse_the_second(image, label):
        if image.shape[0] == 9:
            raise ValueError("too elongated for val_size")
        return ToTensor()(image, label)

    pair = (np.zeros((9, 8, 3), np.float32), np.zeros((9, 8), np.uint8))
    with pytest.raises(ValueError) as error:  # named when the caller gives the names
        transform_supports(refuse_the_second, [image, pair[0]], [label, pair[1]], names=["a.jpg", "b.jpg"])
    assert str(error.value) == "support image 'b.jpg': too elongated for val_size"
    with pytest.raises(ValueError) as error:  # the transform's own error otherwise
        transform_supports(refuse_the_second, [image, pair[0]], [label, pair[1]])
    assert str(error.value) == "too elongated for val_size"
    with pytest.raises(ValueError) as error:
        transform_supports(ToTensor(), [image, pair[0]], [label, pair[1]])
    assert str(error.value).startswith("supports have different sizes after the transform (")
    assert str(error.value).endswith("); use a transform with a fixed output size (Crop or test_Resize)")


def _with_a_shipped_data_list(root, first_label):
    """The fold-0 mini dataset with shipped lists (no record: never rebuilt) whose data list
    starts with an entry 'first' of label ``first_label``; returns the dataset's arguments."""
    base = all_fold0_train_classes_dataset(root, extra=[("first", first_label, None)])
    lists = os.path.join(root, "lists")
    built = SemData(0, 1, root, base, list_root=lists, show_progress=False)
    first = (os.path.join(root, "JPEGImages", "first.jpg"), os.path.join(root, "SegmentationClassAug", "first.png"))
    write_fss_lists(built.data_list_path, built.sub_class_file_list_path, [first] + built.data_list,
                    built.sub_class_file_list)
    os.remove(built.data_list_path + ".source.json")
    return dict(split=0, shot=1, data_root=root, data_list=base, list_root=lists, show_progress=False), first


def test_a_data_list_entry_is_checked_when_its_episode_is_drawn(tmp_path):
    """A shipped data list is used as it is: an entry whose label has no class of the fold, or a
    value that is no PASCAL class, is refused when its episode is drawn, naming the file."""
    root = str(tmp_path / "no_class")
    arguments, first = _with_a_shipped_data_list(root, block_label([1]))
    with pytest.raises(ValueError) as error:
        SemData(**arguments)[0]
    assert str(error.value) == f"{first[1]}: no class of {list(range(6, 21))} in the label of data_list entry 0"
    odd = block_label([6])
    odd[0, 0] = 42
    root = str(tmp_path / "odd")
    arguments, first = _with_a_shipped_data_list(root, block_label([6]))
    cv2.imwrite(first[1], odd)  # changed after the lists were made
    with pytest.raises(ValueError) as error:
        SemData(**arguments)[0]
    assert str(error.value).startswith(f"label {first[1]!r} has values 42 outside 0 (background), 1..20")


def test_a_query_or_support_the_transform_refuses_is_named(tmp_path):
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root, extra=[("tall", block_label([6], size=(96, 64)), None)])
    tall = (os.path.join(root, "JPEGImages", "tall.jpg"), os.path.join(root, "SegmentationClassAug", "tall.png"))

    def refuse_tall(image, label):
        if image.shape[0] == 96:
            raise ValueError("too elongated for val_size")
        return ToTensor()(image, label)

    data = SemData(0, 1, root, base, list_root=os.path.join(root, "lists"), show_progress=False,
                   transform=refuse_tall)
    six = data.sub_class_file_list[6][0]
    with pytest.raises(ValueError) as error:
        data.load_episode(tall, 6, [six])
    assert str(error.value) == f"query image {tall[0]!r}: too elongated for val_size"
    with pytest.raises(ValueError) as error:
        data.load_episode(six, 6, [tall])
    assert str(error.value) == f"support image {tall[0]!r}: too elongated for val_size"


# ------------------------------------------------------------------------------ named items
@pytest.mark.parametrize("mode, base_label, kind", [("train", False, TrainingEpisode),
                                                    ("train", True, TrainingEpisodeWithBaseLabel),
                                                    ("val", False, EvaluationEpisode)])
def test_items_are_named_and_read_by_position_as_the_originals(toy_data_root, mode, base_label, kind):
    """Our code reads episodes by name; code ported from the original unpacks them by position
    in the original's order (image, label, s_x, s_y, subcls_list[, raw_label]), and a loader's
    batch keeps the names."""
    data = toy_dataset(toy_data_root, split=0, shot=2, mode=mode, base_label=base_label)
    random.seed(5)
    chosen = data.sample_episode(5)["class_chosen"]
    random.seed(5)
    item = data[5]
    assert type(item) is kind
    image, label, s_x, s_y, subcls, *rest = item
    assert image is item.query_image and label is item.query_label and subcls is item.class_index
    assert s_x is item.support_images and s_y is item.support_labels
    assert s_x.shape[:2] == (2, 3) and s_y.shape[0] == 2 and label.shape == image.shape[1:]
    classes = data.train_classes if mode == "train" else data.val_classes
    assert subcls == [classes.index(chosen)]
    if kind is EvaluationEpisode:
        assert rest == [item.raw_label] and item.raw_label.dtype == torch.int64
    elif kind is TrainingEpisodeWithBaseLabel:
        assert rest == [item.base_label] and item.base_label.shape == label.shape
    else:
        assert rest == []
    # (validation batches hold one episode: the raw labels keep each image's own size)
    size = 2 if mode == "train" else 1
    batch = next(iter(DataLoader(data, batch_size=size, shuffle=False)))
    assert type(batch) is kind
    assert batch.query_image.shape == (size, *image.shape) and batch.support_images.shape == (size, *s_x.shape)
    assert isinstance(batch.class_index, list) and class_indices(batch).shape == (size,)
