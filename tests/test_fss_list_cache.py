"""The FSS list cache follows changes of its base list; dropped-in lists are used as they are."""
import os
import shutil

import pytest

from util.dataset import SemData


def _dataset(root, base_list, list_root):
    return SemData(split=0, shot=1, data_root=root, data_list=base_list, data_set="pascal",
                   mode="val", list_root=list_root, show_progress=False)


def test_changed_base_list_rebuilds_the_cache(toy_data_root, tmp_path):
    full = os.path.join(toy_data_root, "val.txt")
    with open(full) as handle:
        lines = handle.readlines()
    base = str(tmp_path / "val.txt")
    shutil.copy(full, base)
    list_root = str(tmp_path / "fss")
    first = _dataset(toy_data_root, base, list_root)
    with open(base, "w") as handle:
        handle.writelines(lines[: len(lines) * 2 // 3])
    with pytest.warns(UserWarning, match="rebuilding"):
        second = _dataset(toy_data_root, base, list_root)
    assert len(second.data_list) < len(first.data_list)
    third = _dataset(toy_data_root, base, list_root)  # unchanged now: no rebuild, same lists
    assert third.data_list == second.data_list


def test_lists_without_a_source_record_are_used_as_they_are(toy_data_root, tmp_path):
    base = os.path.join(toy_data_root, "val.txt")
    list_root = str(tmp_path / "fss")
    built = _dataset(toy_data_root, base, list_root)
    os.remove(built.data_list_path + ".source.json")
    other = str(tmp_path / "other.txt")
    with open(base) as handle:
        lines = handle.readlines()
    with open(other, "w") as handle:
        handle.writelines(lines[:10])
    reused = _dataset(toy_data_root, other, list_root)
    assert reused.data_list == built.data_list
