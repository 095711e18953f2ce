#!/usr/bin/env python3
"""Where a proxy spends its CPU on small requests: a companion to benches/e2e.py.

For each configuration asked for (powerstrip without hooks by default, HAProxy beside it),
with the same placement as e2e.py (proxy alone on core 1; fake Docker and load generator
on core 0), it reports per request:

- CPU (perf task-clock of the proxy), syscalls by kind, context switches, wake-ups
  (perf tracepoints: cheap, they do not change the figures much);
- with --allocs, heap allocations (malloc/calloc/realloc uprobes on libc; slow, so it is
  a separate short run; the probes are removed at exit);
- with --record, a cpu-clock profile (perf record, DWARF call graphs) summarised by
  crate (self time), by component (kernel samples by system call, user samples by the
  first recognised frame from the leaf up) and by top symbols.

    python3 benches/profile.py                       # powerstrip vs HAProxy, c=32
    python3 benches/profile.py --configs ps-pass --record --allocs -c 32
    python3 benches/profile.py --configs ps-pass,ps-inproc,ps-http --workload create

Needs perf (apt-get install linux-perf). Writes benches/results/profile.md.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("e2e", BENCHES / "e2e.py")
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
ALLOC_PROBES = ["malloc", "calloc", "realloc"]
STAT_EVENTS = [
    "task-clock",
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_futex",
    "context-switches",
    "sched:sched_wakeup",
]
# Each sample is charged to a component: for kernel samples, the system call (or other
# kernel work) it belongs to; for user samples, the first frame from the leaf upwards
# that matches one of these patterns (checked in this order within a frame).
KERNEL_ENTRIES = [
    ("kernel: recvfrom/read", r"__x64_sys_recvfrom|__sys_recvfrom|ksys_read|__x64_sys_read"),
    ("kernel: writev/sendto/write", r"do_writev|__x64_sys_sendto|__sys_sendto|ksys_write"),
    ("kernel: epoll_wait", r"do_epoll_wait|__x64_sys_epoll"),
    ("kernel: futex", r"futex"),
    ("kernel: accept/connect/close", r"accept|connect|__x64_sys_close"),
    ("kernel: other syscalls", r"entry_SYSCALL_64"),
]
COMPONENTS = [
    ("allocator (malloc/free)", r"^(malloc|_int_malloc|_int_free|free|cfree|__libc_malloc|"
                                r"__GI___libc_free|__GI___libc_malloc|realloc|_int_realloc|"
                                r"malloc_consolidate|tcache_\w+|__rust_(alloc|dealloc|realloc))$"),
    ("memcpy/memmove", r"^__mem(move|cpy|set)"),
    ("clock (Instant::now)", r"clock_gettime|Instant::now"),
    ("syscall wrappers (libc, mio)", r"^(__libc_recv|__GI___writev|__libc_send|__GI___libc_write|"
                                     r"__libc_read|epoll_wait)$|^<?&?mio::"),
    ("httparse", r"httparse::"),
    ("hyper server: parse request head", r"role::Server as hyper::proto::h1::Http1Transaction>::parse"),
    ("hyper server: encode response head", r"role::Server as hyper::proto::h1::Http1Transaction>::encode"),
    ("hyper client: parse response head", r"role::Client as hyper::proto::h1::Http1Transaction>::parse"),
    ("hyper client: encode request head", r"role::Client as hyper::proto::h1::Http1Transaction>::encode"),
    ("http: HeaderMap / HeaderName / Uri", r"^<?&?http::"),
    ("JSON (protocol encode/decode: serde_json)", r"serde_json::|powerstrip_protocol::"),
    ("powerstrip: headers (hop-by-hop)", r"powerstrip_core::headers"),
    ("powerstrip: metrics", r"prometheus_client|powerstrip_core::metrics"),
    ("powerstrip: proxy (handle, forward, ...)", r"powerstrip_core::"),
    ("powerstrip: SDK server loop", r"powerstrip_adapter::"),
    ("tracing (spans)", r"^<?&?tracing(_core|_subscriber)?::"),
    ("hyper-util client & pool", r"hyper_util::client"),
    ("channels (hyper client dispatch: mpsc, oneshot, want)", r"tokio::sync::|^<?&?want::|futures_channel::"),
    ("hyper h1 dispatch / conn / io", r"hyper::proto::h1::(dispatch|conn|io|decode|encode)"),
    ("hyper other (body, service)", r"^<?&?hyper::"),
    ("bytes", r"^<?&?bytes::"),
    ("tokio runtime (scheduler, I/O driver, timers)", r"tokio::"),
]


def log(message):
    e2e.log(message)


def perf_stat(pid: int, seconds: float, events: list[str]) -> dict[str, float]:
    out = tempfile.NamedTemporaryFile(suffix=".perfstat", delete=False).name
    proc = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(events), "-p", str(pid),
                             "-o", out, "--", "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"proc": proc, "out": out}


def perf_stat_result(handle) -> dict[str, float]:
    handle["proc"].wait(timeout=120)
    values = {}
    for line in Path(handle["out"]).read_text().splitlines():
        parts = line.split(",")
        if len(parts) < 3:
            continue
        try:
            values[parts[2]] = float(parts[0])
        except ValueError:
            values[parts[2]] = None
    Path(handle["out"]).unlink(missing_ok=True)
    return values


def counted_run(bins, proxy, workload, conc, duration, events) -> dict:
    """A load run with perf stat on the proxy for its whole length (no warm-up: the
    proxies are warm already); figures per request."""
    handle = perf_stat(proxy.pid, duration + 0.4, events)
    time.sleep(0.2)
    args = ["small", "--socket", str(proxy.socket), "--method", workload["method"],
            "--path", workload["path"], "-c", str(conc), "--duration", str(duration),
            "--warmup", "0"]
    if workload.get("body"):
        args += ["--body-file", workload["body"]]
    lg = e2e.run_loadgen(bins, args, duration + 60)
    values = perf_stat_result(handle)
    n = max(lg["total_requests"], 1)
    per = {}
    for ev, v in values.items():
        if v is None:
            continue
        per[ev] = v * 1e3 / n if ev == "task-clock" else v / n  # task-clock is in ms
    return {"loadgen": lg, "per_request": per}


def record_profile(bins, proxy, workload, conc, duration, freq) -> dict:
    data = tempfile.NamedTemporaryFile(suffix=".perf.data", delete=False).name
    # DWARF unwinding: Rust release builds keep no frame pointers, and the inclusive
    # shares need whole stacks.
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", str(freq),
                            "--call-graph", "dwarf,16384", "-p", str(proxy.pid), "-o", data,
                            "--", "sleep", str(duration)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    args = ["small", "--socket", str(proxy.socket), "--method", workload["method"],
            "--path", workload["path"], "-c", str(conc), "--duration", str(duration + 0.5),
            "--warmup", "0"]
    if workload.get("body"):
        args += ["--body-file", workload["body"]]
    e2e.run_loadgen(bins, args, duration + 60)
    rec.wait(timeout=120)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    Path(data).unlink(missing_ok=True)
    return summarise(script)


def crate_of(sym: str, dso: str) -> str:
    if "kernel" in dso:
        return "kernel"
    if "vdso" in dso:
        return "vdso (clock_gettime)"
    if "libc" in dso:
        if re.search(r"malloc|free|realloc|calloc|_int_", sym):
            return "libc malloc/free"
        if re.search(r"mem(move|cpy|set|cmp)", sym):
            return "libc memcpy/memset"
        return "libc (syscall wrappers, other)"
    s = re.sub(r"^[<&]+(mut |dyn )?", "", sym)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    return m.group(1) if m else "other"


def component_of(frames: list[tuple[str, str]]) -> str:
    if "kernel" in frames[0][1]:
        for label, pattern in KERNEL_ENTRIES:
            rx = re.compile(pattern)
            if any(rx.search(sym) for sym, dso in frames if "kernel" in dso):
                return label
        return "kernel: interrupts, scheduling (no syscall)"
    for sym, _ in frames:
        for label, pattern in COMPONENTS:
            if re.search(pattern, sym):
                return label
    return "other user code"


def summarise(script: str) -> dict:
    samples = []
    for block in re.split(r"\n\s*\n", script):
        frames = []
        for line in block.splitlines():
            m = re.match(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
            if m:
                frames.append((m.group(1), m.group(2)))
        if frames:
            samples.append(frames)
    total = max(len(samples), 1)
    by_crate = collections.Counter(crate_of(*s[0]) for s in samples)
    by_sym = collections.Counter(s[0][0] for s in samples)
    by_component = collections.Counter(component_of(s) for s in samples)
    return {
        "samples": len(samples),
        "components": [(k, v / total * 100) for k, v in by_component.most_common()],
        "crates": [(k, v / total * 100) for k, v in by_crate.most_common(20)],
        "symbols": [(k, v / total * 100) for k, v in by_sym.most_common(30)],
    }


def add_alloc_probes() -> list[str]:
    added = []
    for fn in ALLOC_PROBES:
        r = subprocess.run(["perf", "probe", "-q", "-x", LIBC, "--add", fn],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            added.append(f"probe_libc:{fn}")
    return added


def remove_probes(probes: list[str]) -> None:
    for p in probes:
        subprocess.run(["perf", "probe", "-q", "-d", p], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=BENCHES.parent)
    parser.add_argument("--configs", default="ps-pass,haproxy",
                        help="comma-separated: haproxy, nginx, ps-pass, ps-inproc, ps-http")
    parser.add_argument("--workload", choices=["version", "create"], default="version")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--record", action="store_true", help="also a perf record profile")
    parser.add_argument("--freq", type=int, default=499)
    parser.add_argument("--allocs", action="store_true",
                        help="also count heap allocations per request (uprobes)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCHES / "results" / "profile.md")
    opts = parser.parse_args()
    if subprocess.run(["perf", "--version"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode != 0:
        raise SystemExit("perf is missing (apt-get install linux-perf)")

    import atexit
    import signal
    atexit.register(e2e.PROCS.stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, e2e.on_signal)
    configs = [c for c in opts.configs.split(",") if c]
    e2e.ensure_tools(True, "nginx" in configs)
    repo = opts.repo.resolve()
    bins = e2e.build(repo) if not opts.no_build else find_bins(repo)

    tmp = Path(tempfile.mkdtemp(prefix="powerstrip-profile-"))
    e2e.PROCS.restore.append(lambda: __import__("shutil").rmtree(tmp, ignore_errors=True))
    upstream = tmp / "fake-docker.sock"
    fake = e2e.PROCS.start("fake-docker", [bins["fake_docker"], "--listen", f"unix://{upstream}"],
                           e2e.CORE_LOAD, tmp)
    e2e.wait_for_socket(upstream, fake, "fake docker")
    sockets = [tmp / f"null{i + 1}.sock" for i in range(3)]
    if "ps-http" in configs:
        argv = [bins["null_adapter"], "--log", "warn"]
        for s in sockets:
            argv += ["--listen", f"unix://{s}"]
        adapters = e2e.PROCS.start("null-adapters", argv, e2e.CORE_LOAD, tmp)
        for s in sockets:
            e2e.wait_for_socket(s, adapters, "null adapters")
    proxies = {p.name: p for p in e2e.start_proxies("prof", configs, upstream, tmp, bins, sockets)}
    body = tmp / "container_create.json"
    body.write_bytes((BENCHES / "data" / "container_create.json").read_bytes())
    workload = {
        "version": {"name": "version", "method": "GET", "path": "/v1.41/version"},
        "create": {"name": "create", "method": "POST", "path": "/v1.41/containers/create",
                   "body": str(body)},
    }[opts.workload]
    for p in proxies.values():  # warm up: pools, allocator, caches
        e2e.small_point(bins, p, workload, opts.concurrency, 1.0, 0.0)

    results = {}
    for name, p in proxies.items():
        log(f"{name}: counting (perf stat)")
        results[name] = counted_run(bins, p, workload, opts.concurrency, opts.duration,
                                    STAT_EVENTS)
    probes = []
    if opts.allocs:
        probes = add_alloc_probes()
        e2e.PROCS.restore.append(lambda: remove_probes(probes))
        if probes:
            for name, p in proxies.items():
                log(f"{name}: counting allocations (uprobes)")
                r = counted_run(bins, p, workload, opts.concurrency, min(opts.duration, 2.0),
                                probes)
                results[name]["allocs_per_request"] = sum(
                    r["per_request"].get(pr, 0.0) for pr in probes)
        remove_probes(probes)
        if not probes:
            log("uprobes on libc are not available: no allocation counts")
    if opts.record:
        for name, p in proxies.items():
            log(f"{name}: perf record")
            results[name]["profile"] = record_profile(bins, p, workload, opts.concurrency,
                                                      opts.duration, opts.freq)

    text = render(results, opts, configs)
    print(text)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(text)
    opts.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {opts.out}")
    return 0


def find_bins(repo: Path) -> dict:
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version=1", "--no-deps"],
                                     cwd=repo, check=True, stdout=subprocess.PIPE,
                                     text=True).stdout)
    target = Path(meta["target_directory"]) / "release"
    bins = {"powerstrip": str(target / "powerstrip")}
    for h in ("fake_docker", "null_adapter", "loadgen"):
        cands = sorted((p for p in (target / "deps").glob(f"{h}-*") if p.suffix == ""),
                       key=lambda p: p.stat().st_mtime)
        if not cands:
            raise SystemExit(f"no build of {h}: run without --no-build")
        bins[h] = str(cands[-1])
    return bins


def render(results: dict, opts, configs: list[str]) -> str:
    m = e2e.machine()
    lines = [f"# Where the proxy's CPU goes: {opts.workload}, c={opts.concurrency}\n",
             f"- {time.strftime('%Y-%m-%d %H:%M')}; {m['cpu']}, {m['cores']} cores; load "
             f"average {' '.join(m['loadavg'])}; proxy on core {e2e.CORE_PROXY}, load "
             f"and fake Docker on core {e2e.CORE_LOAD}\n",
             "## Per request\n"]
    header = "| figure | " + " | ".join(configs) + " |"
    lines += [header, "|---|" + "---:|" * len(configs)]

    def row(label, key, digits=2, scale=1.0):
        cells = []
        for c in configs:
            v = results[c]["per_request"].get(key) if key else None
            cells.append("–" if v is None else f"{v * scale:.{digits}f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines.append("| req/s (under perf stat) | " + " | ".join(
        f"{results[c]['loadgen']['rps']:,.0f}" for c in configs) + " |")
    row("CPU µs (task-clock)", "task-clock", 1)
    row("syscalls", "raw_syscalls:sys_enter")
    for ev in ("recvfrom", "read", "writev", "sendto", "write", "epoll_wait", "futex"):
        row(f"  {ev}", f"syscalls:sys_enter_{ev}")
    row("context switches", "context-switches")
    row("wake-ups (sched_wakeup)", "sched:sched_wakeup")
    if any("allocs_per_request" in results[c] for c in configs):
        lines.append("| heap allocations (malloc+calloc+realloc) | " + " | ".join(
            f"{results[c].get('allocs_per_request', 0):.1f}" for c in configs) + " |")
    for c in configs:
        prof = results[c].get("profile")
        if not prof:
            continue
        lines.append(f"\n## {c}: cpu-clock profile ({prof['samples']} samples)\n")
        lines.append("Self time by crate:\n")
        lines.append("| crate | % |\n|---|---:|")
        lines += [f"| {k} | {v:.1f} |" for k, v in prof["crates"]]
        lines.append("\nBy component (kernel samples by system call; user samples by the "
                     "first recognised frame from the leaf up):\n")
        lines.append("| component | % |\n|---|---:|")
        lines += [f"| {k} | {v:.1f} |" for k, v in prof["components"]]
        lines.append("\nTop symbols (self):\n")
        lines.append("| symbol | % |\n|---|---:|")
        lines += [f"| `{k[:110]}` | {v:.1f} |" for k, v in prof["symbols"][:25]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
