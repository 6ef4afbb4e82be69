"""What a person looks at after a run: errors.png, report.html (self-contained: no external URL,
the accuracy and every misclassified file named), the plots, and the head's choices in the
summary, metrics.json and model.json, checked against the head's own buffers."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import CLASS_COLOURS, make_image
from PIL import Image
from tiny_runs import make_data

from tlkit.cli.app import main
from tlkit.outputs import plots, report
from tlkit.outputs.predictions import PredictionRow
from tlkit.saved.head_files import read_head_file


class References(HTMLParser):
    """Every URL-bearing attribute of a page, and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data", "poster") and value is not None:
                self.urls.append(value)
            if name == "style" and value and "url(" in value:
                self.urls.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> References:
    parser = References()
    parser.feed(page)
    return parser


def assert_self_contained(page: str) -> References:
    refs = parse(page)
    assert refs.urls, "the page embeds its images"
    assert all(url.startswith("data:") for url in refs.urls), [u[:60] for u in refs.urls if not u.startswith("data:")]
    assert "link" not in refs.tags and "script" not in refs.tags and "@import" not in page and "url(" not in page
    return refs


def error_rows(folder: Path) -> list[PredictionRow]:
    rows = []
    for i, (true, predicted, colour) in enumerate((("cats", "dogs", 1), ("dogs", "fish", 2), ("fish", "cats", 0))):
        path = make_image(folder / f"wrong_{i}.jpg", CLASS_COLOURS[colour], seed=i)
        rows.append(PredictionRow(path=str(path), true_class=true, predicted_class=predicted, confidence=0.5 + 0.1 * i, true_class_probability=0.1))
    rows.append(PredictionRow(path=str(folder / "gone.jpg"), true_class="cats", predicted_class="fish", confidence=0.4, true_class_probability=0.3))
    return rows


def test_errors_png_is_a_grid_of_the_mistakes_and_survives_a_missing_file(tmp_path: Path) -> None:
    rows = error_rows(tmp_path)
    out = plots.errors_png(rows, tmp_path / "errors.png", plots.run_title("b", "h", 0.5))
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 200
    empty = plots.errors_png([], tmp_path / "none.png", "t")
    with Image.open(empty) as img:
        assert img.format == "PNG"


def test_report_html_is_self_contained_and_names_every_mistake(tmp_path: Path) -> None:
    rows = error_rows(tmp_path)
    plots.errors_png(rows, tmp_path / "errors.png")
    metrics = {
        "test_accuracy": 0.8125,
        "classes": ["cats", "dogs", "fish"],
        "test": {"per_class": {"cats": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}}, "confusion_matrix": [[1, 1, 0], [0, 2, 0], [0, 0, 3]]},
        "head_choices": {"l2": 0.01, "l2_chosen": True, "l2_sweep": [{"l2": 0.01, "val_accuracy": 1.0}]},
    }
    inputs = report.ReportInputs(
        title=plots.run_title("timm:resnet50", "logreg", 0.8125),
        summary=report.summary_rows("r", "timm:resnet50", "logreg", metrics),
        metrics=metrics,
        classes=metrics["classes"],
        errors=rows,
        recipe={"name": "r", "dataset": {"root": "x", "download": "https://example.org/data.zip"}},
        plots={"errors grid": tmp_path / "errors.png", "not there": tmp_path / "missing.png"},
        notes=["L2 0.01 chosen among 15 values"],
    )
    page = report.report_html(inputs)
    refs = assert_self_contained(page)  # a URL in the recipe's text is text, not a reference
    text = " ".join(refs.text)
    assert "81.2%" in text and "L2 0.01 chosen" in text and "head chose l2" in text and "https://example.org/data.zip" in text
    for row in rows:
        assert Path(row.path).name in text
    assert "not there" not in text  # a plot that was not drawn is left out, not a broken image


@pytest.fixture(scope="module")
def tiny_runs_by_head(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """One real run per choosing head through the CLI (tiny CNN, generated images): run dir and printed summary."""
    from tiny import TinyPlugin

    from tlkit.contract.plugin_manager import load_plugins, set_plugins

    base = tmp_path_factory.mktemp("report-runs")
    root = make_data(base / "data")
    set_plugins(load_plugins(entry_points=False, extra=[TinyPlugin()]))
    runs = {}
    try:
        for head, options in (("logreg", []), ("knn", []), ("mlp", ["head.patience=5", "head.lr=0.01"])):
            recipe = base / f"{head}.yaml"
            recipe.write_text(json.dumps({"name": head, "dataset": {"root": str(root)}, "backbone": {"name": "tiny_cnn"}, "extract": {"workers": 0, "cache": False}, "head": {"name": head}}))
            args = ["run", str(recipe), "--out", str(base / head)] + [a for o in options for a in ("--set", o)]
            runs[head] = (base / head, cli_output(args))
    finally:
        set_plugins(None)
    return runs


def cli_output(args: list[str]) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(buffer):  # the console writes to sys.stdout of the moment
        main(args)
    assert exit_info.value.code == 0, buffer.getvalue()
    return buffer.getvalue()


BUFFER = {"logreg": ("l2", "l2"), "knn": ("k", "k"), "mlp": ("epoch", "epoch")}  # choice key, buffer name


@pytest.mark.parametrize("head", ["logreg", "knn", "mlp"])
def test_the_heads_choice_is_in_the_summary_metrics_and_model_json_and_equals_its_buffer(head: str, tiny_runs_by_head) -> None:
    run_dir, summary = tiny_runs_by_head[head]
    key, buffer = BUFFER[head]
    tensors, metadata = read_head_file(run_dir / "head.safetensors")
    truth = float(tensors[buffer])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = json.loads((run_dir / "model.json").read_text())
    assert metrics["head_choices"][key] == pytest.approx(truth, rel=1e-6)
    assert model["head"]["choices"][key] == pytest.approx(truth, rel=1e-6)
    assert json.loads(metadata["choices"])[key] == pytest.approx(truth, rel=1e-6)
    shown = {"logreg": f"L2 {truth:.3g}", "knn": f"k {int(truth)}", "mlp": f"epoch {int(truth)}"}[head]
    assert f"{head} chose" in summary and shown in summary
    if head == "mlp" and metrics["head_choices"]["epoch"] < metrics["head_choices"]["epochs_trained"]:
        assert "restored the weights of epoch" in summary


@pytest.mark.parametrize("head", ["logreg", "knn", "mlp"])
def test_every_run_writes_errors_png_and_a_self_contained_report(head: str, tiny_runs_by_head) -> None:
    run_dir, _ = tiny_runs_by_head[head]
    with Image.open(run_dir / "errors.png") as img:
        assert img.format == "PNG"
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    refs = assert_self_contained(page)
    text = " ".join(refs.text)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{100 * metrics['test_accuracy']:.1f}%" in text
    with (run_dir / "errors.csv").open(newline="") as fh:
        wrong = [Path(row["path"]).name for row in csv.DictReader(fh)]
    assert wrong and all(name in text for name in wrong)
    assert "resolved recipe" in text and f"name: {head}" in text
    if head == "logreg":
        assert (run_dir / "l2_sweep.png").is_file() and 'alt="L2 sweep"' in page


def test_a_head_without_epochs_shows_no_epoch_progress(tiny_runs_by_head, capfd) -> None:
    from tiny import TinyPlugin

    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import resolve
    from tlkit.run.engine import run

    tasks: list[str] = []

    class Recorder(Observer):
        def task(self, description, total, unit="it"):  # type: ignore[no-untyped-def]
            tasks.append(f"{description} {unit}")
            return super().task(description, total, unit)

    root = tiny_runs_by_head["knn"][0].parent / "data"
    plugins = load_plugins(entry_points=False, extra=[TinyPlugin()])
    for head in ("knn", "centroid", "linear"):
        recipe = resolve({"name": head, "dataset": {"root": str(root)}, "backbone": {"name": "tiny_cnn"}, "extract": {"workers": 0, "cache": False}, "head": {"name": head, **({"epochs": 20} if head == "linear" else {})}}, plugins)
        run(recipe, root.parent / f"epochs-{head}", Recorder())
    assert not any(t.startswith(("training knn", "training centroid")) for t in tasks)
    assert "training linear epoch" in tasks


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium) for the browser screenshot")
def test_report_renders_in_headless_chromium(tiny_runs_by_head, tmp_path: Path) -> None:
    """A real browser opens the page from disk with the network off and draws it: the screenshot
    is a large image with many colours (the embedded plots), not a blank or an error page."""
    run_dir, _ = tiny_runs_by_head["logreg"]
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--proxy-server=127.0.0.1:9", "--window-size=1200,2400",
         f"--screenshot={shot}", (run_dir / "report.html").resolve().as_uri()],
        check=True, timeout=120, capture_output=True,
    )
    with Image.open(shot) as img:
        assert img.size == (1200, 2400)
        colours = img.convert("RGB").resize((300, 600)).getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 200, "the page rendered (nearly) blank"
    assert re.search(r"\d", (run_dir / "report.html").read_text())


def test_the_report_shows_train_counts_confused_pairs_unsure_answers_and_a_sample_per_class(tiny_runs_by_head) -> None:
    """fastai's interpretation, and more: top losses include right-but-unsure images, and the data is shown per class."""
    run_dir, _ = tiny_runs_by_head["logreg"]
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    text = " ".join(parse(page).text)
    assert "train images" in text and "most confused pairs" in text
    for true, predicted, count in metrics["most_confused"]:
        assert f"<td>{true}</td><td>{predicted}</td><td class=\"n\">{count}</td>" in page
    with (run_dir / "predictions.csv").open(newline="") as fh:
        right = [row for row in csv.DictReader(fh) if row["true_class"] == row["predicted_class"]]
    least_sure = min(right, key=lambda row: float(row["confidence"]))
    unsure_part = page.split("right but unsure")[1].split("</table>")[0]
    assert Path(least_sure["path"]).name in unsure_part and "margin" in unsure_part
    data = page.split('<section id="data">')[1].split("</section>")[0]
    for name, count in metrics["class_counts"]["train"].items():
        assert f"{name} <small>(train {count}, test {metrics['class_counts']['test'][name]})" in data
    assert data.count("<img ") >= 3 * 2  # every class, both splits


def audit_json(root: Path, classes: tuple[str, ...]) -> dict:
    """A realistic audit.json (format 1), made from Finding objects as the audit writes it."""
    from tlkit.audit.findings import AUDIT_FORMAT, KINDS, Finding

    train = sorted((root / "train" / classes[0]).glob("*.jpg"))
    test = sorted((root / "val" / classes[0]).glob("*.jpg"))
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    findings = [
        Finding("leak", (rel(train[0]), rel(test[0])), ("train", "test"), 0.991, detail="cosine 0.991, phash distance 4"),
        Finding("label_issue", (rel(train[1]),), ("train",), 0.87, given_label=classes[0], suggested_label=classes[1], detail="self-confidence 0.04"),
        Finding("near_duplicate", (rel(train[2]), rel(train[3])), ("train", "train"), 0.95),
        Finding("outlier", (rel(test[1]),), ("test",), 3.2, detail="k-NN density 0.02"),
        Finding("outlier", ("../../../etc/passwd",), ("test",), 1.0, detail="a path out of the root"),
        Finding("image_size", ("/etc/hostname",), ("train",), 1.0, detail="an absolute path"),
    ]
    counts = {kind: sum(f.kind == kind for f in findings) for kind in KINDS if any(f.kind == kind for f in findings)}
    return {"format": AUDIT_FORMAT, "seed": 0, "classes": list(classes), "counts": counts,
            "summary": {"leaked_test_images": 1, "test_accuracy": 0.9, "test_accuracy_without_leaked": 0.889},
            "findings": [f.to_dict() for f in findings]}


@pytest.fixture(scope="module")
def audited_report(tiny_runs_by_head, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The logreg run's report rendered again with an audit.json in its folder."""
    run_dir, _ = tiny_runs_by_head["logreg"]
    folder = tmp_path_factory.mktemp("audited")
    for name in ("metrics.json", "recipe.yaml", "predictions.csv"):
        shutil.copy(run_dir / name, folder / name)
    import yaml

    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    audit = audit_json(Path(recipe["dataset"]["root"]), ("cats", "dogs", "fish"))
    (folder / "audit.json").write_text(json.dumps(audit))
    metrics = json.loads((folder / "metrics.json").read_text())
    with (folder / "predictions.csv").open(newline="") as fh:
        rows = [PredictionRow(path=r["path"], true_class=r["true_class"], predicted_class=r["predicted_class"], confidence=float(r["confidence"])) for r in csv.DictReader(fh)]
    report.write_visuals(folder, recipe=recipe, metrics=metrics, test_rows=rows)
    return folder, audit


def test_the_audit_section_shows_each_finding_with_pictures_labels_paths_and_scores(audited_report) -> None:
    folder, audit = audited_report
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    section = page.split('<section id="audit">')[1].split("</section>")[0]
    text = " ".join(parse(section).text)
    for finding in audit["findings"]:
        assert all(path in text for path in finding["paths"]) and f"{finding['score']:.3g}" in text
    leak = section.split('id="audit-leak"')[1].split("</table>")[0]
    assert leak.count('<div class="pair">') == 1 and leak.count("<img ") == 2  # the pair side by side
    label = section.split('id="audit-label_issue"')[1].split("</table>")[0]
    assert "given <b>cats</b>, suggested <b>dogs</b>" in label and label.count("<img ") == 1
    outliers = section.split('id="audit-outlier"')[1].split("</table>")[0]
    assert outliers.count("<img ") == 1 and "outside the data set&#x27;s root" in outliers  # ../ is never opened
    assert "outside the data set&#x27;s root" in section.split('id="audit-image_size"')[1]  # nor an absolute path
    assert "test_accuracy_without_leaked: 0.889" in text


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 2, "findings": []}), json.dumps([1, 2])])
def test_an_unusable_audit_json_is_a_note_in_the_section_never_an_error(content: str, tmp_path: Path) -> None:
    from tlkit.outputs.audit_section import audit_html, read_audit

    (tmp_path / "audit.json").write_text(content)
    audit = read_audit(tmp_path / "audit.json")
    assert audit is not None and "error" in audit
    assert "run the audit again" in audit_html(audit, None)
    assert read_audit(tmp_path / "absent.json") is None


def test_an_oversized_audit_json_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlkit.outputs import audit_section

    monkeypatch.setattr(audit_section, "MAX_AUDIT_BYTES", 1024)
    (tmp_path / "audit.json").write_text(json.dumps({"format": 1, "findings": [{"kind": "outlier", "paths": ["a" * 2000], "splits": [], "score": 1}]}))
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("an oversized audit.json was read"))
    audit = audit_section.read_audit(tmp_path / "audit.json")
    assert audit is not None and "larger than" in audit["error"]


def test_malformed_findings_are_skipped_and_counted(tmp_path: Path) -> None:
    from tlkit.outputs.audit_section import audit_html, read_audit

    good = {"kind": "outlier", "paths": ["a.jpg"], "splits": ["train"], "score": 1.5}
    bad = [{"kind": "outlier", "paths": "a.jpg", "splits": [], "score": 1}, {"kind": "outlier", "paths": ["a"], "splits": [], "score": "NaN"},
           {"kind": 3, "paths": ["a"], "score": 1}, {"kind": "leak", "paths": ["a", "b", "c"], "splits": [], "score": 1}, "text",
           {"kind": "outlier", "paths": ["a"], "splits": [], "score": float("inf")}]
    (tmp_path / "audit.json").write_text(json.dumps({"format": 1, "findings": [good, *bad]}))
    audit = read_audit(tmp_path / "audit.json")
    assert audit is not None and len(audit["findings"]) == 1 and audit["skipped"] == len(bad)
    page = audit_html(audit, tmp_path)
    assert "6 finding(s) in audit.json did not fit format 1" in page and "file not found" in page


def chromium(*args: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--proxy-server=127.0.0.1:9", *args],
                          check=True, timeout=120, capture_output=True, text=True)
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium) for the browser screenshot")
def test_the_audit_section_renders_in_headless_chromium(audited_report, tmp_path: Path) -> None:
    """The browser (network off) parses the report's #audit section with its embedded thumbnails, and draws them.

    Headless Chromium cannot open a file URL at a fragment, so the section is drawn on a page of its own,
    made by the same renderer; the report itself is checked through the DOM the browser built from it.
    """
    from tlkit.outputs.audit_section import audit_html, read_audit
    from tlkit.outputs.contact_sheet import page_html

    folder, _ = audited_report
    dom = chromium("--dump-dom", (folder / "report.html").resolve().as_uri())
    section = dom.split('<section id="audit">')[1].split("</section>")[0]
    sources = re.findall(r'<img [^>]*src="([^"]*)"', section)
    assert len(sources) == 6 and all(src.startswith("data:image/jpeg;base64,") for src in sources)  # leak pair, near pair, label, outlier
    alone = tmp_path / "audit.html"
    import yaml

    root = Path(yaml.safe_load((folder / "recipe.yaml").read_text())["dataset"]["root"])
    alone.write_text(page_html("audit", audit_html(read_audit(folder / "audit.json") or {}, root)))
    assert_self_contained(alone.read_text())
    shot = tmp_path / "audit.png"
    chromium("--window-size=1000,1400", f"--screenshot={shot}", alone.resolve().as_uri())
    with Image.open(shot) as img:
        assert img.size == (1000, 1400)
        colours = img.convert("RGB").resize((250, 350)).getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 200, "the audit section rendered (nearly) blank"
