#!/usr/bin/env python3
"""Benchmarks for the closing notes (not tests): run after `cargo build --release --workspace --bins --examples`.

  scripts/bench.py latency   # release -> child entering process, over 20 patients
  scripts/bench.py ingest    # DCMTK storescu, 300 CT 512x512 16-bit: store_node vs storescp, interleaved
  scripts/bench.py durable   # storescu 300 CT 512x512 and 1,000 x 64x64, one association and four at once:
                             # storescp vs store_node in memory vs --data-dir (write-ahead log) vs Orthanc
  scripts/bench.py children  # 100 tiny patients at concurrency 2: fresh child vs warm worker; 1 s set-up
  scripts/bench.py scu       # 300 CT 512x512 16-bit to storescp: `dicomnode store` vs DCMTK storescu, interleaved
  scripts/bench.py latency-vs OTHER_RELEASE_DIR   # release -> process over 100 patients, this build vs another
                             # (e.g. an earlier commit's target/release), interleaved rounds
  scripts/bench.py timelimit # an escaped (setsid) grandchild: time limit -> "timed out" -> next patient's process
  scripts/bench.py slowpeer  # a peer sending one byte every 2 s (association request; inside a PDU): how long
                             # store_node (default deadlines) holds it
  scripts/bench.py tls       # storescu 300 CT 512x512: store_node over TLS vs plain vs storescp +tls, interleaved
                             # (certificates made with the openssl command)
  scripts/bench.py volume    # 300 CT 512x512 in native, RLE, JPEG lossless SV1, JPEG 2000 lossless: time and
                             # peak memory to a sorted f32 volume, `dicomnode volume` vs pydicom + numpy
                             # (scripts/volume_pydicom.py, in a venv made at target/bench-venv), with farm-bench
  scripts/bench.py volume-child  # the volume_stats node's child on 300 CT 512x512: its peak memory vs the volume
  scripts/bench.py http      # store_node with and without --http (scraped): CPU and memory idle and under ingest
  scripts/bench.py slurm     # a one-machine Slurm cluster (2 CPUs; target/release/slurm_cluster): release ->
                             # process over 20 tiny patients one at a time, Slurm jobs vs local children, in
                             # interleaved rounds; and 60 tiny patients from 4 senders at once, jobs in flight 2:
                             # patients per minute, Slurm vs local
  scripts/bench.py priors    # with_priors (--data-dir) and Orthanc: release of a 100-CT current study -> process
                             # with 3 priors of 100 CT 512x512 fetched by C-MOVE, its shares (C-FIND, C-MOVE,
                             # storage), DCMTK movescu -> storescp moving the same 3 studies (reference), and a
                             # silent (SIGSTOPped) Orthanc: release -> process with priors unavailable. Runs
                             # itself in a private network namespace (root), as Orthanc listens on every interface.

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


def latency(patients=20, rel=REL, quiet=False):
    work = tempfile.mkdtemp(prefix="bench-latency-")
    try:
        subprocess.run([os.path.join(REL, "gen_series"), "--out", os.path.join(work, "in"), "--patients",
                        str(patients), "--slices", "1", "--size", "64", "--prefix", "LAT-"], check=True,
                       stdout=subprocess.DEVNULL)
        port = free_port()
        log_path = os.path.join(work, "node.log")
        with open(log_path, "w") as log:
            node = start([os.path.join(rel, "examples", "store_node"), "--port", str(port), "--out",
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
        if not quiet:
            print(f"release->process over {len(values)} patients: median {statistics.median(values):.2f} ms, "
                  f"min {values[0]:.2f} ms, max {values[-1]:.2f} ms")
        return values
    finally:
        shutil.rmtree(work, ignore_errors=True)


def latency_vs(other, rounds=3, patients=100):
    values = {"this": [], "other": []}
    for r in range(rounds):
        for which in (["this", "other"] if r % 2 == 0 else ["other", "this"]):
            values[which] += latency(patients, REL if which == "this" else other, quiet=True)
    print(f"release->process, {rounds} interleaved rounds of {patients} patients each (one at a time):")
    for k, v in values.items():
        print(f"  {k:5s} median {statistics.median(v):.2f} ms, p95 {percentile(v, 0.95):.2f} ms ({len(v)} patients)")
    print(f"  ratio this/other = {statistics.median(values['this']) / statistics.median(values['other']):.2f}")


def log_time(line):
    stamp = line.split()[0].rstrip("Z")
    whole, _, frac = stamp.partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


def timelimit(rounds=5, limit=2):
    """A processor whose grandchild escapes its process group (setsid sleep 1000) and which hangs: from
    the time limit to the patient's report, and to the next patient entering `process` (one child slot)."""
    work = tempfile.mkdtemp(prefix="bench-timelimit-")
    grandchildren = []
    try:
        subprocess.run([os.path.join(REL, "gen_series"), "--out", os.path.join(work, "in"), "--patients", "1",
                        "--slices", "1", "--size", "16", "--prefix", "ESCAPE-"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([os.path.join(REL, "gen_series"), "--out", os.path.join(work, "in"), "--patients", "1",
                        "--slices", "1", "--size", "16", "--prefix", "NEXT-"], check=True, stdout=subprocess.DEVNULL)
        to_report, to_next = [], []
        for r in range(rounds):
            port = free_port()
            out = os.path.join(work, f"out-{r}")
            log_path = os.path.join(work, f"node-{r}.log")
            with open(log_path, "w") as log:
                node = start([os.path.join(REL, "test_node"), "--port", str(port), "--out", out, "--time-limit",
                              str(limit), "--max-children", "1", "--attempts", "1"], log)
                try:
                    wait_port(port)
                    storescu(port, "TEST_NODE", [os.path.join(work, "in", "ESCAPE-1")])
                    storescu(port, "TEST_NODE", [os.path.join(work, "in", "NEXT-1")])
                    end = time.time() + limit + 30
                    while "key=NEXT-1" not in "".join(l for l in open(log_path) if "child timings" in l) \
                            and time.time() < end:
                        time.sleep(0.05)
                finally:
                    stop(node)
            lines = open(log_path).read().splitlines()
            fired = next(log_time(l) for l in lines if "time limit reached" in l)
            failed = next(log_time(l) for l in lines if "processing failed" in l)
            entered = next(log_time(l) for l in lines if "child timings" in l and "NEXT-1" in l)
            to_report.append((failed - fired) * 1000)
            to_next.append((entered - fired) * 1000)
            pid_file = os.path.join(out, "ESCAPE-1.grandchild")
            if os.path.exists(pid_file):
                grandchildren.append(int(open(pid_file).read()))
        print(f"time limit {limit} s, escaped grandchild, one child slot, {rounds} rounds:")
        print(f"  limit -> 'timed out' reported: median {statistics.median(to_report):.0f} ms, runs {[round(x) for x in to_report]}")
        print(f"  limit -> next patient in process: median {statistics.median(to_next):.0f} ms, runs {[round(x) for x in to_next]}")
    finally:
        for pid in grandchildren:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)


def slowpeer(gap=2.0):
    import struct
    port = free_port()
    work = tempfile.mkdtemp(prefix="bench-slowpeer-")
    with open(os.path.join(work, "node.log"), "w") as log:
        node = start([os.path.join(REL, "examples", "store_node"), "--port", str(port), "--out", work], log)
        try:
            wait_port(port)

            def trickle(prefix, payload):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(prefix)
                t = time.perf_counter()
                try:
                    for b in payload:
                        s.sendall(bytes([b]))
                        s.settimeout(gap)
                        try:
                            if s.recv(65536) == b"":
                                break
                        except socket.timeout:
                            pass
                except OSError:
                    pass
                held = time.perf_counter() - t
                s.close()
                return held

            # An A-ASSOCIATE-RQ header promising 200 bytes, sent a byte at a time.
            held = trickle(b"", b"\x01\x00" + struct.pack(">I", 200) + bytes(200))
            print(f"one byte every {gap:.0f} s of an association request: held {held:.1f} s")
            # Associate properly (echoscu's request, captured by a real association), then trickle a P-DATA.
            rq = associate_rq("STORE_NODE")
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(rq)
            s.recv(65536)
            t = time.perf_counter()
            pdata = b"\x04\x00" + struct.pack(">I", 1000) + bytes(1000)
            closed = None
            try:
                for b in pdata:
                    s.sendall(bytes([b]))
                    s.settimeout(gap)
                    try:
                        got = s.recv(65536)
                        if got == b"" or got[:1] == b"\x07":
                            closed = time.perf_counter() - t
                            break
                    except socket.timeout:
                        pass
            except OSError:
                closed = time.perf_counter() - t
            s.close()
            print(f"one byte every {gap:.0f} s inside a P-DATA PDU: aborted after {closed:.1f} s")
        finally:
            stop(node)
            shutil.rmtree(work, ignore_errors=True)


def associate_rq(called, calling="SLOW"):
    """A minimal A-ASSOCIATE-RQ proposing Verification in implicit VR little endian."""
    import struct

    def item(kind, body):
        return bytes([kind, 0]) + struct.pack(">H", len(body)) + body
    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32) + app + pc + user
    return bytes([1, 0]) + struct.pack(">I", len(body)) + body


def tls(rounds=5, slices=300):
    work = tempfile.mkdtemp(prefix="bench-tls-")
    try:
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--slices", str(slices), "--size", "512",
                        "--prefix", "TLS-"], check=True, stdout=subprocess.DEVNULL)
        key, crt = os.path.join(work, "node.key"), os.path.join(work, "node.crt")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kinds = ["store_node tls", "store_node plain", "storescp tls"]
        times = {k: [] for k in kinds}
        for r in range(rounds):
            for which in (kinds if r % 2 == 0 else list(reversed(kinds))):
                port = free_port()
                out = os.path.join(work, f"out-{r}")
                os.makedirs(out)
                with open(os.path.join(work, f"{which.replace(' ', '-')}-{r}.log"), "w") as log:
                    if which.startswith("store_node"):
                        cmd = [os.path.join(REL, "examples", "store_node"), "--port", str(port), "--out", out]
                        if which.endswith("tls"):
                            cmd += ["--tls-cert", crt, "--tls-key", key]
                        proc, aec = start(cmd, log), "STORE_NODE"
                    else:
                        proc = start(["/usr/bin/storescp", "+tls", key, crt, "+cf", crt, "-aet", "STORESCP",
                                      "-od", out, str(port)], log)
                        aec = "STORESCP"
                    try:
                        wait_port(port)
                        tls_args = ["+tls", key, crt, "+cf", crt] if which.endswith("tls") else []
                        t = time.perf_counter()
                        subprocess.run(["/usr/bin/storescu"] + tls_args + ["-aec", aec, "+sd", "+r", "127.0.0.1",
                                        str(port), data], env=ENV, check=True, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                        times[which].append(time.perf_counter() - t)
                        time.sleep(1.0)
                    finally:
                        stop(proc)
                shutil.rmtree(out, ignore_errors=True)
        print(f"storescu {slices} CT 512x512 16-bit, {rounds} interleaved rounds:")
        for k, v in times.items():
            print(f"  {k:17s} median {statistics.median(v)*1000:.0f} ms  runs {[round(x*1000) for x in v]}")
        base = statistics.median(times["store_node tls"])
        print(f"  ratio tls/plain = {base / statistics.median(times['store_node plain']):.2f}, "
              f"store_node tls / storescp tls = {base / statistics.median(times['storescp tls']):.2f}")
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


def durable(rounds=int(os.environ.get("BENCH_ROUNDS", "3"))):
    """storescu into: DCMTK storescp (no fsync), the node in memory, the node with --data-dir
    (write-ahead log), Orthanc (default settings, which fsync); 300 CT 512x512 and 1,000
    instances 64x64, by one association and by four at once; order rotated per round."""
    if os.environ.get("BENCH_NETNS") != "1":
        # storescp and Orthanc listen on every interface: a private network namespace.
        cmd = f"ip link set lo up && BENCH_NETNS=1 {sys.executable} {os.path.abspath(__file__)} durable"
        # (BENCH_KINDS=storescp,log limits the peers compared.)
        subprocess.run(["unshare", "-n", "sh", "-c", cmd], check=True)
        return
    work = tempfile.mkdtemp(prefix="bench-durable-")
    try:
        sets = {}
        for name, total, size in (("300 CT 512x512", 300, 512), ("1000 x 64x64", 1000, 64)):
            one = os.path.join(work, f"{total}-one")
            four = os.path.join(work, f"{total}-four")
            subprocess.run([os.path.join(REL, "gen_series"), "--out", one, "--slices", str(total), "--size", str(size),
                            "--prefix", "D1-"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([os.path.join(REL, "gen_series"), "--out", four, "--patients", "4", "--slices",
                            str(total // 4), "--size", str(size), "--prefix", "D4-"], check=True, stdout=subprocess.DEVNULL)
            sets[name] = (one, [os.path.join(four, d) for d in sorted(os.listdir(four))])
        kinds = os.environ.get("BENCH_KINDS", "storescp,memory,log,orthanc").split(",")
        results = {}
        for r in range(rounds):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for which in order:
                for name, (one, fours) in sets.items():
                    for mode in ("one", "four"):
                        port = free_port()
                        out = os.path.join(work, f"out-{which}")
                        shutil.rmtree(out, ignore_errors=True)
                        os.makedirs(out)
                        log = open(os.path.join(work, f"{which}.log"), "w")
                        if which == "storescp":
                            proc = start(["/usr/bin/storescp", "-aet", "STORESCP", "-od", out, str(port)], log)
                            aec = "STORESCP"
                        elif which == "orthanc":
                            proc, port = orthanc_start(work, f"orthanc-{r}-{mode}-{len(name)}", {})
                            aec = "ORTHANC"
                        else:
                            cmd = [os.path.join(REL, "examples", "store_node"), "--port", str(port), "--out", out,
                                   "--ae-title", "STORE_NODE"]
                            if which == "log":
                                cmd += ["--data-dir", os.path.join(work, "data")]
                            proc = start(cmd, log)
                            aec = "STORE_NODE"
                        try:
                            wait_port(port, 30)
                            t = time.perf_counter()
                            if mode == "one":
                                storescu(port, aec, [one])
                            else:
                                senders = [subprocess.Popen(["/usr/bin/storescu", "-aec", aec, "+sd", "+r", "127.0.0.1",
                                                             str(port), d], env=ENV, stdout=subprocess.DEVNULL,
                                                            stderr=subprocess.DEVNULL) for d in fours]
                                for sender in senders:
                                    if sender.wait() != 0:
                                        raise RuntimeError(f"storescu to {which} failed")
                            results.setdefault((name, mode, which), []).append(time.perf_counter() - t)
                        finally:
                            stop(proc)
                            log.close()
                        shutil.rmtree(out, ignore_errors=True)
                        shutil.rmtree(os.path.join(work, "data"), ignore_errors=True)
                        for d in os.listdir(work):
                            if d.startswith("orthanc-"):
                                shutil.rmtree(os.path.join(work, d), ignore_errors=True)
        print(f"durable ingest, {rounds} rounds, order rotated; medians, ratio to storescp:")
        for name in sets:
            for mode in ("one", "four"):
                ref = statistics.median(results[(name, mode, "storescp")])
                cells = []
                for k in kinds:
                    v = statistics.median(results[(name, mode, k)])
                    cells.append(f"{k} {v:.2f} s ({v / ref:.2f})")
                label = "1 association" if mode == "one" else "4 at once"
                print(f"  {name}, {label}: " + ", ".join(cells))
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


def bench_venv():
    venv = os.path.join(ROOT, "target", "bench-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "pydicom", "numpy", "pylibjpeg", "pylibjpeg-libjpeg",
                        "pylibjpeg-openjpeg", "pylibjpeg-rle"], check=True)
    return python


def volume(runs=5, slices=300):
    python = bench_venv()
    work = tempfile.mkdtemp(prefix="bench-volume-")
    try:
        native = os.path.join(work, "native")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", native, "--slices", str(slices), "--size", "512",
                        "--prefix", "VOL-"], check=True)
        native = os.path.join(native, sorted(os.listdir(native))[0])  # the one patient's folder
        files = sorted(os.listdir(native))
        syntaxes = {"native": None, "rle": ["/usr/bin/dcmcrle"], "jpeg-lossless-sv1": ["/usr/bin/dcmcjpeg", "+e1"],
                    "j2k-lossless": ["/usr/bin/gdcmconv", "--j2k"]}
        for name, encoder in syntaxes.items():
            folder = native
            if encoder:
                folder = os.path.join(work, name)
                os.makedirs(folder)
                for f in files:
                    subprocess.run(encoder + [os.path.join(native, f), os.path.join(folder, f)], check=True,
                                   env=ENV, stdout=subprocess.DEVNULL)
            ours = f"{os.path.join(REL, 'dicomnode')} volume {folder}"
            theirs = f"{python} {os.path.join(ROOT, 'scripts', 'volume_pydicom.py')} {folder}"
            print(f"== {name}: {slices} CT 512x512 -> sorted f32 volume ({slices * 512 * 512 * 4 / 2**20:.0f} MiB)",
                  flush=True)
            subprocess.run(["farm-bench", "-n", str(runs), "--timeout", "900", "--vs", theirs, "--"] + ours.split(),
                           check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def volume_child(rounds=3, slices=300):
    """The volume_stats node's child building the volume of 300 CT 512x512 (native): its
    peak memory (VmHWM, logged by the child) against the volume's size."""
    work = tempfile.mkdtemp(prefix="bench-volume-child-")
    try:
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--slices", str(slices), "--size", "512",
                        "--prefix", "VC-"], check=True)
        peaks = []
        for r in range(rounds):
            port = free_port()
            out = os.path.join(work, f"out-{r}")
            log_path = os.path.join(work, f"node-{r}.log")
            with open(log_path, "w") as log:
                proc = start([os.path.join(REL, "examples", "volume_stats"), "--port", str(port), "--out", out], log)
                try:
                    wait_port(port)
                    storescu(port, "VOLUME_STATS", [data])
                    end = time.time() + 120
                    while time.time() < end and "child peak memory" not in open(log_path).read():
                        time.sleep(0.1)
                finally:
                    stop(proc)
            m = re.search(r"peak_kib=(\d+)", open(log_path).read())
            peaks.append(int(m.group(1)) / 1024 if m else float("nan"))
        volume_mib = slices * 512 * 512 * 4 / 2**20
        print(f"volume_stats child, {slices} CT 512x512 native: peak {statistics.median(peaks):.0f} MiB "
              f"(runs {[round(p) for p in peaks]}), volume {volume_mib:.0f} MiB, "
              f"ratio {statistics.median(peaks) / volume_mib:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def proc_cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def proc_rss_mib(pid, key="VmRSS:"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def http(rounds=3, slices=300, idle_secs=10):
    """store_node with and without --http (scraped every second, as Prometheus would):
    CPU and memory at idle and under an ingest of 300 CT 512x512, interleaved rounds."""
    import urllib.request
    work = tempfile.mkdtemp(prefix="bench-http-")
    try:
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--slices", str(slices), "--size", "512",
                        "--prefix", "HTTP-"], check=True)
        results = {"without": [], "with": []}
        for r in range(rounds):
            for which in (["without", "with"] if r % 2 == 0 else ["with", "without"]):
                port, hport = free_port(), free_port()
                out = os.path.join(work, f"out-{which}-{r}")
                cmd = [os.path.join(REL, "examples", "store_node"), "--port", str(port), "--out", out]
                if which == "with":
                    cmd += ["--http", f"127.0.0.1:{hport}"]
                with open(os.path.join(work, f"{which}-{r}.log"), "w") as log:
                    proc = start(cmd, log)
                    try:
                        wait_port(port)
                        def scrape():
                            if which == "with":
                                try:
                                    urllib.request.urlopen(f"http://127.0.0.1:{hport}/metrics", timeout=2).read()
                                except OSError:
                                    pass
                        cpu0 = proc_cpu_seconds(proc.pid)
                        for _ in range(idle_secs):
                            scrape()
                            time.sleep(1)
                        idle_cpu = proc_cpu_seconds(proc.pid) - cpu0
                        idle_rss = proc_rss_mib(proc.pid)
                        cpu1 = proc_cpu_seconds(proc.pid)
                        sender = subprocess.Popen(["/usr/bin/storescu", "-aec", "STORE_NODE", "+sd", "+r", "127.0.0.1",
                                                   str(port), data], env=ENV, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL)
                        t = time.perf_counter()
                        while sender.poll() is None:
                            scrape()
                            time.sleep(0.2 if which == "with" else 0.05)
                        wall = time.perf_counter() - t
                        time.sleep(1.0)
                        ingest_cpu = proc_cpu_seconds(proc.pid) - cpu1
                        peak = proc_rss_mib(proc.pid, "VmHWM:")
                        results[which].append((idle_cpu, idle_rss, wall, ingest_cpu, peak))
                    finally:
                        stop(proc)
                shutil.rmtree(out, ignore_errors=True)
        print(f"store_node with and without --http (scraped every 1 s idle, every 0.2 s during the ingest), "
              f"{rounds} interleaved rounds, medians:")
        for which, runs in results.items():
            med = lambda i: statistics.median(x[i] for x in runs)
            print(f"  {which:8s} idle {idle_secs} s: CPU {med(0)*1000:.0f} ms, RSS {med(1):.1f} MiB | "
                  f"ingest {slices} CT: wall {med(2):.2f} s, node CPU {med(3):.2f} s, peak RSS {med(4):.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def orthanc_start(work, name, modalities):
    """Orthanc on free ports with its own storage; modalities: {name: [aet, host, port]}."""
    import json
    dicom, http = free_port(), free_port()
    db = os.path.join(work, name)
    config = {"Name": name, "StorageDirectory": db, "IndexDirectory": db, "HttpPort": http,
              "DicomPort": dicom, "DicomAet": "ORTHANC", "DicomCheckCalledAet": False,
              "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True, "DicomAlwaysAllowGet": True,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
              "SaveJobs": False, "DicomModalities": modalities}
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(config, f)
    log = open(os.path.join(work, name + ".log"), "w")
    proc = start(["/usr/sbin/Orthanc", path], log)
    wait_port(dicom, 30)
    wait_port(http, 30)
    return proc, dicom


def priors(rounds=3, slices=100):
    """Release -> process with 3 priors of `slices` CT 512x512 fetched from Orthanc by C-MOVE."""
    if os.environ.get("BENCH_NETNS") != "1":
        cmd = f"ip link set lo up && BENCH_NETNS=1 {sys.executable} {os.path.abspath(__file__)} priors"
        subprocess.run(["unshare", "-n", "sh", "-c", cmd], check=True)
        return
    work = tempfile.mkdtemp(prefix="bench-priors-")
    try:
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--patients", "4", "--slices",
                        str(slices), "--size", "512", "--prefix", "ST-"], check=True, stdout=subprocess.DEVNULL)
        # Four studies of one patient: three priors (2021-2023) and the current one (2025).
        for n, date in zip(range(1, 5), ["20210101", "20220101", "20230101", "20250101"]):
            folder = os.path.join(data, f"ST-{n}")
            files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
            subprocess.run(["/usr/bin/dcmodify", "-nb", "-m", "PatientID=BENCH", "-m", f"StudyDate={date}"] + files,
                           check=True, stdout=subprocess.DEVNULL)
        rows, mem_rows = [], []
        for r in range(rounds):
            node_port, scp_port = free_port(), free_port()
            orthanc, pacs_port = orthanc_start(work, f"orthanc-{r}", {
                "priors": ["PRIORS", "127.0.0.1", node_port], "storescp": ["STORESCP", "127.0.0.1", scp_port]})
            try:
                storescu(pacs_port, "ORTHANC", [os.path.join(data, f"ST-{n}") for n in (1, 2, 3)])
                # Reference: DCMTK movescu moves the same three studies to DCMTK storescp.
                received = os.path.join(work, f"storescp-{r}")
                os.makedirs(received)
                scp = start(["/usr/bin/storescp", "-aet", "STORESCP", "-od", received, str(scp_port)],
                            subprocess.DEVNULL)
                try:
                    wait_port(scp_port)
                    t = time.perf_counter()
                    subprocess.run(["/usr/bin/movescu", "-S", "-aet", "MOVESCU", "-aec", "ORTHANC", "-aem", "STORESCP",
                                    "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=BENCH",
                                    "127.0.0.1", str(pacs_port)], env=ENV, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    reference = time.perf_counter() - t
                    moved = sum(len(fs) for _, _, fs in os.walk(received))
                finally:
                    stop(scp)
                for mode in (["disk", "memory"] if r % 2 == 0 else ["memory", "disk"]):
                    out, ddir = os.path.join(work, f"out-{r}-{mode}"), os.path.join(work, f"data-{r}")
                    log_path = os.path.join(work, f"node-{r}-{mode}.log")
                    extra = ["--data-dir", ddir] if mode == "disk" else []
                    with open(log_path, "w") as log:
                        node = start([os.path.join(REL, "examples", "with_priors"), "--port", str(node_port),
                                      "--ae-title", "PRIORS", "--out", out,
                                      "--pacs", f"ORTHANC@127.0.0.1:{pacs_port}"] + extra, log)
                        try:
                            wait_port(node_port)
                            storescu(node_port, "PRIORS", [os.path.join(data, "ST-4")])
                            end = time.time() + 300
                            while "processing finished" not in open(log_path).read() and time.time() < end:
                                time.sleep(0.05)
                        finally:
                            stop(node)
                    text = open(log_path).read()
                    line = lambda needle: next(l for l in text.splitlines() if needle in l)
                    num = lambda l, key: float(re.search(key + r"=([0-9.]+)", l).group(1))
                    released = log_time(line("waiting:"))
                    first = log_time(line("fetching prior studies"))
                    triggered = log_time(line("starting processing"))
                    to_process = (triggered - released) + num(line("trigger_to_process_ms"), "trigger_to_process_ms") / 1000
                    find_s = num(line("C-FIND for prior studies answered"), "seconds")
                    move_s = sum(num(l, "seconds") for l in text.splitlines() if "prior study retrieved" in l)
                    fetched = line("prior studies fetched")
                    (rows if mode == "disk" else mem_rows).append(
                        (to_process, num(fetched, "seconds"), find_s, move_s, num(fetched, "storage_seconds"),
                         released - first, int(num(fetched, "instances")), reference, moved,
                         num(line("trigger_to_process_ms"), "trigger_to_process_ms") / 1000))
            finally:
                stop(orthanc)
        med = lambda i: statistics.median(x[i] for x in rows)
        print(f"3 priors of {slices} CT 512x512 from Orthanc by C-MOVE, node with --data-dir, {rounds} rounds:")
        print(f"  receiving the current study ({slices} CT) took {med(5):.2f} s after the fetch started (they overlap)")
        print(f"  release -> process: median {med(0):.2f} s (rounds {[round(x[0], 2) for x in rows]}), of which "
              f"the child's start with 400 instances (trigger -> process) {med(9):.2f} s")
        print(f"  fetch (first instance -> priors stored): {med(1):.2f} s for {int(med(6))} instances: "
              f"C-FIND {med(2):.3f} s ({100 * med(2) / med(1):.1f} %), C-MOVE {med(3):.2f} s "
              f"({100 * med(3) / med(1):.1f} %), of which storing in the node {med(4):.2f} s "
              f"({100 * med(4) / med(1):.1f} %)")
        mmed = lambda i: statistics.median(x[i] for x in mem_rows)
        print(f"  the same node in memory: release -> process {mmed(0):.2f} s (child's start {mmed(9):.2f} s), "
              f"fetch {mmed(1):.2f} s "
              f"(C-MOVE {mmed(3):.2f} s, storing {mmed(4):.2f} s)")
        print(f"  reference, DCMTK movescu -> storescp (no fsync), the same 3 studies: {med(7):.2f} s "
              f"({int(med(8))} files); ratio fetch / movescu: durable {med(1) / med(7):.2f}, "
              f"in memory {mmed(1) / med(7):.2f}")
        # A PACS that never answers: SIGSTOPped Orthanc, fetch limit 5 s.
        node_port = free_port()
        orthanc, pacs_port = orthanc_start(work, "orthanc-silent", {})
        os.kill(orthanc.pid, 19)  # SIGSTOP
        try:
            log_path = os.path.join(work, "node-silent.log")
            with open(log_path, "w") as log:
                node = start([os.path.join(REL, "examples", "with_priors"), "--port", str(node_port),
                              "--ae-title", "PRIORS", "--out", os.path.join(work, "out-silent"),
                              "--fetch-seconds", "5", "--pacs", f"ORTHANC@127.0.0.1:{pacs_port}"], log)
                try:
                    wait_port(node_port)
                    storescu(node_port, "PRIORS", [os.path.join(data, "ST-4")])
                    end = time.time() + 60
                    while "processing finished" not in open(log_path).read() and time.time() < end:
                        time.sleep(0.05)
                finally:
                    stop(node)
            text = open(log_path).read()
            line = lambda needle: next(l for l in text.splitlines() if needle in l)
            released = log_time(line("waiting:"))
            unavailable = log_time(line("prior studies unavailable"))
            triggered = log_time(line("starting processing"))
            reason = re.search(r"reason=(.*?) seconds=", line("prior studies unavailable"))
            print(f"  silent PACS (SIGSTOP), limit 5 s: first instance -> unavailable "
                  f"{unavailable - log_time(line('fetching prior studies')):.2f} s, release -> processing started "
                  f"{triggered - released:.2f} s; reason {reason.group(1) if reason else '?'}")
        finally:
            os.kill(orthanc.pid, 18)  # SIGCONT
            stop(orthanc)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def one_at_a_time(work, data, patients, extra, label):
    """test_node; each patient sent, then its processing awaited, before the next; returns
    the release->process latencies (ms)."""
    port = free_port()
    log_path = os.path.join(work, f"{label}.log")
    with open(log_path, "w") as log:
        node = start([os.path.join(REL, "test_node"), "--port", str(port), "--out",
                      os.path.join(work, f"out-{label}")] + extra, log)
        try:
            wait_port(port)
            for p in range(1, patients + 1):
                subprocess.run([os.path.join(REL, "dicomnode"), "store", "--quiet", f"TEST_NODE@127.0.0.1:{port}",
                                os.path.join(data, f"TINY-{p}")], env=ENV, check=True, stdout=subprocess.DEVNULL)
                end = time.time() + 120
                while open(log_path).read().count("processing finished") < p and time.time() < end:
                    time.sleep(0.01)
        finally:
            stop(node)
    text = open(log_path).read()
    submit = [float(m) for m in re.findall(r"submit_ms=([0-9.]+)", text)]
    if submit:
        print(f"  ({label}: job directory + sbatch median {statistics.median(submit):.1f} ms)")
    return [float(m) for m in re.findall(r"trigger_to_process_ms=([0-9.]+)", text)]


def slurm(patients=20, burst=60, rounds=2):
    work = tempfile.mkdtemp(prefix="bench-slurm-")
    cluster = subprocess.Popen([os.path.join(REL, "slurm_cluster")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        line = cluster.stdout.readline().strip()
        if not line.startswith("SLURM_CONF="):
            raise RuntimeError(f"no cluster: {line!r}")
        ENV["SLURM_CONF"] = line.split("=", 1)[1]
        data = os.path.join(work, "in")
        subprocess.run([os.path.join(REL, "gen_series"), "--out", data, "--patients", str(max(patients, burst)),
                        "--slices", "1", "--size", "16", "--prefix", "TINY-"], check=True, stdout=subprocess.DEVNULL)
        # Both with a data directory: the same storage, only the executor differs.
        executors = {"local": ["--data-dir", os.path.join(work, "data-local")],
                     "slurm": ["--executor", "slurm", "--job-dir", os.path.join(work, "jobs"),
                               "--data-dir", os.path.join(work, "data-slurm")]}
        lat = {k: [] for k in executors}
        per = patients // rounds
        for r in range(rounds):
            for which in (["local", "slurm"] if r % 2 == 0 else ["slurm", "local"]):
                lat[which] += one_at_a_time(work, data, per, ["--max-children", "2"] + executors[which],
                                            f"{which}-seq-{r}")
        print(f"release->process, {patients} tiny patients one at a time ({rounds} interleaved rounds):")
        for k, v in lat.items():
            print(f"  {k:5s} median {statistics.median(v):.1f} ms, min {min(v):.1f} ms, max {max(v):.1f} ms "
                  f"({len(v)} patients)")
        print(f"  ratio slurm/local = {statistics.median(lat['slurm']) / statistics.median(lat['local']):.1f}")
        for which in ["local", "slurm"]:
            _, wall = run_patients(work, data, burst, ["--max-children", "2"] + executors[which],
                                   f"{which}-burst", 4)
            print(f"{which:5s} {burst} tiny patients from 4 senders at once, 2 at a time: {wall:.1f} s, "
                  f"{burst / wall * 60:.0f} patients per minute")
    finally:
        ENV.pop("SLURM_CONF", None)
        cluster.stdin.close()
        cluster.wait(timeout=60)
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
    if what == "latency-vs":
        latency_vs(sys.argv[2])
    if what in ("timelimit", "all"):
        timelimit()
    if what in ("slowpeer", "all"):
        slowpeer()
    if what in ("tls", "all"):
        tls()
    if what in ("volume", "all"):
        volume()
    if what in ("volume-child", "all"):
        volume_child()
    if what in ("http", "all"):
        http()
    if what in ("priors", "all"):
        priors()
    if what in ("slurm", "all"):
        slurm()
