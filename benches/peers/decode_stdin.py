#!/usr/bin/env python3
"""`carehub decode --stdin` end to end against TheengsDecoder on the same adverts.

Both read one JSON advertisement per line and write one JSON result per line, each
in its own documented shape: carehub's `--stdin` line (docs/decode.md) and the JSON
TheengsDecoder's `decodeBLE` takes (what TheengsGateway hands it). The adverts are
the same: BTHome v2 plain (battery, temperature, humidity, a packet id that changes
every frame; the pvvx layout TheengsDecoder knows by the name "ATC_...") and Ruuvi
RAWv2 (the first vector of Ruuvi's specification), alternating.

TheengsDecoder is timed as a Python process that reads the lines, calls
`decodeBLE` on each and prints what it returns; carehub as the release binary with
stdin and stdout redirected to files. Every result is checked to carry a
temperature, so neither side is timed doing nothing. Prints adverts per second and
the ratio of wall-clock medians (the figure the goal is stated in), then the same
runs' CPU time (user + system, from each process's resource usage) and its ratio. Run through benches/peers/decode_stdin.sh.

    decode_stdin.py CAREHUB_BINARY [N]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MAC = "54:48:E6:8F:80:A5"
RUUVI = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"
CAREHUB_RUNS = 15
THEENGS_RUNS = 3

THEENGS = r"""
import sys
from TheengsDecoder import decodeBLE
out = sys.stdout
for line in sys.stdin:
    r = decodeBLE(line)
    out.write((r or "{}") + "\n")
"""


def adverts(n: int):
    """(carehub line, TheengsDecoder line) for n adverts."""
    for i in range(n):
        if i % 2 == 0:
            sd = f"4000{(i // 2) % 256:02x}016402ca0903bf13"
            yield (
                json.dumps({"mac": MAC, "name": "ATC_8F80A5", "service_data": {"fcd2": sd}}),
                json.dumps({"id": MAC, "name": "ATC_8F80A5", "servicedata": sd, "servicedatauuid": "0xfcd2"}),
            )
        else:
            yield (
                json.dumps({"mac": MAC, "manufacturer_data": {"0499": RUUVI}}),
                json.dumps({"id": MAC, "manufacturerdata": "9904" + RUUVI}),
            )


def timed(cmd, stdin_path: str, out_path: str) -> tuple[float, float]:
    """Wall-clock seconds of the whole run, and the CPU seconds (user + system)
    the process used, from its own resource usage."""
    with open(stdin_path, "rb") as i, open(out_path, "wb") as o:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=i, stdout=o)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        assert p.returncode == 0, (cmd, p.returncode)
        return wall, usage.ru_utime + usage.ru_stime


def check(out_path: str, n: int, key: str) -> None:
    with open(out_path) as f:
        lines = f.read().splitlines()
    assert len(lines) == n, (out_path, len(lines), n)
    missing = [l for l in lines if key not in l]
    assert not missing, (out_path, missing[:3])


def main() -> None:
    carehub = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    tmp = tempfile.mkdtemp(prefix="carehub-decode-stdin-")
    ours, theirs = os.path.join(tmp, "carehub.in"), os.path.join(tmp, "theengs.in")
    with open(ours, "w") as a, open(theirs, "w") as b:
        for x, y in adverts(n):
            a.write(x + "\n")
            b.write(y + "\n")
    out_c, out_t = os.path.join(tmp, "carehub.out"), os.path.join(tmp, "theengs.out")
    c_both = [timed([carehub, "decode", "--stdin"], ours, out_c) for _ in range(CAREHUB_RUNS)]
    check(out_c, n, '"temperature"')
    t_both = [timed([sys.executable, "-c", THEENGS], theirs, out_t) for _ in range(THEENGS_RUNS)]
    check(out_t, n, '"tempc"')
    c_runs, t_runs = [w for w, _ in c_both], [w for w, _ in t_both]
    c_cpu, t_cpu = [u for _, u in c_both], [u for _, u in t_both]
    c, t = statistics.median(c_runs), statistics.median(t_runs)
    print(f"adverts\t{n}\t(BTHome v2 plain and Ruuvi RAWv2, alternating)")
    spread = lambda runs: f"{min(runs) * 1e3:,.1f}-{max(runs) * 1e3:,.1f} ms"
    print(f"carehub decode --stdin\t{n / c:,.0f} adverts/s\t{c * 1e9 / n:,.0f} ns/advert\tmedian of {CAREHUB_RUNS} ({spread(c_runs)})")
    print(f"TheengsDecoder (Python, decodeBLE)\t{n / t:,.0f} adverts/s\t{t * 1e9 / n:,.0f} ns/advert\tmedian of {THEENGS_RUNS} ({spread(t_runs)})")
    print(f"ratio\t{t / c:,.0f}x")
    # The same runs counted in CPU time: what each whole run cost, whatever else
    # the machine was doing (a short run suffers more from waiting for a core).
    cc, tc = statistics.median(c_cpu), statistics.median(t_cpu)
    print(f"cpu time (user + system), medians\tcarehub {cc * 1e3:,.1f} ms ({spread(c_cpu)})\tTheengsDecoder {tc * 1e3:,.1f} ms ({spread(t_cpu)})\tratio {tc / cc:,.0f}x")


if __name__ == "__main__":
    main()
