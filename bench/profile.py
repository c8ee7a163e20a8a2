"""``python -m bench.profile OUT.prof``: one cookie-store ``twistd -n oauthgate`` under
cProfile (``twistd --profile``), loaded for 5 s each with ``/oauth2/auth`` (cookie),
``/oauth2/auth`` (RS256 bearer) and a proxied 1 KiB GET; prints the top 25 functions by
internal time and leaves the stats in OUT.prof (``python -m pstats OUT.prof``)."""

from __future__ import annotations

import base64
import json
import os
import pstats
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from bench.run import (
    CLIENT_ID,
    CLIENT_SECRET,
    COOKIE_NAME,
    TWISTD,
    Process,
    bearer_token,
    cookie_session,
    free_port,
    jwks,
    run_wrk,
    wait_for_status,
)


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
    idp_port, up_port, port = free_port(), free_port(), free_port()
    idp_url = f"http://127.0.0.1:{idp_port}"
    with tempfile.TemporaryDirectory(prefix="oauthgate-profile-") as tmp:
        workdir = Path(tmp)
        server = [sys.executable, "-m", "bench.servers"]
        idp = Process("idp", [*server, "idp", str(idp_port), json.dumps(jwks(key))], workdir)
        upstream = Process("upstream", [*server, "upstream", str(up_port)], workdir)
        gate = Process(
            "oauthgate",
            [
                sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--profile={out}",
                "--profiler=cprofile", "--savestats", "oauthgate",
                f"--http-address=127.0.0.1:{port}", "--provider=oidc",
                f"--oidc-issuer-url={idp_url}", f"--client-id={CLIENT_ID}",
                f"--client-secret={CLIENT_SECRET}", f"--cookie-secret={secret}",
                "--cookie-secure=false", "--email-domain=example.com",
                f"--upstream=http://127.0.0.1:{up_port}/", "--skip-jwt-bearer-tokens",
            ],
            workdir,
        )  # fmt: skip
        try:
            wait_for_status(idp, idp_port, "/jwks", 200)
            wait_for_status(upstream, up_port, "/1k", 200)
            cookie = {"Cookie": f"{COOKIE_NAME}={cookie_session(secret)}"}
            bearer = {"Authorization": f"Bearer {bearer_token(key, idp_url)}"}
            wait_for_status(gate, port, "/oauth2/auth", 202, cookie)
            wait_for_status(gate, port, "/oauth2/auth", 202, bearer)
            for path, headers in (
                ("/oauth2/auth", cookie),
                ("/oauth2/auth", bearer),
                ("/1k", cookie),
            ):
                run_wrk(f"http://127.0.0.1:{port}{path}", headers, duration=5, connections=10)
        finally:
            for process in (gate, upstream, idp):
                process.stop()
    pstats.Stats(str(out)).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
