"""A byte-identical round trip through each provider hook against its emulator."""

from __future__ import annotations

import hashlib
import os

from wedsync_dr_dev.local_stack import BUCKET


def _payload() -> bytes:
    # binary, not UTF-8, and large enough for S3's multipart threshold in boto's transfer manager (8 MiB)
    return os.urandom(9 * 1024 * 1024 + 17)


def test_s3_hook_round_trip(stack, tmp_path):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    data = _payload()
    hook = S3Hook(aws_conn_id="backup_s3")
    src = tmp_path / "obj"
    src.write_bytes(data)
    hook.load_file(str(src), key="smoke/s3.bin", bucket_name=BUCKET, replace=True)
    got = hook.get_key("smoke/s3.bin", bucket_name=BUCKET).get()["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert got == data


def test_wasb_hook_round_trip(stack):
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    data = _payload()
    hook = WasbHook(wasb_conn_id="backup_azure")
    hook.upload(container_name=BUCKET, blob_name="smoke/azure.bin", data=data, overwrite=True)
    got = hook.download(container_name=BUCKET, blob_name="smoke/azure.bin").readall()
    assert got == data


def test_gcs_hook_round_trip(stack):
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    data = _payload()
    hook = GCSHook(gcp_conn_id="backup_gcs")
    hook.upload(bucket_name=BUCKET, object_name="smoke/gcs.bin", data=data)
    got = hook.download(bucket_name=BUCKET, object_name="smoke/gcs.bin")
    assert got == data
