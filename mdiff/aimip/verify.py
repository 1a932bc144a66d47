"""Verification of an upload, object by object, against the submission's manifest.

Before an upload, every local file must match ``MANIFEST.sha256`` (the files are those the
dataset card describes). After it, the remote objects under the upload's folder are
listed and each file of the manifest is compared with its object:

- the object exists, and its size equals the file's;
- if the object carries a ``sha256`` in its user metadata (`mdiff submit` stores it),
  that equals the manifest's;
- and its ETag equals the one computed locally (``mdiff.aimip.submit.file_digests``: MD5,
  or MD5 of the part MD5s with ``-<parts>``). The ETag is checked even when the sha256
  metadata matches: the metadata is what the uploader declared, the ETag is what the store
  computed from the bytes it holds (a test corrupts an object but keeps its metadata).

Remote objects under the folder that the manifest does not list are reported as
warnings (an upload never deletes anything).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Check:
    key: str
    status: str  # ok | missing | size | sha256 | etag
    detail: str = ""
    method: str = ""  # sha256-metadata | etag


def local_mismatches(entries, checksums: dict[str, str], base: str) -> list[str]:
    """Local files that differ from ``MANIFEST.sha256`` (paths under ``base``, the submission
    root relative to the tree root), files it lacks, and files it lists that are absent."""
    prefix = f"{base.rstrip('/')}/"
    local = {e.path[len(prefix):]: e.sha256 for e in entries if e.path.startswith(prefix)}
    manifest_name = next((p for p in local if p == "MANIFEST.sha256"), None)
    local.pop(manifest_name, None)
    out = [f"{prefix}{rel}: sha256 {sha} differs from MANIFEST.sha256 ({checksums[rel]})"
           for rel, sha in sorted(local.items()) if rel in checksums and checksums[rel] != sha]
    out += [f"{prefix}{rel}: not listed in MANIFEST.sha256" for rel in sorted(set(local) - set(checksums))]
    out += [f"{prefix}{rel}: listed in MANIFEST.sha256 but missing locally"
            for rel in sorted(set(checksums) - set(local))]
    outside = [e.path for e in entries if not e.path.startswith(prefix)]
    out += [f"{p}: outside the submission root {base}" for p in outside[:20]]
    return out


def verify_remote(fs, entries, folder: str) -> tuple[list[Check], list[str]]:
    """Compare every entry with the remote object; ([checks], [unexpected remote keys])."""
    fs.invalidate_cache()
    try:
        remote = fs.find(folder, detail=True)
    except FileNotFoundError:
        remote = {}
    checks = []
    for e in entries:
        info = remote.get(e.key)
        if info is None:
            checks.append(Check(e.key, "missing", "no such object after the upload"))
            continue
        size = int(info.get("size", -1))
        if size != e.size:
            checks.append(Check(e.key, "size", f"remote {size} bytes, local {e.size}"))
            continue
        meta = {k.lower(): v for k, v in (fs.metadata(e.key) or {}).items()}
        method = "sha256-metadata+etag" if "sha256" in meta else "etag"
        etag = str(info.get("ETag", "")).strip('"')
        if "sha256" in meta and meta["sha256"] != e.sha256:
            checks.append(Check(e.key, "sha256", f"remote sha256 {meta['sha256']}, manifest {e.sha256}", method))
        elif etag != e.etag:
            checks.append(Check(e.key, "etag", f"remote ETag {etag}, local {e.etag} (other bytes)", method))
        else:
            checks.append(Check(e.key, "ok", "", method))
    keys = {e.key for e in entries}
    unexpected = sorted(k for k, v in remote.items() if k not in keys and v.get("type", "file") != "directory")
    return checks, unexpected


def summary(checks: list[Check], unexpected: list[str]) -> dict:
    bad = [c for c in checks if c.status != "ok"]
    return {"verified": not bad, "objects_checked": len(checks),
            "with_sha256_metadata": sum(c.method == "sha256-metadata+etag" for c in checks),
            "etag_only": sum(c.method == "etag" for c in checks),
            "mismatches": [asdict(c) for c in bad], "unexpected_remote_objects": unexpected}
