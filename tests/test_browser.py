"""The widgets in a real browser: JupyterLab from .venv, headless Chromium driven by Playwright.

Notebooks 02 and 04 (SMOKE=True, cut after the slider's cell) are opened in JupyterLab and run; then the sparsity
slider (02) and the bit-width slider (04) are moved with the keyboard, and the panel's printed output must change
to the new value. Screenshots (before/after each move, and a plot) go to runs/browser/. Needs
Debian's `chromium` (/usr/bin/chromium, `apt-get install chromium`) and the `playwright` package -
never `playwright install`. Skipped when either is missing, unless MOKIT_BROWSER=required (as in .ci/run).
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mokit.serve import free_port

REPO = Path(__file__).resolve().parent.parent
JUPYTER = Path(sys.executable).parent / "jupyter"
SHOTS = REPO / "runs" / "browser"
CELL_TIMEOUT_MS = 200_000     # a whole SMOKE notebook, on a shared 2-core CPU


def _missing() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        return "no chromium on PATH (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright; do not run `playwright install`)"
    if not JUPYTER.exists():
        return f"no jupyter next to {sys.executable}"
    return None


def _require_browser() -> str:
    reason = _missing()
    if reason and os.environ.get("MOKIT_BROWSER") == "required":
        pytest.fail(f"MOKIT_BROWSER=required but {reason}")
    if reason:
        pytest.skip(reason)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _shutdown_kernels(url: str, token: str) -> None:
    """Ask the server to stop every kernel it started (best effort: the server may be gone)."""
    auth = {"Authorization": f"token {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels", headers=auth), timeout=5) as r:
            kernels = json.loads(r.read())
        for kernel in kernels:
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", headers=auth,
                                                          method="DELETE"), timeout=10).close()
    except OSError:
        pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on localhost over a temp root holding SMOKE copies of 02 and 04, each cut after
    the cell of the slider it tests."""
    chromium = _require_browser()
    import nbformat
    import papermill as pm

    root = tmp_path_factory.mktemp("lab")
    for name, label, *_ in CASES:
        copy = root / f"{name}.ipynb"
        pm.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(copy),
                            parameters={"SMOKE": True}, prepare_only=True, progress_bar=False)
        nb = nbformat.read(copy, as_version=4)    # up to the slider's panel: test_notebooks runs the rest
        nb.cells = nb.cells[:1 + next(i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                                      and "panel(" in c.source and f'"{label}"' in c.source)]
        nbformat.write(nb, copy)
    port, token = free_port(), secrets.token_hex(16)
    cmd = [str(JUPYTER), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True"] + (["--allow-root"] if os.geteuid() == 0 else [])
    news = root / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')    # no "get notified about Jupyter news?" toast
    log = open(root / "lab.log", "wb")  # noqa: SIM115 - the server's log, closed in the finally below
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env=os.environ | {"MOKIT_PROGRESS": "0",
                                                "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
                                                "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces")})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield {"url": url, "token": token, "chromium": chromium}
    finally:
        _shutdown_kernels(f"http://127.0.0.1:{port}", token)   # kernels run in sessions of their own
        os.killpg(server.pid, signal.SIGTERM)                  # then the server's whole process group
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=lab["chromium"], headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


def _run_notebook(browser, lab, name: str):
    """Open `name` in JupyterLab, run all cells, wait until every cell has run; return the page."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # ?reset: a fresh workspace, so the previous test's notebook is not restored beside this one
    page.goto(f"{lab['url']}/lab/tree/{name}.ipynb?reset&token={lab['token']}")
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')", timeout=60_000)
    page.wait_for_function("""(path) => {
        const w = window.jupyterapp.shell.currentWidget;
        return w && w.context && w.context.path === path && w.sessionContext && w.sessionContext.session
            && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'; }""",
                           arg=f"{name}.ipynb", timeout=60_000)
    started = """() => window.jupyterapp.shell.currentWidget.content.widgets.some(
        c => c.model.type === 'code' && (c.model.executionCount !== null || c.promptNode.textContent.includes('*')))"""
    for attempt in range(3):           # a run-all sent while the kernel is still settling can be dropped
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        try:
            page.wait_for_function(started, timeout=15_000, polling=500)
            break
        except Exception:
            if attempt == 2:
                page.screenshot(path=str(SHOTS / f"{name}_not_started.png"))
                raise
    # Done when the last code cell has an execution count and no cell is queued or running,
    # or as soon as a cell raised (the cells after it never run).
    try:
        page.wait_for_function("""() => {
        const cells = window.jupyterapp.shell.currentWidget.content.widgets.filter(c => c.model.type === 'code');
        const last = cells[cells.length - 1];
        const raised = cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
        return raised || (last.model.executionCount !== null
            && !cells.some(c => c.promptNode && c.promptNode.textContent.includes('*'))); }""",
                               timeout=CELL_TIMEOUT_MS, polling=1000)
    except Exception:
        page.screenshot(path=str(SHOTS / f"{name}_timeout.png"))
        raise
    error = page.evaluate("""() => {
        for (const c of window.jupyterapp.shell.currentWidget.content.widgets)
            for (const o of (c.model.type === 'code' ? c.model.outputs.toJSON() : []))
                if (o.output_type === 'error') return o.ename + ': ' + o.evalue;
        return null; }""")
    assert error is None, f"{name} raised {error}"
    return page


def _slider(page, label: str):
    """The ipywidgets slider whose description is exactly `label` (found by label, not by cell index)."""
    slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile(f"^{label}$")))
    slider.first.wait_for(state="visible", timeout=60_000)
    return slider.first


def _move(page, slider, key: str, presses: int, expected: str, shot: Path) -> tuple[float, str]:
    """Screenshot, press `key` on the focused slider handle, wait until the panel's output matches
    `expected` (each press re-runs the panel), screenshot again; return (new value, output text)."""
    output = page.locator(".widget-vbox", has=slider).last.locator(".widget-output")
    handle = slider.locator(".noUi-handle")
    handle.focus()                           # scrolls it into view, as the notebook scrolls back otherwise
    handle.evaluate("el => el.closest('.jp-Cell').scrollIntoView({block: 'start'})")   # code, slider, output
    page.wait_for_timeout(1000)
    page.screenshot(path=str(shot.with_name(shot.name + "_before.png")))
    assert not re.search(expected, output.text_content())
    handle.focus()
    for _ in range(presses):
        page.keyboard.press(key)
    page.wait_for_function("([el, pattern]) => new RegExp(pattern).test(el.textContent)",
                           arg=[output.element_handle(), expected], timeout=60_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot.with_name(shot.name + "_after.png")))
    return float(slider.locator(".widget-readout").text_content()), output.text_content()


# (notebook, slider label, its default, key, presses, the value it reaches, what the output must then say)
CASES = [("02_pruning", "sparsity", 0.92, "ArrowRight", 5, 0.97, r"sparsity 0\.97: [\d.]+% test accuracy"),
         ("04_quantization", "bits", 4, "ArrowLeft", 2, 2, r"2-bit per-channel weights: [\d.]+%")]


@pytest.mark.notebook
@pytest.mark.parametrize("name, label, default, key, presses, value, expected", CASES, ids=[c[0] for c in CASES])
def test_slider_moves_output(browser, lab, name, label, default, key, presses, value, expected):
    SHOTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    page = _run_notebook(browser, lab, name)
    ran = time.perf_counter() - start
    try:
        slider = _slider(page, label)
        assert float(slider.locator(".widget-readout").text_content()) == pytest.approx(default)
        reached, after = _move(page, slider, key, presses, expected, SHOTS / f"{name}_{label}")
        assert reached == pytest.approx(value) and re.search(expected, after), after
        plots = page.locator(".jp-OutputArea-output img")
        assert plots.count() >= 1, f"{name} shows no plot"
        plots.last.evaluate("el => el.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / f"{name}_plot.png"))
    finally:
        page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")   # free the kernel
        page.close()
    print(f"{name}: ran in {ran:.0f} s, slider moved in {time.perf_counter() - start - ran:.0f} s")


def test_missing_browser_skips_unless_required(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("MOKIT_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium on PATH"):
        _require_browser()
    monkeypatch.setenv("MOKIT_BROWSER", "required")
    with pytest.raises(pytest.fail.Exception, match="MOKIT_BROWSER=required but no chromium"):
        _require_browser()
