"""What every benchmark shares: the machine it ran on, its results page, percentiles, and `python app.py` started,
timed and called over raw HTTP."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: its app.py is the one served by default
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(tempfile.gettempdir()) / "clipsearch-bench"  # models, pictures and artifacts reused between runs
OWNED = ".clipsearch-benchmark"  # written into every folder a benchmark makes and may replace on a later run
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")  # what decides the CPU fast paths


def fresh_folder(path: Path) -> Path:
    """An empty folder at `path`. One a benchmark made earlier (it holds the OWNED marker) is replaced; anything
    else there is left untouched and refused, so a --cache pointed at a user's own folder deletes nothing."""
    if path.exists():
        if not (path / OWNED).is_file():
            raise SystemExit(f"{path} exists and was not made by a benchmark; nothing was deleted. Move it away or "
                             "choose another --cache.")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / OWNED).write_text("made by a clipsearch benchmark; replaced on its next run\n")
    return path


# --- the machine and the results page ----------------------------------------------------------------------------
def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def host_speed() -> str:
    """Two fixed workloads, best of 3, in ms: a pure-Python loop (one core's scalar speed) and 20 float32 512³
    matrix products in numpy (the vector units, on every core). The same machine type runs them slower when its
    host is busy or throttled (a neighbour, a lower clock), which says whether figures from two runs compare."""
    import numpy as np

    def best(work) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return min(times) * 1000

    def loop() -> None:
        total = 0
        for step in range(2_000_000):
            total += step

    matrix = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    return f"loop {best(loop):.0f}, matmul {best(lambda: [matrix @ matrix for _ in range(20)]):.0f}"


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return model, flags


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def gpus() -> list[str]:
    """'NAME, MEMORY' of every NVIDIA GPU nvidia-smi sees (none without the tool)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine() -> str:
    """CPU model, cores, ISA flags that matter here, memory, GPUs and the library versions; never who ran it."""
    model, flags = _cpuinfo()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    isa = ", ".join(f for f in FLAGS if f in flags) or "no AVX2"
    gpu = "; GPU: " + " + ".join(gpus()) if gpus() else ""
    libraries = ", ".join(f"{name} {_version(name)}" for name in ("torch", "transformers", "gradio", "faiss-cpu"))
    return (f"{model}, {os.cpu_count()} cores ({isa}), {memory:.0f} GiB memory{gpu}; "
            f"{platform.python_implementation()} {platform.python_version()}, {libraries}")


def code_version(root: Path = ROOT) -> str:
    """The checkout's commit, and whether app.py or the packages it serves differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "app.py", "clipsearch", "builder"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if not commit:
        return f"{root} (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


@dataclass
class Report:
    """The header of a results page: the machine, the date, the load average at start and end, the exact command.

    `Report.start(NAME, title)` when the benchmark starts; `write(body)` at the end writes results/NAME.md."""

    name: str
    title: str
    command: str
    date: str
    machine: str
    code: str
    load_start: str
    speed_start: str = ""
    load_end: str = ""
    speed_end: str = ""

    @classmethod
    def start(cls, name: str, title: str) -> Report:
        return cls(name=name, title=title, command=f"python -m benchmarks.{name} {shlex.join(sys.argv[1:])}".strip(),
                   date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), machine=machine(),
                   code=code_version(), load_start=loadavg(), speed_start=host_speed())

    def to_dict(self) -> dict:
        return asdict(self)

    def header(self) -> str:
        return (f"# {self.title}\n\n- machine: {self.machine}\n- date: {self.date}; code: {self.code}\n"
                f"- load average (1, 5, 15 min): {self.load_start} at start, {self.load_end or loadavg()} at the end\n"
                f"- host speed (fixed workloads, ms; lower is faster): {self.speed_start} at start, "
                f"{self.speed_end or '?'} at the end\n"
                f"- command: `{self.command}`\n")

    def write(self, body: str, results: Path = RESULTS, final: bool = True) -> Path:
        """Print the page and write it to results/NAME.md (a partial page says so)."""
        if final:
            self.load_end = self.load_end or loadavg()
            self.speed_end = self.speed_end or host_speed()
        page = self.header() + "\n" + body.strip() + "\n" + ("" if final else "\n(partial: still running)\n")
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"{self.name}.md"
        path.write_text(page)
        if final:
            print(page + f"\n(written to {path})")
        return path


def arguments(doc: str, quick: str = "") -> argparse.ArgumentParser:
    """A parser with the flags every benchmark has: --cache, --results and (when it has one) --quick."""
    parser = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--cache", type=Path, default=CACHE,
                        help="models, pictures and artifacts, reused between runs (default %(default)s)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for NAME.md (default %(default)s)")
    if quick:
        parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def subjects(label: str, also: list[str]) -> list[tuple[str, Path]]:
    """(label, folder holding app.py and clipsearch/): this checkout first, then every --also LABEL=DIR."""
    others = [(name, Path(folder).resolve()) for name, _, folder in (item.partition("=") for item in also)]
    if any(not (folder / "app.py").is_file() for _, folder in others):
        raise SystemExit("--also LABEL=DIR: DIR must hold an app.py (e.g. `git archive REV app.py clipsearch | "
                         "tar -x -C DIR`)")
    return [(label, ROOT), *others]


# --- `python app.py`, started and timed ----------------------------------------------------------------------------
READY = re.compile(r"started in ([\d.]+) s, resident memory (\d+) MB")  # the app's own log line when ready
PRECISION = r"precision \w+(-\w+)?"  # what the app logs once its encoder has chosen
IMAGE_GRAPH_LOG = r"pictures embedded by the image graph"  # the app logs it where pictures run in onnxruntime
TEXT_GRAPH_LOG = r"texts embedded by the text graph"  # likewise for texts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def proc_stat(pid: int) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds so far, all threads): what its work costs whatever the load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class App:
    """`python app.py` from `root` with `env` on a free port; `with App(...) as app:` returns once it serves.

    Settings that would point it elsewhere (INDEX_DIR, INDEX_REPO, HF_*) are taken from `env` only, never inherited.
    Timed from process start to gradio's "Running on local URL" line, polled every 20 ms."""

    def __init__(self, env: dict, log: Path, root: Path = ROOT, timeout: float = 600):
        self.root, self.log, self.timeout = root, log, timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("INDEX_", "HF_"))}
        self.env = {**inherited, "GRADIO_SERVER_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False",
                    "PYTHONUNBUFFERED": "1", **env}
        self.process: subprocess.Popen | None = None
        self.seconds = 0.0  # process start to serving, imports included
        self.started_at = self.ready_at = 0.0  # wall-clock (time.time) of those two moments
        self.cpu_at_ready = 0.0
        self.logged_seconds = self.logged_rss_mb = float("nan")  # what the app logs: start-up work after imports

    def __enter__(self) -> App:
        self.started_at, began = time.time(), time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "app.py"], cwd=self.root, env=self.env,
                                        stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        while "Running on local URL" not in self.log.read_text():
            if self.process.poll() is not None or time.perf_counter() - began > self.timeout:
                self.stop()
                raise RuntimeError(f"the app ({self.root}) did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        self.seconds, self.ready_at = time.perf_counter() - began, time.time()
        self.cpu_at_ready = proc_stat(self.process.pid)[1]
        ready = READY.search(self.log.read_text())
        if ready:
            self.logged_seconds, self.logged_rss_mb = float(ready.group(1)), float(ready.group(2))
        return self

    def rss_mb(self) -> float:
        return proc_rss_mb(self.process.pid)

    def encoder_line(self) -> str:
        """What the app's encoder computes in, as its log says: "precision int8", "+ pictures in onnxruntime"."""
        graphs = [what for what, line in (("pictures", IMAGE_GRAPH_LOG), ("texts", TEXT_GRAPH_LOG))
                  if self.log_line(line)]
        return (self.log_line(PRECISION) or "precision ?") + (f" + {' and '.join(graphs)} in onnxruntime int8"
                                                               if graphs else "")

    def log_line(self, pattern: str) -> str:
        found = re.search(pattern, self.log.read_text())
        return found.group(0) if found else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- its named endpoints over raw HTTP, on one kept-alive connection ----------------------------------------------
def call(client, endpoint: str, data: list) -> list:
    """POST /gradio_api/call/<endpoint>, then read its result stream, as any HTTP client would; an error event or
    a refused request raises."""
    response = client.post(f"/gradio_api/call/{endpoint}", json={"data": data})
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    event = response.json()["event_id"]
    with client.stream("GET", f"/gradio_api/call/{endpoint}/{event}") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "error":
                raise RuntimeError(f"{endpoint}: {line[5:].strip()[:200]}")
            elif line.startswith("data:") and kind == "complete":
                return json.loads(line[5:])
    raise RuntimeError(f"{endpoint}: no result")


def upload(client, path: Path) -> dict:
    response = client.post("/gradio_api/upload", files={"files": (path.name, path.read_bytes(), "image/jpeg")})
    response.raise_for_status()
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}
