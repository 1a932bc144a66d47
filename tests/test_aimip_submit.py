"""Upload of the AI-MIP tree to a real S3 server (moto, in-process on loopback)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from test_aimip_fixtures import make_config, make_tree, run_mdiff, settings_json
from test_aimip_fixtures import upload_config as config

from mdiff.aimip import submit as S

KEY_ID = "AKIAMDIFFTESTKEY0001"
SECRET = "mdiff-test-secret-9f3c2e71d4b84a0e"  # must never appear in any output


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def bucket(endpoint, aws_env, request):
    import s3fs

    name = "aimip-" + hashlib.md5(request.node.name.encode()).hexdigest()[:12]
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    fs.mkdir(name)
    return name


def remote_objects(cfg, bucket):
    fs = S.make_filesystem(cfg)
    return {k: fs.cat_file(k) for k in fs.find(bucket)}


def assert_complete(root: Path, objects: dict, bucket: str):
    local = {f"{bucket}/{p.relative_to(root).as_posix()}": p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert set(objects) == set(local)  # nothing missing, nothing extra (no duplicates)
    for key, data in local.items():
        assert hashlib.sha256(objects[key]).hexdigest() == hashlib.sha256(data).hexdigest(), key


def test_local_etag_matches_what_s3_reports(tmp_path, endpoint, bucket):
    root = make_tree(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    entries = S.upload(cfg, root, tmp_path / "manifest.json")  # verifies size + ETag per object
    assert {e.action for e in entries} == {"upload"}
    assert any(e.etag.endswith("-3") for e in entries)  # 11 MiB in 5 MiB parts: multipart
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    by_key = {o["key"]: o for o in manifest["objects"]}
    for p in root.rglob("*.nc"):
        o = by_key[f"{bucket}/{p.relative_to(root).as_posix()}"]
        assert o["size"] == p.stat().st_size
        assert o["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert_complete(root, remote_objects(cfg, bucket), bucket)


def test_rerun_skips_everything_and_reuploads_a_changed_object(tmp_path, endpoint, bucket):
    root = make_tree(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    S.upload(cfg, root, tmp_path / "m1.json")
    again = S.upload(cfg, root, tmp_path / "m2.json")
    assert {e.action for e in again} == {"skip"}
    # A corrupted remote object of the same size is found by its ETag and replaced.
    victim = next(e for e in again if e.size == 2048)
    S.make_filesystem(cfg).pipe_file(victim.key, b"\0" * 2048)
    third = S.upload(cfg, root, tmp_path / "m3.json")
    assert [e.key for e in third if e.action == "upload"] == [victim.key]
    assert_complete(root, remote_objects(cfg, bucket), bucket)


def test_interrupted_upload_resumes_without_duplicates_or_corruption(tmp_path, endpoint, bucket):
    root = make_tree(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    fs = S.make_filesystem(cfg)
    real_call = fs._call_s3
    calls = {"parts": 0}

    async def failing_call(method, *args, **kwargs):
        # Die in the middle of the multipart upload of the big file (after its first part),
        # when the small files before it are already up.
        if method == "upload_part":
            calls["parts"] += 1
            if calls["parts"] == 2:
                raise ConnectionError("network went away")
        return await real_call(method, *args, **kwargs)

    fs._call_s3 = failing_call
    with pytest.raises(S.SubmitError, match=r"uploading .*cannot reach the S3 endpoint .*port"):
        S.upload(cfg, root, tmp_path / "manifest.json", fs=fs)
    assert not (tmp_path / "manifest.json").exists()
    partial = remote_objects(cfg, bucket)
    assert 0 < len(partial) < 4
    for key, data in partial.items():  # whatever is there is whole
        local = root / key.split("/", 1)[1]
        assert data == local.read_bytes()

    entries = S.upload(cfg, root, tmp_path / "manifest.json")
    assert sum(e.action == "skip" for e in entries) == len(partial)
    assert sum(e.action == "upload" for e in entries) == 4 - len(partial)
    assert_complete(root, remote_objects(cfg, bucket), bucket)


def test_dry_run_uploads_nothing(tmp_path, endpoint, bucket, capsys):
    root = make_tree(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    entries = S.upload(cfg, root, tmp_path / "manifest.json", dry_run=True)
    assert {e.action for e in entries} == {"would-upload"}
    assert capsys.readouterr().out.count("would upload") == 4
    assert remote_objects(cfg, bucket) == {}
    assert not (tmp_path / "manifest.json").exists()


def test_missing_bucket_is_an_error_and_is_not_created(tmp_path, endpoint, aws_env):
    root = make_tree(tmp_path)
    cfg = config(tmp_path, endpoint, "no-such-bucket")
    with pytest.raises(S.SubmitError, match="bucket 'no-such-bucket' does not exist"):
        S.upload(cfg, root, tmp_path / "manifest.json")
    assert not S.make_filesystem(cfg).exists("no-such-bucket")


def test_prefix_places_the_tree(tmp_path, endpoint, bucket):
    root = make_tree(tmp_path)
    cfg = config(tmp_path, endpoint, bucket, prefix="test-round")
    S.upload(cfg, root, tmp_path / "manifest.json")
    keys = list(remote_objects(cfg, bucket))
    assert keys and all(k.startswith(f"{bucket}/test-round/mdiff/mdiff-MD15/") for k in keys)


def test_refuses_without_a_passed_validation(tmp_path):
    root = make_tree(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"passed": False, "root": str(root), "errors": [1]}))
    with pytest.raises(S.SubmitError, match="did not pass"):
        S.require_passed_validation(tmp_path / "report.json", root)
    with pytest.raises(S.SubmitError, match="no validation report"):
        S.require_passed_validation(tmp_path / "missing.json", root)


def test_secret_never_appears_in_output_logs_or_files(tmp_path, endpoint, bucket, aws_env):
    root = make_tree(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    settings = settings_json(cfg)
    outputs = []
    for extra in (["--dry-run"], ["--manifest", str(tmp_path / "manifest.json")]):
        proc = run_mdiff(["submit", "--settings", settings, "--root", str(root),
                          "--report", str(tmp_path / "report.json"), *extra], env=aws_env)
        outputs += [proc.stdout, proc.stderr]
    assert "uploaded" in outputs[-1]
    # A failing run (wrong bucket) must not leak it either.
    bad = make_config(tmp_path)
    bad.submit.endpoint_url, bad.submit.bucket = endpoint, "missing-bucket"
    proc = run_mdiff(["submit", "--settings", settings_json(bad), "--root", str(root), "--report",
                      str(tmp_path / "report.json"), "--manifest", str(tmp_path / "m2.json")], env=aws_env, check=False)
    assert proc.returncode == 1 and "missing-bucket" in proc.stderr
    outputs += [proc.stdout, proc.stderr]
    for text in outputs:
        assert SECRET not in text and KEY_ID not in text
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".log", ".txt", ".md"):
            assert SECRET not in p.read_text(errors="replace"), p
    assert json.loads((tmp_path / "manifest.json").read_text())["objects"]


# ------------------------------------------------ the submission root, verified object by object


def make_package(tmp: Path) -> tuple[Path, dict]:
    """The tree of make_tree plus a submission root: README.md, LICENSE, weights/ and the
    MANIFEST.sha256 of every file (as `mdiff package` writes it)."""
    from mdiff.aimip import package as P

    root = make_tree(tmp)
    base = root / "mdiff" / "mdiff-MD15"
    (base / "README.md").write_text("# dataset card\n")
    (base / "LICENSE").write_text("CC BY 4.0\n")
    (base / "weights").mkdir()
    (base / "weights" / "checkpoint.pt").write_bytes(np.random.default_rng(1).bytes(4096))
    P.write_checksums(base)
    return root, P.read_checksums(base / "MANIFEST.sha256")


def test_package_upload_is_verified_by_sha256_metadata(tmp_path, endpoint, bucket):
    root, checksums = make_package(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    entries = S.upload(cfg, root, tmp_path / "manifest.json", checksums=checksums)
    keys = {e.key for e in entries}
    assert f"{bucket}/mdiff/mdiff-MD15/README.md" in keys and f"{bucket}/mdiff/mdiff-MD15/MANIFEST.sha256" in keys
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    v = manifest["verification"]
    assert v["verified"] and v["mismatches"] == [] and v["objects_checked"] == len(entries) == 8
    assert v["with_sha256_metadata"] == 8 and v["etag_only"] == 0  # every object carries its sha256
    assert {o["verified"] for o in manifest["objects"]} == {"ok"}
    fs = S.make_filesystem(cfg)
    for e in entries:
        assert fs.metadata(e.key)["sha256"] == e.sha256
    assert_complete(root, remote_objects(cfg, bucket), bucket)


def test_tampered_remote_object_is_reported_by_name(tmp_path, endpoint, bucket):
    root, checksums = make_package(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    S.upload(cfg, root, tmp_path / "manifest.json", checksums=checksums)
    # Someone overwrites an object after the upload (same size, other bytes, no metadata).
    fs = S.make_filesystem(cfg)
    victim = f"{bucket}/mdiff/mdiff-MD15/weights/checkpoint.pt"
    fs.pipe_file(victim, b"\0" * 4096)
    with pytest.raises(S.SubmitError) as err:
        S.upload(cfg, root, tmp_path / "verify.json", checksums=checksums, verify_only=True)
    assert victim in str(err.value) and "1 of 8" in str(err.value) and "etag" in str(err.value)
    failed = json.loads((tmp_path / "verify.failed.json").read_text())
    assert [m["key"] for m in failed["verification"]["mismatches"]] == [victim]
    assert not (tmp_path / "verify.json").exists()  # the declared output only when verified
    # A rerun uploads exactly the tampered and a deleted object, then verifies.
    gone = f"{bucket}/mdiff/mdiff-MD15/README.md"
    fs.rm(gone)
    entries = S.upload(cfg, root, tmp_path / "manifest2.json", checksums=checksums)
    assert sorted(e.key for e in entries if e.action == "upload") == sorted([victim, gone])
    assert json.loads((tmp_path / "manifest2.json").read_text())["verification"]["verified"]


def test_corrupting_store_fails_naming_every_mismatch(tmp_path, endpoint, bucket):
    """A store that keeps other bytes than it was sent: every damaged object is named."""
    root, checksums = make_package(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    fs = S.make_filesystem(cfg)
    real_put = fs.put_file
    damaged = {f"{bucket}/mdiff/mdiff-MD15/LICENSE", f"{bucket}/mdiff/mdiff-MD15/aimip/r1i1p1f1/Amon/tas/f0.nc"}

    def corrupting_put(lpath, rpath, **kwargs):
        real_put(lpath, rpath, **kwargs)
        if rpath in damaged:  # same size, other content, the metadata the uploader sent
            size = Path(lpath).stat().st_size
            fs.pipe_file(rpath, b"x" * size, Metadata=kwargs.get("Metadata", {}))

    fs.put_file = corrupting_put
    with pytest.raises(S.SubmitError) as err:
        S.upload(cfg, root, tmp_path / "manifest.json", fs=fs, checksums=checksums)
    msg = str(err.value)
    assert all(k in msg for k in damaged) and "2 of 8" in msg
    # The sha256 metadata is the uploader's (it matches): the store's ETag exposes the bytes.
    failed = json.loads((tmp_path / "manifest.failed.json").read_text())
    assert {m["key"] for m in failed["verification"]["mismatches"]} == damaged
    assert {m["status"] for m in failed["verification"]["mismatches"]} == {"etag"}


def test_local_files_must_match_the_manifest_before_anything_is_uploaded(tmp_path, endpoint, bucket):
    root, checksums = make_package(tmp_path)
    cfg = config(tmp_path, endpoint, bucket)
    changed = root / "mdiff" / "mdiff-MD15" / "README.md"
    changed.write_text("# edited after packaging\n")
    with pytest.raises(S.SubmitError, match=r"mdiff/mdiff-MD15/README.md: sha256 .* differs from MANIFEST"):
        S.upload(cfg, root, tmp_path / "manifest.json", checksums=checksums)
    assert remote_objects(cfg, bucket) == {}
