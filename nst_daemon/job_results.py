"""`nstd jobs show ID` and `nstd jobs export ID -o FILE`: one job's record, and its result out of the store.

The object store keeps every result until `store.retention_days` sweeps it, so a result the watched folder
or the bot delivered (or failed to) can always be written out again, under the same rule as
`nstd stylize -o`: never over an existing file without --force.
"""

from __future__ import annotations

from pathlib import Path

from botocore.exceptions import ClientError
from rich.console import Console

from nst_daemon import imaging
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError
from nst_daemon.jobs import Job, JobStore
from nst_daemon.output_file import check_output, resolve_output, write_output
from nst_daemon.store import get_bytes
from nst_daemon.store.errors import is_not_found
from nst_daemon.views import print_job


def load_job(settings: Settings, job_id: int) -> Job:
    job = JobStore.open(settings.db_path).get(job_id, stored_only=False)
    if job is None:
        raise NstdError(f"there is no job {job_id}; `nstd jobs` lists them")
    return job


def show(settings: Settings, job_id: int, console: Console) -> None:
    print_job(load_job(settings, job_id), console)


def export(settings: Settings, job_id: int, output: Path, *, force: bool, console: Console) -> None:
    """Write job `job_id`'s result to `output` (a .jpg/.png file, or a folder: job-ID.jpg in it)."""
    job = load_job(settings, job_id)
    if not job.output_key:
        why = f"{job.state}: {job.error}" if job.error else job.state
        raise NstdError(f"job {job_id} has no result ({why})")
    output = resolve_output(output, f"job-{job_id}.jpg")
    output_format = imaging.format_for_path(output)
    check_output(output, force=force)
    from nst_daemon.store.factory import open_store

    try:
        data = get_bytes(open_store(settings), settings.store.bucket, job.output_key)
    except ClientError as exc:
        if is_not_found(exc):
            raise NstdError(
                f"the result of job {job_id} ({job.output_key}) is no longer in the object store; "
                "store.retention_days removes old results"
            ) from None
        raise NstdError(f"cannot read {job.output_key} from the object store: {exc}") from None
    if output_format != "jpeg":  # results are stored as JPEG; a .png output gets a PNG
        data = imaging.encode_image(imaging.load_image(data), output_format)
    write_output(output, data, force=force)
    console.print(f"wrote {output} (the result of job {job_id})", highlight=False)
