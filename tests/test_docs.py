"""The documentation holds together: README.md stays a short front page, every relative link in it, docs/ and
benchmarks/README.md reaches a file (and a heading, for a #anchor), and docs/config.md is what the generator
makes from the config models, every field described."""
import re
from pathlib import Path

import pytest

from rlhf_dist.config import reference

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]+`")


def prose(page: Path) -> str:
    """The page without code blocks and code spans, where brackets and hashes are not markdown."""
    return CODE.sub("", FENCE.sub("", page.read_text()))


def slug(heading: str) -> str:
    """GitHub's rule: lowercase; drop punctuation except hyphens, underscores and spaces; spaces become hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The heading anchors of a markdown page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    text = FENCE.sub("", page.read_text())  # code spans stay: they are part of their heading's anchor
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    out = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            out.append(f"{page.relative_to(root)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{page.relative_to(root)}: {target} (no heading #{anchor} in {dest.relative_to(root)})")
    return out


def test_slug_follows_github():
    assert slug("Planning a layout: `rlhf-dist plan`") == "planning-a-layout-rlhf-dist-plan"
    assert slug("Scaling one job: 0.5B on one GPU -> 7B") == "scaling-one-job-05b-on-one-gpu---7b"
    assert slug("SFT, reward model, DPO and AI feedback") == "sft-reward-model-dpo-and-ai-feedback"
    assert slug("`ppo.max_staleness`") == "ppomax_staleness"


def test_generator_slug_agrees():
    # config.md's own links are made by the generator's slug; it must be the rule checked here.
    for heading in ("RunConfig", "`rlhf-dist sft`, `rlhf-dist rm`", "Loggers, console and reports"):
        assert reference.slug(heading) == slug(heading)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.is_file()
    bad = broken_links(page)
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# Real heading\n\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#real-heading) [gone](missing.md) [no](b.md#not-a-heading) [web](https://x.invalid/y)\n"
                    "![pic](b.md) `[in code](missing-too.md)`\n```\n[inside a fence](missing-too.md)\n```\n")
    bad = broken_links(page, tmp_path)
    assert bad == ["a.md: missing.md (no such file)", "a.md: b.md#not-a-heading (no heading #not-a-heading in b.md)"]


def test_readme_is_a_front_page():
    size = (ROOT / "README.md").stat().st_size
    assert size < 15_000, f"README.md is {size} bytes; move detail into docs/ (limit 15,000)"


def test_every_config_field_is_described():
    missing = [f"{m.__name__}.{name}" for m in reference.models()
               for name, f in m.model_fields.items() if not (f.description or "").strip()]
    assert not missing, "fields without description= (they have no line in docs/config.md): " + ", ".join(missing)


def test_config_reference_is_current():
    current = (ROOT / "docs" / "config.md").read_text()
    stale = current != reference.reference()
    assert not stale, f"docs/config.md is out of date with the config models: run {reference.REGENERATE}"
