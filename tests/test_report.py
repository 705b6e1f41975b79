"""The local report: every number traceable to its JSON, the papers' rows only where the setting
matches, generic over evaluations, a self-contained HTML page that renders in Chromium."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from longctx.artifacts import write_json
from longctx.report.paper_numbers import PaperNumbersError, Setting, load, matches, parse
from longctx.report import compare, read_csv, write_csv, write_report

VARIANTS = [
    {"name": "base", "method": "none", "scale": 1.0, "params": {}, "finetune": False, "search": False},
    {"name": "pi-x4-ft", "method": "pi", "scale": 4.0, "params": {}, "finetune": True, "search": False},
    {"name": "longrope-x4-search", "method": "longrope", "scale": 4.0, "params": {}, "finetune": False, "search": True},
]
LENGTHS = [2048, 4096, 8192]
PPL = {"base": [7.31, 250.0, 1900.0], "pi-x4-ft": [7.42, 7.11, 6.98], "longrope-x4-search": [7.35, 7.6, 8.9]}
# passkey accuracy by length: base fails beyond L, pi passes at 2048 and 4096 only
PASSKEY = {"base": [1.0, 0.0, 0.0], "pi-x4-ft": [1.0, 0.4, 0.1], "longrope-x4-search": [0.8, 0.6, 0.3]}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def make_results(root: Path) -> tuple[list[Path], list[Path]]:
    """Evaluation JSONs as the evaluate stage writes them, plus one search result."""
    files = []
    for v in VARIANTS:
        for i, n in enumerate(LENGTHS):
            ppl = PPL[v["name"]][i]
            files.append(root / "eval" / v["name"] / f"perplexity-{n}.json")
            write_json(files[-1], {"eval": "perplexity", "length": n, "mode": "truncate", "documents": 10 - i,
                                   "metrics": {"perplexity": ppl, "nll": math.log(ppl)},
                                   "variant": v["name"], "seconds": 1.0})
            acc = PASSKEY[v["name"]][i]
            trials = [{"key": 10000 + k, "depth": k / 10, "correct": k < acc * 10} for k in range(10)]
            files.append(root / "eval" / v["name"] / f"passkey-{n}.json")
            write_json(files[-1], {"eval": "passkey", "length": n, "trials": trials, "metrics": {"accuracy": acc},
                                   "variant": v["name"]})
            # an evaluation the report has never heard of still gets its table
            files.append(root / "eval" / v["name"] / f"made_up-{n}.json")
            write_json(files[-1], {"eval": "made_up", "length": n, "metrics": {"score": 0.5 + i / 10},
                                   "variant": v["name"]})
    search = root / "search" / "longrope-x4-search" / "factors.json"
    write_json(search, {"method": "longrope", "scale": 4.0, "length": 8192, "n_hat": 4,
                        "factors": [1.0, 1.5, 2.5, 4.0], "perplexity": 8.1,
                        "history": [{"iteration": 1, "best_perplexity": 9.0, "mean_perplexity": 11.0, "evaluated": 8},
                                    {"iteration": 2, "best_perplexity": 8.1, "mean_perplexity": 9.5, "evaluated": 14}]})
    return files, [search]


RUN = {"experiment": "toy", "model_source": "hub", "model": "huggyllama/llama-7b", "original_context": 2048,
       "seed": 1}
LLAMA_PG19 = Setting(model="huggyllama/llama-7b", datasets={"perplexity": ["pg19", "emozilla/pg19"]},
                     finetune_steps=1000)


def build(tmp_path, setting=LLAMA_PG19, run=RUN):
    root = tmp_path / "results" / run["experiment"]
    files, searches = make_results(root)
    report = write_report(files, VARIANTS, run, "pg19", root / "report.md", root / "summary.csv",
                          root / "report.html", root / "plots", searches, setting)
    return root, report


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One report of the toy experiment on LLaMA 7B / PG19 (plots take seconds): (folder, Report)."""
    return build(tmp_path_factory.mktemp("report"))


def table_after(md: str, heading: str) -> list[str]:
    """The lines of the first markdown table after ``heading``."""
    lines = md[md.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_summary_csv_holds_every_metric_of_every_json(built):
    root, _ = built
    rows = read_csv(root / "summary.csv")
    assert {"experiment", "model", "method", "scale", "stage", "eval", "dataset", "length", "metric",
            "value"} <= set(rows[0])
    assert len(rows) == len(VARIANTS) * len(LENGTHS) * (2 + 1 + 1)  # perplexity, nll, accuracy, score
    for r in rows:
        data = json.loads(Path(r["source"]).read_text())
        assert data["metrics"][r["metric"]] == r["value"]
        assert data["variant"] == r["variant"] and data["length"] == r["length"]
    stages = {r["variant"]: r["stage"] for r in rows}
    assert stages == {"base": "none", "pi-x4-ft": "finetuned", "longrope-x4-search": "searched"}
    assert {r["dataset"] for r in rows if r["eval"] == "perplexity"} == {"pg19"}


def test_every_number_in_the_tables_links_to_the_json_it_came_from(built):
    root, _ = built
    md = (root / "report.md").read_text()
    links = re.findall(r"\[([0-9.]+)\]\(([^)]+\.json)\)", md)
    assert len(links) >= len(VARIANTS) * len(LENGTHS) * 4
    for text, link in links:
        data = json.loads((root / link).read_text())
        # a metric rounded for display, or (k_max cells) the length that decided it
        assert any(abs(float(text) - v) <= 0.005 for v in data["metrics"].values()) or text == str(data["length"]), \
            (text, link)
    # the perplexity table, laid out like the papers': a row per variant, a column per length
    table = table_after(md, "**perplexity**")
    assert table[0] == "| variant | method | scale | stage | 2048 | 4096 | 8192 |"
    pi_row = next(line for line in table if line.startswith("| pi-x4-ft |"))
    assert "[7.42](eval/pi-x4-ft/perplexity-2048.json)" in pi_row
    assert "**[6.98](eval/pi-x4-ft/perplexity-8192.json)**" in pi_row  # the best at 8192, in bold


def test_passkey_table_gives_pi_k_max_and_heatmaps(built):
    root, report = built
    md = (root / "report.md").read_text()
    table = table_after(md, "## Passkey retrieval by length")
    assert table[0].endswith("| k_max |")
    k_max = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in table[2:]
             if not line.startswith("| ↳")}
    # base: 1.0 then 0.0 -> 2048; pi: 1.0, 0.4, 0.1 -> 4096; longrope: all >= 0.2 -> 8192
    assert k_max["base"].startswith("[2048]") and k_max["pi-x4-ft"].startswith("[4096]")
    assert k_max["longrope-x4-search"].startswith("[8192]")
    for v in VARIANTS:
        assert (root / "plots" / f"passkey-heatmap-{v['name']}.png").exists()
        assert f"(plots/passkey-heatmap-{v['name']}.png)" in md


def test_any_evaluation_with_metrics_gets_a_table_and_a_plot(built):
    root, _ = built
    md = (root / "report.md").read_text()
    table = table_after(md, "## made up by length")
    assert "[0.70](eval/base/made_up-8192.json)" in "\n".join(table)
    assert (root / "plots" / "made_up.png").exists()


def test_search_convergence_links_its_factors(built):
    root, _ = built
    md = (root / "report.md").read_text()
    row = next(line for line in table_after(md, "## LongRoPE search convergence") if "longrope-x4-search" in line)
    assert "| 2 | 14 | 9.00 | 8.10 | 4 | [factors.json](search/longrope-x4-search/factors.json) |" in row
    assert (root / "plots" / "search.png").exists()


def test_papers_numbers_sit_under_the_matching_variant_marked_as_theirs(built):
    root, _ = built
    table = table_after((root / "report.md").read_text(), "**perplexity**")
    i = next(k for k, line in enumerate(table) if line.startswith("| pi-x4-ft |"))
    paper_rows = []
    for line in table[i + 1:]:
        if not line.startswith("| ↳"):
            break
        paper_rows.append(line)
    # PI Table 1's PI-8192 (7.13 at 2k, 6.96 at 4k, 6.95 at 8k), and Table 3 after 1000 steps (6.95 at 8k)
    assert any("PI Table 1" in r and "| *7.13* | *6.96* | *6.95* |" in r for r in paper_rows)
    assert any("PI Table 3" in r and "after 1000 steps" in r and "| - | - | *6.95* |" in r for r in paper_rows)
    assert all("*paper:*" in r for r in paper_rows)
    # the unextended model's row carries the paper's base numbers; the searched LongRoPE has none on LLaMA 7B
    base = next(k for k, line in enumerate(table) if line.startswith("| base |"))
    assert "| *7.20* | *>1000* | *>1000* |" in table[base + 1]
    lr = next(k for k, line in enumerate(table) if line.startswith("| longrope-x4-search |"))
    assert lr + 1 == len(table) or not table[lr + 1].startswith("| ↳")


def test_no_paper_row_when_the_setting_differs(tmp_path):
    setting = Setting(model="pretrain", datasets={"perplexity": ["austen", "data/austen"]}, finetune_steps=40)
    root, report = build(tmp_path, setting, {**RUN, "model": "pretrain"})
    md = (root / "report.md").read_text()
    assert "| ↳" not in md
    assert "No published number has this experiment's setting" in md
    assert not any(t.papers for t in report.tables)


def test_paper_matching_needs_model_method_scale_dataset_and_length():
    pi = VARIANTS[1]
    found = matches(LLAMA_PG19, pi, "perplexity", "perplexity", [2048, 8192])
    assert {(r.source, r.label) for r in found} == {("PI Table 1", "PI-8192, fine-tuned 1000 steps"),
                                                    ("PI Table 3", "PI-8192 after 1000 steps")}
    assert not matches(Setting("meta-llama/Llama-2-7b-hf", LLAMA_PG19.datasets, 1000), pi, "perplexity",
                       "perplexity", [8192])  # another model family
    assert not matches(Setting(LLAMA_PG19.model, {"perplexity": ["proof-pile"]}, 1000), pi, "perplexity",
                       "perplexity", [8192])  # another dataset
    assert not matches(LLAMA_PG19, {**pi, "scale": 8.0}, "perplexity", "perplexity", [8192])
    assert not matches(LLAMA_PG19, {**pi, "finetune": False}, "perplexity", "perplexity", [4096])
    assert not matches(LLAMA_PG19, pi, "perplexity", "perplexity", [1024])  # no length in common
    # LongRoPE Table 1 needs a searched longrope variant on Llama 2 7B at s = 4, 16k
    llama2 = Setting("meta-llama/Llama-2-7b-hf", {"perplexity": ["deepmind/pg19"]})
    longrope = {**VARIANTS[2], "finetune": False}
    assert [r.values for r in matches(llama2, longrope, "perplexity", "perplexity", [16384])] == [{16384: 11.34}]
    assert not matches(llama2, {**longrope, "search": False}, "perplexity", "perplexity", [16384])


def test_paper_numbers_file_is_well_formed_and_errors_name_the_entry():
    rows = load()
    assert {r.paper for r in rows} == {"pi", "yarn", "longrope", "giraffe"}
    assert all(r.values or r.k_max for r in rows)
    with pytest.raises(PaperNumbersError, match=r"entries\[0\].rows\[0\]: give either"):
        parse({"papers": {"pi": {"cite": "x", "url": "u"}},
               "entries": [{"paper": "pi", "table": "T", "model": "m", "model_match": "m", "eval": "e",
                            "eval_match": "e", "metric": "p", "metric_match": "p",
                            "rows": [{"label": "r", "method": "pi", "scale": 2, "finetuned": False}]}]})


def test_html_is_self_contained(built):
    root, _ = built
    page = (root / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(re.findall(r"!\[", (root / "report.md").read_text())) >= 6
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<a href="eval/pi-x4-ft/perplexity-8192.json">' in page


def test_html_renders_in_chromium_with_every_image_loaded(built, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y --no-install-recommends chromium)")
    root, _ = built
    # a copy of the page with a probe that records, once loaded, how many images decoded
    probe = ("<script>window.addEventListener('load', () => { const all = [...document.images]; "
             "document.body.dataset.images = all.length; "
             "document.body.dataset.loaded = all.filter(i => i.complete && i.naturalWidth > 0).length; });</script>")
    page = tmp_path / "report-probe.html"
    page.write_text((root / "report.html").read_text().replace("</body>", probe + "</body>"))
    out = subprocess.run([chromium, *CHROMIUM_FLAGS, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    dom = out.stdout
    images = re.search(r'data-images="(\d+)"', dom)
    loaded = re.search(r'data-loaded="(\d+)"', dom)
    assert images and loaded, out.stderr[-2000:]
    assert int(images.group(1)) >= 6 and loaded.group(1) == images.group(1)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, "--hide-scrollbars", "--window-size=1200,1600",
                    f"--screenshot={shot}", (root / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_puts_experiments_side_by_side(tmp_path):
    def summary(experiment, lengths, values):
        path = tmp_path / "results" / experiment / "summary.csv"
        rows = [{"experiment": experiment, "model": "pretrain", "variant": "pi-x4-ft", "method": "pi", "scale": 4.0,
                 "stage": "finetuned", "eval": "perplexity", "dataset": "austen", "length": n, "metric": "perplexity",
                 "value": v, "source": str(tmp_path / "results" / experiment / "eval" / f"perplexity-{n}.json")}
                for n, v in zip(lengths, values)]
        write_csv(rows, path)
        return path

    a = summary("small", [128, 256], [30.0, 28.0])
    b = summary("large", [256, 512], [25.0, 24.0])
    out = tmp_path / "results" / "compare.md"
    rows = compare([a, b], out, tmp_path / "results" / "compare.csv")
    assert len(rows) == 4
    table = table_after(out.read_text(), "**perplexity**")
    assert table[0].endswith("| 128 | 256 | 512 |")
    small = next(line for line in table if line.startswith("| small |"))
    large = next(line for line in table if line.startswith("| large |"))
    assert small.endswith("| [30.00](small/eval/perplexity-128.json) | [28.00](small/eval/perplexity-256.json) | - |")
    assert "| **[25.00](large/eval/perplexity-256.json)** |" in large  # the best at 256 across experiments
    with open(tmp_path / "results" / "compare.csv") as f:
        assert {r["experiment"] for r in csv.DictReader(f)} == {"small", "large"}


def test_compare_names_a_missing_experiment(tmp_path):
    from longctx.cli import main

    assert main(["compare", "--summaries", str(tmp_path / "nope" / "summary.csv"),
                 "--out-md", str(tmp_path / "compare.md")]) == 2


def test_a_diverged_metric_shows_as_diverged_not_as_missing(tmp_path):
    root = tmp_path / "results" / "toy"
    files, _ = make_results(root)
    broken = root / "eval" / "pi-x4-ft" / "perplexity-8192.json"
    write_json(broken, {"eval": "perplexity", "length": 8192, "metrics": {"perplexity": None, "nll": None},
                        "diverged": ["perplexity", "nll"], "variant": "pi-x4-ft"})
    write_report(files, VARIANTS, RUN, "pg19", root / "report.md", root / "summary.csv", None, root / "plots")
    row = next(line for line in (root / "report.md").read_text().splitlines() if line.startswith("| pi-x4-ft"))
    assert "[diverged](eval/pi-x4-ft/perplexity-8192.json)" in row
    rows = [r for r in read_csv(root / "summary.csv") if r["variant"] == "pi-x4-ft" and r["length"] == 8192
            and r["eval"] == "perplexity"]
    assert {(r["metric"], r["value"], r["status"]) for r in rows} == {("perplexity", None, "diverged"),
                                                                      ("nll", None, "diverged")}
    # the other cells are unaffected, and the best value at 8192 is still picked among real numbers
    assert "**[8.90](eval/longrope-x4-search/perplexity-8192.json)**" in (root / "report.md").read_text()


def test_summary_csv_sources_are_relative_so_results_can_move(tmp_path):
    """summary.csv names each JSON relative to the experiment's folder; after the results move, the
    comparison still links every number to its JSON, also for a summary.csv written with absolute
    paths on another machine (docs/smollm2/summary.csv)."""
    root, _ = build(tmp_path / "before")
    with open(root / "summary.csv") as f:
        sources = {r["source"] for r in csv.DictReader(f)}
    assert sources and all(not s.startswith("/") and (root / s).is_file() for s in sources), sorted(sources)[:3]
    assert "eval/pi-x4-ft/perplexity-4096.json" in sources
    moved = tmp_path / "after" / "results"
    shutil.move(str(root.parent), str(moved))
    # an older summary.csv of another experiment, with the absolute paths of the machine it ran on
    legacy = moved / "legacy"
    shutil.copytree(moved / "toy" / "eval", legacy / "eval")
    with open(moved / "toy" / "summary.csv") as f:
        rows = [{**r, "experiment": "legacy", "source": f"/root/elsewhere/results/legacy/{r['source']}"}
                for r in csv.DictReader(f)]
    with open(legacy / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = moved / "compare.md"
    compare([moved / "toy" / "summary.csv", legacy / "summary.csv"], out, moved / "compare.csv")
    links = re.findall(r"\[([0-9.]+)\]\(([^)]+\.json)\)", out.read_text())
    assert {link.split("/")[0] for _, link in links} == {"toy", "legacy"}
    for _, link in links:
        assert (out.parent / link).is_file(), link
    with open(moved / "compare.csv") as f:
        assert all(not r["source"].startswith("/") for r in csv.DictReader(f))


def test_ruler_gets_its_per_task_tables_and_each_variants_effective_length_with_the_threshold_named(tmp_path):
    root = tmp_path / "results" / "toy"
    averages = {"base": [92.0, 40.0, 10.0], "pi-x4-ft": [95.0, 88.0, 86.0], "longrope-x4-search": [80.0, 90.0, 95.0]}
    files = []
    for v in VARIANTS:
        for i, n in enumerate(LENGTHS):
            files.append(root / "eval" / v["name"] / f"ruler-{n}.json")
            avg = averages[v["name"]][i]
            write_json(files[-1], {"eval": "ruler", "length": n, "variant": v["name"],
                                   "metrics": {"average": avg, "niah_single_1": avg + 1, "vt": avg - 1}})
    write_report(files, VARIANTS, RUN, "pg19", root / "report.md", root / "summary.csv", None, root / "plots",
                 options={"effective_length_threshold": 85.6})
    text = (root / "report.md").read_text()
    headline = text.split("**average**")[1].split("\n\n")[1]  # the average's table
    rows = {line.split(" | ")[0]: line for line in headline.splitlines() if line.startswith("| ")}
    # base passes at 2048 only; pi-x4-ft at every length; longrope fails at the first, so none
    assert rows["| base"].endswith("| [2048](eval/base/ruler-2048.json) |")
    assert rows["| pi-x4-ft"].endswith("| [8192](eval/pi-x4-ft/ruler-8192.json) |")
    assert rows["| longrope-x4-search"].endswith("| [0](eval/longrope-x4-search/ruler-2048.json) |")
    assert "stays at or above 85.6" in text and "| variant | method | scale | stage | 2048 | 4096 | 8192 | effective length |" in text
    assert "**niah_single_1**" in text and "**vt**" in text  # per-task tables by length


# --- which published row sits beside which run: model, steps, scale, IFT and evaluation scale ---
REPO = Path(__file__).resolve().parents[1]
LLAMA2_PROOFPILE = Setting("meta-llama/Llama-2-7b-hf", {"perplexity": ["proofpile", "hoskinson-center/proof-pile"]})


def labels(found) -> set[tuple[str, str]]:
    return {(r.source, r.label) for r in found}


def test_pi_direct_fine_tuning_row_needs_the_10000_steps_it_ran():
    ft = {"name": "none-x4-ft", "method": "none", "scale": 4.0, "params": {}, "finetune": True, "search": False}
    row = ("PI Table 1", "FT-8192, direct fine-tuning 10000 steps")
    # pi.yaml fine-tunes 1000 steps: PI's 10000-step baseline is not its row
    assert row not in labels(matches(LLAMA_PG19, ft, "perplexity", "perplexity", [8192]))
    # pi_ft10000.yaml, or a variant whose own finetune overrides run the 10000 steps
    assert row in labels(matches(Setting(LLAMA_PG19.model, LLAMA_PG19.datasets, 10000), ft, "perplexity",
                                 "perplexity", [8192]))
    assert row in labels(matches(LLAMA_PG19, {**ft, "finetune_settings": {"steps": 10000}}, "perplexity",
                                 "perplexity", [8192]))


def test_giraffe_wikiqa_row_is_llama1_instruction_tuned_and_its_16k_value_evaluated_at_scale_8():
    wikiqa = {"wikiqa_ffqa": ["wikiqa_ffqa", "abacusai/WikiQA-Free_Form_QA"]}
    pi = {"name": "pi-x4-ft", "method": "pi", "scale": 4.0, "params": {}, "finetune": True, "search": False}
    # the instruction-tuned variant (config instruct) and the same weights evaluated at scale 8
    ift = {**pi, "name": "pi-x4-ft-ift", "finetune": False, "instruct_of": "pi-x4-ft", "instruction_tuned": True}
    ift_at_8 = {**ift, "name": "pi-x4-ft-ift@x8", "instruct_of": None, "start": "pi-x4-ft-ift", "scale": 8.0,
                "trained_scale": 4.0}
    lengths = [2048, 4096, 8192, 16384]
    llama1, llama2 = Setting("huggyllama/llama-13b", wikiqa, 1000), Setting("meta-llama/Llama-2-13b-hf", wikiqa, 1000)
    assert not matches(llama2, ift, "wikiqa_ffqa", "accuracy", lengths)  # Llama 2: another model
    assert not matches(llama1, pi, "wikiqa_ffqa", "accuracy", lengths)  # not instruction fine-tuned
    # at its own scale 4, the 2k-8k values; the 16k value only beside a run evaluated at scale 8
    assert [r.values for r in matches(llama1, ift, "wikiqa_ffqa", "accuracy", lengths)] == [
        {2048: 0.32, 4096: 0.38, 8192: 0.44}]
    assert [r.values for r in matches(llama1, ift_at_8, "wikiqa_ffqa", "accuracy", lengths)] == [{16384: 0.39}]
    assert not matches(llama1, {**pi, "name": "pi-x4-ft@x8", "finetune": False, "start": "pi-x4-ft",
                                "scale": 8.0, "trained_scale": 4.0}, "wikiqa_ffqa", "accuracy", lengths)


def test_longrope_table1_proofpile_rows_sit_beside_longrope_yaml_runs_without_fine_tuning():
    from longctx.config import load_config, variants

    runs = [v.to_dict() for v in variants(load_config(REPO / "config/paper/longrope.yaml"))]
    shown = {v["name"]: {n: r.values[n] for r in matches(LLAMA2_PROOFPILE, v, "perplexity", "perplexity",
                                                            [8192, 16384]) for n in r.values}
             for v in runs}
    assert {name: values for name, values in shown.items() if values} == {
        "pi-x2": {8192: 3.65}, "pi-x4": {16384: 4.93}, "dynamic_ntk-x2": {8192: 3.50},
        "dynamic_ntk-x4": {16384: 3.87}, "yarn-x2": {8192: 3.49}, "yarn-x4": {16384: 3.25},
        "longrope-x2-search": {8192: 3.45}, "longrope-x4-search": {16384: 3.13}}


def test_longrope_table3_rows_are_the_64k_model_at_scale_16():
    pi = {"name": "pi-x16", "method": "pi", "scale": 16.0, "params": {}, "finetune": False, "search": False}
    assert labels(matches(LLAMA2_PROOFPILE, pi, "perplexity", "perplexity", [65536])) == {
        ("LongRoPE Table 3", "PI, no fine-tuning")}
    assert not matches(LLAMA2_PROOFPILE, {**pi, "scale": 4.0}, "perplexity", "perplexity", [65536])
    ft = {**pi, "name": "pi-x16-ft", "finetune": True}
    assert labels(matches(LLAMA2_PROOFPILE, ft, "perplexity", "perplexity", [65536])) == {
        ("LongRoPE Table 3", "PI, fine-tuned")}


def test_the_report_says_which_paper_row_it_shows(built):
    root, _ = built
    md = (root / "report.md").read_text()
    # the row beside pi-x4-ft names its table, model, scale and fine-tuning steps
    assert "PI Table 1](https://arxiv.org/abs/2306.15595), PI-8192, fine-tuned 1000 steps " \
           "(LLaMA 7B (L = 2048); s = 4; fine-tuned 1000 steps)" in md


def test_longrope_yaml_table1_searches_lambda_only_as_the_rows_it_sits_beside():
    from longctx.config import load_config, search_settings_for, variants

    config = load_config(REPO / "config/paper/longrope.yaml")
    table1 = [v for v in variants(config) if v.method == "longrope" and v.scale in (2, 4) and v.chain is None]
    assert [search_settings_for(config, v)["n_hat_choices"] for v in table1] == [[0], [0]]
