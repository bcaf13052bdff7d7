"""The browser UI end to end: `modeledit ui` started as a command on a free loopback port, driven by
Playwright in Debian's chromium. One server and one browser serve the whole module (the tests run in
file order: the edit made first is used by the two-session test and then removed).

Prints (does not assert) the page-up time and the edit round trip against the edit's own time.
Screenshots of every tab go to docs/ui/."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import modeledit as me

from ui_helpers import CHROMIUM_ARGS, Server, cells, chromium, grey_png, image_at, modeledit_command, one_line, open_tab

pytest.importorskip("gradio", reason="the UI needs gradio (pip install -e '.[test]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (pip install -e '.[test]')")
expect = sync_api.expect

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "docs" / "ui"
WAIT = 240_000  # ms: the first edit also loads the model (and, on a fresh cache, collects its statistics)
expect.set_options(timeout=WAIT)
pytestmark = pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (make install does it, as root)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("ui") / "server.log")
    print(f"\n[ui] page up {s.up_seconds:.2f} s after `modeledit ui` started")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT)
    page.goto(server.url)
    expect(page.locator("#edit-run")).to_be_visible()
    return page


@pytest.fixture(scope="module")
def page_a(browser, server):
    page = new_page(browser, server)
    yield page
    page.context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(400)  # let the last render settle
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def fill(page, values: dict[str, str]) -> None:
    for elem_id, value in values.items():
        page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def edit_seconds(page) -> tuple[float, float]:
    """(the edit's own seconds, the request's whole work) as the page reports them."""
    m = re.search(r"edit computed in ([\d.]+) s; the request's whole work .* ([\d.]+) s", one_line(page.inner_text("#edit-results")))
    return float(m.group(1)), float(m.group(2))


# -- (a) edit a fact, see it in the after column -----------------------------------------------------------
def test_edit_eiffel_to_rome(page_a, server):
    fill(page_a, {"edit-prompt": "{} is located in the city of", "edit-subject": "The Eiffel Tower",
                  "edit-target": " Rome", "edit-target-true": " Paris"})
    t0 = time.perf_counter()
    page_a.click("#edit-run")
    expect(page_a.locator("#edit-status")).to_contain_text("edit 1 stacked", timeout=WAIT)
    first = time.perf_counter() - t0
    assert "Rome" in cells(page_a, "#edit-results", "after")[0]
    assert "Paris" in cells(page_a, "#edit-results", "before")[0]
    assert "Paris" in cells(page_a, "#edit-results", "after")[-1]  # the Louvre stays in Paris
    own, _ = edit_seconds(page_a)
    print(f"\n[ui] first edit round trip {first:.2f} s (loads the model), the edit itself {own:.2f} s")
    expect(page_a.locator("#stack-remove-1")).to_be_visible()

    # the round trip once the model is loaded: a second fact, stacked on the first (then removed)
    fill(page_a, {"edit-subject": "The Brandenburg Gate", "edit-target": " Madrid", "edit-target-true": " Berlin"})
    t0 = time.perf_counter()
    page_a.click("#edit-run")
    expect(page_a.locator("#stack-remove-2")).to_be_visible()
    trip = time.perf_counter() - t0
    assert "1 earlier edit" in page_a.inner_text("#edit-results")
    assert "Madrid" in cells(page_a, "#edit-results", "after")[0]
    assert "Rome" in cells(page_a, "#edit-results", "before")[1]  # the Eiffel Tower prompt: edit 1 is held
    own, work = edit_seconds(page_a)
    print(f"[ui] edit round trip {trip:.2f} s = the edit's own {own:.2f} s + {trip - own:.2f} s; the request's whole work "
          f"(the edit, completions and probabilities, as `modeledit edit` does) {work:.2f} s: the page adds {trip - work:.2f} s")
    expect(page_a.locator("#stack-download-all")).to_be_visible()  # two ROME patches compose into one file
    shot(page_a, "edit")
    page_a.click("#stack-remove-2")
    expect(page_a.locator("#edit-status")).to_contain_text("removed edit 2")
    expect(page_a.locator("#stack-remove-2")).to_have_count(0)
    expect(page_a.locator("#stack-remove-1")).to_be_visible()


# -- (d) two sessions at once do not see each other's edits ---------------------------------------------------
def test_two_sessions_do_not_share_edits(page_a, browser, server):
    page_b = new_page(browser, server)
    try:
        for p in (page_a, page_b):  # a prompt not completed before: both requests must run the model
            fill(p, {"edit-prompt": "{} is in the city of", "edit-subject": "The Eiffel Tower"})
        page_a.click("#edit-complete")  # both requests in flight together: the model lock serialises them
        page_b.click("#edit-complete")
        expect(page_a.locator("#edit-results h3")).to_have_text("Completions with 1 stacked edit(s)")
        expect(page_b.locator("#edit-results h3")).to_have_text("Completions with 0 stacked edit(s)")
        assert "Rome" in cells(page_a, "#edit-results", "after")[0]
        assert "Paris" in cells(page_b, "#edit-results", "after")[0]
        expect(page_b.locator("#stack-remove-1")).to_have_count(0)
    finally:
        page_b.context.close()


# -- (a) remove the edit: Paris again; download it, upload it back ----------------------------------------------
def test_remove_download_and_upload(page_a, tmp_path):
    with page_a.expect_download() as d:
        page_a.click("#stack-download-1")
    saved = tmp_path / "eiffel.safetensors"
    d.value.save_as(saved)
    patch = me.load_edit(saved)
    assert patch.requests[0]["target"] == " Rome" and patch.entries[0].method == "rome"

    page_a.click("#stack-remove-1")
    expect(page_a.locator("#edit-status")).to_contain_text("removed edit 1")
    expect(page_a.locator("#edit-results h3")).to_have_text("Completions with 0 stacked edit(s)")
    assert "Paris" in cells(page_a, "#edit-results", "after")[0]
    expect(page_a.locator("#stack-remove-1")).to_have_count(0)

    page_a.locator("#edit-upload input[type=file]").set_input_files(str(saved))
    expect(page_a.locator("#edit-status")).to_contain_text("applied the uploaded edit as edit 1")
    page_a.click("#edit-complete")
    expect(page_a.locator("#edit-results h3")).to_have_text("Completions with 1 stacked edit(s)")
    assert "Rome" in cells(page_a, "#edit-results", "after")[0]
    page_a.click("#stack-remove-1")
    expect(page_a.locator("#edit-results h3")).to_have_text("Completions with 0 stacked edit(s)")


# -- bad input: the CLI's message, in the page -----------------------------------------------------------------
def cli_error(*args: str) -> str:
    """The one red line of `modeledit edit ...` (exit status 2), whitespace normalised."""
    r = subprocess.run([*modeledit_command(), "edit", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    return one_line(r.stderr)


def page_error(page) -> str:
    expect(page.locator("#edit-status .me-error")).to_be_visible()
    return one_line(page.inner_text("#edit-status"))


def test_bad_input_shows_the_cli_message(page_a, tmp_path):
    no_braces = ["--prompt", "The Eiffel Tower is located in", "--subject", "The Eiffel Tower", "--target", " Rome"]
    unknown = ["--prompt", "{} is located in", "--subject", "The Eiffel Tower", "--target", " Rome", "--set", "nonsense=1"]
    fill(page_a, {"edit-prompt": no_braces[1], "edit-subject": no_braces[3], "edit-target": " Rome"})
    page_a.click("#edit-run")
    assert page_error(page_a) == cli_error(*no_braces)

    page_a.get_by_text("More prompts, tokens and hyper-parameters").click()  # open the accordion
    fill(page_a, {"edit-prompt": unknown[1], "edit-settings": "nonsense=1"})
    page_a.click("#edit-run")
    expect(page_a.locator("#edit-status")).to_contain_text("nonsense")
    assert page_error(page_a) == cli_error(*unknown)
    fill(page_a, {"edit-settings": ""})

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(me.PatchError) as exc:
        me.load_edit(bad)
    page_a.locator("#edit-upload input[type=file]").set_input_files(str(bad))
    tail = one_line(str(exc.value)).split(str(bad), 1)[-1].strip()  # the message names the file where it lies
    expect(page_a.locator("#edit-status")).to_contain_text(tail)
    assert page_error(page_a).startswith("error:")
    expect(page_a.locator("#stack-remove-1")).to_have_count(0)



# -- Trace -------------------------------------------------------------------------------------------------
def test_trace(page_a):
    open_tab(page_a, "Trace")
    fill(page_a, {"trace-prompt": "{} is in", "trace-subject": "The Eiffel Tower", "trace-target": " Paris"})
    page_a.locator("#trace-samples input[type=number]").fill("2")
    page_a.click("#trace-run")
    expect(page_a.locator("#trace-status")).to_contain_text("traced in")
    text = one_line(page_a.inner_text("#trace-summary"))
    assert "clean p=" in text and "MLP window" in text and "attention window" in text
    for kind in ("hidden", "mlp", "attn"):
        assert image_at(page_a, f"#trace-{kind}").shape[0] > 100  # a heatmap, not a placeholder
    shot(page_a, "trace")


# -- Compare (needs the CounterFact file) ----------------------------------------------------------------------
def test_compare(page_a, data):
    if not (data / "counterfact-val.json").exists():
        pytest.skip(f"counterfact-val.json is not in {data}")
    open_tab(page_a, "Compare")
    page_a.locator("#compare-limit input").fill("1")
    for name in ("ft-l",):  # the defaults are rome and ft-l: keep rome only, one case (a quick table)
        page_a.locator("#compare-methods label", has_text=name).first.click()
    page_a.click("#compare-run")
    expect(page_a.locator("#compare-status")).to_contain_text("1 method(s) on the first 1 counterfact case(s)")
    table = one_line(page_a.inner_text("#compare-table"))
    assert "unedited" in table and "rome" in table
    assert image_at(page_a, "#compare-chart").shape[0] > 100
    shot(page_a, "compare")


# -- (b) Inpaint: upload, draw the mask, fill; kept pixels unchanged -------------------------------------------------
def draw_stroke(page, selector: str) -> None:
    """A horizontal brush stroke through the middle of the editor's canvas (the image is centred, zoomed to fit)."""
    box = page.locator(f"{selector} canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy)
    page.mouse.down()
    for dx in range(-60, 61, 6):
        page.mouse.move(cx + dx, cy + (dx % 12) / 3)
    page.mouse.up()


def test_inpaint_keeps_the_unmasked_pixels(page_a, tmp_path):
    open_tab(page_a, "Inpaint")
    source = grey_png(tmp_path / "input.png")
    page_a.wait_for_timeout(500)  # the editor sets itself up when its tab opens
    with page_a.expect_file_chooser() as chooser:
        page_a.click('#inpaint-editor button[aria-label="Upload"]')
    chooser.value.set_files(str(source))
    page_a.wait_for_timeout(1500)  # the editor draws the image
    draw_stroke(page_a, "#inpaint-editor")
    page_a.locator("#inpaint-steps input").fill("10")
    page_a.locator("#inpaint-jump-length input").fill("5")
    page_a.locator("#inpaint-jump-n input").fill("1")
    page_a.click("#inpaint-run")
    expect(page_a.locator("#inpaint-status")).to_contain_text("10 UNet calls")
    expect(page_a.locator("#inpaint-status")).to_contain_text("outside the mask: 0")
    original = np.asarray(Image.open(source).convert("L"))
    shown = image_at(page_a, "#inpaint-input")
    keep = image_at(page_a, "#inpaint-mask") > 127
    result = image_at(page_a, "#inpaint-result")
    assert np.array_equal(shown, original)  # the image came through the browser unchanged
    assert 0 < (~keep).sum() < keep.size / 2, "the stroke should mark some pixels, not most"
    assert np.array_equal(result[keep], original[keep]), "kept pixels must be exactly the input's"
    assert not np.array_equal(result[~keep], original[~keep]), "the painted region is filled anew"
    shot(page_a, "inpaint")


def test_inpaint_cancel(page_a):
    open_tab(page_a, "Inpaint")
    page_a.locator("#inpaint-steps input").fill("250")
    page_a.locator("#inpaint-jump-length input").fill("10")
    page_a.locator("#inpaint-jump-n input").fill("10")
    page_a.click("#inpaint-run")
    expect(page_a.locator("#inpaint-status")).to_contain_text("RePaint")  # the progress bar counts UNet calls
    page_a.click("#inpaint-cancel")
    expect(page_a.locator("#inpaint-status")).to_contain_text("cancelled", timeout=30_000)


# -- Imagic ---------------------------------------------------------------------------------------------------
def test_imagic(page_a, tmp_path):
    """A few optimisation steps only (the page's plumbing, not Imagic's quality: see the README's Diffusion section)."""
    open_tab(page_a, "Imagic")
    if fashion_mnist():
        page_a.locator("#imagic-index input").fill("0")
        page_a.click("#imagic-load")
        expect(page_a.locator("#imagic-status")).to_contain_text("Ankle boot")
    else:
        page_a.locator("#imagic-image input[type=file]").set_input_files(str(grey_png(tmp_path / "shirt.png")))
    fill(page_a, {"imagic-prompt": "a sneaker", "imagic-sweep": "0, 0.8, 1.2, 1.6", "imagic-embed-steps": "10",
                  "imagic-tune-steps": "10"})
    page_a.click("#imagic-run")
    expect(page_a.locator("#imagic-status")).to_contain_text("stage A loss")
    expect(page_a.locator("#imagic-strip img")).to_have_count(5)  # the input and four α
    assert "most probable class" in page_a.inner_text("#imagic-judge")
    shot(page_a, "imagic")


# -- (c) Classifier -------------------------------------------------------------------------------------------
def fashion_mnist() -> bool:
    from modeledit.errors import DataError
    from modeledit.images import fashion_mnist_dir

    try:
        return fashion_mnist_dir() is not None
    except DataError:
        return False


def test_classifier_edit(page_a):
    if not fashion_mnist():
        pytest.skip("Fashion-MNIST is not installed (the Debian package dataset-fashion-mnist; make install does it, as root)")
    open_tab(page_a, "Classifier")
    page_a.locator("#classifier-index input").fill("0")
    page_a.locator("#classifier-label input").fill("Bag")
    page_a.keyboard.press("Enter")
    page_a.click("#classifier-run")
    expect(page_a.locator("#classifier-status")).to_contain_text("now reads as 'Bag'")
    expect(page_a.locator("#classifier-after")).to_contain_text("Bag")
    facts = one_line(page_a.inner_text("#classifier-facts"))
    assert "success (the new label wins) yes" in facts and "drawdown" in facts
    shot(page_a, "classifier")
