"""The annotator's seat in a real browser: log in, open a pushed task, step through z, paint a
stroke, choose the status, submit, and ingest what was painted.

Headless Chromium and its driver from Debian's packages (``apt-get install chromium
chromium-driver``), driven by selenium; nothing is downloaded. Skipped when they are missing.
Screenshots go to ``$ACTIVESEG_ARTIFACTS`` (else the test's temporary directory).

The login: ``$LABEL_STUDIO_USERNAME`` / ``$LABEL_STUDIO_PASSWORD`` for an external server;
for a server the tests started, its user and the password kept in its data directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from activeseg.data.volumes import read_crop_labels
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.labelstudio.server import DEFAULT_USERNAME, PASSWORD_FILE
from activeseg.pool import tasks as pool_tasks
from activeseg.workflows.ingest import ingest_annotations
from activeseg.workflows.loop import run_round
from activeseg.workflows.push import push_selected
from activeseg.workflows.simulate import create_demo_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 60.0


@pytest.fixture(scope="module")
def login(ls_connection: Any) -> tuple[str, str]:
    """Return (user, password) of the web UI; skip when it is not known."""
    user = os.environ.get("LABEL_STUDIO_USERNAME") or DEFAULT_USERNAME
    password = os.environ.get("LABEL_STUDIO_PASSWORD")
    if password is None and ls_connection.server is not None:
        password = (ls_connection.server.data_dir / PASSWORD_FILE).read_text().strip()
    if not password:
        pytest.skip("set LABEL_STUDIO_USERNAME and LABEL_STUDIO_PASSWORD for an external server")
    return user, password


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Yield a headless Chromium driven by selenium; skip without Debian's packages."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver packages")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1600,1100")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Return where screenshots go."""
    folder = Path(os.environ.get("ACTIVESEG_ARTIFACTS") or tmp_path) / "annotator-browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def eventually(check: Callable[[], Any], what: str) -> Any:
    """Return the first truthy result of ``check`` (retried on errors) within WAIT_S seconds."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + WAIT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = check()
        except WebDriverException as exc:  # stale or not yet rendered: the page re-renders
            last = exc
        else:
            if found:
                return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} ({last!r:.200})")


def click(driver: Any, css_or_xpath: str) -> None:
    """Scroll an element to the middle of the window and click it (retried while re-rendered)."""
    from selenium.webdriver.common.by import By

    by = By.XPATH if css_or_xpath.startswith("/") else By.CSS_SELECTOR

    def attempt() -> bool:
        element = driver.find_element(by, css_or_xpath)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()
        return True

    eventually(attempt, css_or_xpath)


def page_indicator(driver: Any) -> str:
    """Return the pager's text, e.g. '3 of 16'."""
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, ".lsf-pagination__page-indicator").text)


NEXT = ".lsf-pagination__btn_arrow-right:not(.lsf-pagination__btn_arrow-right-double)"
PREVIOUS = ".lsf-pagination__btn_arrow-left:not(.lsf-pagination__btn_arrow-left-double)"


def test_an_annotator_steps_through_z_paints_submits_and_it_is_ingested(
    ls_connection: Any,
    ls_client: LabelStudioClient,
    login: tuple[str, str],
    browser: Any,
    artifacts: Path,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    project = create_demo_project(tmp_path / "project", "smoke")
    info = run_round(project, until="select")
    pushed = push_selected(project, info, client=ls_client)
    task_id = pushed.tasks[0]
    with project.session() as session:
        task = next(t for t in pool_tasks.list_tasks(session) if t.ls_task_id == task_id)
    pages = task.pushed["pages"]
    assert pages[0] in task.slices  # it opens on a label page

    user, password = login
    browser.get(f"{ls_connection.url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(password)
    click(browser, "button[type=submit]")
    eventually(lambda: "/login" not in browser.current_url, "the login")

    browser.get(f"{ls_connection.url}/projects/{pushed.project_id}/data?task={task_id}")
    assert eventually(lambda: page_indicator(browser), "the pager") == f"1 of {len(pages)}"
    time.sleep(1.0)  # the editor settles (images decoded)
    browser.save_screenshot(str(artifacts / "1-opened.png"))

    # Free movement in z: forward two pages and back.
    for expected in (2, 3):
        click(browser, NEXT)
        eventually(lambda n=expected: page_indicator(browser).startswith(f"{n} "), "next page")
    browser.save_screenshot(str(artifacts / "2-stepped.png"))
    for expected in (2, 1):
        click(browser, PREVIOUS)
        eventually(lambda n=expected: page_indicator(browser).startswith(f"{n} "), "page back")

    # Paint a stroke with label n1 on the first page (a label slice).
    click(browser, "//*[contains(@class,'lsf-label__text') and normalize-space(.)='n1']")
    canvas = browser.find_elements(By.CSS_SELECTOR, "canvas")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", canvas)
    time.sleep(0.5)
    stroke = ActionChains(browser).move_to_element_with_offset(canvas, -150, 0).click_and_hold()
    stroke.move_by_offset(150, 30).move_by_offset(100, 20).release().perform()
    time.sleep(0.5)
    browser.save_screenshot(str(artifacts / "3-painted.png"))

    click(browser, "//label[.//text()[normalize-space(.)='done']]")
    click(browser, "//button[normalize-space(.)='Submit']")
    eventually(lambda: ls_client.get_task(task_id).get("annotations"), "the submitted annotation")
    browser.save_screenshot(str(artifacts / "4-submitted.png"))

    result = ingest_annotations(project, client=ls_client)
    assert result.ingested == 1 and not result.errors
    with project.session() as session:
        current = pool_tasks.current_annotation(session, task.id)
    assert current is not None and current.label_path is not None
    labels = read_crop_labels(project.resolve(current.label_path))
    painted = labels.labels.astype(bool).sum(axis=(1, 2))
    assert painted[pages[0]] > 0  # the stroke, on the slice of the page painted
    assert np.flatnonzero(labels.mask.any(axis=(1, 2))).tolist() == sorted(task.slices)
    assert not painted[[z for z in range(len(painted)) if z not in task.slices]].any()
