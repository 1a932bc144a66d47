"""ERA5 and the AI-MIP forcing without the network: a loopback HTTP server plays the CDS API
and Zenodo (so the real request, retry and resume code runs), ERA5-layout files made here go
through the whole preparation, bad inputs give clear errors, and a replaced raw year reruns
exactly that year's regridding and what depends on it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import xarray as xr
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import era5_layout as L  # noqa: E402

from mdiff import cli  # noqa: E402
from mdiff import variables as V  # noqa: E402
from mdiff.data import era5 as E  # noqa: E402
from mdiff.data import prepared as P  # noqa: E402
from mdiff.data import regrid as R  # noqa: E402
from mdiff.data.forcing import DownloadError  # noqa: E402
from mdiff.grid import LatLonGrid  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GRID = LatLonGrid(19, 36)
SETTINGS = json.dumps({"grid": {"nlat": GRID.nlat, "nlon": GRID.nlon}})
needs_cdo = pytest.mark.skipif(shutil.which("cdo") is None, reason="needs the cdo program (apt-get install cdo)")


# ---------------------------------------------------------------- the requests


def test_requests_ask_for_exactly_the_table():
    asked = []
    for group in E.GROUPS:
        dataset, request = E.cds_request(group, 1979, [1, 2])
        assert request["product_type"] == ["monthly_averaged_reanalysis"]
        assert request["data_format"] == "netcdf" and request["year"] == ["1979"]
        assert request["month"] == ["01", "02"]
        for name in request["variable"]:
            for level in request.get("pressure_level", [None]):
                asked.append((dataset, name, None if level is None else int(level)))
    wanted = [(c.era5_dataset, c.era5_name, c.level_hpa if c.era5_dataset == V.ERA5_PRESSURE_LEVELS else None)
              for c in V.ALL if c.era5_dataset]
    assert sorted(asked) == sorted(wanted)  # every channel once, nothing more (z only at 500 hPa)
    assert E.year_months(1978, "1978-10", "2024-12") == ("1978-10", "1978-12")
    assert E.year_months(2025, "1978-10", "2024-12") is None


# ------------------------------------------------------- a loopback data service


class FakeService:
    """Just enough of the CDS API (ecmwf-datastores protocol, v1) and of a file server.

    The first submission answers 503 (retried by the client), the job is 'running' at the
    first poll, and the first download is cut halfway (Content-Length announced in full).
    """

    KEY = "0000-test-secret-key"

    def __init__(self, payload: bytes):
        self.payload = payload
        self.log: list[tuple[str, str, dict]] = []
        self.submissions: list[dict] = []
        self.fail_submit, self.cut_download, self.polls = 1, True, 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self):
                if self.headers.get("PRIVATE-TOKEN") != FakeService.KEY:
                    self._json({"title": "unauthorised"}, 401)
                    return False
                return True

            def do_POST(self):
                path = urlparse(self.path).path
                service.log.append(("POST", path, dict(self.headers)))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorised():
                    return
                if service.fail_submit:
                    service.fail_submit -= 1
                    return self._json({"title": "busy"}, 503)
                service.submissions.append({"path": path, "inputs": body["inputs"]})
                self._json({"jobID": "j1", "status": "accepted",
                            "links": [{"rel": "monitor", "href": f"{service.base}/api/retrieve/v1/jobs/j1"}]}, 201)

            def do_GET(self):
                path = urlparse(self.path).path
                service.log.append(("GET", path, dict(self.headers)))
                if path == "/api/catalogue/v1/messages":
                    return self._json({})
                if path.startswith("/files/"):
                    return self._file()
                if not self._authorised():
                    return
                if path.startswith("/api/retrieve/v1/processes/"):
                    return self._json({"id": path.rsplit("/", 1)[-1], "links": []})
                if path == "/api/retrieve/v1/jobs/j1":
                    service.polls += 1
                    status = "running" if service.polls == 1 else "successful"
                    return self._json({"status": status, "processID": "x", "metadata": {}, "links": []})
                if path == "/api/retrieve/v1/jobs/j1/results":
                    return self._json({"asset": {"value": {"href": f"{service.base}/files/result.nc",
                                                           "file:size": len(service.payload),
                                                           "type": "application/netcdf"}}})
                self._json({"title": "not found"}, 404)

            def _file(self):
                data, start = service.payload, 0
                match = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if service.cut_download and not match:
                    service.cut_download = False
                    self.wfile.write(data[: len(data) // 2])  # then the connection drops
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cds_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "no-such-rc"))

    def set_service(service):
        monkeypatch.setenv("CDSAPI_URL", f"{service.base}/api")
        monkeypatch.setenv("CDSAPI_KEY", FakeService.KEY)

    return set_service


def test_cds_fetch_retries_resumes_records_and_never_refetches(tmp_path, cds_env, caplog):
    source = L.write_group(tmp_path / "src.nc", "pressure_500", 1979, [1, 2])
    payload = source.read_bytes()
    target = tmp_path / "raw" / "1979" / "pressure_500.nc"
    caplog.set_level(logging.DEBUG)
    with FakeService(payload) as service:
        cds_env(service)
        E.fetch_cds("pressure_500", 1979, [1, 2], target, max_retries=3, backoff_s=0.01, poll_max_s=0.05)
        assert target.read_bytes() == payload
        record = json.loads(Path(f"{target}.json").read_text())
        assert record["sha256"] == hashlib.sha256(payload).hexdigest() and record["size"] == len(payload)
        # the request is exactly the table's, sent once after the retried 503
        dataset, request = E.cds_request("pressure_500", 1979, [1, 2])
        assert [s["inputs"] for s in service.submissions] == [request]
        assert service.submissions[0]["path"] == f"/api/retrieve/v1/processes/{dataset}/execution"
        # the cut transfer was resumed from the bytes on disk, not restarted
        ranges = [h.get("Range") for m, p, h in service.log if p.startswith("/files/")]
        assert len(ranges) == 2 and ranges[0] is None
        assert 0 < int(re.match(r"bytes=(\d+)-", ranges[1]).group(1)) <= len(payload) // 2
        n = len(service.log)
        E.fetch_cds("pressure_500", 1979, [1, 2], target, max_retries=3, backoff_s=0.01)
        assert len(service.log) == n  # finished: not fetched again, not even asked
    assert FakeService.KEY not in caplog.text


def test_cds_fetch_rejects_a_result_lacking_a_variable(tmp_path, cds_env):
    payload = L.write_group(tmp_path / "src.nc", "pressure_500", 1979, [1], drop=("z",)).read_bytes()
    target = tmp_path / "raw.nc"
    with FakeService(payload) as service:
        service.fail_submit, service.cut_download = 0, False
        cds_env(service)
        with pytest.raises(P.PreparedDataError, match=r"ERA5 variable 'z' \(geopotential at 500 hPa"):
            E.fetch_cds("pressure_500", 1979, [1], target, max_retries=1, backoff_s=0.01, poll_max_s=0.05)
    assert not Path(f"{target}.json").exists()  # no record: the next run fetches again


def test_missing_credentials_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "none"))
    monkeypatch.delenv("CDSAPI_URL", raising=False)
    monkeypatch.delenv("CDSAPI_KEY", raising=False)
    with pytest.raises(P.PreparedDataError, match=r"no CDS API credentials: .*~/.cdsapirc"):
        E.fetch_cds("single", 1979, [1], tmp_path / "x.nc", max_retries=0, backoff_s=0)


def test_fetch_forcing_resumes_and_verifies_checksum(tmp_path, capsys):
    payload = os.urandom(300_000)
    digest = hashlib.sha256(payload).hexdigest()
    with FakeService(payload) as service:
        url = f"{service.base}/files/forcing.nc"
        out = tmp_path / "aimip" / "forcing.nc"
        settings = {"era5": {"forcing_url": url, "forcing_sha256": digest, "retry_backoff_s": 0.01}}
        assert cli.main(["fetch-forcing", "--settings", json.dumps(settings), "--output", str(out)]) == 0
        assert out.read_bytes() == payload
        ranges = [h.get("Range") for _, p, h in service.log]
        assert len(ranges) == 2 and ranges[0] is None
        assert 0 < int(re.match(r"bytes=(\d+)-", ranges[1]).group(1)) <= len(payload) // 2
        settings["era5"]["forcing_sha256"] = "0" * 64
        assert cli.main(["fetch-forcing", "--settings", json.dumps(settings), "--output", str(tmp_path / "b.nc")]) == 1
    err = capsys.readouterr().err
    assert f"sha256 {digest} does not match the expected {'0' * 64}" in err


def test_download_gives_up_after_retries_and_keeps_the_partial_file(tmp_path):
    from mdiff.data.forcing import download

    service = FakeService(b"x" * 1000)  # never started: its port refuses connections
    service.server.server_close()
    with pytest.raises(DownloadError, match="giving up after 2 retries"):
        download(f"{service.base}/files/f", tmp_path / "f", max_retries=2, backoff_s=0.0, timeout_s=2)
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.json").exists()


# ------------------------------------------------------------ the whole preparation


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("era5raw")
    files = {"invariant": L.write_invariant(root / "invariant.nc")}
    files[1978] = L.write_year(root, 1978, [10, 11, 12])
    files[1979] = L.write_year(root, 1979, list(range(1, 13)))
    files["aimip"] = L.write_aimip(root / "aimip" / "forcing.nc", "1978-10", "1980-01")
    return root, files


def _run(*argv) -> int:
    return cli.main([*map(str, argv)])


@needs_cdo
def test_local_files_through_the_whole_preparation(raw, tmp_path):
    root, files = raw
    out = tmp_path / "prepared"
    weights = [tmp_path / "w_fracarea.nc", tmp_path / "w_destarea.nc"]
    # source: local -- the check records
    local = json.dumps({"era5": {"source": "local"}})
    for group, path in files[1979].items():
        rec = tmp_path / f"{group}.json"
        assert _run("fetch-era5", "--settings", local, "--group", group, "--months", "1979-01", "1979-12",
                    "--files", path, "--output", rec) == 0
        assert json.loads(rec.read_text())["grid"] == [73, 144]
    assert _run("regrid", "weights", "--settings", SETTINGS, "--raw", files["invariant"], "--weights", *weights) == 0
    assert _run("regrid", "statics", "--settings", SETTINGS, "--raw", files["invariant"], "--weights", *weights,
                "--output", out / "statics.nc") == 0
    for year, months in ((1978, ("1978-10", "1978-12")), (1979, ("1979-01", "1979-12"))):
        assert _run("regrid", "state", "--settings", SETTINGS, "--raw", *files[year].values(), "--months", *months,
                    "--weights", *weights, "--statics", out / "statics.nc", "--output", out / f"state/{year}.nc") == 0
    assert _run("regrid", "forcing", "--settings", SETTINGS, "--raw", files["aimip"], "--months", "1978-10",
                "1979-12", "--statics", out / "statics.nc", "--output", out / "forcing.nc") == 0

    # The prepared contract, as the synthetic world meets it.
    statics = P.open_checked(out / "statics.nc", GRID)
    lsm = P.dataset_to_channels(statics, (V.channel("lsm"),))[0]
    assert 0 <= lsm.min() and lsm.max() <= 1 and 0 < lsm.mean() < 0.5
    state = P.open_checked(out / "state/1978.nc", GRID)
    assert [str(t)[:7] for t in P.times_of(state)] == ["1978-10", "1978-11", "1978-12"]
    x = P.dataset_to_channels(state, V.STATE)  # all 37 channels, finite, table units
    assert x.shape == (3, V.N_STATE, GRID.nlat, GRID.nlon)
    assert state["plev"].values.tolist() == [p * 100.0 for p in V.PRESSURE_LEVELS_HPA]
    assert state["hus"].attrs["units"] == "1" and state["z500"].attrs["units"] == "m2 s-2"
    # conservative: the area-weighted mean of surface pressure is that of the native field
    ps_native = L.field(V.channel("ps"), *L.native_grid(), 0)
    assert GRID.mean(x[0, V.STATE_NAMES.index("ps")]) == pytest.approx(LatLonGrid(73, 144).mean(ps_native[::-1]), rel=1e-6)
    sst, ice = state["sst"].values, state["siconc"].values
    assert np.isnan(sst).any() and np.array_equal(np.isnan(sst), np.isnan(ice))
    land = np.broadcast_to(lsm, sst.shape)
    assert np.all(land[np.isnan(sst)] > 0)  # undefined only where there is land
    assert np.all(ice[~np.isnan(ice)] <= 1 - land[~np.isnan(ice)] + 1e-6)  # capped at 1 - land

    # Inference forcing: monthly means = mean of the two bounding start-of-month values.
    forcing = P.open_checked(out / "forcing.nc", GRID)
    assert P.times_of(forcing)[0] == np.datetime64("1978-10") and P.times_of(forcing)[-1] == np.datetime64("1979-12")
    start0 = R.remap(str(files["aimip"]), ["sea_surface_temperature"], GRID, None, "fracarea", tmp_path)
    first = start0["sea_surface_temperature"].values[0]
    f_sst = forcing["sst"].values
    ocean = ~np.isnan(f_sst[0])
    assert np.allclose(f_sst[0][ocean], first[ocean] + 0.25, atol=1e-3)  # (v0 + v0 + 0.5) / 2
    assert np.allclose(np.diff(f_sst, axis=0)[:, ocean], 0.5, atol=1e-3)
    assert np.array_equal(np.isnan(f_sst[0]), np.isnan(sst[0]))  # same land mask as training


@pytest.fixture(scope="module")
def prepared_inputs(raw, tmp_path_factory):
    root, files = raw
    tmp = tmp_path_factory.mktemp("weights")
    weights = {"fracarea": str(tmp / "f.nc"), "destarea": str(tmp / "d.nc")}
    for norm, path in weights.items():
        R.make_weights(files["invariant"], GRID, path, norm)
    R.prepare_statics([str(files["invariant"])], GRID, weights, tmp / "statics.nc")
    return weights, tmp / "statics.nc"


def _bad_inputs(tmp: Path, kind: str) -> list[Path]:
    files = {g: L.write_group(tmp / f"{g}.nc", g, 1979, [1, 2]) for g in E.YEARLY_GROUPS}
    if kind == "missing variable":
        L.write_group(files["pressure"], "pressure", 1979, [1, 2], drop=("q",))
    elif kind == "wrong grid":
        for g in E.YEARLY_GROUPS:
            L.write_group(files[g], g, 1979, [1, 2], nlat=37)
    elif kind == "truncated file":
        data = files["single"].read_bytes()
        files["single"].write_bytes(data[: len(data) // 2])
    elif kind in ("NaN in a state field", "NaN in SST over open ocean"):
        name = "t2m" if kind.startswith("NaN in a state") else "sst"
        with xr.open_dataset(files["single"]) as ds:
            ds = ds.load()
        ds[name][:, 30:40, 0:10] = np.nan  # 30..40 N of 90: open ocean in the test world
        files["single"].unlink()
        ds.to_netcdf(files["single"], encoding=L.TIME_ENC)
    elif kind == "missing month":
        L.write_group(files["single"], "single", 1979, [1])
    return list(files.values())


@needs_cdo
@pytest.mark.parametrize("kind, message", [
    ("missing variable", r"pressure.nc, .*: ERA5 variable 'q' \(specific_humidity at 1000 hPa, for channel hus1000\) is missing"),
    ("wrong grid", r"grid 37x72; the remapping weights .* were made for the 73x144 grid of the invariants file"),
    ("truncated file", r"single.nc: cannot be read as NetCDF .*truncated or corrupt"),
    ("NaN in a state field", r"channel tas \(t2m\) has \d+ NaN/Inf values on the model grid"),
    ("NaN in SST over open ocean", r"SST/sea ice undefined \(NaN\) at \d+ open-ocean points"),
    ("missing month", r"single.nc: variable '\w+' lacks months \['1979-02'\]"),
])
def test_bad_inputs_fail_clearly(tmp_path, prepared_inputs, capsys, kind, message):
    weights, statics = prepared_inputs
    paths = _bad_inputs(tmp_path, kind)
    rc = _run("regrid", "state", "--settings", SETTINGS, "--raw", *paths, "--months", "1979-01", "1979-02",
              "--weights", weights["fracarea"], weights["destarea"], "--statics", statics,
              "--output", tmp_path / "out.nc")
    err = capsys.readouterr().err
    assert rc == 1 and "mdiff regrid: error:" in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "out.nc").exists()


def test_local_pattern_matching_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(P.PreparedDataError, match=r"local_patterns\['single'\] = .*no file matches .*1979"):
        E.local_files(str(tmp_path / "{year}" / "*.nc"), 1979, "single")


# ---------------------------------------------------------------- rerun precision


def _dry_run(workdir: Path, target: str) -> str:
    env = {**os.environ, "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}"}
    proc = subprocess.run([str(REPO / ".venv/bin/snakemake"), "-n", "--cores", "1", "--configfile", "era5.yaml",
                           "--", target], cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@needs_cdo
@pytest.mark.slow
def test_replacing_one_raw_year_reruns_that_year_and_downstream_only(tmp_path):
    work = tmp_path / "wf"
    work.mkdir()
    shutil.copy(REPO / "Snakefile", work)
    for folder in ("workflow", "config", "profiles", "envs"):
        if (REPO / folder).exists():
            shutil.copytree(REPO / folder, work / folder)
    data = tmp_path / "era5"
    for year in (1979, 1980, 1981):
        L.write_year(data, year, list(range(1, 13)))
    L.write_invariant(data / "invariant.nc")
    L.write_aimip(data / "aimip.nc", "1979-01", "1982-01")
    results = "results/tiny-era5"
    config = {
        "results": results, "source": "era5", "grid": {"nlat": GRID.nlat, "nlon": GRID.nlon},
        "periods": {"run_start": "1979-01", "run_end": "1981-12", "stats": ["1979-01", "1981-12"],
                    "train": ["1980-01", "1981-12"], "validate": ["1979-01", "1979-12"]},
        "era5": {"source": "local", "raw_dir": str(tmp_path / "records"),
                 "local_patterns": {**{g: str(data / "{year}" / f"{g}.nc") for g in E.YEARLY_GROUPS},
                                    "invariant": str(data / "invariant.nc")}},
    }
    (work / "era5.yaml").write_text(yaml.safe_dump(config))
    # the AI-MIP file is fetched from Zenodo in real use: here it is already in place
    forcing = tmp_path / "records" / "aimip" / "ERA5-0.25deg-monthly-mean-forcing-1978-2024.nc"
    forcing.parent.mkdir(parents=True)
    shutil.copy(data / "aimip.nc", forcing)
    Path(f"{forcing}.json").write_text("{}")
    prepared = [f"{results}/prepared/state/{y}.nc" for y in (1979, 1980, 1981)]
    prepared += [f"{results}/prepared/statics.nc", f"{results}/prepared/forcing.nc"]
    env = {**os.environ, "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}"}
    proc = subprocess.run([str(REPO / ".venv/bin/snakemake"), "--cores", "1", "--configfile", "era5.yaml",
                           "--", *prepared], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for path in prepared:
        P.open_checked(work / path, GRID)
    assert "regrid_state" not in _dry_run(work, prepared[1])  # up to date before the update

    # A data update: 1980's single-level file is replaced.
    L.write_group(data / "1980" / "single.nc", "single", 1980, list(range(1, 13)), scale=1.001)
    target = f"{results}/stats/normalization.nc"
    out = _dry_run(work, target)
    jobs = re.findall(r"^rule (\w+):", out, flags=re.M)
    years = re.findall(r"prepared/state/(\d{4})\.nc", "\n".join(
        ln for ln in out.splitlines() if ln.strip().startswith("output:")))
    assert "regrid_state" in jobs and years == ["1980"], out
    assert jobs.count("regrid_state") == 1 and jobs.count("fetch_era5") == 1
    assert "normalization_stats" in jobs  # downstream of the prepared state
    assert not {"prepare_statics", "prepare_forcing", "remap_weights"} & set(jobs)
