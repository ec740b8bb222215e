#!/usr/bin/env python3
"""Benchmarks for the closing notes (not tests): run after `cargo build --release --workspace --bins --examples`.

  scripts/bench.py latency   # release -> child entering process, over 20 patients
  scripts/bench.py ingest    # DCMTK storescu, 300 CT 512x512 16-bit: store_node vs storescp, interleaved
  scripts/bench.py durable   # storescu 300 CT: store_node --data-dir vs in memory vs storescp, with peak RSS
  scripts/bench.py children  # 100 tiny patients at concurrency 2: fresh child vs warm worker; 1 s set-up
  scripts/bench.py scu       # 300 CT 512x512 16-bit to storescp: `dicomnode store` vs DCMTK storescu, interleaved

Every process started here is ended here, by PID.
"""
import os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
ENV = dict(os.environ, TCP_NODELAY="1", NO_COLOR="1", RUST_LOG="info")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} not open")


def start(cmd, log):
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)


def stop(proc):
    proc.kill()
    proc.wait()


def storescu(port, aec, paths):
    t = time.perf_counter()
    subprocess.run(["/usr/bin/storescu", "-aec", aec, "+sd", "+r", "127.0.0.1", str(port)] + paths,
                   env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def latency(patients=20):
    work = tempfile.mkdtemp(prefix="bench-latency-")
    try:
        subprocess.run([os.path.join(REL, "gen_series"), "--out", os.path.join(work, "in"), "--patients",
                        str(patients), "--slices", "1", "--size", "64", "--prefix", "LAT-"], check=True)
        port = free_port()
        log_path = os.path.join(work, "node.log")
        with open(log_path, "w") as log:
            node = start([os.path.join(REL, "examples", "store_node"), "--port", str(port), "--out",
                          os.path.join(work, "out")], log)
            try:
                wait_port(port)
                for p in range(1, patients + 1):
                    storescu(port, "STORE_NODE", [os.path.join(work, "in", f"LAT-{p}")])
                    time.sleep(0.05)  # one patient at a time: latency, not throughput
                end = time.time() + 30
                while open(log_path).read().count("processing finished") < patients and time.time() < end:
                    time.sleep(0.05)
            finally:
                stop(node)
        values = sorted(float(m) for m in re.findall(r"trigger_to_process_ms=([0-9.]+)", open(log_path).read()))
        print(f"release->process over {len(values)} patients: median {statistics.median(values):.2f} ms, "
              f"min {values[0]:.2f} ms, max {values[-1]:.2f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ingest(rounds=5, slices=300):
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--slices", str(slices), "--size", "512",
                        "--prefix", "ING-"], check=True)
        times = {"store_node": [], "storescp": []}
        for r in range(rounds):
            for which in (["store_node", "storescp"] if r % 2 == 0 else ["storescp", "store_node"]):
                port = free_port()
                out = os.path.join(work, f"out-{which}-{r}")
                os.makedirs(out)
                with open(os.path.join(work, f"{which}-{r}.log"), "w") as log:
                    if which == "store_node":
                        proc = start([os.path.join(REL, "examples", "store_node"), "--port", str(port), "--out", out], log)
                        aec = "STORE_NODE"
                    else:
                        proc = start(["/usr/bin/storescp", "-aet", "STORESCP", "-od", out, str(port)], log)
                        aec = "STORESCP"
                    try:
                        wait_port(port)
                        times[which].append(storescu(port, aec, [data]))
                        time.sleep(1.0)  # let store_node's child finish writing before the next round
                    finally:
                        stop(proc)
                shutil.rmtree(out, ignore_errors=True)
        a, b = statistics.median(times["store_node"]), statistics.median(times["storescp"])
        print(f"storescu {slices} CT 512x512 16-bit, {rounds} interleaved rounds:")
        for k, v in times.items():
            print(f"  {k:10s} median {statistics.median(v)*1000:.0f} ms  runs {[round(x*1000) for x in v]}")
        print(f"  ratio store_node/storescp = {a/b:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def durable(rounds=5, slices=300):
    work = tempfile.mkdtemp(prefix="bench-durable-")
    try:
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--slices", str(slices), "--size", "512",
                        "--prefix", "DUR-"], check=True)
        kinds = ["data-dir", "memory", "storescp"]
        times = {k: [] for k in kinds}
        rss = {k: [] for k in kinds}
        for r in range(rounds):
            order = kinds[r % 3:] + kinds[:r % 3]
            for which in order:
                port = free_port()
                out = os.path.join(work, f"out-{which}-{r}")
                os.makedirs(out)
                with open(os.path.join(work, f"{which}-{r}.log"), "w") as log:
                    if which == "storescp":
                        proc = start(["/usr/bin/storescp", "-aet", "STORESCP", "-od", out, str(port)], log)
                        aec = "STORESCP"
                    else:
                        cmd = [os.path.join(REL, "examples", "store_node"), "--port", str(port), "--out", out,
                               "--ae-title", "STORE_NODE"]
                        if which == "data-dir":
                            cmd += ["--data-dir", os.path.join(work, f"data-{r}")]
                        proc = start(cmd, log)
                        aec = "STORE_NODE"
                    try:
                        wait_port(port)
                        times[which].append(storescu(port, aec, [data]))
                        rss[which].append(peak_rss_mib(proc.pid))
                        time.sleep(1.5)
                    finally:
                        stop(proc)
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(os.path.join(work, f"data-{r}"), ignore_errors=True)
        print(f"storescu {slices} CT 512x512 16-bit, {rounds} rounds, order rotated:")
        for k in kinds:
            print(f"  {k:9s} median {statistics.median(times[k])*1000:.0f} ms  runs {[round(x*1000) for x in times[k]]}"
                  f"  peak RSS median {statistics.median(rss[k]):.0f} MiB")
        ref = statistics.median(times["storescp"])
        for k in ("data-dir", "memory"):
            print(f"  ratio {k}/storescp = {statistics.median(times[k])/ref:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scu(rounds=7, slices=300):
    work = tempfile.mkdtemp(prefix="bench-scu-")
    try:
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--slices", str(slices), "--size", "512",
                        "--prefix", "SCU-"], check=True)
        port = free_port()
        out = os.path.join(work, "out")
        os.makedirs(out)
        with open(os.path.join(work, "storescp.log"), "w") as log:
            scp = start(["/usr/bin/storescp", "-aet", "STORESCP", "-od", out, str(port)], log)
            try:
                wait_port(port)
                times = {"dicomnode store": [], "storescu": []}
                for r in range(rounds):
                    for which in (["dicomnode store", "storescu"] if r % 2 == 0 else ["storescu", "dicomnode store"]):
                        if which == "storescu":
                            times[which].append(storescu(port, "STORESCP", [data]))
                        else:
                            t = time.perf_counter()
                            subprocess.run([os.path.join(REL, "dicomnode"), "store", "--quiet",
                                            f"STORESCP@127.0.0.1:{port}", data], env=ENV, check=True,
                                           stdout=subprocess.DEVNULL)
                            times[which].append(time.perf_counter() - t)
            finally:
                stop(scp)
        a, b = statistics.median(times["dicomnode store"]), statistics.median(times["storescu"])
        print(f"{slices} CT 512x512 16-bit to storescp, {rounds} interleaved rounds:")
        for k, v in times.items():
            print(f"  {k:16s} median {statistics.median(v)*1000:.0f} ms  runs {[round(x*1000) for x in v]}")
        print(f"  ratio dicomnode/storescu = {a/b:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_patients(work, data, patients, extra, label, senders_count=4):
    """Starts test_node, sends each patient in its own association (`senders_count` senders
    at once), waits for every processing; returns (latencies ms, wall seconds)."""
    port = free_port()
    out = os.path.join(work, f"out-{label}")
    log_path = os.path.join(work, f"{label}.log")
    with open(log_path, "w") as log:
        node = start([os.path.join(REL, "test_node"), "--port", str(port), "--out", out] + extra, log)
        try:
            wait_port(port)
            t = time.perf_counter()
            dirs = [os.path.join(data, f"TINY-{p}") for p in range(1, patients + 1)]
            senders = []
            for k in range(senders_count):
                chunk = dirs[k::senders_count]
                script = " ; ".join(
                    f"{os.path.join(REL, 'dicomnode')} store --quiet TEST_NODE@127.0.0.1:{port} {d} >/dev/null"
                    for d in chunk)
                senders.append(subprocess.Popen(["sh", "-c", script], env=ENV))
            for sender in senders:
                sender.wait()
            end = time.time() + 300
            while open(log_path).read().count("processing finished") < patients and time.time() < end:
                time.sleep(0.01)
            wall = time.perf_counter() - t
        finally:
            stop(node)
    text = open(log_path).read()
    latencies = [float(m) for m in re.findall(r"trigger_to_process_ms=([0-9.]+)", text)]
    return latencies, wall


def children(patients=100):
    work = tempfile.mkdtemp(prefix="bench-children-")
    try:
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--patients", str(patients), "--slices", "1",
                        "--size", "16", "--prefix", "TINY-"], check=True)
        for label, extra in [("fresh", []), ("warm", ["--warm-patients", "1000"])]:
            lat, wall = run_patients(work, data, patients, ["--max-children", "2"] + extra, label + "-seq", 1)
            print(f"{label:5s} concurrency 2, {patients} tiny patients sent one after another: release->process "
                  f"median {statistics.median(lat):.2f} ms, p95 {percentile(lat, 0.95):.2f} ms")
            lat, wall = run_patients(work, data, patients, ["--max-children", "2"] + extra, label + "-burst", 4)
            print(f"{label:5s} concurrency 2, {patients} tiny patients from 4 senders at once: "
                  f"{patients / wall:.1f} patients/s ({wall:.2f} s); release->process (queueing included) "
                  f"median {statistics.median(lat):.2f} ms, p95 {percentile(lat, 0.95):.2f} ms")
        for label, extra in [("fresh", []), ("warm", ["--warm-patients", "1000"])]:
            lat, wall = run_patients(work, data, 20, ["--max-children", "2", "--build-ms", "1000"] + extra,
                                     label + "-setup")
            print(f"{label:5s} with a 1 s set-up, 20 patients at concurrency 2: {wall:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("latency", "all"):
        latency()
    if what in ("ingest", "all"):
        ingest()
    if what in ("scu", "all"):
        scu()
    if what in ("durable", "all"):
        durable()
    if what in ("children", "all"):
        children()
