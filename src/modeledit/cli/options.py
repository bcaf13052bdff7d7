"""The options several commands share, declared once (typer builds each command's flag from them)."""

from __future__ import annotations

import typer

from modeledit.methods import list_methods

CORPUS_HELP = "Text files for the key statistics, or dataset:NAME (default: the embedded Wikipedia leads)."
SET_HELP = "Any hyper-parameter of the method, as name=value (repeat), e.g. --set lr=0.1 --set layers=8,9,10."
METHOD_HELP = f"Editing method: {', '.join(list_methods('llm'))}."
STATS_BAR = "key statistics (once per model and layer)"
SEQ_HELP = "Edit the batches one after another, each on the model holding the earlier ones (resumable, even after kill -9)."
CP_HELP = "--sequential: numbers of edits at which every case so far is scored, e.g. 10,100,500,1000 (the last always)."
KNOWN_HELP = "--sequential: known facts (known_1000 format) whose retention is measured (default: known_1000.json of the data directory)."

MODEL = typer.Option("smollm2-135m", help="Packaged name, local path or hub name.")
METHOD = typer.Option("rome", help=METHOD_HELP)
LAYER = typer.Option(None, help="Layer to edit (default: the method's choice, printed).")
STATS_TOKENS = typer.Option(None, help="Tokens of corpus for the key statistics.")
CORPUS = typer.Option(None, help=CORPUS_HELP)
SETTINGS = typer.Option([], "--set", help=SET_HELP)
RUN_OUT = typer.Option(..., help="Output directory: cases.jsonl (streamed, resumable) and summary.json.")
LIMIT = typer.Option(None, help="Only the first N cases.")
BATCH_SIZE = typer.Option(1, help="Cases edited together, in one edit (1: each case alone).")
SEQUENTIAL = typer.Option(False, "--sequential", help=SEQ_HELP)
CHECKPOINTS = typer.Option("", help=CP_HELP)
KNOWN = typer.Option(None, help=KNOWN_HELP)
WORKERS = typer.Option(None, "--workers", help="Spread the work over N workers of a local Ray runtime, each loading the model once (pip install 'modeledit\\[scale]').")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Spread the work over the workers of this Ray cluster (e.g. auto, or ray://HEAD:10001); with --workers, that many.")
DEVICE_MAP = typer.Option(None, "--device-map", help="Spread the model over devices (accelerate): auto, balanced, or JSON of module name -> device (a GPU index, \"cpu\", \"disk\").")
DTYPE = typer.Option("float32", "--dtype", help="Load the weights in float32, bfloat16 or float16.")
