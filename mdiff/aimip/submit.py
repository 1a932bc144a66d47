"""`mdiff submit`: upload the validated AI-MIP tree to the object store with s3fs.

- Only after a passed validation (the report says so).
- Credentials come only from the environment or the user's AWS/S3 config (botocore's
  own lookup); they are never passed on the command line, logged or written.
- Idempotent and resumable: an object already present with the same size and ETag is
  skipped. The ETag of a file is computed locally as S3 does (MD5 of a single PUT, or
  the MD5 of the parts' MD5s with ``-<parts>`` for a multipart upload; s3fs goes
  multipart from 2 x chunksize, so upload and check use the same chunksize). An
  interrupted upload leaves no partial object (S3 PUT and multipart completion are
  atomic): rerun and it carries on. The unfinished multipart uploads a killed run leaves
  (parts stored, never completed) are listed and aborted by the rerun, for this
  submission's keys only.
- Every failure says what is wrong, first probed with one request to the bucket:
  credentials rejected (naming where they came from: the environment variables or the
  profile and file, never a key), no credentials, endpoint unreachable (host and port),
  timed out (after how long), bucket missing.
- Writes a manifest (key, size, sha256, etag, action); ``--dry-run`` only lists.
- With ``--checksums`` (the submission root's ``MANIFEST.sha256``): the local files must
  match it before anything is uploaded, each object carries its sha256 as user metadata,
  and after the upload every remote object is verified (size, sha256 metadata, ETag;
  ``mdiff.aimip.verify``); mismatches are all named and the command fails.
  ``--verify-only`` re-checks the remote copy without uploading.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from mdiff.config import Config

log = logging.getLogger("mdiff.aimip.submit")
MULTIPART_LIMIT = 5 * 2**30  # s3fs: single PUT only below min(5 GiB, 2 x chunksize)


class SubmitError(ValueError):
    user_facing = True


@dataclass
class Entry:
    key: str  # bucket/prefix/relative path
    size: int
    sha256: str
    etag: str
    action: str = ""  # upload | skip (present, same size and ETag) | would-upload (dry run)
    path: str = ""  # the local file, relative to the tree root


def file_digests(path: Path, chunksize: int) -> tuple[str, str]:
    """(sha256, S3 ETag as s3fs's upload of this file will produce it)."""
    size = path.stat().st_size
    sha = hashlib.sha256()
    parts = []
    with open(path, "rb") as f:
        while block := f.read(chunksize):
            sha.update(block)
            parts.append(hashlib.md5(block).digest())
    if size < min(MULTIPART_LIMIT, 2 * chunksize):
        etag = parts[0].hex() if parts else hashlib.md5(b"").hexdigest()
    else:
        etag = f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"
    return sha.hexdigest(), etag


def upload_prefix(cfg: Config) -> str:
    """Folder in the bucket (see SubmitConfig.prefix)."""
    if cfg.submit.prefix:
        return cfg.submit.prefix.strip("/")
    return "" if cfg.aimip.layout == "aimip" else cfg.aimip.institution_id


def make_filesystem(cfg: Config):
    """s3fs with bounded timeouts/retries; credentials from botocore's usual lookup only."""
    import s3fs

    s = cfg.submit
    s3fs.S3FileSystem.retries = s.max_attempts  # a class attribute in s3fs
    return s3fs.S3FileSystem(
        anon=False, skip_instance_cache=True, use_listings_cache=False,
        client_kwargs={"endpoint_url": s.endpoint_url},
        config_kwargs={"connect_timeout": s.connect_timeout_s, "read_timeout": s.read_timeout_s,
                       "retries": {"max_attempts": s.max_attempts, "mode": "standard"}},
    )


# ------------------------------------------------------------------------- failures

# S3 error codes that mean "these credentials are not accepted" (not "the bucket is missing").
CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "TokenRefreshRequired", "AccessDenied", "AllAccessDisabled", "InvalidClientTokenId",
                     "UnrecognizedClientException", "AuthorizationHeaderMalformed", "InvalidSecurity", "403"}
MISSING_BUCKET_ERRORS = {"NoSuchBucket", "404"}


def credential_source() -> str:
    """Where botocore's lookup finds the credentials: names of variables or profile and file,
    never a key or a secret."""
    try:
        import botocore.session

        profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
        creds = botocore.session.Session(profile=profile).get_credentials()
    except Exception as err:  # noqa: BLE001 -- only used to word an error
        return f"the AWS credential lookup ({type(err).__name__})"
    if creds is None:
        return "nowhere (no credentials found)"
    method = getattr(creds, "method", "unknown")
    name = profile or "default"
    if method == "env":
        extra = " and AWS_SESSION_TOKEN" if os.environ.get("AWS_SESSION_TOKEN") else ""
        return f"the environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY{extra}"
    if method == "shared-credentials-file":
        where = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
        return f"profile {name!r} of {where}" + (" (AWS_PROFILE)" if profile else "")
    if method == "config-file":
        where = os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")
        return f"profile {name!r} of {where}" + (" (AWS_PROFILE)" if profile else "")
    return f"botocore's credential provider {method!r}" + (f" (profile {name!r})" if profile else "")


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _endpoint(cfg: Config) -> str:
    url = urlparse(cfg.submit.endpoint_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"host {url.hostname} port {port}"


def describe_failure(err: BaseException, cfg: Config, action: str, elapsed_s: float) -> SubmitError | None:
    """A one-line ``SubmitError`` saying what went wrong in ``action``, or None if unknown.

    s3fs turns botocore errors into OSError subclasses (and ``exists()`` into False), so the
    cause is looked up along the exception chain."""
    from botocore import exceptions as B

    s = cfg.submit
    chain = _chain(err)
    for e in chain:
        if isinstance(e, (B.NoCredentialsError, B.PartialCredentialsError)):
            return SubmitError(
                f"{action}: no usable S3 credentials found ({type(e).__name__}); expected "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or a profile in "
                "~/.aws/credentials (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE)")
        if isinstance(e, B.ClientError):
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in MISSING_BUCKET_ERRORS:
                return SubmitError(f"bucket {s.bucket!r} does not exist at {s.endpoint_url} ({action}: {code}); "
                                   "expected an existing bucket (submit.bucket; mdiff never creates one)")
            if code in CREDENTIAL_ERRORS:
                return SubmitError(
                    f"{action}: credentials rejected by {s.endpoint_url} ({code}: "
                    f"{str(error.get('Message', '')).strip()[:120] or 'no message'}); they came from "
                    f"{credential_source()}; expected a key pair with write access to bucket {s.bucket!r}")
            return SubmitError(f"{action}: {s.endpoint_url} answered S3 error {code or '?'} "
                               f"({str(error.get('Message', '')).strip()[:160]})")
    for e in chain:
        if isinstance(e, (B.ReadTimeoutError, B.ConnectTimeoutError, TimeoutError)) or \
                type(e).__name__ in ("FSTimeoutError", "ServerTimeoutError", "SocketTimeoutError"):
            return SubmitError(
                f"{action}: {s.endpoint_url} ({_endpoint(cfg)}) timed out after {elapsed_s:.1f} s "
                f"({type(e).__name__}; submit.connect_timeout_s = {s.connect_timeout_s:g}, read_timeout_s = "
                f"{s.read_timeout_s:g}, max_attempts = {s.max_attempts}); expected an S3 endpoint that answers")
    for e in chain:
        if isinstance(e, (B.EndpointConnectionError, B.ConnectionClosedError, ConnectionError)):
            return SubmitError(
                f"{action}: cannot reach the S3 endpoint {s.endpoint_url} ({_endpoint(cfg)}): "
                f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'connection failed'}; "
                "expected an S3 server listening there (submit.endpoint_url)")
    return None


def _checked(cfg: Config, action: str, call, *args, **kwargs):
    """``call(*args, **kwargs)``, with failures worded by ``describe_failure``."""
    started = time.monotonic()
    try:
        return call(*args, **kwargs)
    except Exception as err:
        described = describe_failure(err, cfg, action, time.monotonic() - started)
        if described is None:
            raise
        raise described from None


def probe_bucket(cfg: Config, fs) -> None:
    """One request to the bucket, so that every way of failing is named before any work."""
    _checked(cfg, f"listing bucket {cfg.submit.bucket!r}", fs.call_s3, "list_objects_v2",
             Bucket=cfg.submit.bucket, MaxKeys=1)


def stale_multipart_uploads(cfg: Config, fs, keys: set[str]) -> list[tuple[str, str]]:
    """(key, upload id) of unfinished multipart uploads of ``keys`` (bucket/path) in the bucket."""
    bucket = cfg.submit.bucket
    prefix = upload_prefix(cfg)
    kwargs = {"Bucket": bucket, **({"Prefix": prefix + "/"} if prefix else {})}
    out = []
    while True:
        page = _checked(cfg, "listing unfinished multipart uploads", fs.call_s3, "list_multipart_uploads", **kwargs)
        for upload in page.get("Uploads", []) or []:
            if f"{bucket}/{upload['Key']}" in keys:
                out.append((upload["Key"], upload["UploadId"]))
        if not page.get("IsTruncated"):
            return out
        kwargs.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))


def abort_stale_uploads(cfg: Config, fs, keys: set[str], dry_run: bool = False) -> int:
    """Abort (or, in a dry run, list) this submission's unfinished multipart uploads."""
    stale = stale_multipart_uploads(cfg, fs, keys)
    for key, upload_id in stale:
        if dry_run:
            print(f"would abort an unfinished multipart upload of {cfg.submit.bucket}/{key}")
            continue
        _checked(cfg, f"aborting the unfinished multipart upload of {key}", fs.call_s3,
                 "abort_multipart_upload", Bucket=cfg.submit.bucket, Key=key, UploadId=upload_id)
        log.info("aborted an unfinished multipart upload of %s/%s (left by an interrupted run)",
                 cfg.submit.bucket, key)
    return len(stale)


# ------------------------------------------------------------------------- upload


def require_passed_validation(report_path: str | Path, root: Path) -> None:
    import json

    path = Path(report_path)
    if not path.exists():
        raise SubmitError(f"{path}: no validation report; run `snakemake validate_submission` first")
    report = json.loads(path.read_text())
    if not report.get("passed"):
        raise SubmitError(f"{path}: validation did not pass ({len(report.get('errors', []))} errors); "
                          "nothing uploaded")
    if Path(report.get("root", "")).resolve() != root.resolve():
        raise SubmitError(f"{path}: the report validated {report.get('root')!r}, not {str(root)!r}")


def plan(cfg: Config, root: Path, fs, chunksize: int) -> list[Entry]:
    """What to upload: every file of the tree, marked skip when already present intact."""
    from tqdm import tqdm

    bucket = cfg.submit.bucket
    base = "/".join(p for p in (bucket, upload_prefix(cfg)) if p)
    # fs.put would silently create a missing bucket, and fs.exists() turns every failure
    # (credentials, network) into "missing": probe it with a request whose errors we see.
    probe_bucket(cfg, fs)
    try:
        remote = _checked(cfg, f"listing {base}", fs.find, base, detail=True)
    except FileNotFoundError:
        remote = {}
    entries = []
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise SubmitError(f"{root}: no files to upload")
    for path in tqdm(files, desc="checksums", unit="file"):
        sha, etag = file_digests(path, chunksize)
        key = f"{base}/{path.relative_to(root).as_posix()}"
        info = remote.get(key)
        same = info is not None and int(info.get("size", -1)) == path.stat().st_size and \
            str(info.get("ETag", "")).strip('"') == etag
        entries.append(Entry(key, path.stat().st_size, sha, etag, "skip" if same else "upload",
                             path.relative_to(root).as_posix()))
    return entries


def upload(cfg: Config, root: str | Path, manifest: str | Path | None = None, dry_run: bool = False,
           fs=None, checksums: dict[str, str] | None = None, verify_only: bool = False) -> list[Entry]:
    from tqdm import tqdm

    from mdiff.aimip import drs, verify
    from mdiff.fileio import write_json

    root = Path(root)
    if not root.is_dir():
        raise SubmitError(f"{root}: AI-MIP tree does not exist")
    chunksize = cfg.submit.chunksize_mb * 2**20
    fs = fs or make_filesystem(cfg)
    entries = plan(cfg, root, fs, chunksize)
    package = drs.submission_root(cfg.aimip).as_posix()
    if checksums is not None:
        bad = verify.local_mismatches(entries, checksums, package)
        if bad:
            raise SubmitError(f"{root}: {len(bad)} local file(s) do not match the submission's "
                              f"MANIFEST.sha256 (rerun `snakemake package_submission`): " + "; ".join(bad[:20]))
    if verify_only:
        for e in entries:
            e.action = "verify"
    todo = [e for e in entries if e.action == "upload"]
    log.info("%d files, %d to upload (%.1f MB), %d already present", len(entries), len(todo),
             sum(e.size for e in todo) / 1e6, len(entries) - len(todo))
    aborted = abort_stale_uploads(cfg, fs, {e.key for e in entries}, dry_run)
    if dry_run:
        for e in todo:
            e.action = "would-upload"
            print(f"would upload {e.key} ({e.size} bytes)")
    else:
        for e in tqdm(todo, desc="upload", unit="file"):
            # the sha256 travels as user metadata: the verification below compares it
            _checked(cfg, f"uploading {e.key}", fs.put_file, str(root / e.path), e.key, chunksize=chunksize,
                     Metadata={"sha256": e.sha256})
            log.info("uploaded %s (%d bytes)", e.key, e.size)
    if dry_run:
        return entries
    # Verify every object of the upload (the whole tree, skipped ones included).
    folder = posixpath.commonpath([posixpath.dirname(e.key) for e in entries])  # the upload's folder
    checks, unexpected = _checked(cfg, "verifying the upload", verify.verify_remote, fs, entries, folder)
    result = verify.summary(checks, unexpected)
    status = {c.key: c.status for c in checks}
    doc = {"endpoint_url": cfg.submit.endpoint_url, "bucket": cfg.submit.bucket,
           "prefix": upload_prefix(cfg), "chunksize": chunksize, "aborted_stale_uploads": aborted,
           "verification": result,
           "objects": [dict(asdict(e), verified=status.get(e.key)) for e in entries]}
    for key in unexpected:
        log.warning("remote object not in this upload: %s", key)
    if not result["verified"]:
        failed = Path(manifest).with_suffix(".failed.json") if manifest else None
        if failed:
            write_json(failed, doc)
        bad = result["mismatches"]
        raise SubmitError(f"{len(bad)} of {len(checks)} object(s) do not match after the upload"
                          f"{f' (details: {failed})' if failed else ''}: "
                          + "; ".join(f"{c['key']} ({c['status']}: {c['detail']})" for c in bad))
    log.info("verified %d objects (size and ETag; %d also by sha256 metadata)", len(checks),
             result["with_sha256_metadata"])
    if manifest:
        write_json(manifest, doc)
    return entries


def submit(cfg: Config, root: str | Path, report: str | Path, manifest: str | Path | None = None,
           dry_run: bool = False, checksums: str | Path | None = None, verify_only: bool = False) -> list[Entry]:
    """What `mdiff submit` does: after a passed validation (``report``), upload the tree at
    ``root`` (``checksums``: the submission root's MANIFEST.sha256, checked before and after)."""
    from mdiff.aimip.package import read_checksums
    from mdiff.fileio import remove_stale_temporaries

    root = Path(root)
    require_passed_validation(report, root)
    if not dry_run and not manifest:
        raise SubmitError("--manifest is required unless --dry-run")
    if manifest:
        remove_stale_temporaries(manifest)  # of a killed run
    sums = read_checksums(checksums) if checksums else None
    entries = upload(cfg, root, manifest, dry_run, checksums=sums, verify_only=verify_only)
    done = sum(e.action == ("would-upload" if dry_run else "upload") for e in entries)
    log.info("%s: %d files %s, %d already present", cfg.submit.endpoint_url, done,
             "would be uploaded" if dry_run else "uploaded", sum(e.action == "skip" for e in entries))
    sys.stdout.flush()
    return entries
