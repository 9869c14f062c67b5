"""Load test of `prospect serve`: concurrent clients, each mixing chat completions with calls on its
own video session.

usage: python benchmarks/server_load.py [--model DIR | --preset tiny] [--clients 8] [--requests 50] [--out DIR]
The server runs as its own process on a free loopback port. After the timed run, every client's calls
are replayed one at a time on fresh sessions: the same replies mean no crosstalk between sessions.
Writes server-load-<model>-<host>-<cpu>-<date>.json to --out and prints throughput and p50/p95 latency.
"""

import argparse
import base64
import datetime
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import machine, unused_path  # noqa: E402

KINDS = ("chat", "frame", "frame", "note", "ask")  # the mix, by request number mod 5


def data_url(client, step):
    import numpy as np
    from PIL import Image

    arr = (np.random.default_rng([client, step]).random((64, 96, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Client:
    """One user: a session of its own plus chat completions; records what came back and how long it took."""

    def __init__(self, url, index, requests, session_body):
        import httpx
        import openai

        self.i, self.n, self.body = index, requests, session_body
        self.http = httpx.Client(base_url=url, timeout=300)
        self.chat = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        self.replies, self.latency, self.errors = [], [], []

    def run(self):
        sid = self._post("/v1/sessions", self.body)["id"]
        t = 0.0
        for r in range(self.n):
            kind = KINDS[r % len(KINDS)]
            t0 = time.perf_counter()
            try:
                if kind == "chat":
                    content = [{"type": "text", "text": f"Client {self.i}, request {r}: what next?"}]
                    if r % 2:
                        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(self.i, r)}})
                    c = self.chat.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": content}], max_tokens=8
                    )
                    got = [c.choices[0].message.content, c.choices[0].finish_reason, c.usage.completion_tokens]
                elif kind == "frame":
                    t += 0.5
                    res = self._post(
                        f"/v1/sessions/{sid}/frames", {"frames": [{"time": t, "image_url": data_url(self.i, r)}]}
                    )["results"]
                    got = [[x["talked"], x["text"], x["cache_length"], x["strategy_applied"]] for x in res]
                else:
                    m = self._post(
                        f"/v1/sessions/{sid}/messages",
                        {"content": f"Client {self.i} says step {r}.", "respond": kind == "ask", "max_tokens": 8},
                    )
                    got = [m["text"], m["cache_length"], m["strategy_applied"]]
            except Exception as e:  # counted, not raised: the run reports every failure
                self.errors.append(f"client {self.i} request {r} ({kind}): {type(e).__name__}: {e}")
                got = None
            self.latency.append((kind, (time.perf_counter() - t0) * 1e3))
            self.replies.append(got)
        info = self.http.get(f"/v1/sessions/{sid}").json()
        self.http.delete(f"/v1/sessions/{sid}")
        self.final = [info["frames"], info["turns"], info["cache_length"], info["compressions"]]

    def _post(self, path, body):
        r = self.http.post(path, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code} {r.text[:300]}")
        return r.json()


def free_port():
    """A loopback port that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(model, port, *args, **popen):
    """`prospect serve --model MODEL --port PORT ARGS...` as a process of its own, in text mode; popen says where
    its output goes. (tests/test_server.py starts its server with this too.)"""
    cmd = [sys.executable, "-m", "prospect_core", "serve", "--model", str(model), "--port", str(port), *args]
    return subprocess.Popen(cmd, text=True, **popen)


def start_server(model, port, clients):
    limits = ["--max-sessions", str(2 * clients), "--max-cache-mb", "8192"]
    proc = spawn_server(model, port, *limits, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
            return proc
        except httpx.TransportError as e:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("server did not start within 300 s") from e
            time.sleep(0.2)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def run(model, clients=8, requests=50, max_seq_len=1024):
    body = {
        "context_strategy": "drop_middle",
        "talk_policy": "every_frame",
        "max_new_tokens": 8,
        "context_strategy_config": {"max_seq_len": max_seq_len},
    }
    port = free_port()
    proc = start_server(model, port, clients)
    url = f"http://127.0.0.1:{port}"
    try:
        users = [Client(url, i, requests, body) for i in range(clients)]
        # One chat call alone first: the openai SDK rebuilds its response models' pydantic schemas on first
        # use, deleting and setting them again, and a client thread reading one meanwhile got AttributeError.
        users[0].chat.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "warm-up"}], max_tokens=1
        )
        threads = [threading.Thread(target=u.run) for u in users]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        # The same calls, one client at a time, on fresh sessions: what each reply should have been.
        alone = [Client(url, i, requests, body) for i in range(clients)]
        for u in alone:
            u.run()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    crosstalk = [
        f"client {u.i} request {r}: {got} under load, {want} alone"
        for u, a in zip(users, alone)
        for r, (got, want) in enumerate(zip(u.replies, a.replies))
        if got != want
    ]
    crosstalk += [
        f"client {u.i} session ended {u.final} under load, {a.final} alone"
        for u, a in zip(users, alone)
        if u.final != a.final
    ]
    lat = [ms for u in users for _, ms in u.latency]
    by_kind = {k: [ms for u in users for kk, ms in u.latency if kk == k] for k in dict.fromkeys(KINDS)}
    return {
        "clients": clients,
        "requests_per_client": requests,
        "requests": len(lat),
        "errors": [e for u in users + alone for e in u.errors],
        "crosstalk": crosstalk,
        "wall_s": wall,
        "throughput_rps": len(lat) / wall,
        "latency_ms": {"p50": statistics.median(lat), "p95": pct(lat, 95)},
        "latency_ms_by_kind": {
            k: {"n": len(v), "p50": statistics.median(v), "p95": pct(v, 95)} for k, v in by_kind.items()
        },
        "compressions": sum(u.final[3] for u in users),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint folder (default: make one from --preset)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--max-seq-len", type=int, default=1024, help="each session's context")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model
        if model is None:
            import prospect_core

            model = prospect_core.make_model(Path(tmp) / a.preset, a.preset)
        res = run(model, a.clients, a.requests, a.max_seq_len)
    m = machine()
    res.update(
        machine=m,
        model=str(a.model or f"preset {a.preset}"),
        date=datetime.date.today().isoformat(),
        command="python benchmarks/server_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(a.model).name if a.model else a.preset
    path = unused_path(out, f"server-load-{name}-{m['slug']}-{res['date']}")
    path.write_text(json.dumps(res, indent=1))
    print(
        f"{res['clients']} clients x {res['requests_per_client']} requests: {res['requests']} requests in "
        f"{res['wall_s']:.1f} s = {res['throughput_rps']:.1f} req/s; latency p50 {res['latency_ms']['p50']:.1f} ms, "
        f"p95 {res['latency_ms']['p95']:.1f} ms; {len(res['errors'])} errors; {len(res['crosstalk'])} crosstalk"
    )
    print("| kind | n | p50 ms | p95 ms |\n|---|---|---|---|")
    for k, v in res["latency_ms_by_kind"].items():
        print(f"| {k} | {v['n']} | {v['p50']:.1f} | {v['p95']:.1f} |")
    print(f"wrote {path}")
    return 0 if not res["errors"] and not res["crosstalk"] else 1


if __name__ == "__main__":
    sys.exit(main())
