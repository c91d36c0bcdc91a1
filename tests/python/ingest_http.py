"""POST /v1/events from Python (`requests`), batches of 500, over 1 and over 8 connections:
what a client that is not the bench sees (docs/BENCHMARKS.md, "Ingest over HTTP").

Usage: python3 tests/python/ingest_http.py BASE_URL API_KEY EVENTS, against `pulse serve api ingest`.
"""
import json, sys, time, threading, requests
base, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
H = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
requests.post(f"{base}/v1/sequences", headers=H, json={"name": "py ingest", "steps": [{"subject": "x", "body": "y", "timing": {"type": "immediately"}}],
    "triggers": [{"type": "tag_applied", "tag": "t"}], "sender": {"from": "bench@example.com"}}).raise_for_status()
def batches(tag):
    out = []
    for b in range(0, n, 500):
        out.append({"events": [{"id": f"{tag}{i}", "type": "tag_applied", "tag": "t", "lead": {"email": f"{tag}{i}@example.com"}} for i in range(b, min(n, b + 500))]})
    return out
for threads in (1, 8):
    bs = batches(f"p{threads}x")
    t0 = time.perf_counter(); enc = [json.dumps(b) for b in bs]; t_enc = time.perf_counter() - t0
    work = list(enc); lock = threading.Lock()
    def worker():
        s = requests.Session()
        while True:
            with lock:
                if not work: return
                body = work.pop()
            s.post(f"{base}/v1/events", headers=H, data=body).raise_for_status()
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    [t.start() for t in ts]; [t.join() for t in ts]
    dt = time.perf_counter() - t0
    print(f"python requests, {threads} connection(s): {n/dt:8.0f} events/s (JSON encoding alone {n/t_enc:8.0f} events/s)")
