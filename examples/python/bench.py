"""The Python client's cases of the `client` benchmark: three `kv member` processes ($KV_BIN, no
persistence: a put is answered once its relay applied it) and this process calling them through
the generated `KvStore` class, one call outstanding and 64 threads in flight. The Rust client's
`kv bench` runs the same load in the same run as the baseline. Prints the benchmark's JSON lines.

    python bench.py [--quick]
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

from kv_client import ClientError, KvStore, shard_of

KV = os.environ.get("KV_BIN", "target/release/kv")
GROUP = "kv-demo"
VALUE = b"x" * 100


def free_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


def record(case, metric, value, unit, baseline=None):
    line = {"bench": "client", "case": case, "metric": metric, "value": round(value, 3), "unit": unit}
    if baseline:
        line["baseline"] = round(baseline, 3)
        line["ratio"] = round(value / baseline, 3)
    print(json.dumps(line, sort_keys=True, separators=(",", ":")), flush=True)


def percentile(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def kv_bench(addresses, in_flight, secs):
    """The Rust client's `kv bench` on the same group: (calls/s, p50 µs)."""
    out = subprocess.run(
        [KV, "--contact", addresses[0], "bench", "--in-flight", str(in_flight), "--secs", str(secs), "--keys", "1"],
        capture_output=True, text=True, check=True,
    ).stdout
    words = out.split()
    rate = float(words[words.index("calls/s;") - 1])
    p50 = float(words[words.index("p50") + 1])
    return rate, p50


def main():
    quick = "--quick" in sys.argv
    secs = 1.0 if quick else 3.0
    addresses = [free_address() for _ in range(3)]
    env = dict(os.environ, RUST_LOG="warn")
    members = []
    try:
        for i, a in enumerate(addresses):
            args = [KV, "member", "--set", "me=%d" % i, "--set", 'listen="%s"' % a, "--set", "insecure=true"]
            if i:
                args += ["--set", 'contact="%s"' % addresses[0]]
            members.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, env=env))
        deadline = time.time() + 60
        while True:
            try:
                if len(KvStore.connect(addresses, group=GROUP, timeout=2.0).members()) == 3:
                    break
            except ClientError:
                pass
            if time.time() > deadline:
                raise SystemExit("the kv members did not form a group")
            time.sleep(0.1)
        key = "bench0"  # as `kv bench --keys 1`
        store = KvStore.connect(addresses, group=GROUP, shard=shard_of(key, 2))
        # One outstanding.
        rust_rate1, rust_p50 = kv_bench(addresses, 1, secs)
        samples = []
        end = time.time() + secs
        while time.time() < end:
            t = time.perf_counter()
            store.put(key, VALUE)
            samples.append((time.perf_counter() - t) * 1e6)
        record("python-tcp-100b-ordered-1", "p50_us", percentile(samples, 50), "us", rust_p50)
        record("python-tcp-100b-ordered-1", "p99_us", percentile(samples, 99), "us")
        # 64 threads, one call each in flight.
        rust_rate64, _ = kv_bench(addresses, 64, secs)
        done = [0] * 64
        end = time.time() + secs

        def worker(i):
            while time.time() < end:
                store.put(key, VALUE)
                done[i] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
        start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = sum(done) / (time.time() - start)
        record("python-tcp-100b-ordered-64-threads", "calls_per_s", rate, "calls/s", rust_rate64)
    finally:
        for m in members:
            m.kill()
            m.wait()


if __name__ == "__main__":
    main()
