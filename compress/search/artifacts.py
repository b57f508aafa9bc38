"""The artifacts of a search shared by several machines: where the worker that ends the search finds the full-fidelity
candidates the others built, to time them side by side, choose among them and check the chosen one on held-out data.

Every measured trial records who built it (``built_by``: host, process, search directory) and its artifact's content
digest (the sha256 of its manifest's file hashes, :attr:`compress.artifact.Artifact.digest`). A candidate is used where
its recorded path holds an artifact of that digest (the same machine, or a search directory on a shared filesystem).
Otherwise it is fetched from the study's artifact store (``--artifact-store``: a directory every worker mounts, or
``s3://BUCKET``), Optuna's artifact store (:mod:`optuna.artifacts`), to which every full-fidelity candidate is
uploaded as a tar archive when it is built; the archive's sha256 and the artifact's digest are both checked. A
candidate neither here nor in a store is judged by its report alone and not chosen (the summary says where it is).
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from compress.device.facts import sha256_file
from compress.errors import ConfigError, IntegrityError


def open_store(spec: str | None):
    """The Optuna artifact store ``spec`` names (None: none): ``s3://BUCKET`` (boto3; its endpoint and credentials
    from the usual AWS settings, e.g. ``AWS_ENDPOINT_URL`` for MinIO) or a directory, created if need be."""
    if not spec:
        return None
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://"):].partition("/")
        if not bucket or prefix.strip("/"):
            raise ConfigError(f"--artifact-store {spec}: name a bucket, not a folder in it",
                              hint="write s3://BUCKET (give each search its own bucket)")
        from compress._optional import require

        boto3 = require("boto3", "--artifact-store s3://")
        return Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    if "://" in spec:
        raise ConfigError(f"--artifact-store {spec}: not a directory or s3:// URL",
                          hint="name a directory every worker mounts, or s3://BUCKET")
    root = Path(spec).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".edgecompress-probe-")
        probe.close()
    except OSError as e:
        raise ConfigError(f"--artifact-store {root}: cannot write there ({e.strerror or e})",
                          hint="name a directory this worker can write to (one every worker mounts)") from None
    return FileSystemArtifactStore(str(root))


def publish(store, trial, artifact: Path) -> dict[str, Any]:
    """Upload ``artifact`` (a directory) to ``store`` as a tar archive attached to ``trial``: its id and sha256, to
    record in the trial's user attributes."""
    import optuna

    with tempfile.TemporaryDirectory(prefix="edgecompress-publish-") as tmp:
        archive = Path(tmp) / f"trial-{trial.number:04d}.tar"
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(artifact, arcname=artifact.name)
        sha = sha256_file(archive)
        artifact_id = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(archive),
                                                       study_or_trial=trial, mimetype="application/x-tar")
    return {"artifact_id": artifact_id, "artifact_tar_sha256": sha}


def locate(store, attrs: dict[str, Any], into: Path) -> Path | None:
    """Where this machine finds the artifact a trial recorded (``attrs``: its user attributes): its own path when that
    holds an artifact of the recorded digest, else a verified copy fetched from ``store`` into ``into``
    (``SEARCH/fetched``; fetched once), else None."""
    from compress.artifact import load_artifact

    path, recorded = Path(attrs["artifact"]), attrs.get("artifact_digest")
    if path.is_dir() and (recorded is None or digest(path) == recorded):
        return path
    if store is None or not attrs.get("artifact_id"):
        return None
    dest = into / attrs["artifact_id"]
    got = dest / path.name
    if got.is_dir() and digest(got) == recorded:
        return got
    import optuna

    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into, prefix=".fetch-") as tmp:
        archive = Path(tmp) / "artifact.tar"
        optuna.artifacts.download_artifact(artifact_store=store, artifact_id=attrs["artifact_id"],
                                           file_path=str(archive))
        if sha256_file(archive) != attrs.get("artifact_tar_sha256"):
            raise IntegrityError(f"the artifact store's copy of {path} ({attrs['artifact_id']}) does not match the "
                                 "sha256 its worker recorded", hint="the store was altered: rebuild that trial "
                                 "(delete it from the store and run the search again)")
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "x", filter="data")
        load_artifact(Path(tmp) / "x" / path.name)  # every file against its manifest
        if digest(Path(tmp) / "x" / path.name) != recorded:
            raise IntegrityError(f"the artifact store's copy of {path} is another artifact than the one its worker "
                                 "built (digest differs)", hint="rebuild that trial")
        shutil.rmtree(dest, ignore_errors=True)
        (Path(tmp) / "x").rename(dest)
    return got


def digest(path: Path) -> str | None:
    """The content digest of the artifact at ``path`` (from its manifest's file hashes; None: not an artifact)."""
    from compress.artifact import load_artifact
    from compress.errors import ArtifactError

    try:
        return load_artifact(path, verify=False).digest
    except ArtifactError:
        return None
