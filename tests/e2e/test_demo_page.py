"""The demo shop page in headless Chromium (Debian's ``chromium``, driven by Playwright with
``executable_path``; nothing is downloaded): three clicks in one category visibly change the
recommendations, the explain panel opens, and a screenshot is kept."""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import unavailable  # tests/ is on sys.path (pytest's rootdir conftest)
from insession.clock import SystemClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.model import ModelBundle
from insession.serving.app import create_app
from insession.serving.server import BackgroundServer


def _browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = None if found else "chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = missing or "playwright is not installed (pip install -e '.[test]')"
    if missing is not None or found is None:
        unavailable(missing or "chromium is missing")
    assert found is not None
    return found


@pytest.fixture
def shop_url(tmp_path: Path, model: ModelBundle, shop: SyntheticShop) -> Iterator[tuple[str, Engine]]:
    engine = Engine.open(Settings(data_dir=tmp_path / "data"), model=model, clock=SystemClock())
    engine.ingest_all(shop.events)
    with BackgroundServer(create_app(engine)) as server:
        yield server.url, engine
    engine.close()


def row_ids(page: object, surface: str) -> list[str]:
    items = page.locator(f'.row[data-surface="{surface}"] .rec-list li')  # type: ignore[attr-defined]
    return [items.nth(n).get_attribute("data-item-id") for n in range(items.count())]


def test_three_clicks_in_one_category_change_the_row_and_explain_opens(
    shop_url: tuple[str, Engine], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, engine = shop_url
    catalog = engine.model.catalog
    executable = _browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        user = page.locator("#user-select").input_value()
        assert "visitor" not in user  # the first choice is a shopper with a long history

        before = row_ids(page, "home")
        assert len(before) == 10 and all(before)
        shown = {catalog.category_of(i) for i in before}
        target = sorted({c for c in catalog.category_names} - shown)[0]

        page.select_option("#category-filter", target)
        page.wait_for_selector(f"#grid .card[data-category='{target}']")
        cards = page.locator(f"#grid .card[data-category='{target}']")
        for n in range(3):
            version = int(page.locator("body").get_attribute("data-session-version") or 0)
            cards.nth(n).locator("button.act-click").click()
            expect(page.locator("body")).not_to_have_attribute("data-session-version", str(version))

        after = row_ids(page, "home")
        assert after != before
        categories = Counter(catalog.category_of(i) for i in after)
        assert categories[target] >= 3, categories  # the row now shows that category
        assert page.locator(".row[data-surface='home'] li.entered").count() > 0  # changes are marked
        assert page.locator(".row[data-surface='product_page'] li").count() == 10  # the item's page row
        # The tier served shows in the strip; which one depends on the machine's load (a busy
        # machine may cut the learned ranker), so any tier is right here.
        expect(page.locator("#status-tier")).to_have_text(re.compile(r"^(full|fast|popular)"))
        assert engine.state(user) is not None and engine.state(user).session_version >= 3  # type: ignore[union-attr]

        page.locator(".row[data-surface='home'] li").first.locator("button.why").click()
        expect(page.locator("#explain-body")).to_contain_text("Candidate sources", timeout=20_000)
        # One plain-language reason comes first, before the tables.
        reason = page.locator("#explain-body p.reason")
        expect(reason).to_have_count(1)
        assert reason.inner_text().endswith(".") and "_" not in reason.inner_text()
        assert page.locator("#explain-body > *").nth(1).get_attribute("class") == "reason"
        expect(page.locator("#explain-body")).to_contain_text("identical")
        shot = tmp_path / "demo-page.png"
        page.screenshot(path=str(shot), full_page=False)
        keep = os.environ.get("INSESSION_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)
        browser.close()
    assert shot.stat().st_size > 10_000
    assert errors == []
    print(f"screenshot: {shot}")
