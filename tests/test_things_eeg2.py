"""THINGS-EEG2: loader on small files in the dataset's raw format, and the
download path (OSF / figshare API look-up, pooch, zip extraction) against a
fake network serving the JSON fixtures in tests/data/things_eeg2/."""

import copy
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import mne
import requests

from mne_unfolded_sbl import things_eeg2 as te
from mne_unfolded_sbl.datasets import THINGS_EEG2_CH_NAMES, make_info

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "things_eeg2"
SFREQ = 1000.0
ONSETS = np.arange(500, 4500, 200)  # 20 image onsets, 200 ms apart
TARGETS = (3, 11)  # onsets carrying the target code 99999


def _write(path, *, scale=1.0, n_times=5000, seed=0, extra=None, drop=None,
           data=None):
    """A pickled-dict .npy like the dataset's raw_eeg_{training,test}.npy."""
    rng = np.random.default_rng(seed)
    eeg = rng.normal(0.0, 10e-6, (63, n_times)) if data is None else data
    stim = np.zeros(n_times)
    stim[ONSETS] = 1 + np.arange(len(ONSETS))
    stim[ONSETS[list(TARGETS)]] = te.TARGET_EVENT
    d = dict(raw_eeg_data=np.vstack([eeg * scale, stim]),
             ch_names=THINGS_EEG2_CH_NAMES + ["stim"],
             ch_types=["eeg"] * 63 + ["stim"], sfreq=SFREQ,
             highpass=0.01, lowpass=100.0)
    d.update(extra or {})
    for key in drop or ():
        del d[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, d, allow_pickle=True)
    return path


@pytest.fixture()
def raw_file(tmp_path):
    return _write(tmp_path / "sub-01" / "ses-01" / "raw_eeg_test.npy")


def test_read_raw(raw_file):
    raw = te.read_things_eeg2_raw(raw_file)
    assert isinstance(raw, mne.io.RawArray)
    assert raw.ch_names == THINGS_EEG2_CH_NAMES + ["stim"]
    types = raw.get_channel_types()
    assert types.count("eeg") == 63 and types[-1] == "stim"
    assert raw.info["sfreq"] == SFREQ
    assert raw.n_times == 5000
    # volts kept as volts
    np.testing.assert_allclose(np.std(raw.get_data(picks="eeg")), 10e-6, rtol=0.05)
    # montage: the fsaverage-fitted template positions of the cap, the same
    # (head coordinates) as in the template forward models' info
    pos = raw.get_montage().get_positions()["ch_pos"]
    assert set(pos) == set(THINGS_EEG2_CH_NAMES)
    ref = make_info("things-eeg2")
    for name in ("Oz", "Cz", "Fp1", "TP10"):
        np.testing.assert_allclose(
            raw.info["chs"][raw.ch_names.index(name)]["loc"][:3],
            ref["chs"][ref.ch_names.index(name)]["loc"][:3], atol=1e-9)
    assert np.linalg.norm(pos["Oz"] - pos["Fp1"]) > 0.1  # metres apart
    assert pos["Oz"][1] < 0 < pos["Fp1"][1]  # occipital behind frontal
    assert raw.info["bads"] == []


def test_microvolts_are_converted(tmp_path):
    fname = _write(tmp_path / "uv.npy", scale=1e6)  # stored in µV
    raw = te.read_things_eeg2_raw(fname)
    np.testing.assert_allclose(np.std(raw.get_data(picks="eeg")), 10e-6, rtol=0.05)
    raw = te.read_things_eeg2_raw(fname, units="V")
    assert np.std(raw.get_data(picks="eeg")) > 1
    raw = te.read_things_eeg2_raw(_write(tmp_path / "v.npy"), units="uV")
    assert np.std(raw.get_data(picks="eeg")) < 1e-9


def test_events(raw_file):
    raw = te.read_things_eeg2_raw(raw_file)
    events = te.find_things_eeg2_events(raw)
    assert len(events) == len(ONSETS) - len(TARGETS)
    assert te.TARGET_EVENT not in events[:, 2]
    expected = np.delete(ONSETS, TARGETS)
    np.testing.assert_array_equal(events[:, 0], expected)
    np.testing.assert_array_equal(events[:, 2],
                                  np.delete(1 + np.arange(len(ONSETS)), TARGETS))
    all_events = te.find_things_eeg2_events(raw, include_targets=True)
    assert len(all_events) == len(ONSETS)
    assert (all_events[:, 2] == te.TARGET_EVENT).sum() == len(TARGETS)


def test_epochs(raw_file):
    raw = te.read_things_eeg2_raw(raw_file)
    epochs = te.make_things_eeg2_epochs(raw, tmin=-0.1, tmax=0.2)
    assert len(epochs) == len(ONSETS) - len(TARGETS)
    assert epochs.times[0] == pytest.approx(-0.1)
    assert epochs.times[-1] == pytest.approx(0.2)
    assert len(epochs.times) == 301
    assert epochs.ch_names == THINGS_EEG2_CH_NAMES  # EEG only
    assert any(p["desc"] == "Average EEG reference" for p in epochs.info["projs"])
    base = epochs.get_data()[..., epochs.times <= 1e-9].mean(-1)
    np.testing.assert_allclose(base, 0.0, atol=1e-12)
    decimated = te.make_things_eeg2_epochs(raw, decim=4, h_freq=40.0)
    assert decimated.info["sfreq"] == SFREQ / 4


def test_fetch_local_and_errors(tmp_path, raw_file, monkeypatch, web):
    root = raw_file.parents[2]
    web.online = False  # nothing below may touch the network
    assert te.fetch_things_eeg2(1, 1, "test", path=root) == raw_file
    # the dataset's own layout (raw_data/sub-XX/...) is found too
    other = _write(tmp_path / "ds" / "raw_data" / "sub-02" / "ses-03"
                   / "raw_eeg_training.npy")
    assert te.fetch_things_eeg2(2, 3, "training", path=tmp_path / "ds") == other
    # the environment variable names the folder
    monkeypatch.setenv(te.PATH_ENV, str(root))
    assert te.fetch_things_eeg2() == raw_file
    assert web.requests == [] and web.downloads == []
    # missing and offline: a clear error naming the APIs, the raw-data
    # component, where to put the file by hand and the environment variable
    with pytest.raises(RuntimeError, match="offline") as err:
        te.fetch_things_eeg2(5, 2, "test", path=tmp_path / "none")
    msg = str(err.value)
    for text in ("https://api.osf.io/v2/nodes/crxs4/files/",
                 "https://api.figshare.com/v2/articles/18470912",
                 "https://osf.io/crxs4/", "sub-05.zip", te.PATH_ENV,
                 str(tmp_path / "none" / "sub-05" / "ses-02" / "raw_eeg_test.npy"),
                 str(tmp_path / "none" / "archives" / "sub-05.zip")):
        assert text in msg, text
    # a registered URL that cannot be reached: the offline error
    monkeypatch.setitem(te.THINGS_EEG2_URLS, "sub-05/ses-02/raw_eeg_test.npy",
                        ("http://127.0.0.1:9/raw_eeg_test.npy", None))
    with pytest.warns(RuntimeWarning, match="No published hash"):
        with pytest.raises(RuntimeError, match="offline") as err:
            te.fetch_things_eeg2(5, 2, "test", path=tmp_path / "none")
    assert "http://127.0.0.1:9/raw_eeg_test.npy" in str(err.value)
    with pytest.raises(ValueError, match="subject"):
        te.things_eeg2_fname(11, 1)
    with pytest.raises(ValueError, match="partition"):
        te.things_eeg2_fname(1, 1, "train")
    with pytest.raises(ValueError, match="source"):
        te.resolve_things_eeg2(1, 1, source="zenodo")


# -- download: a fake network serving the recorded-shape API responses --------

OSF = "https://api.osf.io/v2/nodes/crxs4/files"
RAW_DATA = f"{OSF}/osfstorage/63f1a2b3c4d5e6f7a8b9c0d1/"
ROUTES = {
    f"{OSF}/": "osf_crxs4_files.json",
    f"{OSF}/osfstorage/": "osf_crxs4_osfstorage.json",
    RAW_DATA: "osf_crxs4_osfstorage_raw_data_page1.json",
    RAW_DATA + "?page=2": "osf_crxs4_osfstorage_raw_data_page2.json",
    f"{OSF}/osfstorage/63f1a2b3c4d5e6f7a8b9c0d3/": "osf_crxs4_osfstorage_sub-03.json",
    f"{OSF}/osfstorage/63f1a2b3c4d5e6f7a8b9c0d4/":
        "osf_crxs4_osfstorage_sub-03_ses-01.json",
    f"{OSF}/figshare/": "osf_crxs4_figshare.json",
    f"{OSF}/figshare/18470912/": "osf_crxs4_figshare_article.json",
    "https://api.figshare.com/v2/articles/18470912": "figshare_article_18470912.json",
}
# download links in the fixtures
URL_SUB01_OSF = "https://osf.io/download/63f1a2b3c4d5e6f7a8b9c101/"
URL_SUB01_FIGSHARE = "https://ndownloader.figshare.com/files/33000001"
URL_SUB03_NPY = "https://osf.io/download/63f1a2b3c4d5e6f7a8b9c2a1/"


class FakeWeb:
    """The network: API JSON from the fixtures, downloads from memory."""

    def __init__(self):
        self.json = {url: json.loads((DATA / name).read_text("utf-8"))
                     for url, name in ROUTES.items()}
        self.files = {}
        self.requests = []
        self.downloads = []
        self.online = True
        self.osf_online = True
        self.downloads_online = True

    def _items(self):
        for obj in self.json.values():
            yield from obj.get("data") or []

    def serve(self, url, content):
        """Serve ``content`` at ``url`` and publish its hashes (every
        listing entry with this download link gets them)."""
        self.files[url] = content
        sha256 = hashlib.sha256(content).hexdigest()
        md5 = hashlib.md5(content).hexdigest()
        for item in self._items():
            if item["links"].get("download") == url:
                hashes = item["attributes"]["extra"]["hashes"]
                hashes["md5"] = md5
                if "sha256" in hashes:
                    hashes["sha256"] = sha256
        for obj in self.json.values():
            for f in obj.get("files") or []:
                if f["download_url"] == url:
                    f["computed_md5"] = f["supplied_md5"] = md5

    def drop(self, name):
        """Remove every listed file called ``name``."""
        for obj in self.json.values():
            if "data" in obj:
                obj["data"] = [i for i in obj["data"]
                               if i["attributes"].get("name") != name]
            if "files" in obj:
                obj["files"] = [f for f in obj["files"] if f["name"] != name]

    def get_json(self, url):
        self.requests.append(url)
        if not self.online or (not self.osf_online and "api.osf.io" in url):
            raise requests.exceptions.ConnectionError(
                f"Max retries exceeded with url: {url} (offline test)")
        if url not in self.json:
            raise AssertionError(f"unexpected API request {url}")
        return copy.deepcopy(self.json[url])

    def downloader(self, url, progressbar=False):
        def download(url, output_file, pooch, check_only=False):
            self.downloads.append(url)
            if not (self.online and self.downloads_online):
                raise requests.exceptions.ConnectionError(
                    f"Failed to establish a new connection: {url}")
            if url not in self.files:
                raise requests.exceptions.HTTPError(f"404 Not Found: {url}")
            if isinstance(output_file, (str, Path)):
                Path(output_file).write_bytes(self.files[url])
            else:
                output_file.write(self.files[url])
        return download


@pytest.fixture(autouse=True)
def web(monkeypatch):
    """No test here touches the real network."""
    fake = FakeWeb()
    monkeypatch.setattr(te, "_get_json", fake.get_json)
    monkeypatch.setattr(te, "_downloader", fake.downloader)
    monkeypatch.delenv(te.PATH_ENV, raising=False)
    return fake


def _zip_bytes(tmp_path, members, *, compression=zipfile.ZIP_DEFLATED):
    """A subject archive: member name -> data (written in the raw format)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for k, (member, seed) in enumerate(members.items()):
            src = _write(tmp_path / "zipsrc" / f"{k}.npy", seed=seed)
            zf.write(src, member)
    return buf.getvalue()


def _raw_bytes(tmp_path, seed):
    return _write(tmp_path / "src" / f"{seed}.npy", seed=seed).read_bytes()


def test_list_osf_files_walks_folders_and_pages(web):
    files = te.list_osf_files("crxs4", descend=te._folder_filter(1, 1))
    paths = {f.path: f for f in files}
    # both providers, the folder, both pages of it
    assert "README.txt" in paths
    for s in range(1, 11):
        assert f"raw_data/sub-{s:02d}.zip" in paths
        assert f"THINGS-EEG2 raw EEG data/sub-{s:02d}.zip" in paths
    assert RAW_DATA + "?page=2" in web.requests  # links.next followed
    # the folders of other subjects are not walked
    assert not any("63f1a2b3c4d5e6f7a8b9c0d3" in u for u in web.requests)
    osf_zip = paths["raw_data/sub-10.zip"]
    assert osf_zip.known_hash.startswith("sha256:")
    assert osf_zip.url == "https://osf.io/download/63f1a2b3c4d5e6f7a8b9c110/"
    assert osf_zip.size == 11_000_000_010
    assert osf_zip.source == "osf:crxs4/osfstorage"
    fs_zip = paths["THINGS-EEG2 raw EEG data/sub-01.zip"]
    assert fs_zip.known_hash.startswith("md5:")  # the figshare add-on: MD5 only
    assert fs_zip.source == "osf:crxs4/figshare"
    assert fs_zip.name == "sub-01.zip"
    # one provider only
    only = te.list_osf_files("crxs4", providers=["figshare"])
    assert {f.source for f in only} == {"osf:crxs4/figshare"} and len(only) == 10
    # figshare API
    fs = te.list_figshare_files()
    assert [f.name for f in fs] == [f"sub-{s:02d}.zip" for s in range(1, 11)]
    assert all(f.known_hash.startswith("md5:") for f in fs)


def test_resolve(web):
    remote = te.resolve_things_eeg2(1, 1, "test")
    # the archive; among its copies the one with a published SHA-256
    assert remote.path == "raw_data/sub-01.zip"
    assert remote.member == "sub-01/ses-01/raw_eeg_test.npy"
    assert remote.known_hash.startswith("sha256:")
    assert remote.url == URL_SUB01_OSF
    # a listed single file wins over the archive; only sub-03/ses-01 is walked
    remote = te.resolve_things_eeg2(3, 1, "test")
    assert remote.path == "raw_data/sub-03/ses-01/raw_eeg_test.npy"
    assert remote.member is None and remote.url == URL_SUB03_NPY
    assert not any("63f1a2b3c4d5e6f7a8b9c0d5" in u for u in web.requests)  # ses-02
    # figshare only
    remote = te.resolve_things_eeg2(1, 2, "training", source="figshare")
    assert remote.url == URL_SUB01_FIGSHARE
    assert remote.member == "sub-01/ses-02/raw_eeg_training.npy"
    assert remote.source == "figshare:18470912"


def test_fetch_end_to_end_from_archive(tmp_path, web):
    """Resolver + pooch + extraction + loader on a tiny subject archive."""
    members = {"sub-01/ses-01/raw_eeg_test.npy": 1,
               "sub-01/ses-02/raw_eeg_test.npy": 2,
               "sub-01/ses-01/raw_eeg_training.npy": 3}
    web.serve(URL_SUB01_OSF, _zip_bytes(tmp_path, members))
    root = tmp_path / "data"
    fname = te.fetch_things_eeg2(1, 1, "test", path=root)
    assert fname == root / "sub-01" / "ses-01" / "raw_eeg_test.npy"
    assert fname.read_bytes() == _raw_bytes(tmp_path, 1)
    assert (root / "archives" / "sub-01.zip").is_file()
    assert web.downloads == [URL_SUB01_OSF]
    assert not list(root.rglob("*.part"))
    raw = te.read_things_eeg2_raw(fname)
    assert raw.ch_names == THINGS_EEG2_CH_NAMES + ["stim"]
    epochs = te.make_things_eeg2_epochs(raw)
    assert len(epochs) == len(ONSETS) - len(TARGETS)
    evoked = epochs.average()
    assert evoked.nave == len(epochs)
    # a verified file is never downloaded again: not even the API is asked
    web.online = False
    n_req = len(web.requests)
    assert te.fetch_things_eeg2(1, 1, "test", path=root) == fname
    # other members come out of the kept archive, offline
    other = te.fetch_things_eeg2(1, 2, "test", path=root)
    assert other.read_bytes() == _raw_bytes(tmp_path, 2)
    train = te.fetch_things_eeg2(1, 1, "training", path=root)
    assert train.read_bytes() == _raw_bytes(tmp_path, 3)
    assert len(web.requests) == n_req and web.downloads == [URL_SUB01_OSF]
    # a member the archive lacks: the error lists what it holds
    with pytest.raises(RuntimeError, match="no member") as err:
        te.fetch_things_eeg2(1, 4, "test", path=root)
    assert "sub-01/ses-02/raw_eeg_test.npy" in str(err.value)


def test_fetch_single_file_and_keep_archive(tmp_path, web):
    web.serve(URL_SUB03_NPY, _raw_bytes(tmp_path, 7))
    root = tmp_path / "data"
    fname = te.fetch_things_eeg2(3, 1, "test", path=root)
    assert fname == root / "sub-03" / "ses-01" / "raw_eeg_test.npy"
    assert fname.read_bytes() == _raw_bytes(tmp_path, 7)
    assert not (root / "archives").exists()
    assert te.read_things_eeg2_raw(fname).n_times == 5000
    # keep_archive=False removes the subject archive after extracting
    web.serve(URL_SUB01_OSF, _zip_bytes(
        tmp_path, {"sub-01/ses-01/raw_eeg_test.npy": 1}))
    fname = te.fetch_things_eeg2(1, 1, "test", path=root, keep_archive=False)
    assert fname.is_file() and not (root / "archives" / "sub-01.zip").exists()


def test_wrong_hash_is_an_error(tmp_path, web):
    web.serve(URL_SUB01_OSF, _zip_bytes(
        tmp_path, {"sub-01/ses-01/raw_eeg_test.npy": 1}))
    web.files[URL_SUB01_OSF] += b"tampered"  # the published hash is now wrong
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="(?i)hash") as err:
        te.fetch_things_eeg2(1, 1, "test", path=root)
    assert URL_SUB01_OSF in str(err.value) and "sha256:" in str(err.value)
    assert not (root / "sub-01" / "ses-01" / "raw_eeg_test.npy").exists()
    assert not (root / "archives" / "sub-01.zip").exists()
    # the same for a single file with an MD5 (figshare API)
    web.osf_online = False
    web.serve(URL_SUB01_FIGSHARE, b"zip bytes")
    web.files[URL_SUB01_FIGSHARE] = b"other bytes"
    with pytest.raises(ValueError, match="md5:"):
        te.fetch_things_eeg2(1, 1, "test", path=root)
    assert not (root / "archives" / "sub-01.zip").exists()


def test_corrupt_archive_member(tmp_path, web):
    data = bytearray(_zip_bytes(tmp_path, {"sub-01/ses-01/raw_eeg_test.npy": 1},
                                compression=zipfile.ZIP_STORED))
    data[len(data) // 2] ^= 0xFF  # inside the stored member
    web.serve(URL_SUB01_OSF, bytes(data))  # published hash of the bad archive
    root = tmp_path / "data"
    with pytest.raises(RuntimeError, match="corrupt"):
        te.fetch_things_eeg2(1, 1, "test", path=root)
    assert not (root / "sub-01" / "ses-01" / "raw_eeg_test.npy").exists()
    assert not list(root.rglob("*.part"))


def test_missing_file_lists_what_exists(tmp_path, web):
    web.drop("sub-07.zip")
    with pytest.raises(RuntimeError, match="Cannot locate") as err:
        te.fetch_things_eeg2(7, 1, "test", path=tmp_path / "data")
    msg = str(err.value)
    assert "sub-07/ses-01/raw_eeg_test.npy" in msg and "sub-07.zip" in msg
    assert "OSF node crxs4" in msg and "figshare article 18470912" in msg
    # the listings: what exists, with sizes
    assert "raw_data/sub-06.zip (11.0 GB)" in msg
    assert "README.txt" in msg
    assert "raw_data/sub-07.zip" not in msg
    assert str(tmp_path / "data" / "sub-07" / "ses-01" / "raw_eeg_test.npy") in msg
    assert web.downloads == []


def test_offline_download_and_figshare_fallback(tmp_path, web):
    members = {"sub-01/ses-01/raw_eeg_test.npy": 1}
    content = _zip_bytes(tmp_path, members)
    web.serve(URL_SUB01_OSF, content)
    root = tmp_path / "data"
    # listing reachable, download not: the error names the download URL
    web.downloads_online = False
    with pytest.raises(RuntimeError, match="offline") as err:
        te.fetch_things_eeg2(1, 1, "test", path=root)
    msg = str(err.value)
    assert URL_SUB01_OSF in msg and te.PATH_ENV in msg
    assert str(root / "archives" / "sub-01.zip") in msg
    # OSF down: the figshare API is used, with its MD5
    web.downloads_online = True
    web.osf_online = False
    web.serve(URL_SUB01_FIGSHARE, content)
    remote = te.resolve_things_eeg2(1, 1, "test")
    assert remote.source == "figshare:18470912"
    assert remote.known_hash == "md5:" + hashlib.md5(content).hexdigest()
    fname = te.fetch_things_eeg2(1, 1, "test", path=root)
    assert fname.read_bytes() == _raw_bytes(tmp_path, 1)
    assert web.downloads[-1] == URL_SUB01_FIGSHARE
    # source="osf" does not fall back
    with pytest.raises(RuntimeError, match="offline") as err:
        te.resolve_things_eeg2(2, 1, source="osf")
    assert "figshare" not in str(err.value).split("To install")[0]


def test_example_is_not_run_by_the_docs_build():
    """The download example stays out of the gallery's execution."""
    conf = (ROOT / "doc" / "conf.py").read_text("utf-8")
    m = re.search(r"DOWNLOAD_EXAMPLES = \(([^)]*)\)", conf)
    assert m and "plot_things_eeg2" in m.group(1)
    src = (ROOT / "examples" / "plot_things_eeg2.py").read_text("utf-8")
    compile(src, "plot_things_eeg2.py", "exec")
    assert "fetch_things_eeg2" in src and "mne.Report" in src


def test_bad_files(tmp_path):
    np.save(tmp_path / "array.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="raw-data dict"):
        te.read_things_eeg2_raw(tmp_path / "array.npy")
    with pytest.raises(ValueError, match="lacks the keys"):
        te.read_things_eeg2_raw(_write(tmp_path / "k.npy", drop=["sfreq"]))
    with pytest.raises(ValueError, match="shape"):
        te.read_things_eeg2_raw(_write(tmp_path / "s.npy",
                                       extra=dict(ch_names=["a", "b"])))
    with pytest.raises(FileNotFoundError):
        te.read_things_eeg2_raw(tmp_path / "nothing.npy")
    nan = np.zeros((63, 5000))
    nan[0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        te.read_things_eeg2_raw(_write(tmp_path / "n.npy", data=nan))


def test_unknown_channel_marked_bad(tmp_path):
    names = THINGS_EEG2_CH_NAMES[:-1] + ["XYZ", "stim"]
    fname = _write(tmp_path / "u.npy", extra=dict(ch_names=names))
    with pytest.warns(RuntimeWarning, match="XYZ"):
        raw = te.read_things_eeg2_raw(fname)
    assert raw.info["bads"] == ["XYZ"]


def test_occipital_response_localised(tmp_path, template_cache, monkeypatch):
    """Loader + montage + template forward agree: an occipital source
    simulated into the file format is localised to occipital cortex."""
    monkeypatch.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
    from mne_unfolded_sbl import apply_unfolded_sbl
    from mne_unfolded_sbl.datasets import make_template_forward
    from mne_unfolded_sbl.report import peak_sources, source_positions_mri

    fwd = make_template_forward("things-eeg2", "ico3", bem_ico=3, verbose=False)
    assert fwd["sol"]["row_names"] == THINGS_EEG2_CH_NAMES
    pos = source_positions_mri(fwd)
    src = int(np.argmin(pos[:, 1]))  # the most posterior source
    rng = np.random.default_rng(1)
    n_times = 5000
    x = np.zeros(n_times)
    t = np.arange(200) / SFREQ
    for onset in ONSETS:
        x[onset:onset + 200] += 40e-9 * np.exp(-((t - 0.1) / 0.02) ** 2)
    eeg = np.outer(fwd["sol"]["data"][:, src], x)
    eeg += rng.uniform(1e-6, 3e-6, (63, 1)) * rng.normal(size=(63, n_times))
    raw = te.read_things_eeg2_raw(_write(tmp_path / "vep.npy", data=eeg))
    epochs = te.make_things_eeg2_epochs(raw, include_targets=True)
    cov = mne.compute_covariance(epochs, tmax=0.0, verbose=False)
    evoked = epochs.average().crop(0.0, 0.2)
    stc = apply_unfolded_sbl(evoked, fwd, cov, model="cb", verbose=False)
    top = peak_sources(stc, fwd, n=1)[0]
    assert top["pos_mm"][1] < -65.0  # occipital
    assert np.linalg.norm(top["pos_mm"] - pos[src] * 1e3) < 25.0
    assert abs(top["latency"] - 0.1) < 0.02
