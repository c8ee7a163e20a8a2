"""``python -m bench.profile OUT.prof``: one cookie-store ``twistd -n oauthgate`` under
cProfile (``twistd --profile``), loaded for 5 s each with ``/oauth2/auth`` (cookie),
``/oauth2/auth`` (RS256 bearer) and a proxied 1 KiB GET; prints the top 25 functions by
internal time and leaves the stats in OUT.prof (``python -m pstats OUT.prof``)."""

from __future__ import annotations

import json
import pstats
import sys
import tempfile
from pathlib import Path

from bench.run import (
    COOKIE_NAME,
    bearer_token,
    cookie_session,
    credentials,
    free_port,
    gate_args,
    gate_command,
    jwks,
    processes,
    run_wrk,
    server_command,
    wait_for_status,
)


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    key, secret = credentials()
    idp_port, up_port, port = free_port(), free_port(), free_port()
    idp_url = f"http://127.0.0.1:{idp_port}"
    profiler = [f"--profile={out}", "--profiler=cprofile", "--savestats"]
    with tempfile.TemporaryDirectory(prefix="oauthgate-profile-") as tmp, processes() as start:
        workdir = Path(tmp)
        idp = start("idp", server_command("idp", idp_port, json.dumps(jwks(key))), workdir)
        upstream = start("upstream", server_command("upstream", up_port), workdir)
        gate = start(
            "oauthgate",
            gate_command(port, gate_args(secret, idp_url, up_port), profiler),
            workdir,
        )
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
    pstats.Stats(str(out)).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
