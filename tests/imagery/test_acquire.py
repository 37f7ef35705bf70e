"""The one scene path (imagery/acquire.py) and the one lock module (torchbearer/locks.py), on the real sample
product (data/S2A_MSIL2A_…_T29UNU_….SAFE, a crop of the Copernicus product: see data/README)."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import pytest

from tests.imagery.conftest import ROOT
from torchbearer.imagery.acquire import acquire, acquire_entries, local_imagery, one_scene, scene_output
from torchbearer.imagery.cache import stack_info
from torchbearer.imagery.local import LocalScenesError
from torchbearer.locks import LockWaitCancelled, file_lock


def test_scenes_entries_globs_folders_and_geotiffs_take_one_path(sample_safe, data_dir, tmp_path):
    # a glob, a SAFE folder: stacked once into the cache, the same stack whichever way it was named
    [[by_glob]] = acquire_entries([str(sample_safe.parent / "S2A_MSIL2A_*.SAFE")], data_dir, [60])
    [[by_path]] = acquire_entries([str(sample_safe)], data_dir, [60])
    assert by_glob == by_path and by_glob.parent == data_dir / "cache" and stack_info(by_glob).resolution == 60
    # a GeoTIFF is already a stack: used as it is, once whatever the resolutions asked
    tiff = Path(shutil.copy(by_glob, tmp_path / "scene_60m.tif"))
    assert acquire_entries([str(tiff)], data_dir, [20, 60]) == [[tiff]]
    # a list entry is one scene given by several files
    other = Path(shutil.copy(by_glob, tmp_path / "again_60m.tif"))
    assert acquire_entries([[str(tiff), str(other)]], data_dir, [60]) == [[tiff, other]]
    # each scene of a folder or glob is its own scene
    assert acquire_entries([str(tmp_path / "*_60m.tif")], data_dir, [60]) == [[other], [tiff]]
    with pytest.raises(LocalScenesError, match=re.escape("matches nothing")):
        acquire_entries([str(tmp_path / "nothing-*.tif")], data_dir, [60])


def test_one_scene_and_scene_outputs_name_what_is_wrong(tmp_path):
    two = [[tmp_path / "a_60m.tif"], [tmp_path / "b_60m.tif"]]
    with pytest.raises(ValueError, match=r"scene: one scene expected, found 2 \(a_60m.tif, b_60m.tif\)"):
        one_scene(two, "scene")
    out = tmp_path / "map.tif"
    assert scene_output(out, two[0], 1) == out
    assert scene_output(out, two[1], 2) == tmp_path / "map_b.tif"


def test_a_stop_ends_the_wait_for_a_scene_another_job_holds(sample_safe, data_dir):
    """The scene lock is held by another holder: the stop request ends the wait as a cancelled transfer."""
    from torchbearer.imagery.http import TransferCancelled

    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with file_lock(data_dir / "locks" / f"{sample_safe.stem}.lock"):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        held.wait(30)
        with pytest.raises(TransferCancelled, match="waiting for another job"):
            acquire(local_imagery([sample_safe], 60), data_dir, [60], should_stop=lambda: True)
    finally:
        release.set()
        thread.join(30)
    [[stack]] = acquire(local_imagery([sample_safe], 60), data_dir, [60])  # free again: it proceeds
    assert stack.is_file()


def test_file_lock_wait_is_cancellable(tmp_path):
    path = tmp_path / "locks" / "x.lock"
    with file_lock(path), pytest.raises(LockWaitCancelled), file_lock(path, should_stop=lambda: True):
        pass
    with file_lock(path, should_stop=lambda: True):  # free: taken at once, no stop check
        pass


def test_every_flock_is_taken_in_the_locks_module():
    calls = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "torchbearer").rglob("*.py")
        if path.name != "locks.py" or path.parent.name != "torchbearer"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "fcntl." in line
    ]
    assert calls == []
