"""``modeledit ui``: the browser UI (Gradio) for every family, a thin layer over ``modeledit.api``."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from modeledit.cli.common import _errors, app, console, err

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@app.command("ui")
def ui(
    model: list[str] = typer.Option(["smollm2-135m"], help="Language model(s) the page offers: packaged names, local paths or hub "
                                                          "names (repeat; the first is the default). The page never takes a path itself."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (default: loopback only; 0.0.0.0 opens it to the network)."),
    port: int = typer.Option(7860, help="Port to serve on."),
    classifier: Optional[Path] = typer.Option(None, help="Classifier directory for the Classifier tab (from `modeledit classifier "
                                                         "train`; default: the committed Fashion-MNIST classifier)."),
    diffusion: Optional[str] = typer.Option(None, help="Diffusion model for Inpaint and Imagic (default: the embedded 'tiny-fashion')."),
    max_upload_mb: int = typer.Option(64, help="Largest upload accepted (patch files, images), in MB."),
    max_image_side: int = typer.Option(256, help="Largest image side the page takes, in pixels."),
    warm: bool = typer.Option(True, help="Load the default model in the background as soon as the page is up."),
) -> None:
    """Start the browser UI: edit a fact, trace, compare, inpaint, Imagic, classifier edits (Ctrl-C stops it)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

    from modeledit.errors import RequestError

    with _errors():
        if port < 1 or port > 65535:
            raise RequestError("port", f"{port} is not a port number 1..65535")
        if max_upload_mb < 1 or max_image_side < 8:
            raise RequestError("max-upload-mb", "give at least 1 MB of upload and 8 pixels of image side")
        if classifier is not None and not (classifier / "classifier.json").is_file():
            raise RequestError("classifier", f"{classifier} holds no classifier.json: give a directory written by `modeledit classifier train`")
        from modeledit.ui.app import serve
        from modeledit.ui.workspace import Limits, Workspace

        ws = Workspace(model, classifier=str(classifier) if classifier else None, diffusion=diffusion,
                       limits=Limits(max_upload_mb=max_upload_mb, max_image_side=max_image_side))
        if host not in LOOPBACK:
            err.print(f"[yellow]note:[/] serving on {host}: anyone who can reach it can use the models and upload files")
        try:
            demo, url = serve(ws, host, port, block=False, warm=warm, quiet=True)
        except OSError:
            ws.close()
            raise RequestError("port", f"cannot serve on {host}:{port}: it is in use or cannot be bound; choose another with --port") from None
    console.print(f"modeledit ui: {url} (models load on first use; Ctrl-C stops)")
    from modeledit.ui.app import close

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a terminated server also removes its scratch files
    try:
        while demo.is_running and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        close(demo, ws)
    console.print("modeledit ui: stopped")
