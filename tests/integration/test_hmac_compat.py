"""Issue 2: our HMAC signatures equal jupyter_client's Session.sign for the same frames."""
import os
import random
import subprocess

import pytest
from jupyter_client.session import Session


def tool():
    path = os.environ.get("KBRIDGE_HMAC_TOOL")
    if not path:
        import pathlib
        path = str(pathlib.Path(__file__).resolve().parents[2] / "build" / "tests" / "kb_hmac_tool")
    return path


@pytest.mark.parametrize("scheme", ["hmac-sha256", "hmac-sha512"])
@pytest.mark.parametrize("keylen", [0, 1, 32, 33, 36, 64, 65, 128, 129, 300])
def test_signature_matches_jupyter_client(scheme, keylen):
    rng = random.Random(keylen * 7 + len(scheme))
    key = bytes(rng.randrange(256) for _ in range(keylen)) if keylen != 36 else \
        b"0b13b46b-e5ef6f6c8045d1580c9e4d54abcd"[:36]
    frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000))) for _ in range(4)]
    frames[0] = b'{"msg_id": "\xc3\xa9", "msg_type": "execute_request"}'
    session = Session(key=key, signature_scheme=scheme)
    expected = session.sign(frames).decode()
    out = subprocess.run([tool(), scheme, key.hex(), *[f.hex() for f in frames]],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == expected
    if keylen:
        assert len(out) == (64 if scheme == "hmac-sha256" else 128)
