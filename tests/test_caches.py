"""The caches behind the analysis and the views fit each detector once per epoch file, and refit an epoch written again:
counted here by wrapping the functions that do the work (plumbing that has no place in the lessons)."""
import collections
import os

import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vitartifacts.analysis as A
from vitartifacts.config import Config
from vitartifacts.store import ProbeStore
from vitartifacts.testing import fabricate_run, memory_data
from vitartifacts.views import RunView

SMALL = dict(n_epochs=5, depth=4, n_heads=2, n_images=8, grid=(6, 6), patch_size=8, num_classes=4)


@pytest.fixture
def counted_fits(monkeypatch):
    fits = []
    table = A.outlier_table
    monkeypatch.setattr(A, 'outlier_table', lambda *a, **kw: fits.append(1) or table(*a, **kw))
    return fits


def test_outliers_over_epochs_reads_its_cache(tmp_path, counted_fits):
    store = ProbeStore(fabricate_run(tmp_path / 'v', 'vanilla', **SMALL))
    first = A.outliers_over_epochs(store, 'bimodal')
    assert len(counted_fits) == len(store.epochs) and A.outlier_cache_path(store, 'bimodal').exists()
    counted_fits.clear()
    pd.testing.assert_frame_equal(A.outliers_over_epochs(store, 'bimodal'), first)
    assert counted_fits == []                                                      # the second call fits nothing
    A.outliers_over_epochs(store, 'bimodal', min_separation=4.0)
    assert len(counted_fits) == len(store.epochs)                                  # other settings: an entry of their own
    p = store.epoch_path(store.epochs[-1]); os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 1))
    counted_fits.clear(); A.outliers_over_epochs(store, 'bimodal')
    assert len(counted_fits) == 1                                                  # an epoch written again is refitted
    counted_fits.clear()
    pd.testing.assert_frame_equal(A.outliers_over_epochs(store, 'bimodal', cache=False), first)
    assert len(counted_fits) == len(store.epochs)


def test_views_and_compare_runs_share_one_cache(tmp_path, counted_fits, monkeypatch):
    run_dir = fabricate_run(tmp_path / 'v', 'vanilla', **SMALL)
    view = RunView(run_dir)
    counted_fits.clear()
    A.compare_runs([run_dir], 'sigma')
    assert counted_fits == []                                                      # the views fitted it already
    store, loads, load = ProbeStore(run_dir), [], ProbeStore.load
    monkeypatch.setattr(ProbeStore, 'load', lambda self, e, keys=None, raw=False: loads.append((e, tuple(keys or ()))) or load(self, e, keys, raw))
    store.append(40, store.result(20))                                             # the last epoch written again
    assert view.refresh()
    assert len(counted_fits) == len(view.detectors) and loads.count((40, ('norms',))) == 1   # refitted, its norms read once


class CountOps(TorchDispatchMode):
    "Counts the aten ops run inside it."
    def __init__(self): super().__init__(); self.ops = collections.Counter()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def test_evaluate_reads_back_once():
    "No validation batch makes a tensor from a host value (a host-to-device copy on a GPU) or reads one back."
    from vitartifacts.train import Device, build_model, evaluate
    c = Config(size='tiny', img_size=32, patch_size=8, batch_size=16, num_workers=0)
    d, m = memory_data(c), build_model(c, 8)
    with CountOps() as counted: evaluate(m, d.val_loader, Device(torch.device('cpu')), c)
    assert len(d.val_loader) == 8
    assert counted.ops['aten.lift_fresh.default'] == 0
    assert counted.ops['aten._local_scalar_dense.default'] == 1
