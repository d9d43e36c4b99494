"""The template cache: corrupted files are repaired, unwritable dirs fail early."""

import os

import mne
import numpy as np
import pytest

from mne_unfolded_sbl.datasets import _cache, _forward, _subject
from mne_unfolded_sbl.datasets import get_subjects_dir, make_template_forward
from mne_unfolded_sbl.datasets._cache import CACHE_ENV, cache_dir

FAST = dict(montage="things-eeg2", spacing="ico3", bem_ico=3, source="embedded")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache holding the FAST forward and its BEM."""
    root = tmp_path_factory.mktemp("cache_repair")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root))
        fwd = make_template_forward(**FAST, verbose=False)
        yield root, fwd


@pytest.fixture
def bem_calls(monkeypatch):
    """Count the BEM computations (make_bem_model calls)."""
    calls = []
    orig = mne.make_bem_model

    def counting(*args, **kwargs):
        calls.append(args)
        return orig(*args, **kwargs)

    monkeypatch.setattr(mne, "make_bem_model", counting)
    return calls


def _only(root, pattern):
    (fname,) = root.glob(pattern)
    return fname


def _assert_same_gain(fwd, fwd0):
    """Recomputed gains agree up to float32 rounding / BLAS threading."""
    gain0 = fwd0["sol"]["data"]
    assert fwd["sol"]["row_names"] == fwd0["sol"]["row_names"]
    np.testing.assert_allclose(fwd["sol"]["data"], gain0, rtol=1e-4,
                               atol=1e-5 * np.abs(gain0).max())


def _truncate(fname, frac=0.5):
    data = fname.read_bytes()
    fname.write_bytes(data[: int(len(data) * frac)])
    return len(data)


def test_truncated_forward_repaired(cache, bem_calls, monkeypatch):
    """A truncated cached forward is reported, deleted and rebuilt."""
    root, fwd0 = cache
    monkeypatch.setenv(CACHE_ENV, str(root))
    fname = _only(root, "fwd/*-fwd.fif")
    size = _truncate(fname)
    with pytest.warns(RuntimeWarning, match=f"forward solution .*{fname.name}.*"
                                            "corrupted.*computing it again"):
        fwd = make_template_forward(**FAST, verbose=False)
    assert bem_calls == []  # the (intact) cached BEM was reused
    assert fname.stat().st_size == size  # repaired on disk
    _assert_same_gain(fwd, fwd0)
    # an empty file (killed before anything was written) too
    fname.write_bytes(b"")
    with pytest.warns(RuntimeWarning, match="corrupted"):
        make_template_forward(**FAST, verbose=False)
    assert fname.stat().st_size == size


def test_truncated_bem_repaired(cache, bem_calls, monkeypatch):
    """A truncated cached BEM solution is reported, deleted and rebuilt."""
    root, fwd0 = cache
    monkeypatch.setenv(CACHE_ENV, str(root))
    bem_fname = _only(root, "bem/*-bem-sol.fif")
    size = _truncate(bem_fname, 0.9)
    _only(root, "fwd/*-fwd.fif").unlink()  # so that the BEM is needed
    with pytest.warns(RuntimeWarning, match=f"BEM solution .*{bem_fname.name}"):
        fwd = make_template_forward(**FAST, verbose=False)
    assert len(bem_calls) == 1
    assert bem_fname.stat().st_size == size
    mne.read_bem_solution(bem_fname)  # readable again
    _assert_same_gain(fwd, fwd0)


def test_truncated_surface_repaired(tmp_path, monkeypatch):
    """A damaged file of the materialised template is detected and rewritten."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    subjects_dir = get_subjects_dir("embedded")
    fs_dir = subjects_dir / "fsaverage"
    white = fs_dir / "surf" / "lh.white"
    rr0, tris0 = mne.read_surface(white)
    _truncate(white)
    with pytest.warns(RuntimeWarning, match=r"fsaverage template .*surf/lh\.white"):
        assert get_subjects_dir("embedded") == subjects_dir
    rr, tris = mne.read_surface(white)
    np.testing.assert_array_equal(rr, rr0)
    np.testing.assert_array_equal(tris, tris0)
    # same size, different bytes: caught by the checksum
    annot = fs_dir / "label" / "rh.aparc.annot"
    data = bytearray(annot.read_bytes())
    data[-20:] = bytes(20)
    annot.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=r"label/rh\.aparc\.annot: checksum"):
        get_subjects_dir("embedded")
    assert annot.read_bytes() != bytes(data)
    # a missing file and a damaged manifest
    (fs_dir / "bem" / "outer_skull.surf").unlink()
    with pytest.warns(RuntimeWarning, match=r"outer_skull\.surf: missing"):
        get_subjects_dir("embedded")
    (fs_dir / _subject.MARKER).write_text("{")
    with pytest.warns(RuntimeWarning, match="unreadable manifest"):
        get_subjects_dir("embedded")
    assert _subject._check_subject(fs_dir) is None
    assert not list(subjects_dir.parent.glob(".t*"))  # no temp/trash left


def test_unrepairable_file_error(cache, bem_calls, monkeypatch):
    """A cache entry that cannot be deleted gives an error naming it and the fix."""
    root, _ = cache
    monkeypatch.setenv(CACHE_ENV, str(root))
    fname = _only(root, "fwd/*-fwd.fif")
    data = fname.read_bytes()
    fname.unlink()
    fname.mkdir()  # a directory where the file should be: unlink fails
    (fname / "x").write_text("x")
    try:
        with pytest.warns(RuntimeWarning, match="not a regular file"), \
                pytest.raises(RuntimeError, match=f"(?s){fname.name}.*could not be "
                              f"deleted.*Delete .*{CACHE_ENV}"):
            make_template_forward(**FAST, verbose=False)
    finally:
        (fname / "x").unlink()
        fname.rmdir()
        fname.write_bytes(data)
    assert bem_calls == []


def test_unusable_cache_dir_fails_early(tmp_path, monkeypatch, bem_calls):
    """A cache root that cannot be created fails before anything is computed."""
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    bad = afile / "sub"  # fails even for root, unlike chmod
    monkeypatch.setenv(CACHE_ENV, str(bad))
    match = f"(?s)cache directory {bad}.*{CACHE_ENV}"
    with pytest.raises(RuntimeError, match=match):
        make_template_forward(**FAST)
    with pytest.raises(RuntimeError, match=match):
        get_subjects_dir("embedded")
    with pytest.raises(RuntimeError, match=match):
        cache_dir()
    assert bem_calls == []


@pytest.mark.parametrize("subdir", ["fwd", "bem"])
def test_unwritable_subdir_fails_before_bem(tmp_path, monkeypatch, bem_calls, subdir):
    """An unwritable fwd/ or bem/ cache dir is detected before the BEM."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    (tmp_path / subdir).write_text("blocks the directory")
    with pytest.raises(RuntimeError, match=f"(?s)cache directory {tmp_path / subdir}"
                                           f" is not writable.*{CACHE_ENV}"):
        make_template_forward(**FAST)
    assert bem_calls == []


def test_check_writable_probe(tmp_path, monkeypatch):
    """check_writable really writes (os.access is fooled as root)."""
    _cache.check_writable(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()
    assert list((tmp_path / "new" / "dir").iterdir()) == []  # probe removed

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_cache.tempfile, "mkstemp", refuse)
    with pytest.raises(RuntimeError, match=f"Permission denied.*{CACHE_ENV}"):
        _cache.check_writable(tmp_path)


def test_atomic_write(tmp_path):
    """A failed write leaves neither a partial file nor a temporary file."""
    fname = tmp_path / "sub" / "out-fwd.fif"

    def half(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(RuntimeError, match=f"(?s){fname.name}.*No space.*{CACHE_ENV}"):
        _cache.atomic_write(fname, half, "-fwd.fif")
    assert list(fname.parent.iterdir()) == []
    fname.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        _cache.atomic_write(fname, half, "-fwd.fif")
    assert fname.read_bytes() == b"old"  # the previous version is untouched
    _cache.atomic_write(fname, lambda tmp: tmp.write_bytes(b"new"))
    assert fname.read_bytes() == b"new"
    assert sorted(os.listdir(fname.parent)) == [fname.name]


def test_mismatched_cached_forward_rebuilt(cache, monkeypatch):
    """A readable cached forward with other channels is not returned."""
    root, fwd0 = cache
    monkeypatch.setenv(CACHE_ENV, str(root))
    fname = _only(root, "fwd/*-fwd.fif")
    fwd = mne.read_forward_solution(fname)
    mne.write_forward_solution(
        fname, mne.pick_channels_forward(fwd, fwd["info"]["ch_names"][:20]),
        overwrite=True)
    with pytest.warns(RuntimeWarning, match="unexpected channels"):
        fwd = make_template_forward(**FAST, verbose=False)
    assert fwd["nchan"] == 63
    _assert_same_gain(fwd, fwd0)
    assert _forward._check_forward(mne.read_forward_solution(fname),
                                   fwd0["info"], "ico3") is None


def test_resolve_bem_ico_auto(tmp_path, monkeypatch):
    """``bem_ico="auto"`` is ico4 exactly when that BEM is cached."""
    from mne_unfolded_sbl.datasets import resolve_bem_ico
    from mne_unfolded_sbl.datasets._forward import _bem_fname, _source_key
    from mne_unfolded_sbl.datasets._subject import resolve_source

    monkeypatch.setenv("MNE_UNFOLDED_SBL_CACHE", str(tmp_path))
    assert resolve_bem_ico(3) == 3 and resolve_bem_ico(4) == 4
    assert resolve_bem_ico("auto") == 3
    kind, subjects_dir = resolve_source("auto")
    fname = _bem_fname(_source_key(kind, subjects_dir), 4, (0.3, 0.006, 0.3))
    fname.parent.mkdir(parents=True, exist_ok=True)
    fname.write_bytes(b"x")
    assert resolve_bem_ico("auto") == 4
    assert resolve_bem_ico("auto", (0.33, 0.0045, 0.27)) == 3
    with pytest.raises(ValueError, match="bem_ico"):
        resolve_bem_ico(5)
