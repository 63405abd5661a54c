"""FastAPI's /docs and /redoc in a real browser (headless Chromium through Selenium, as
tests/test_browser.py) under secure_mw's Content-Security-Policy: the app on uvicorn at
127.0.0.1, Swagger UI's and ReDoc's files (tests/docs_ui, npm) served from localhost on
another port — another origin, as a CDN is. FastAPI's own pages stay blank under the policy;
the pages SecureMW serves render, with no script or style refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.staticfiles import StaticFiles

from secure_mw import Settings
from secure_mw.contrib.fastapi import SecureMW, require
from tests.apps import uvicorn_server
from tests.servers import ensure_npm_packages
from tests.test_browser import WAIT, Console, chrome

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

__all__ = ["chrome"]      # the fixture, shared with tests/test_browser.py

ASSETS = Path(__file__).resolve().parent / "docs_ui"


@pytest.fixture(scope="module")
def cdn() -> Iterator[str]:
    ensure_npm_packages(ASSETS)
    static = Starlette()
    static.mount("/", StaticFiles(directory=ASSETS / "node_modules"))
    with uvicorn_server(static) as url:
        yield url.replace("127.0.0.1", "localhost")       # another origin than the app's


def docs_app(cdn: str, docs: bool) -> Any:
    settings = Settings.from_mapping({"access_control": {"rules": [
        {"resources": [r"^/(docs|redoc|openapi\.json)"], "policy": "bypass"},
        {"policy": "authenticated"}]}}, environ={})
    app = FastAPI(title="Browser test")
    assets = {"swagger_js_url": f"{cdn}/swagger-ui-dist/swagger-ui-bundle.js",
              "swagger_css_url": f"{cdn}/swagger-ui-dist/swagger-ui.css",
              "redoc_js_url": f"{cdn}/redoc/bundles/redoc.standalone.js"}
    app.add_middleware(SecureMW, settings=settings, docs=assets if docs else False)

    @app.get("/items/{number}", dependencies=[Depends(require(groups=["admins"]))])
    def item(number: int) -> dict[str, int]:
        return {"number": number}

    return app


def count(driver: WebDriver, selector: str) -> int:
    return int(driver.execute_script(
        "return document.querySelectorAll(arguments[0]).length", selector))


def wait_for(driver: WebDriver, selector: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT).until(lambda d: count(d, selector) > 0,
                                      message=f"nothing matched {selector!r}")


def test_fastapis_own_docs_are_blank_under_the_policy(chrome: WebDriver, cdn: str) -> None:
    console = Console(chrome)
    with uvicorn_server(docs_app(cdn, docs=False)) as base:
        chrome.get(base + "/docs")
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(chrome, WAIT).until(lambda _: console.csp_violations())
        assert count(chrome, ".opblock") == 0
    assert any("script-src" in v for v in console.csp_violations())


def test_swagger_ui_renders_with_no_violation(chrome: WebDriver, cdn: str) -> None:
    console = Console(chrome)
    with uvicorn_server(docs_app(cdn, docs=True)) as base:
        chrome.get(base + "/docs")
        wait_for(chrome, ".opblock")
        wait_for(chrome, ".authorization__btn")       # the lock of the admin-only route
        from selenium.webdriver.common.by import By

        chrome.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
        wait_for(chrome, ".opblock-body")           # the route opens: parameters, responses
        assert "/items/{number}" in chrome.page_source
        assert console.csp_violations() == [], console.entries


def test_redoc_renders_and_only_its_documented_leftovers_are_refused(
        chrome: WebDriver, cdn: str) -> None:
    console = Console(chrome)
    with uvicorn_server(docs_app(cdn, docs=True)) as base:
        chrome.get(base + "/redoc")
        wait_for(chrome, "[data-section-id]")
        assert "/items/{number}" in chrome.page_source
        left = console.csp_violations()
    # Scripts, the stylesheets ReDoc inserts with the nonce, its search worker: all allowed.
    # What its bundle inserts before it reads the nonce, and the Redocly logo, are not.
    for violation in left:
        assert "script-src" not in violation and "worker" not in violation, violation
        assert "Applying inline style" in violation or "cdn.redoc.ly" in violation, violation
