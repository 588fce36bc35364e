"""On the AWS path: logs never show credentials, even at -vv."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKENabcdef0123456789"


def test_debug_logs_never_show_credentials(moto_endpoint, bucket, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WRENPACK_", "AWS_"))}
    env.update(
        AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_SESSION_TOKEN=TOKEN,
        AWS_DEFAULT_REGION="us-east-1", AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull,
        AWS_ENDPOINT_URL_STS=moto_endpoint, WRENPACK_STORAGE=f"s3://{bucket}/redact",
        WRENPACK_S3_ENDPOINT_URL=moto_endpoint, WRENPACK_LAMBDA_ENDPOINT_URL=moto_endpoint,
        WRENPACK_AWS_REGION="us-east-1", PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    out = subprocess.run([sys.executable, "-m", "wrenpack", "-vv", "doctor", "--json"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    logs = out.stderr
    # The debug logs are there (the test would see a leak) ...
    assert "Sending http request" in logs and "Authorization" in logs, logs[-2000:]
    # ... without the key id, the secret key or the session token.
    for secret in (KEY_ID, SECRET_KEY, TOKEN, TOKEN[:20]):
        assert secret not in logs and secret not in out.stdout
    assert "<redacted" in logs
