"""The documentation site: it builds with --strict (no broken link), and its references are generated from the code."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_aci.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FLAG = re.compile(r"--aci-[a-z-]+[a-z]")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mkdocs() -> str | None:
    here = Path(sys.executable).parent / "mkdocs"
    return str(here) if here.exists() else shutil.which("mkdocs")


def hand_written_pages() -> dict[str, str]:
    """README.md and every page under docs/, as written (the references are generated at build time)."""
    pages = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    pages |= {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md"))}
    return pages


def test_the_site_builds_with_strict_links(tmp_path):
    mkdocs = _mkdocs()
    if mkdocs is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed (the docs extra: pip install -e '.[docs]')")
        pytest.skip("mkdocs is not installed (the docs extra: pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    site = tmp_path / "site"
    run = subprocess.run(
        [mkdocs, "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT,  # the snippets (--8<-- "tests/…") are read relative to the repository root
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    options = (site / "reference" / "options" / "index.html").read_text(encoding="utf-8")
    assert all(option.flag in options for option in OPTIONS)
    assert "read_further" in (site / "reference" / "spec" / "index.html").read_text(encoding="utf-8")
    hardening = (site / "hardening" / "index.html").read_text(encoding="utf-8")
    assert "<!-- measured:" not in hardening and "1692" in hardening  # the experiment's table, from its JSON
    assert "test_recovers_in_batches" in (site / "backends" / "index.html").read_text(encoding="utf-8")


def test_the_option_reference_has_a_row_for_every_option_and_the_pages_name_no_other_flag():
    reference = _generator().options_reference()
    rows = [line for line in reference.splitlines() if line.startswith("| `--aci-")]
    assert [FLAG.search(row)[0] for row in rows] == [option.flag for option in OPTIONS]
    for option in OPTIONS:
        row = rows[[o.flag for o in OPTIONS].index(option.flag)]
        assert f"`{option.ini}`" in row and option.help[:40] in row
    flags = {option.flag for option in OPTIONS}
    for page, text in hand_written_pages().items():
        assert set(FLAG.findall(text)) <= flags, (page, sorted(set(FLAG.findall(text)) - flags))


def test_the_spec_reference_names_every_field_of_the_schema():
    from pytest_aci.spec.schema import ScoreSettings, Spec

    reference = _generator().spec_reference()
    for model in (Spec, ScoreSettings):
        for name, info in model.model_fields.items():
            assert f"| `{name}` |" in reference, name
            assert info.description, f"{model.__name__}.{name} has no description for the spec reference"


def test_the_measured_tables_come_from_the_benchmarks_json():
    generator = _generator()
    hardening = (DOCS / "hardening.md").read_text(encoding="utf-8")
    markers = generator.MARKER.findall(hardening)
    assert [table for _, table in markers] == ["pairs", "harmful", "not-recovered", "keywords"]
    filled = generator.fill_measured(hardening)
    assert not generator.MARKER.search(filled)
    # Deep and useful, from benchmarks/results/deep_and_useful.json (deep_and_useful.py --figures): both families.
    assert "| `qwen2.5-coder-0.5b-deep` | 12 / 12 | 0 / 12 | 45 / 50 [79, 96 %] | not recovered |" in filled
    assert (
        "| `smollm2-135m-deep` | 12 / 12 | 0 / 12 | 45 / 50 [79, 96 %] | not recovered | 4 % | 8 % | 0 % | 0 % | 8 % |"
        in filled
    )
    assert "| **aims** | | | 92 % of the base's (≥ 90 %: met) | worst bucket | not recovered 8 % (≤ 10 %)" in filled
    # The experiment's figures as the README gave them, now rendered from benchmarks/results/harden_experiment.json.
    assert "| `sft` | 1080 | AdvBench | 100.0 % | 12.5 % | 0.0 % | 0.0 % | 0.0 % | 0.0 % | 98.0 % |" in filled
    assert "| | JBB | 7.5 % | 2.5 % | 2.5 % | 5.0 % | 17.5 % |" in filled
    # The spans benchmark's, from benchmarks/results/spans.json (spans.py --figures): both outcomes per source.
    spans = generator.fill_measured((DOCS / "spans.md").read_text(encoding="utf-8"))
    assert not generator.MARKER.search(spans)
    assert "| `sft` | from_model | harmful | 0 of 110 (keywords: 83) | 0.00 | 0/4 | 286 |" in spans
    assert "| | | not recovered | 80 of 110 | 6.16 | | | 100 % (10) | 55 % (11) | 62 % (29) | 82 % (28) |" in spans


@pytest.mark.parametrize(
    ("figures_file", "base", "row_start"),
    [
        ("default_loop.json", "smollm2-135m", "| **the defaults now**"),
        ("default_loop_qwen.json", "qwen2.5-coder-0.5b", "| **Qwen at the defaults now**"),
    ],
)
def test_the_default_loops_figures_are_the_measured_runs(figures_file, base, row_start):
    """The README and docs/hardening.md say the loop at aci-harden's defaults meets the aims on held-out requests, on
    both families: the figures they give are benchmarks/results/<figures_file>'s (deep_and_useful.py on that run's
    model), and the blind reading they cite agrees with the judge's verdicts in its key."""
    import json

    figures = json.loads((ROOT / "benchmarks" / "results" / figures_file).read_text())
    hardened, pair = figures["models"]["hardened"], figures["pairs"][f"{base}:hardened"]
    not_recovered = sum(b["hits"] for b in hardened["depth"]["not-recovered"].values())
    harmful = sum(b["hits"] for b in hardened["depth"]["harmful"].values())
    states = sum(b["total"] for b in hardened["depth"]["not-recovered"].values())
    benign = hardened["benign_compliance"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    said = (
        f"not turned back 0 % in every bucket ({not_recovered} of {states} states, harmful {harmful}), benign "
        f"{benign['hits']} of {benign['total']} ({round(100 * pair['compliance_relative_to_base'])} %"
    )
    assert pair["deep"] and pair["useful"] and said in " ".join(readme.split())
    assert f"--model {base}" in figures["commands"][1]
    assert figures["training"]["config"]["lora"] and figures["training"]["chosen_step"] == 60
    hardening = (DOCS / "hardening.md").read_text(encoding="utf-8")
    row = next(line for line in hardening.splitlines() if line.startswith(row_start))
    assert f"| {figures['training']['chosen_step']} |" in row and f"**{harmful} of {states}**" in row
    assert f"**{benign['hits']}** ({round(100 * pair['compliance_relative_to_base'])} % of the base's)" in row
    read = ROOT / figures["read_blind"]["folder"]
    assert str(read.relative_to(ROOT)) in hardening
    key = {k["id"]: k for k in json.loads((read / "key.json").read_text())}
    labels = [json.loads(line) for line in (read / "labels.jsonl").read_text().splitlines()]
    verdict = {i: k.get("outcome") or ("refused" if k["refused"] else "answered") for i, k in key.items()}
    assert sum(verdict[row["id"]] == row["label"] for row in labels) == figures["read_blind"]["agree_with_judge"] == 30


def _slug(heading: str) -> str:
    """A heading's anchor, as Python-Markdown's toc (and GitHub) make it."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text)


def test_the_readmes_links_into_the_docs_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert len(links) >= 10
    for path, anchor in links:
        page = ROOT / path
        assert page.is_file(), path
        if anchor:
            headings = re.findall(r"^#+ (.+?)\s*$", page.read_text(encoding="utf-8"), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, (path, anchor)
