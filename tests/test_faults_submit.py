"""Fault tests, submission (issue 12, finding 2): every failure of `mdiff submit` says what is
wrong (credentials rejected and where they came from, no credentials, endpoint unreachable,
timed out, bucket missing), a rerun aborts this submission's stale multipart uploads, and
`mdiff submit` killed with SIGKILL at random moments and rerun leaves every object with the
right checksum, nothing extra and no unfinished upload. The secret never shows anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import fault_tools as FT
import pytest
from test_aimip_fixtures import make_tree, settings_json
from test_aimip_fixtures import upload_config as config

from mdiff.aimip import submit as S

pytestmark = pytest.mark.faults

AUTH_SERVER = """
import logging, sys, time
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
while True:
    time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def clean_env(tmp: Path, **extra) -> dict:
    """An environment without the host's AWS settings (no ~/.aws, no instance metadata)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(FT.ROOT))
    env.update(extra)
    return env


def upload_difference(client, bucket: str, manifest: Path, local: dict) -> str | None:
    """How a rerun's upload differs from the local files (None: it does not)."""
    remote, pending = remote_digests(client, bucket), open_uploads(client, bucket)
    listed = {o["key"].split("/", 1)[1]: o["sha256"] for o in json.loads(manifest.read_text())["objects"]}
    if remote == local and listed == local and not pending:
        return None
    return (f"after the rerun: extra/missing/wrong {sorted(set(remote.items()) ^ set(local.items()))[:4]}, "
            f"open uploads {pending}")


def submit_cmd(cfg, root: Path, manifest: Path) -> list[str]:
    return FT.mdiff_cmd("submit", "--settings", settings_json(cfg), "--root", str(root), "--report",
                        str(root.parent / "report.json"), "--manifest", str(manifest))


def scan_for_secrets(texts: list[str], folders: list[Path], secrets: list[str], exclude: Path | None = None) -> None:
    """Every output, log and manifest: none may hold a secret (or the key id)."""
    for text in texts:
        FT.RECORD["secret_scans"] += 1
        for secret in secrets:
            if secret in text:
                FT.RECORD["secret_leaks"] += 1
                raise AssertionError("a secret appears in a command's output")
    for folder in folders:
        for p in folder.rglob("*"):
            if exclude is not None and p.is_relative_to(exclude):
                continue  # where the test itself keeps a credentials file
            if p.is_file() and p.stat().st_size < 50 * 2**20:
                FT.RECORD["secret_scans"] += 1
                data = p.read_bytes()
                for secret in secrets:
                    if secret.encode() in data:
                        FT.RECORD["secret_leaks"] += 1
                        raise AssertionError(f"a secret appears in {p}")


# ------------------------------------------------------------- a server that checks keys


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """moto on 127.0.0.1 in its own process, checking signatures (INITIAL_NO_AUTH_ACTION_COUNT:
    the first 3 requests create the user, its policy and its key; everything after is checked)."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("auth_server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", AUTH_SERVER, str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        anon = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "AKIASETUP0000000000",
                "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **anon)
        iam.create_user(UserName="submitter")
        iam.put_user_policy(UserName="submitter", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="submitter")["AccessKey"]
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="aimip-auth")
        yield {"url": url, "port": port, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"],
               "bucket": "aimip-auth"}
    finally:
        proc.kill()
        proc.wait()


def expect_submit_error(name: str, cmd: list[str], env: dict, fragments: list[str], manifest: Path,
                        outputs: list[str]) -> str:
    import re

    proc = subprocess.run(cmd, cwd=FT.ROOT, env=env, capture_output=True, text=True, timeout=300)
    outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 1, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    line = FT.one_error_line(proc.stderr, "submit")
    for fragment in fragments:
        assert re.search(fragment, line), f"{name}: {fragment!r} not in {line!r}"
    assert not manifest.exists(), f"{name}: the manifest exists"
    FT.record_bad_input(name, line)
    return line


def test_each_way_of_failing_is_named(auth_server, tmp_path):
    """Was: `bucket 'X' does not exist at <endpoint>` for all of these."""
    root = make_tree(tmp_path, sizes=(100, 2048))
    manifest = tmp_path / "manifest.json"
    good = {"AWS_ACCESS_KEY_ID": auth_server["key_id"], "AWS_SECRET_ACCESS_KEY": auth_server["secret"]}
    wrong_secret = "WrongSecret/" + auth_server["secret"][::-1]
    outputs: list[str] = []
    cfg = config(tmp_path, auth_server["url"], auth_server["bucket"], connect_timeout_s=2.0, read_timeout_s=5.0,
                 max_attempts=1)
    cmd = submit_cmd(cfg, root, manifest)

    expect_submit_error("submit: wrong secret", cmd, clean_env(tmp_path, AWS_ACCESS_KEY_ID=auth_server["key_id"],
                                                               AWS_SECRET_ACCESS_KEY=wrong_secret),
                        [r"credentials rejected by http://127\.0\.0\.1:\d+ \(SignatureDoesNotMatch",
                         "they came from the environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                         "expected a key pair with write access to bucket 'aimip-auth'"], manifest, outputs)

    credentials = tmp_path / "secrets" / "aws-credentials"
    credentials.parent.mkdir()
    credentials.write_text("[mdiff-test]\naws_access_key_id = AKIAUNKNOWN000000000\n"
                           f"aws_secret_access_key = {wrong_secret}\n")
    expect_submit_error("submit: unknown key id (profile)", cmd,
                        clean_env(tmp_path, AWS_PROFILE="mdiff-test", AWS_SHARED_CREDENTIALS_FILE=str(credentials)),
                        [r"credentials rejected .*\(InvalidAccessKeyId", rf"profile 'mdiff-test' of {credentials}"],
                        manifest, outputs)

    expect_submit_error("submit: no credentials", cmd, clean_env(tmp_path),
                        ["no usable S3 credentials found", "expected AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"],
                        manifest, outputs)

    closed = free_port()
    cfg_closed = config(tmp_path, f"http://127.0.0.1:{closed}", "aimip-auth", connect_timeout_s=2.0,
                        read_timeout_s=5.0, max_attempts=1)
    expect_submit_error("submit: endpoint port closed", submit_cmd(cfg_closed, root, manifest),
                        clean_env(tmp_path, **good),
                        [rf"cannot reach the S3 endpoint http://127\.0\.0\.1:{closed} \(host 127\.0\.0\.1 port {closed}\)"],
                        manifest, outputs)

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    held = []
    stop = threading.Event()

    def accept_and_say_nothing():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    try:
        port = silent.getsockname()[1]
        cfg_silent = config(tmp_path, f"http://127.0.0.1:{port}", "aimip-auth", connect_timeout_s=1.0,
                            read_timeout_s=1.0, max_attempts=1)
        line = expect_submit_error("submit: endpoint never answers", submit_cmd(cfg_silent, root, manifest),
                                   clean_env(tmp_path, **good),
                                   [rf"\(host 127\.0\.0\.1 port {port}\) timed out after [\d.]+ s",
                                    r"read_timeout_s = 1", "expected an S3 endpoint that answers"],
                                   manifest, outputs)
        assert float(line.split("timed out after ")[1].split(" s")[0]) >= 1.0
    finally:
        stop.set()
        thread.join()
        for c in held:
            c.close()
        silent.close()

    cfg_missing = config(tmp_path, auth_server["url"], "no-such-bucket-here")
    expect_submit_error("submit: bucket missing", submit_cmd(cfg_missing, root, manifest), clean_env(tmp_path, **good),
                        [r"bucket 'no-such-bucket-here' does not exist at http://127\.0\.0\.1:\d+",
                         "mdiff never creates one"], manifest, outputs)

    # and with the right key it works; nothing anywhere holds the secret or the key id
    proc = subprocess.run(cmd, cwd=FT.ROOT, env=clean_env(tmp_path, **good), capture_output=True, text=True)
    outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(manifest.read_text())["objects"]) == 2
    scan_for_secrets(outputs, [tmp_path], [auth_server["secret"], wrong_secret, auth_server["key_id"]],
                     exclude=credentials.parent)


# ------------------------------------------------------------------ a plain local server


SECRET = "mdiff-fault-secret-5be1c0a97f3d4e21"
KEY_ID = "AKIAMDIFFFAULTS00001"


def plain_env(tmp: Path) -> dict:
    return clean_env(tmp, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)


def s3(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET)


def open_uploads(client, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_rerun_aborts_this_submissions_stale_multipart_uploads(endpoint, tmp_path, monkeypatch):
    """Was: the parts of a killed multipart upload stayed in the bucket for good."""
    for k, v in plain_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    client = s3(endpoint)
    client.create_bucket(Bucket="stale-uploads")
    root = make_tree(tmp_path)
    ours = "mdiff/mdiff-MD15/aimip/r4i1p1f1/Amon/tas/f3.nc"  # a file of make_tree
    theirs = "other-institution/model/aimip/r1i1p1f1/mon/tas/x.nc"
    for key in (ours, theirs):
        upload = client.create_multipart_upload(Bucket="stale-uploads", Key=key)
        client.upload_part(Bucket="stale-uploads", Key=key, UploadId=upload["UploadId"], PartNumber=1,
                           Body=b"x" * (5 * 2**20))
    assert sorted(open_uploads(client, "stale-uploads")) == sorted([ours, theirs])
    cfg = config(tmp_path, endpoint, "stale-uploads")
    S.upload(cfg, root, tmp_path / "dry.json", dry_run=True)
    assert sorted(open_uploads(client, "stale-uploads")) == sorted([ours, theirs])  # a dry run aborts nothing
    S.upload(cfg, root, tmp_path / "manifest.json")
    assert open_uploads(client, "stale-uploads") == [theirs]  # another submission's upload is left alone
    assert json.loads((tmp_path / "manifest.json").read_text())["aborted_stale_uploads"] == 1


def remote_digests(client, bucket: str) -> dict[str, str]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return out


def local_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def test_submit_killed_at_random_moments_completes_exactly(endpoint, tmp_path):
    record: FT.KillRecord = FT.RECORD["submit"]
    target_kills = FT.kills("submit")
    draw = FT.rng("submit")
    started = time.perf_counter()
    client = s3(endpoint)
    root = make_tree(tmp_path, sizes=(100, 70_000, 2 * 2**20, 11 * 2**20 + 5, 3 * 2**20, 16 * 2**20 + 7,
                                      12 * 2**20, 512))
    local = local_digests(root)
    env = plain_env(tmp_path)
    client.create_bucket(Bucket="kill-reference")
    manifest = tmp_path / "reference-manifest.json"
    total, seen = FT.timeline(submit_cmd(config(tmp_path, endpoint, "kill-reference"), root, manifest),
                              tmp_path / "reference.log",
                              {"upload": lambda: client.list_objects_v2(Bucket="kill-reference")["KeyCount"] > 0,
                               "manifest": manifest}, env)
    assert remote_digests(client, "kill-reference") == local
    window = (max(0.0, seen.get("upload", 0.0) - 0.3), seen.get("manifest", total) + 0.05)

    def delay() -> float:
        return draw.uniform(*window) if draw.random() < 0.9 else draw.uniform(0.0, 1.02 * total)

    logs = [tmp_path / "reference.log"]
    trial = 0
    while record.kills < target_kills and trial < max(3 * target_kills, target_kills + 5):
        trial += 1
        bucket = f"kill-trial-{trial:03d}"
        client.create_bucket(Bucket=bucket)
        folder = tmp_path / f"trial{trial:03d}"
        folder.mkdir()
        manifest, log = folder / "manifest.json", folder / "log"
        logs.append(log)
        cmd = submit_cmd(config(tmp_path, endpoint, bucket), root, manifest)
        if FT.run_killed(cmd, delay(), log, env):
            remote, pending = remote_digests(client, bucket), open_uploads(client, bucket)
            broken = [k for k, d in remote.items() if local.get(k) != d]
            record.killed(trial, "after the manifest" if manifest.exists() else
                          f"uploading: {len(remote)} of {len(local)} objects up, "
                          f"{'a multipart upload open' if pending else 'no multipart upload open'}",
                          f"incomplete objects {broken}" if broken or (manifest.exists() and remote != local)
                          else None)
        else:
            record.finished_before_kill += 1
        record.reran(trial, FT.run_complete(cmd, log, env), log,
                     partial(upload_difference, client, bucket, manifest, local), folder)
    record.seconds += time.perf_counter() - started
    scan_for_secrets([p.read_text(errors="replace") for p in logs], [tmp_path], [SECRET, KEY_ID])
    assert record.kills >= target_kills, f"only {record.kills} kills landed in {trial} trials"
    assert not record.problems, "\n".join(record.problems)
