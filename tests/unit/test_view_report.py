"""Looking at a round: the napari view (rendered headless) and the HTML report (opened in a
real headless Chromium). Both need a round that scored crops with a model: slow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.workflows.loop import run_round
from activeseg.workflows.project import Project
from activeseg.workflows.simulate import create_demo_project
from activeseg.workflows.view import round_scene

runner = CliRunner()
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
YELLOW = np.array([255, 255, 0])


@pytest.fixture(scope="module")
def looped(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Return a smoke project after round 0 (no model) and round 1 (a model scored crops)."""
    project = create_demo_project(tmp_path_factory.mktemp("view") / "project", "smoke")
    run_round(project)
    run_round(project)
    return project


@pytest.mark.slow
def test_a_round_scene_has_colours_neurons_doubts_and_the_picked_crops(looped: Project) -> None:
    scene = round_scene(looped, 1)
    assert [c.color for c in scene.channels] == ["FF0000", "00FF00", "0000FF"]
    assert all(high > low for low, high in (c.limits for c in scene.channels))
    assert scene.doubt is not None and scene.doubt.max() > 0
    assert scene.instances is not None and scene.instances.shape == scene.channels[0].data.shape
    assert scene.boxes and all(text.startswith("crop ") for *_, text in scene.boxes)
    assert scene.title.startswith("activeseg round 1")


@pytest.mark.slow
def test_view_renders_a_screenshot_without_a_screen(looped: Project, tmp_path: Path) -> None:
    out = tmp_path / "round1.png"
    result = runner.invoke(app, ["view", "1", "--screenshot", str(out), "-p", str(looped.root)])
    assert result.exit_code == 0, result.output
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert pixels.shape[0] > 100 and pixels.mean() > 1  # the raw was drawn, not a black canvas
    yellowish = (np.abs(pixels - YELLOW * 0.75) < 60).all(axis=-1)
    assert yellowish.sum() > 50  # the box around a picked crop


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Yield a headless Chromium (Debian's chromium and chromium-driver) driven by selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,1600")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_the_report_opens_in_a_browser_with_every_image(
    looped: Project, tmp_path: Path, browser: Any
) -> None:
    out = tmp_path / "round1.html"
    result = runner.invoke(app, ["report", "1", "--out", str(out), "-p", str(looped.root)])
    assert result.exit_code == 0, result.output
    browser.get(out.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
    )
    assert len(images) >= 3  # the learning curves and each picked crop's task images
    assert all(complete and width > 0 for _, complete, width in images), images
    assert any(alt.endswith("overview") for alt, _, _ in images)
    text = browser.find_element("tag name", "body").text
    assert "Crops picked" in text and "Learning curves" in text and "why" in text
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert "http" not in out.read_text().replace("http-equiv", "")  # nothing to fetch
