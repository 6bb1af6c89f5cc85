"""benchmarks/gpu_check.py: its quick CPU run passes every check, with the GPU machine's missing packages blocked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_data import _jpeg_tree

from mokit import data

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# Installed here, absent on the GPU machine: importing any of them there would fail.
ABSENT = ("papermill", "optuna", "jupyter", "nbformat", "tqdm", "fastapi", "starlette", "uvicorn", "httpx",
          "ipywidgets", "IPython")
CHECKS = ("data", "pack decode", "lenet5 mnist", "cifar recipe", "cifar target", "throughput fp32",
          "throughput bf16", "magnitude pruning", "channel pruning", "int8", "distillation", "ensemble",
          "search trial", "nas trial", "export")
BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None   # `import name` raises ImportError\n"


def _python(code: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(names=ABSENT) + code], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MOKIT_DEVICE", "MOKIT_DATA")}
    env.update(MOKIT_STANDIN="1", MOKIT_CACHE=str(tmp_path / "cache"), MOKIT_RUNS=str(tmp_path / "runs"),
               MOKIT_DATA=str(tmp_path / "data"), CUDA_VISIBLE_DEVICES="", **extra)
    return env


def test_modules_import_without_the_packages_the_gpu_machine_lacks(tmp_path):
    code = ("import importlib\n"
            "for name in ('tqdm', 'optuna', 'papermill', 'fastapi'):\n"
            "    try:\n        importlib.import_module(name)\n    except ImportError:\n        pass\n"
            "    else:\n        raise SystemExit(f'{name} was not blocked')\n"
            "import mokit.data, mokit.models, mokit.train, mokit.prune, mokit.quantize, mokit.distill\n"
            "import mokit.ensemble, mokit.search, mokit.nas, mokit.metrics, mokit.export\n"
            "import torchvision.datasets, torchvision.io   # MNIST through torchvision, JPEG decoding\n"
            f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='gpu_check')\n"   # imports, main not run
            "print('imported')\n")
    out = _python(code, _env(tmp_path), timeout=120)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr[-3000:]


def test_quick_cpu_run_passes_every_check(tmp_path):
    # a tiny pack in the data root, so the pack check decodes a real file (datasets: stand-ins)
    data.pack_image_folder(_jpeg_tree(tmp_path / "cifar10", per_class=(1, 1)), tmp_path / "data" / data.PACK_NAME)
    report = tmp_path / "gpu_check.json"
    code = (f"sys.argv = [{str(SCRIPT)!r}, '--device', 'cpu', '--quick', '--json', {str(report)!r}]\n"
            f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    out = _python(code, _env(tmp_path, MOKIT_PROGRESS="0"), timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    lines = out.stdout.splitlines()
    for check in CHECKS:
        line = next((ln for ln in lines if ln[8:].startswith(check + " ")), None)
        assert line is not None, f"no line for {check!r} in:\n{out.stdout}"
        assert line.split()[0] in ("ok", "skipped"), line
    assert "cifar target" in out.stdout and "judged only in a full run" in out.stdout
    assert "none failed" in lines[-1]
    rows = json.loads(report.read_text())["checks"]
    assert [r["check"] for r in rows] == list(CHECKS)
    assert next(r for r in rows if r["check"] == "pack decode")["status"] == "ok"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--precision", "fp64"], "unknown precision 'fp64'"),
    (["--precision", "fp16", "--device", "cpu"], "'fp16' needs a CUDA GPU"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, argv, message):
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", *argv], capture_output=True, text=True,
                         env=_env(tmp_path), cwd=ROOT, timeout=120)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert out.stdout == ""                                        # no check ran
