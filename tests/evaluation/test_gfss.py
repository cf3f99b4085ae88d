"""BAM's generalised few-shot test (evaluation/gfss.py): the class choice, the target remap, both merge
rules, the metric bookkeeping, and the episodes."""
import os
import random

import numpy as np
import pytest
import torch

from evaluation.gfss import GFSSMeter, GFSSScoring, merge_gfss_prediction
from model.sccan import EnsembleOutputs
from tests.support.datasets import block_label, write_mini_dataset
from util.dataset import get_class_lists, read_label
from util.gfss_dataset import GFSSData, choose_gfss_class, gfss_target

FOLD0_BASE, FOLD0_NOVEL = get_class_lists("pascal", 0)  # 6..20 and 1..5


# ----------------------------------------------------------------------------- class choice
def test_a_query_without_base_classes_gets_one_of_its_own_novel_classes():
    for seed in range(20):
        random.seed(seed)
        chosen = choose_gfss_class([2, 4], FOLD0_BASE, FOLD0_NOVEL)
        after = random.random()
        random.seed(seed)
        assert chosen == random.choice([2, 4])
        assert after == random.random()  # one draw, nothing more


def test_a_query_with_a_base_class_gets_any_novel_class_of_the_fold():
    chosen = set()
    for seed in range(40):
        random.seed(seed)
        value = choose_gfss_class([2, 7], FOLD0_BASE, FOLD0_NOVEL)
        random.seed(seed)
        assert value == random.choice(FOLD0_NOVEL)
        chosen.add(value)
    assert chosen == set(FOLD0_NOVEL)  # absent classes too: the model must then predict none


# ---------------------------------------------------------------------------- target remap
def test_target_remap_of_a_hand_made_label():
    label = np.array([[0, 1, 6, 255],
                      [2, 20, 1, 7]], np.uint8)
    # base c -> c - 5 (index in 6..20, + 1); the chosen class 1 -> N_base + 1 = 16; the other
    # novel class 2 -> 0; 255 kept.
    expected = np.array([[0, 16, 1, 255],
                         [0, 15, 16, 2]], np.uint8)
    np.testing.assert_array_equal(gfss_target(label, FOLD0_BASE, 1), expected)


# ----------------------------------------------------------------------------- merge rules
def _hand_made_outputs():
    """One query of four pixels, N_base = 2 (slots 0, 1, 2 and the novel slot 3).
    base argmax: [0, 1, 2, 0]; softmax(final)_fg = sigmoid([3, 3, 2, -1]) = [.953, .953, .881, .269]."""
    base = torch.tensor([[5.0, 0.0, 0.0, 2.0],
                         [0.0, 5.0, 0.0, 0.0],
                         [0.0, 0.0, 5.0, 0.0]]).view(1, 3, 1, 4)  # (B, N+1, h, w)
    final = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                          [3.0, 3.0, 2.0, -1.0]]).view(1, 2, 1, 4)  # (B, 2, h, w)
    return final, base


def test_merge_final_lets_every_novel_pixel_win():
    final, base = _hand_made_outputs()
    # tau 0.9: pixels 0 and 1 novel -> 3; the others keep the base prediction.
    assert merge_gfss_prediction(final, base, "final", 0.9).flatten().tolist() == [3, 3, 2, 0]
    # tau 0.8: pixel 2 (0.881) is novel too.
    assert merge_gfss_prediction(final, base, "final", 0.8).flatten().tolist() == [3, 3, 3, 0]


def test_merge_base_makes_novel_only_the_base_background():
    final, base = _hand_made_outputs()
    # pixel 1 is novel but the base learner sees class 1 there: the base prediction stays.
    assert merge_gfss_prediction(final, base, "base", 0.9).flatten().tolist() == [3, 1, 2, 0]
    assert merge_gfss_prediction(final, base, "base", 0.8).flatten().tolist() == [3, 1, 2, 0]
    with pytest.raises(ValueError, match="merge"):
        merge_gfss_prediction(final, base, "average", 0.9)


# --------------------------------------------------------------------------------- metrics
def test_metric_bookkeeping_of_two_hand_made_episodes():
    # Base classes [3, 4] (slots 1, 2), novel classes [1, 2] (slot 3 = the episode's class).
    meter = GFSSMeter(base_classes=[3, 4], novel_classes=[1, 2])
    # Episode 1, chosen class 1 (present). Last pixel ignored.
    #   slot 0: target {0}, prediction {0, 4}      -> I 1, U 2   (class 0)
    #   slot 1: target {1}, prediction {1, 2}      -> I 1, U 2   (class 3)
    #   slot 2: target {2}, prediction {}          -> I 0, U 1   (class 4)
    #   slot 3: target {3, 4}, prediction {3}      -> I 1, U 2   (class 1)
    meter.update(torch.tensor([[0, 1, 1, 3, 0, 3]]), torch.tensor([[0, 1, 2, 3, 3, 255]]), 1)
    # Episode 2, chosen class 2 (absent from the query).
    #   slot 0: target {0, 1}, prediction {1, 5}   -> I 1, U 3   (class 0)
    #   slot 1: target {2, 3}, prediction {2, 3}   -> I 2, U 2   (class 3)
    #   slot 2: target {4, 5}, prediction {4}      -> I 1, U 2   (class 4)
    #   slot 3: target {}, prediction {0}          -> I 0, U 1   (class 2)
    meter.update(torch.tensor([[3, 0, 1, 1, 2, 0]]), torch.tensor([[0, 0, 1, 1, 2, 2]]), 2)
    # Totals: class 0: 2/5; class 1: 1/2; class 2: 0/1; class 3: 3/4; class 4: 1/3.
    summary = meter.summary()
    assert summary["episodes"] == 2
    assert summary["background_IoU"] == pytest.approx(0.4)
    assert summary["class_IoU"] == pytest.approx([0.5, 0.0, 0.75, 1 / 3])
    assert summary["mIoU_n"] == pytest.approx((0.5 + 0.0) / 2)                  # 0.25
    assert summary["mIoU_b"] == pytest.approx((0.75 + 1 / 3) / 2)               # 0.5417
    assert summary["mIoU_t"] == pytest.approx((0.5 + 0.0 + 0.75 + 1 / 3) / 4)   # 0.3958


def test_scoring_upsamples_merges_and_credits_the_chosen_class():
    final, base = _hand_made_outputs()
    scoring = GFSSScoring(base_classes=[3, 4], novel_classes=[1, 2], merge="final", merge_tau=0.9)
    outputs = EnsembleOutputs(final, final, base)
    target = torch.tensor([[[3, 3, 2, 0]]])  # the merged prediction exactly
    prediction = scoring.update(outputs, target, class_index=1)  # class 2
    assert prediction.flatten().tolist() == [3, 3, 2, 0]
    summary = scoring.summary()
    assert summary["class_IoU"] == pytest.approx([0.0, 1.0, 0.0, 1.0])  # classes 1, 2, 3, 4
    with pytest.raises(ValueError, match="one at a time"):
        scoring.update(EnsembleOutputs(final.repeat(2, 1, 1, 1), final, base.repeat(2, 1, 1, 1)),
                       target.repeat(2, 1, 1), 0)


# -------------------------------------------------------------------------------- episodes
def _gfss_dataset(root):
    tiny = block_label([7])
    tiny[20:30, 60:70] = 3  # 100 pixels of class 3: far below the few-shot lists' 2048
    entries = [("n1a", block_label([1]), None), ("n1b", block_label([1]), None),
               ("n2a", block_label([2]), None), ("n2b", block_label([2, 6]), None),
               ("n3a", block_label([3]), None), ("mixed", block_label([3, 1, 8]), None),
               ("n4a", block_label([4]), None), ("n4b", block_label([4]), None),
               ("n5a", block_label([5]), None), ("n5b", block_label([5, 9]), None),
               ("base", block_label([6, 8]), None), ("tiny", tiny, None)]
    return write_mini_dataset(root, entries, list_name="val.txt")


def test_episodes_follow_the_val_list_and_the_draws(tmp_path):
    root = str(tmp_path)
    val_list = _gfss_dataset(root)
    dataset = GFSSData(0, 1, root, val_list, data_set="pascal", show_progress=False)
    names = [os.path.basename(image) for image, _ in dataset.queries]
    assert names[0] == "n1a.jpg" and names[-1] == "tiny.jpg" and len(dataset) == 12
    assert [os.path.basename(i) for i, _ in dataset.support_files[3]] == ["n3a.jpg", "mixed.jpg", "tiny.jpg"]
    for index in range(len(dataset)):
        random.seed(index)
        image, target, s_x, s_y, subcls, raw_target = dataset[index]
        label = read_label(dataset.queries[index][1])
        present = [int(c) for c in np.unique(label) if c not in (0, 255)]
        random.seed(index)
        chosen = choose_gfss_class(present, FOLD0_BASE, FOLD0_NOVEL)
        assert FOLD0_NOVEL[subcls[0]] == chosen
        np.testing.assert_array_equal(raw_target.numpy(), gfss_target(label, FOLD0_BASE, chosen))
        assert torch.equal(target, raw_target)  # no transform: ToTensor only
        assert s_x.shape[0] == 1 and (s_y == 1).any()  # the support shows the chosen class
        if not set(present) & set(FOLD0_BASE):
            assert chosen in present


def test_too_few_support_images_is_a_clear_error(tmp_path):
    root = str(tmp_path)
    val_list = write_mini_dataset(root, [("a", block_label([1, 2, 3, 4, 5]), None)], list_name="val.txt")
    with pytest.raises(ValueError, match="at least 2 val images per novel class"):
        GFSSData(0, 1, root, val_list, data_set="pascal", show_progress=False)
