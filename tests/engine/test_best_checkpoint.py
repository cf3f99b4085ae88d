"""Best-checkpoint bookkeeping (engine/best_checkpoint.py), without training: epoch labels, names,
replacing the previous best, early stop."""
import pytest

from engine.best_checkpoint import BestCheckpoint, best_checkpoint_name, epoch_label, format_epoch_label, half_epoch_index


@pytest.mark.parametrize("length, index", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 2), (6, 3), (7, 4),
                                           (8, 4), (9, 4), (11, 6), (13, 6), (15, 8)])
def test_half_epoch_index_follows_pythons_round(length, index):
    # By hand: round(L / 2) rounds halves to the even neighbour (2.5 -> 2, 3.5 -> 4, 6.5 -> 6).
    assert half_epoch_index(length) == index


def test_best_checkpoint_bookkeeping_without_training(tmp_path):
    best = BestCheckpoint()
    assert best.improves(0.01) and not best.improves(0.0)  # the first scored validation wins
    assert best.replace(str(tmp_path), 5, epoch_label(0), 0.2) == ""
    assert best.path == str(tmp_path / "train5_epoch_0_0.2000.pth") and best.epoch == 0
    assert not best.improves(0.2)  # equal is not better, as the original's '>'
    previous = best.replace(str(tmp_path), 5, epoch_label(1, half=True), 0.25)
    assert previous == str(tmp_path / "train5_epoch_0_0.2000.pth")
    assert best.path.endswith("train5_epoch_0.5_0.2500.pth")
    # The same name again (same label and rounded mIoU) is overwritten, not deleted.
    assert best.replace(str(tmp_path), 5, 0.5, 0.25001) == ""
    assert not best.should_stop(2, stop_interval=2) and best.should_stop(2.5, stop_interval=2)
    assert BestCheckpoint().should_stop(1, stop_interval=2)  # -1 -> 1: two epochs without any best


def test_epoch_labels_and_best_checkpoint_names_match_the_released_ones():
    # win8_train_epoch_43_0.6753.pth ends the 44th epoch; train5_epoch_33.5_0.4571.pth is the
    # half-epoch validation inside the 35th (0-based 34).
    assert best_checkpoint_name(1, epoch_label(43), 0.67534) == "train_epoch_43_0.6753.pth"
    assert best_checkpoint_name(5, epoch_label(34, half=True), 0.45712) == "train5_epoch_33.5_0.4571.pth"
    assert format_epoch_label(0) == "0" and format_epoch_label(0.5) == "0.5"
