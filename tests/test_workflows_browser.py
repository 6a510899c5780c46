"""Every template checked in a real browser. Skipped unless ``COMFYUI_PATH`` names a ComfyUI checkout and a Chromium
is installed (Debian's ``chromium``, or ``$CHROMIUM``).

    COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python IMAGEN_SCREENSHOTS=/tmp/shots \
        pytest tests/test_workflows_browser.py -s

A fresh install: ComfyUI with this pack, tiny models under the demo's file names (``tests.comfy_server``) and an
empty ``--input-directory``. Headless Chromium, driven over the DevTools protocol (``tests.cdp``), opens the UI and
loads each template the way a user does (the Templates dialog, this pack's section, the template's card; where a
frontend has no such dialog, the files it would fetch are loaded with ``app.loadGraphData``). Then, from the graph:
no node overlaps another (title bar included), every node type is registered and none is marked red; the template is
queued (``app.queuePrompt``) and must finish without an error; the overlap check is repeated once the previews and
outputs show (they grow the nodes). A template whose loaders name files this server lacks (DeepFloyd IF's) is not
run: the UI must show the missing-models state on those loaders only (marked red on loading, or, on frontends that
do not check on loading, when queued: the server refuses it). Screenshots after loading and after the run go to
``$IMAGEN_SCREENSHOTS`` (default: a pytest temporary folder); their paths are printed.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests import comfy_helpers as ch
from tests.cdp import CHROMIUM, Chromium
from tests.comfy_server import COMFYUI, PACK, RUN_TIMEOUT, free_port, start_comfyui

pytestmark = [
    pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the browser tests"),
    pytest.mark.skipif(not CHROMIUM, reason="install chromium (or set CHROMIUM) to run the browser tests"),
]
TEMPLATES = sorted(ch.WORKFLOWS.glob("*.json"))
WIDTH, HEIGHT = 1600, 1000
APP_TIMEOUT = 120
QUEUE_TIMEOUT = 20  # from app.queuePrompt to the prompt on the server's queue
MODEL_INPUTS = ("ckpt_name", "model_name", "t5_name", "clip_name1", "clip_name2")
# dialogs and toasts that say the template itself is wrong (its file, not the machine), e.g. 0.3.64's schema check
WARNING = re.compile(r"invalid workflow|validation error|schema", re.IGNORECASE)

# ------------------------------------------------------------------------------------------------ page scripts
READY = ("!!(window.app && app.graph && app.canvas && window.LiteGraph && LiteGraph.registered_node_types"
         " && LiteGraph.registered_node_types.ImagenBaseSampler)")
# Each node as the frontend has it; bounds = [x, y, w, h] with the title bar (LiteGraph's getBounding).
GRAPH = """(() => {
  const th = LiteGraph.NODE_TITLE_HEIGHT;
  const nodes = (app.graph._nodes ?? app.graph.nodes).map(n => ({
    id: String(n.id), type: n.type, title: n.title ?? n.type, registered: n.type in LiteGraph.registered_node_types,
    red: !!n.has_errors, images: n.imgs?.length ?? 0, size: [n.size[0], n.size[1]],
    unlisted: (n.widgets ?? []).flatMap(w => {
      const offered = typeof w.options?.values === 'function' ? w.options.values() : w.options?.values;
      return Array.isArray(offered) && !offered.includes(w.value)
        ? [`${w.name} = ${JSON.stringify(w.value)} is not among the ${offered.length} offered`] : [];
    }),
    bounds: n.getBounding ? Array.from(n.getBounding()) : [n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th],
  }));
  const em = app.extensionManager ?? {};
  const shown = '[data-testid=error-overlay], .p-toast-message, .comfy-modal[style*="flex"], [role=dialog]';
  const messages = [...document.querySelectorAll(shown)].map(e => e.innerText.trim()).filter(Boolean);
  return JSON.stringify({nodes, messages, nodeErrors: em.lastNodeErrors ?? app.lastNodeErrors ?? null,
                         executionError: em.lastExecutionError ?? app.lastExecutionError ?? null});
})()"""
# Scale and scroll the canvas to show every node clear of the side bar and top bar; details drawn at any zoom.
FIT = """(async () => {
  const c = app.canvas, rect = c.canvas.getBoundingClientRect();
  const left = 70, top = 110, right = 20, bottom = 20;
  const bs = (app.graph._nodes ?? app.graph.nodes).map(n => Array.from(n.getBounding()));
  const x0 = Math.min(...bs.map(b => b[0])), y0 = Math.min(...bs.map(b => b[1]));
  const x1 = Math.max(...bs.map(b => b[0] + b[2])), y1 = Math.max(...bs.map(b => b[1] + b[3]));
  const w = rect.width - left - right, h = rect.height - top - bottom;
  const scale = Math.min(w / (x1 - x0), h / (y1 - y0), 1);
  c.ds.scale = scale;
  c.ds.offset[0] = (left + (w - (x1 - x0) * scale) / 2) / scale - x0;
  c.ds.offset[1] = (top + (h - (y1 - y0) * scale) / 2) / scale - y0;
  if ('min_font_size_for_lod' in c) c.min_font_size_for_lod = 0;
  if ('low_quality_zoom_threshold' in c) c.low_quality_zoom_threshold = 0;
  c.setDirty(true, true);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  await new Promise(r => setTimeout(r, 300));
  return scale;
})()"""
VISIBLE_DIALOG = "[...document.querySelectorAll('[role=dialog]')].filter(d => d.checkVisibility())"
# The centre of the first visible element matching a selector or (leaf) text, scrolled into view; null if none.
FIND = """((selector, text) => {
  const all = [...document.querySelectorAll(selector)];
  const el = all.find(e => e.checkVisibility()
                           && (text === null || (e.children.length === 0 && e.textContent.trim() === text)));
  if (!el) return null;
  el.scrollIntoView({block: 'center'});
  const b = el.getBoundingClientRect();
  return [b.x + b.width / 2, b.y + b.height / 2];
})"""


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A fresh install: nothing in input/ (the templates must not rely on files a user does not have)."""
    root = tmp_path_factory.mktemp("comfy_browser")
    (root / "input").mkdir()
    with start_comfyui(root, root / "input", port=free_port(8400, 8499)) as srv:
        # this user has seen the first-run template browser (it would open by itself, racing the test's own), and
        # keeps the minimap off the graph in the screenshots
        status, answer = srv.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False})
        assert status == 200, answer
        yield srv


@pytest.fixture(scope="module")
def browser():
    with Chromium(free_port(9400, 9499)) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("IMAGEN_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


@pytest.fixture()
def page(browser, server):
    """The UI in a new tab, loaded afresh (no workflows restored from an earlier test)."""
    tab = browser.new_page(WIDTH, HEIGHT)
    tab.navigate(server.url("/"))
    tab.wait_for("document.readyState === 'complete'", timeout=APP_TIMEOUT, what="the page")
    tab.evaluate("localStorage.clear(), sessionStorage.clear(), true")
    tab.navigate(server.url("/"))
    tab.wait_for(READY, timeout=APP_TIMEOUT, what="ComfyUI's app with this pack's nodes")
    yield tab
    browser.close_page(tab)


# ------------------------------------------------------------------------------------------------ helpers
def load_template(page, name: str) -> str:
    """Open the template as a user does: the Templates dialog, this pack's section, the template's card. Returns
    how it was loaded: "templates dialog", or "fetch + loadGraphData" on a frontend without that dialog."""
    if page.evaluate("!!app.extensionManager?.command"):
        page.evaluate("Promise.resolve(app.extensionManager.command.execute('Comfy.BrowseTemplates')).then(() => 1)")
        section = _wait_for_element(page, "[role=dialog] *", PACK)
        if section:
            page.click(*section)
            card = _wait_for_element(page, f"[data-testid='template-workflow-{name}']", None)
            assert card, f"the Templates dialog lists no {name!r} under {PACK!r}"
            page.click(*card)
            # (another dialog may open in its place: missing node types, missing models)
            page.wait_for("![...document.querySelectorAll('[data-testid^=template-workflow-]')]"
                          ".some(d => d.checkVisibility())",
                          timeout=30, what=f"the Templates dialog to close after a click on {name!r}")
            return "templates dialog"
    page.evaluate(f"""fetch('/api/workflow_templates/{PACK}/' + encodeURIComponent({json.dumps(name)}) + '.json')
                      .then(r => r.json()).then(w => app.loadGraphData(w, true, true, {json.dumps(name)}))
                      .then(() => true)""")
    return "fetch + loadGraphData"


def _wait_for_element(page, selector: str, text, timeout: float = 10):
    """Where the element is once it shows and stays put (dialogs slide in: a click during that misses)."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        where = page.evaluate(f"{FIND}({json.dumps(selector)}, {json.dumps(text)})")
        if where and where == last:
            return where
        last = where
        time.sleep(0.2)
    return None


def graph(page) -> dict:
    return json.loads(page.evaluate(GRAPH))


def settled_graph(page, *, quiet: float = 1.0, timeout: float = 20) -> dict:
    """The graph once node sizes stop changing for ``quiet`` seconds (images load, previews resize nodes)."""
    deadline, last, since = time.time() + timeout, None, time.time()
    while True:
        page.evaluate("app.graph.setDirtyCanvas(true, true), true")
        state = graph(page)
        sizes = [(n["id"], n["bounds"], n["images"]) for n in state["nodes"]]
        if sizes != last:
            last, since = sizes, time.time()
        elif time.time() - since >= quiet or time.time() > deadline:
            return state
        time.sleep(0.25)


def _label(node: dict) -> str:
    return f"node {node['id']} {node['title']!r} ({node['type']})"


def _box(node: dict) -> str:
    return "[{:.0f}, {:.0f}, {:.0f} x {:.0f}]".format(*node["bounds"])


def overlaps(nodes: list[dict], when: str, before: dict | None = None) -> dict[tuple, str]:
    """{(id, id): message} for every pair of nodes whose bounds (title bar included) intersect, with by how much;
    with ``before`` (the nodes after loading, by id), also which of the two the run grew and from what size."""
    def grew(n):
        old = (before or {}).get(n["id"])
        if old is None or old["size"] == n["size"]:
            return ""
        return " (grown from {:.0f} x {:.0f})".format(*old["size"])

    found = {}
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bounds"], b["bounds"]
            dx, dy = min(ax + aw, bx + bw) - max(ax, bx), min(ay + ah, by + bh) - max(ay, by)
            if dx > 0.5 and dy > 0.5:
                found[a["id"], b["id"]] = (f"{when}: {_label(a)} {_box(a)}{grew(a)} overlaps {_label(b)} "
                                           f"{_box(b)}{grew(b)} by {dx:.0f} x {dy:.0f} px")
    return found


def node_problems(state: dict, when: str, expected_red: set = frozenset()) -> list[str]:
    """Unregistered (missing) node types and nodes marked red, with the UI's messages and node errors; nodes in
    ``expected_red`` (reported already, or expected) are left out."""
    problems = [f"{when}: {_label(n)} is a missing node type (not registered with the frontend)"
                for n in state["nodes"] if not n["registered"] and n["id"] not in expected_red]
    errors = state.get("nodeErrors") or {}
    for n in state["nodes"]:
        if n["red"] and n["id"] not in expected_red:
            said = [f"{e.get('message')}: {e.get('details')}" for e in errors.get(n["id"], {}).get("errors", [])]
            detail = "; ".join(n["unlisted"] + said) or "no reason given on the node"
            problems.append(f"{when}: {_label(n)} is marked red: {detail}; the UI shows {state['messages']}")
    return problems


def missing_model_nodes(server, name: str) -> dict[str, list[str]]:
    """{node id: [files]} for the template's loaders whose files this server does not offer."""
    info = server.get("/object_info")
    missing = {}
    for node_id, node in ch.load_json(ch.API_DIR / f"{name}.json").items():
        spec = info.get(node["class_type"], {}).get("input", {}).get("required", {})
        wanted = [node["inputs"][k] for k in MODEL_INPUTS if k in node["inputs"] and k in spec
                  and node["inputs"][k] not in _options(spec[k])]
        if wanted:
            missing[node_id] = wanted
    return missing


def _options(spec: list) -> list:
    """A combo's choices in /object_info: ``[[choices], {...}]`` (V1) or ``["COMBO", {"options": [...]}]`` (V3)."""
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", []) if len(spec) > 1 else []


def run_in_ui(page, server) -> tuple[str, str]:
    """Queue the graph from the UI; returns (outcome, detail) with outcome success / error / rejected (the server
    refused it) / not queued (the frontend sent nothing within QUEUE_TIMEOUT)."""
    before, console, shown = set(server.get("/history")), len(page.console), graph(page)["messages"]
    page.evaluate("Promise.resolve(app.queuePrompt(0, 1)).then(() => true)")
    start, seen = time.time(), False
    while time.time() < start + RUN_TIMEOUT:
        new = {k: v for k, v in server.get("/history").items() if k not in before}
        for entry in new.values():
            status = entry.get("status", {})
            if status.get("completed") or status.get("status_str") == "error":
                if status.get("status_str") == "success":
                    return "success", ""
                failure = [m[1] for m in status.get("messages", []) if m[0] in ("execution_error",
                                                                                   "execution_interrupted")]
                detail = failure[0] if failure else status
                if isinstance(detail, dict) and "exception_message" in detail:
                    detail = (f"node {detail.get('node_id')} ({detail.get('node_type')}): "
                              f"{detail['exception_message'].strip()}")
                return "error", str(detail)
        queue = server.get("/queue")
        seen = seen or bool(new or queue["queue_running"] or queue["queue_pending"])
        if not seen:
            state = graph(page)
            if state["nodeErrors"]:
                return "rejected", "; ".join(
                    f"node {node_id} ({e.get('class_type')}): {x.get('message')}: {x.get('details')}"
                    for node_id, e in state["nodeErrors"].items() for x in e.get("errors", []))
            if state["executionError"]:
                return "rejected", json.dumps(state["executionError"])[:2000]
            said = [m for m in state["messages"] if m not in shown]  # the frontend's dialog on a refusal
            if said:
                return "rejected", f"the UI shows {said}"
            if time.time() > start + QUEUE_TIMEOUT:
                said = [m for m in page.console[console:] if m.startswith(("console.error", "exception"))]
                return "not queued", f"nothing reached the server in {QUEUE_TIMEOUT}s; the page logged {said[-5:]}"
        time.sleep(0.5)
    return "error", f"no result within {RUN_TIMEOUT}s"


def missing_models_state(page, server, loaded: dict, missing: dict, shot: Path) -> list[str]:
    """What is wrong with the UI's missing-models state. Frontends show it in one of three ways: the loaders marked
    red on loading (0.33's), a Missing Models dialog naming the files (from the template's ``properties.models``;
    0.3.64's), or, failing both, the server's refusal when the graph is queued, with the loaders marked red (then a
    screenshot of that goes to ``shot``). Only loaders whose files are missing may be marked red."""
    red = {n["id"] for n in loaded["nodes"] if n["red"]}
    files = [f for names in missing.values() for f in names]
    named = [f for f in files if any(f in m for m in loaded["messages"])]
    if red:
        how = "marked red on loading"
    elif named:
        how = f"a dialog names {named}"
    else:
        outcome, detail = run_in_ui(page, server)
        if outcome != "rejected":
            return [(f"queued without {missing} (node id: files) installed: {outcome} {detail}; expected a "
                     f"missing-models state (loaders marked red, a dialog naming the files, or the server's refusal)")]
        red = {n["id"] for n in settled_graph(page)["nodes"] if n["red"]}
        how = f"refused when queued ({detail})"
        page.evaluate(FIT)
        print(f"missing models: screenshot {page.screenshot(shot)}")
    print(f"missing models {missing} (node id: files): {how}; nodes marked red: {sorted(red)}")
    return [f"node {i} is marked red ({how}) but none of its files is missing" for i in sorted(red - set(missing))]


# ------------------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_in_the_browser(page, server, shots, path):
    name, problems = path.stem, []
    absent = {n["class_type"] for n in ch.load_json(ch.API_DIR / path.name).values()} - set(server.get("/object_info"))
    if absent:  # ImageCropV2 (the crop template) arrived in ComfyUI 0.14
        pytest.skip(f"this ComfyUI has no {sorted(absent)}")
    how = load_template(page, name)
    ui_nodes = {str(n["id"]) for n in ch.load_json(path)["nodes"]}
    page.wait_for(f"(app.graph._nodes ?? app.graph.nodes).map(n => String(n.id)).sort().join() === "
                  f"{json.dumps(','.join(sorted(ui_nodes)))}", timeout=30, what=f"{name}'s nodes in the graph")
    loaded = settled_graph(page)
    page.evaluate(FIT)
    shot = page.screenshot(shots / f"{name}-loaded.png")
    print(f"\n{name}: loaded via {how}; screenshot {shot}")
    if loaded["messages"]:
        print(f"{name}: the UI shows {loaded['messages']}")
    if page.evaluate(f"{VISIBLE_DIALOG}.length > 0"):  # a dialog over the graph: close it, then the graph itself
        page.press("Escape", 27)
        page.wait_for(f"{VISIBLE_DIALOG}.length === 0", timeout=10, what="the dialog to close on Escape")
        print(f"{name}: the graph under the dialog: {page.screenshot(shots / f'{name}-loaded-graph.png')}")

    missing = missing_model_nodes(server, name)
    at_load = overlaps(loaded["nodes"], "after loading")
    problems += at_load.values()
    problems += [f"after loading: the UI warns: {m!r}" for m in loaded["messages"] if WARNING.search(m)]
    problems += node_problems(loaded, "after loading", expected_red=set(missing))
    if missing:
        problems += missing_models_state(page, server, loaded, missing, shots / f"{name}-missing-models.png")
        assert not problems, "\n".join(problems + [f"screenshot: {shot}"])
        pytest.skip(f"needs {missing} (node id: files) installed; the UI shows the missing-models state")

    by_id = {n["id"]: n for n in loaded["nodes"]}
    outcome, detail = run_in_ui(page, server)
    after = settled_graph(page, quiet=1.5)
    page.evaluate(FIT)
    shot_after = page.screenshot(shots / f"{name}-after-run.png")
    print(f"{name}: run {outcome} {detail}; screenshot {shot_after}")
    if outcome != "success":
        problems.append(f"the run: {outcome}: {detail}")
    # new overlaps, and old ones the run made worse by growing a node (previews, outputs)
    problems += [m for pair, m in overlaps(after["nodes"], "after the run", before=by_id).items()
                 if pair not in at_load or "grown" in m]
    problems += node_problems(after, "after the run",
                              expected_red={i for i, n in by_id.items() if n["red"] or not n["registered"]})
    assert not problems, "\n".join(problems + [f"screenshots: {shot} {shot_after}"])


def test_the_template_browser_shows_every_template_by_its_title(page, shots):
    """Templates dialog -> this pack's section: one card per template, titled by its file name (ComfyUI lists
    custom-node templates by file stem), each title shown whole; a screenshot of the dialog."""
    if not page.evaluate("!!app.extensionManager?.command"):
        pytest.skip("this frontend has no Templates dialog command")
    page.evaluate("Promise.resolve(app.extensionManager.command.execute('Comfy.BrowseTemplates')).then(() => 1)")
    section = _wait_for_element(page, "[role=dialog] *", PACK)
    assert section, f"the Templates dialog has no {PACK!r} section"
    page.click(*section)
    names = [p.stem for p in TEMPLATES]
    for name in names:
        assert _wait_for_element(page, f"[data-testid='template-workflow-{name}']", None), name
    time.sleep(1.5)  # thumbnails
    # a title the card cuts shows an ellipsis: its text overflows its box
    cut = page.evaluate("""(names => names.filter(name => {
        const card = document.querySelector(`[data-testid='template-workflow-${name}']`);
        const title = [...card.querySelectorAll('*')].find(e => e.children.length === 0 && e.textContent.trim() === name);
        return !title || title.scrollWidth > title.clientWidth + 1;
    }))""" + f"({json.dumps(names)})")
    print(f"template browser: {page.screenshot(shots / 'template-browser.png')}")
    page.press("Escape", 27)
    assert not cut, f"titles not shown whole on their cards: {cut}"
