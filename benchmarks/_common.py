"""What the benchmarks share: the peer tools' venvs, how each peer is run, the loopback server,
the final `result:` line and the scratch folder of a run.

Each peer lives in its own venv under benchmarks/.venvs/<tool>, created here on first use
(never in the project's .venv). The stage benchmarks (bench_extract, bench_download,
bench_embed, bench_index) and the end-to-end one (bench_pipeline) call the same functions,
so a peer is installed, configured and invoked one way everywhere.

    python benchmarks/_common.py --serve N SIZE PORT_FILE   # the image server's child process
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / "benchmarks" / ".venvs"
CC2DATASET_VENV = VENVS / "cc2dataset"
IMG2DATASET_VENV = VENVS / "img2dataset"
CLIP_RETRIEVAL_VENV = VENVS / "clip-retrieval"
AUTOFAISS_VENV = VENVS / "autofaiss"


def project_python() -> str:
    """The project's interpreter: .venv/bin/python in the checkout, else the running one."""
    py = ROOT / ".venv" / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def project_site_packages() -> str:
    """site-packages of the project's venv (torch, open_clip, numpy, pyarrow live there)."""
    venv_lib = ROOT / ".venv" / "lib"
    found = sorted(venv_lib.glob("python3*/site-packages")) if venv_lib.is_dir() else []
    return str(found[0]) if found else sysconfig.get_paths()["purelib"]


def peer_env(**extra: str) -> dict[str, str]:
    """Environment for a peer process: offline model hubs, no telemetry, no proxy for loopback."""
    env = dict(
        os.environ,
        NO_ALBUMENTATIONS_UPDATE="1",
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        PYTHONNOUSERSITE="1",
        http_proxy="",
        https_proxy="",
        no_proxy="127.0.0.1",
    )
    env.update(extra)
    return env


def _venv(path: Path) -> Path:
    """Create the venv at `path` if missing; returns its python."""
    py = path / "bin" / "python"
    if not py.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return py


def _imports(py: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), "-c", code], capture_output=True, text=True)


# ---------------------------------------------------------------- result line, scratch folder
def print_result(fields: dict[str, object]) -> None:
    """The benchmark's last line, `result: name=value ...` (values printed as given)."""
    print("result: " + " ".join(f"{k}={v}" for k, v in fields.items()))


@contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[str]:
    """A temporary folder for one run, removed afterwards unless `keep` (then printed)."""
    work = tempfile.mkdtemp(prefix=prefix)
    try:
        yield work
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- cc2dataset
def ensure_cc2dataset() -> str | None:
    """Create the cc2dataset venv; returns an error text if it cannot be installed."""
    py = CC2DATASET_VENV / "bin" / "python"
    if py.exists() and _imports(py, "import cc2dataset.main").returncode == 0:
        return None
    py = _venv(CC2DATASET_VENV)
    # cc2dataset imports pyspark at module level (its driver is a Spark job); its per-file
    # function process_wat does not use it
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "cc2dataset==1.5.0", "pyspark==4.2.0"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return (r.stderr or r.stdout)[-2000:]
    ok = _imports(py, "import cc2dataset.main")
    return None if ok.returncode == 0 else ok.stderr[-2000:]


# cc2dataset's rules, as far as our extract config can express them: any non-empty alt (its
# `len(alt) > 0`; ours strips whitespace first), svg/gif kept, no language id
CC2DATASET_RULES = {"min_caption_chars": 1, "drop_extensions": [], "language_id": False}


# ---------------------------------------------------------------- img2dataset
def ensure_img2dataset() -> str | None:
    """Path of the img2dataset CLI in its own venv (created on first use), or None + why."""
    exe = IMG2DATASET_VENV / "bin" / "img2dataset"
    if exe.exists():
        return str(exe)
    py = _venv(IMG2DATASET_VENV)
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "img2dataset"], capture_output=True, text=True
    )
    if r.returncode != 0 or not exe.exists():
        print("img2dataset install failed:\n" + r.stderr[-3000:])
        return None
    return str(exe)


# resize/encode settings both download tools get (img2dataset's flags, our config keys)
DOWNLOAD_SIZE, DOWNLOAD_MODE, DOWNLOAD_FORMAT, DOWNLOAD_QUALITY = 256, "border", "jpg", 95


def img2dataset_cmd(
    exe: str,
    url_list: str,
    out: str,
    *,
    cores: int,
    threads: int,
    per_shard: int,
    input_format: str = "txt",
    output_format: str = "files",
    url_col: str | None = None,
    caption_col: str | None = None,
) -> list[str]:
    """The img2dataset command line: our download settings, no retries, multiprocessing."""
    cmd = [exe, "--url_list", url_list, "--input_format", input_format]
    if url_col:
        cmd += ["--url_col", url_col]
    if caption_col:
        cmd += ["--caption_col", caption_col]
    return cmd + [
        "--output_folder",
        out,
        "--output_format",
        output_format,
        "--processes_count",
        str(cores),
        "--thread_count",
        str(threads),
        "--image_size",
        str(DOWNLOAD_SIZE),
        "--resize_mode",
        DOWNLOAD_MODE,
        "--encode_format",
        DOWNLOAD_FORMAT,
        "--encode_quality",
        str(DOWNLOAD_QUALITY),
        "--number_sample_per_shard",
        str(per_shard),
        "--timeout",
        "10",
        "--retries",
        "0",
        "--distributor",
        "multiprocessing",
        "--enable_wandb",
        "False",
    ]


def our_download_overrides(threads: int, partitions: int) -> list[str]:
    """Config overrides that give our download stage img2dataset_cmd's settings."""
    return [
        f"download.image_size={DOWNLOAD_SIZE}",
        f"download.resize_mode={DOWNLOAD_MODE}",
        f"download.encode_format={DOWNLOAD_FORMAT}",
        f"download.encode_quality={DOWNLOAD_QUALITY}",
        f"download.threads={threads}",
        "download.retries=0",
        f"download.partitions={partitions}",
        "download.allow_networks=['127.0.0.1/32']",
    ]


def img2dataset_successes(out: Path) -> int:
    """Images img2dataset wrote, from its per-shard *_stats.json files."""
    return sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))


# ---------------------------------------------------------------- clip-retrieval
def ensure_clip_retrieval() -> Path:
    """benchmarks/.venvs/clip-retrieval: clip-retrieval without re-downloading torch.

    clip-retrieval pins numpy<2, pyarrow<16, open-clip-torch<3 and pulls torch + CUDA wheels,
    wandb, transformers, sentence-transformers, img2dataset... (several GB). Here the venv
    gets clip-retrieval and the small pure-Python pieces clip_inference imports (all_clip,
    webdataset, fire, braceexpand, wandb), and a .pth that puts this project's .venv
    site-packages (torch, open_clip, numpy, pyarrow, pandas) behind it, so both tools run the
    very same torch/open_clip build. `sentence_transformers` (used only for multilingual
    CLIP, which is off) gets a stub module: importing the real one needs transformers.
    """
    py = _venv(CLIP_RETRIEVAL_VENV)
    pip = [str(py), "-m", "pip", "install", "-q"]
    if _imports(py, "from clip_retrieval.clip_inference.main import main").returncode != 0:
        # clip_retrieval/__init__ imports every sub-tool (back end, index, end2end), so their
        # small imports are needed too; the heavy ones come from the project's venv (.pth)
        subprocess.run(
            pip
            + ["--no-deps", "clip-retrieval", "all_clip", "webdataset<0.3", "fire<0.6"]
            + ["img2dataset", "autofaiss", "embedding-reader", "clip-anytorch"],
            check=True,
        )
        subprocess.run(
            pip
            + ["braceexpand", "wandb", "termcolor", "flask", "flask_cors", "flask_restful"]
            + ["prometheus_client", "h5py"],
            check=True,
        )
    site = next((CLIP_RETRIEVAL_VENV / "lib").glob("python3*/site-packages"))
    (site / "zz_laion_main_venv.pth").write_text(project_site_packages() + "\n")
    stub = site / "sentence_transformers.py"
    if not stub.exists():
        stub.write_text(
            '"""stub: multilingual CLIP is disabled in this benchmark"""\n'
            "class SentenceTransformer:\n"
            "    def __init__(self, *a, **k):\n"
            "        raise RuntimeError('sentence_transformers not installed (stub)')\n"
        )
    return py


def clip_model_arg(model: str, ckpt: str, workdir: Path) -> tuple[str, str | None]:
    """clip_inference's `clip_model` for our model + checkpoint, and the architecture JSON
    to register first when open_clip does not know the model (tiny-clip): no weight download."""
    from laion_spark.models import tiny_clip as tiny

    arch_json = None
    if model == tiny.TINY_NAME:
        arch_json = str(workdir / f"{tiny.TINY_NAME}.json")
        Path(arch_json).write_text(json.dumps(tiny.TINY_CONFIG))
    return f"open_clip:{model}/{ckpt}", arch_json


def run_clip_inference(
    py: Path,
    input_dataset: str,
    out: Path,
    *,
    clip_model: str,
    arch_json: str | None,
    batch: int,
    workers: int,
    cwd: Path,
    cmd_prefix: list[str] | None = None,
) -> dict:
    """clip-retrieval's `inference` (clip_inference.main) on webdataset shards, images and
    captions. Returns {"inner_s": seconds inside main(), "wall_s": the whole process}."""
    reg = ""
    if arch_json:
        reg = f"import open_clip; open_clip.add_model_config({arch_json!r}); "
    code = (
        reg + "import time; from clip_retrieval.clip_inference.main import main; t=time.time(); "
        f"main(input_dataset={input_dataset!r}, output_folder={str(out)!r}, "
        f"input_format='webdataset', batch_size={batch}, num_prepro_workers={workers}, "
        "enable_text=True, enable_image=True, enable_metadata=False, "
        f"clip_model={clip_model!r}, use_jit=False, "
        "distribution_strategy='sequential'); print('PEER_SECONDS', time.time()-t)"
    )
    t0 = time.time()
    p = subprocess.run(
        [*(cmd_prefix or []), str(py), "-c", code],
        capture_output=True,
        text=True,
        env=peer_env(),
        cwd=cwd,
    )
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"clip_inference failed:\n{p.stderr[-3000:]}")
    return {"inner_s": float(p.stdout.rsplit("PEER_SECONDS", 1)[1].split()[0]), "wall_s": wall}


# ---------------------------------------------------------------- autofaiss
def ensure_autofaiss() -> Path:
    py = _venv(AUTOFAISS_VENV)
    check = "import autofaiss, faiss; assert faiss.__version__ == '1.7.4'"
    if subprocess.call([str(py), "-c", check], stderr=subprocess.DEVNULL) != 0:
        # autofaiss pins numpy<2; the newest pyarrow needs numpy>=2, so pin pyarrow too.
        # autofaiss calls faiss.OPQMatrix(d, M=.., d2=..) with keywords, which faiss-cpu
        # 1.15's SWIG wrapper rejects (TypeError): pin the 1.7.4 it was written against.
        subprocess.check_call(
            [str(py), "-m", "pip", "install", "-q", "autofaiss", "pyarrow<18", "faiss-cpu==1.7.4"]
        )
    return py


# argv: embeddings folder, output folder, memory budget ("256MB"), index_key ("" = its
# choice), cores
AUTOFAISS_SCRIPT = """
import sys, json
from autofaiss import build_index
emb, out, budget, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] or None
cores = int(sys.argv[5]) if len(sys.argv) > 5 else 2
build_index(embeddings=emb, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
            max_index_memory_usage=budget, current_memory_available="16G", metric_type="ip",
            make_direct_map=False, should_be_memory_mappable=True, nb_cores=cores, index_key=key)
"""


# ---------------------------------------------------------------- loopback image server
def serve_images(n: int, size: int, port_file: str) -> None:
    """Child process: serve /img/<i>.jpg for i < n until killed (500 distinct images, cycled)."""
    sys.path.insert(0, str(ROOT))
    from laion_spark.demo.image_server import ImageServer, Route
    from laion_spark.demo.synthetic import make_samples

    samples = make_samples(min(n, 500), seed=1)
    bodies = [s.jpeg(size, quality=90) for s in samples]
    routes = [Route(body=b) for b in bodies]

    def handler(path: str) -> Route | None:
        try:
            i = int(path[len("/img/") : -len(".jpg")])
        except ValueError:
            return None
        return routes[i % len(routes)] if 0 <= i < n else None

    srv = ImageServer()
    srv.add_handler("/img/", handler)
    srv.start()
    Path(port_file).write_text(str(srv.port))
    while True:
        time.sleep(3600)


def start_image_server(n: int, size: int) -> tuple[subprocess.Popen, str]:
    """Start serve_images in its own process; returns it and its http://127.0.0.1:<port>."""
    fd, port_file = tempfile.mkstemp(prefix="bench_port_")
    os.close(fd)
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(n), str(size), port_file]
    )
    for _ in range(600):
        port = Path(port_file).read_text().strip()
        if port:
            os.unlink(port_file)
            return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("image server did not start")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve_images(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        print(__doc__)
