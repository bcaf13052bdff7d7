"""Helpers of the browser tests (tests/test_ui.py): start `modeledit ui` on a free loopback port, drive
Debian's chromium with Playwright, read images and tables off the page."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Playwright cannot download its own browser here: it drives the system one, with nothing reaching out
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def modeledit_command() -> list[str]:
    script = Path(sys.executable).parent / "modeledit"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from modeledit.cli import app; app()"]


class Server:
    """`modeledit ui` in a subprocess; ``up_seconds``: from the start of the command to the page's first answer."""

    def __init__(self, log_path: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([*modeledit_command(), "ui", "--port", str(self.port), *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        self.up_seconds = self._wait(t0)

    def _wait(self, t0: float, timeout: float = 120) -> float:
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`modeledit ui` exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"`modeledit ui` did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def grey_png(path: Path, size: int = 28) -> Path:
    """A smooth greyscale test image (a diagonal ramp with a bright disc), saved as PNG."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    a = (x + y) * (200 / (2 * size)) + 20
    a[(x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 4) ** 2] = 240
    Image.fromarray(a.astype(np.uint8), mode="L").save(path)
    return path


def image_at(page, selector: str):
    """The image an <img> inside ``selector`` shows, fetched from the server, as a uint8 greyscale array."""
    import numpy as np
    from PIL import Image

    src = page.locator(f"{selector} img").first.get_attribute("src")
    body = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("L"))


def cells(page, selector: str, column: str) -> list[str]:
    """The texts of one column ("prompt", "before", "after") of the completions table inside ``selector``."""
    return [t.strip() for t in page.locator(f"{selector} table.me-completions td.{column}").all_inner_texts()]


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def one_line(text: str) -> str:
    return " ".join(text.split())
