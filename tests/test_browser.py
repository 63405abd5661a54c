"""A real browser against the demo: Debian's Chromium, headless, driven through Selenium and
Debian's chromedriver (the same Chromium build, so the two always match; no browser or driver
is downloaded).

The demo is started as a user starts it (``python -m secure_mw.demo``); the browser
is sent to the built-in login, fails once, signs in with the password the demo printed, sees
who it is on a page styled through its CSP nonce with no CSP violation in the console, and
signs out through the confirmation page. On the way it opens the demo's page that needs a second
step: the first time it enrols a TOTP authenticator (the QR code, drawn without breaking the
CSP, and the key in text, from which the test computes the code as an authenticator app
would); after signing in again, only a code is asked for, and a code already used is refused.
Screenshots of the login page, the protected page, the TOTP enrolment page and the two-step
page are saved in ``test-artifacts/``.

Chromium and chromedriver are external programs (Debian's ``chromium`` and ``chromium-driver``),
``selenium`` a Python package: a missing one skips the test, or fails it under
``SECURE_MW_REQUIRE_EXTERNAL=1``.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.servers import find_program, free_port, skip_or_fail, wait_for_port

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SESSION_COOKIE = "__Host-secure_mw_session"
WAIT = 20.0   # seconds, for each explicit wait (a login answer takes the timing guard's delay)

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-dev-shm-usage", "--window-size=1280,900",   # a small /dev/shm in containers
)


def require_module(name: str) -> ModuleType:
    """Import a Python package the test needs: skip when missing, or fail under
    ``SECURE_MW_REQUIRE_EXTERNAL=1`` (unlike ``pytest.importorskip``, which always skips)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(f"Python package {name.partition('.')[0]!r} is not installed ({exc})")


# -- the demo, started as a user starts it ------------------------------------------------------

@dataclass
class Demo:
    base: str
    password: str
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)


def _read_banner(proc: subprocess.Popen[str], output: list[str]) -> str:
    """The demo user's password, from the lines the demo prints before it serves."""
    assert proc.stdout is not None
    password = None
    for line in proc.stdout:
        output.append(line)
        match = re.search(r"sign in as 'demo' with password '([^']+)'", line)
        if match:
            password = match.group(1)
        if "open http://" in line:
            break
    if password is None:
        raise AssertionError("the demo printed no password:\n" + "".join(output))
    return password


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "secure_mw.demo", "--port", str(port),
         "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    drain: threading.Thread | None = None
    try:
        password = _read_banner(proc, output)
        # Keep reading its output (the audit log) so that a full pipe never blocks it.
        drain = threading.Thread(target=lambda: output.extend(proc.stdout or ()), daemon=True)
        drain.start()
        wait_for_port(port, timeout=30, proc=proc)  # type: ignore[arg-type]
        yield Demo(f"http://127.0.0.1:{port}", password, proc, output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if drain is not None:
            drain.join(timeout=5)


# -- the browser --------------------------------------------------------------------------------

@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[WebDriver]:
    chromium = find_program("chromium")
    chromedriver = find_program("chromedriver")
    webdriver = require_module("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager is never run, nothing is downloaded.
    service = webdriver.ChromeService(executable_path=chromedriver,
                                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


class Console:
    """Everything the browser's console logged, collected page after page."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self.entries: list[dict[str, Any]] = []

    def collect(self) -> list[dict[str, Any]]:
        new = list(self.driver.get_log("browser"))
        self.entries.extend(new)
        return new

    def csp_violations(self) -> list[str]:
        self.collect()
        return [str(e.get("message", "")) for e in self.entries
                if "Content Security Policy" in str(e.get("message", ""))]


def path_of(driver: WebDriver) -> str:
    return urlsplit(driver.current_url).path


def wait_for_path(driver: WebDriver, path: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, WAIT).until(
            lambda d: path_of(d) == path
            and d.execute_script("return document.readyState") == "complete")
    except TimeoutException:
        alerts = [a.text for a in driver.find_elements(By.CSS_SELECTOR, '[role="alert"]')]
        raise AssertionError(f"the browser did not reach {path} in {WAIT:g} s: it shows "
                             f"{driver.current_url} ({driver.title!r}, alerts {alerts})"
                             ) from None


def sign_out(driver: WebDriver, *, link_from: str | None = None) -> None:
    """Sign out through the "Sign out" link (of ``link_from``, or of the page shown): its
    confirmation page, its button, then the signed-out page without a session cookie."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    if link_from is not None:
        driver.get(urlsplit(driver.current_url)._replace(path=link_from, query="").geturl())
        wait_for_path(driver, link_from)
    WebDriverWait(driver, WAIT).until(
        ec.element_to_be_clickable((By.LINK_TEXT, "Sign out"))).click()
    wait_for_path(driver, "/.auth/logout")
    button = WebDriverWait(driver, WAIT).until(ec.element_to_be_clickable(
        (By.XPATH, "//form//button[normalize-space()='Sign out']")))
    button.click()
    wait_for_path(driver, "/.auth/logged-out")
    assert "You are signed out." in driver.find_element(By.TAG_NAME, "body").text
    assert driver.get_cookie(SESSION_COOKIE) is None


def current_code(driver: WebDriver, secret: str, *, after: int = -1,
                 margin: float = 2.0) -> tuple[str, int]:
    """The code an authenticator app shows now for ``secret``, and its time step: one with at
    least ``margin`` seconds left in its step, from a step later than ``after`` (a code is
    accepted once). Waits on the wall clock, as the user of an authenticator does."""
    from selenium.webdriver.support.ui import WebDriverWait

    from secure_mw.login.totp import TOTP

    totp = TOTP(issuer="x")    # only the secret, digits, period and algorithm matter

    def usable(_: object) -> tuple[str, int] | None:
        now = time.time()
        step = totp.step(now)
        if step > after and (step + 1) * totp.period - now >= margin:
            return totp.code(secret, step), step
        return None

    # At most a whole period (waiting for a step after `after`) plus `margin`.
    return WebDriverWait(driver, totp.period * 2 + margin, poll_frequency=0.1).until(
        usable, message="no usable TOTP step came")


def computed(driver: WebDriver, prop: str, selector: str = "body") -> str:
    return str(driver.execute_script(
        "return getComputedStyle(document.querySelector(arguments[0]))"
        ".getPropertyValue(arguments[1]);", selector, prop))


# -- the scenario -------------------------------------------------------------------------------

def test_browser_signs_in_and_out_of_the_demo(chrome: WebDriver, demo: Demo) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver, console = chrome, Console(chrome)
    wait = WebDriverWait(driver, WAIT)
    ARTIFACTS.mkdir(exist_ok=True)

    # A new visitor is sent to the login page: labelled fields, styled by its hashed <style>.
    driver.get(demo.base + "/")
    wait_for_path(driver, "/.auth/login")
    assert urlsplit(driver.current_url).query == "rd=/"
    assert driver.title == "Sign in"
    username = driver.find_element(By.ID, "username")
    password = driver.find_element(By.ID, "password")
    assert username.accessible_name == "User name"
    assert password.accessible_name == "Password"
    assert password.get_attribute("type") == "password"
    assert driver.switch_to.active_element == username   # autofocus: type straight away
    assert computed(driver, "background-color") == "rgb(244, 245, 247)"
    assert driver.save_screenshot(str(ARTIFACTS / "login-page.png"))

    # A wrong password: the same page again, with the error announced (role=alert).
    username.send_keys("demo")
    password.send_keys("not the password", Keys.ENTER)
    wait.until(ec.staleness_of(username))
    alert = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, '[role="alert"]')))
    assert alert.text == "Incorrect user name or password."
    assert path_of(driver) == "/.auth/login"
    assert driver.get_cookie(SESSION_COOKIE) is None

    # The right password, read from the demo's output: back on the page first asked for.
    driver.find_element(By.ID, "username").send_keys("demo")
    driver.find_element(By.ID, "password").send_keys(demo.password)
    driver.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    wait_for_path(driver, "/")
    who = wait.until(ec.visibility_of_element_located((By.ID, "who")))
    assert who.text == "Demo User"
    assert "Signed in as Demo User" in driver.find_element(By.TAG_NAME, "body").text
    # The session cookie, __Host- and Secure, was kept by the browser on http://127.0.0.1
    # (a potentially trustworthy origin).
    session = driver.get_cookie(SESSION_COOKIE)
    assert session is not None, driver.get_cookies()
    assert session["secure"] is True and session["httpOnly"] is True
    assert session["path"] == "/" and session["domain"] == "127.0.0.1"   # host-only
    assert driver.save_screenshot(str(ARTIFACTS / "protected-page.png"))

    # The security headers, honoured: the nonce'd <style> styled the page, and the browser
    # reported no CSP violation on any page so far.
    assert computed(driver, "max-width") == "736px"          # 46rem
    assert "system-ui" in computed(driver, "font-family")
    assert console.csp_violations() == [], console.entries

    # A page that needs a second step: the first time, the enrolment page (a QR code drawn in
    # inline SVG, with no CSP violation, and the key in text for those who cannot scan).
    one_factor = session["value"]
    driver.find_element(By.LINK_TEXT, "A page that needs a second step").click()
    wait_for_path(driver, "/.auth/2fa")
    assert urlsplit(driver.current_url).query == "rd=/two-factor"
    assert driver.title == "Set up two-step sign-in"
    qr = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "figure svg")))
    assert qr.size["width"] > 100 and qr.size["height"] > 100, qr.size
    code_field = driver.find_element(By.ID, "code")
    assert code_field.accessible_name == "Six-digit code"
    assert driver.switch_to.active_element == code_field
    assert console.csp_violations() == [], console.entries
    assert driver.save_screenshot(str(ARTIFACTS / "totp-enrolment.png"))
    secret = driver.find_element(By.CSS_SELECTOR, "figcaption code").text
    assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret

    # The code an authenticator app computes from that key: the page needing it is reached,
    # under a new session id (the one-factor session is gone).
    code, used_step = current_code(driver, secret)
    code_field.send_keys(code)
    driver.find_element(By.XPATH, "//form//button[normalize-space()='Verify']").click()
    wait_for_path(driver, "/two-factor")
    passed = wait.until(ec.visibility_of_element_located((By.ID, "two-factor")))
    assert passed.text == "Demo User passed the second step (TOTP)."
    two_factor = driver.get_cookie(SESSION_COOKIE)
    assert two_factor is not None and two_factor["value"] != one_factor
    assert console.csp_violations() == [], console.entries
    assert driver.save_screenshot(str(ARTIFACTS / "two-factor-page.png"))
    driver.find_element(By.LINK_TEXT, "Back").click()
    wait_for_path(driver, "/")
    wait.until(ec.visibility_of_element_located((By.ID, "who")))

    # No CSP violation so far, and the console would have shown one: a <style> without the
    # nonce is refused.
    driver.execute_script(
        "const s = document.createElement('style');"
        "s.textContent = 'body{max-width:1px}'; document.head.appendChild(s);")
    wait.until(lambda _: console.csp_violations(),
               message="the browser logged no CSP violation for a <style> without nonce")
    assert computed(driver, "max-width") == "736px"
    injected = len(console.csp_violations())   # any later one is a finding

    # Sign out: a confirmation page with a button, then the signed-out page.
    sign_out(driver)

    # Signed in again, the page needing a second step asks for a code only: the key is
    # enrolled. The code used before is refused (each step is accepted once); a code of a
    # later step lets the browser in.
    driver.get(demo.base + "/two-factor")
    wait_for_path(driver, "/.auth/login")
    driver.find_element(By.ID, "username").send_keys("demo")
    driver.find_element(By.ID, "password").send_keys(demo.password, Keys.ENTER)
    wait_for_path(driver, "/.auth/2fa")
    assert urlsplit(driver.current_url).query == "rd=/two-factor"
    assert driver.title == "Two-step sign-in"
    assert driver.find_elements(By.TAG_NAME, "svg") == []
    assert driver.find_elements(By.TAG_NAME, "figcaption") == []
    assert secret not in driver.page_source
    code_field = driver.find_element(By.ID, "code")
    code_field.send_keys(code, Keys.ENTER)
    wait.until(ec.staleness_of(code_field))
    alert = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, '[role="alert"]')))
    assert alert.text == "That code is not valid."
    assert path_of(driver) == "/.auth/2fa"
    code, _ = current_code(driver, secret, after=used_step)
    driver.find_element(By.ID, "code").send_keys(code, Keys.ENTER)
    wait_for_path(driver, "/two-factor")
    passed = wait.until(ec.visibility_of_element_located((By.ID, "two-factor")))
    assert passed.text == "Demo User passed the second step (TOTP)."
    assert console.csp_violations()[injected:] == [], console.entries
    sign_out(driver, link_from="/")

    # The protected page asks for the login again.
    driver.get(demo.base + "/")
    wait_for_path(driver, "/.auth/login")
    assert driver.find_element(By.ID, "password").is_displayed()
    assert demo.proc.poll() is None


def test_browser_shows_the_apps_own_sign_in_page(chrome: WebDriver, tmp_path: Path) -> None:
    """The layout, stylesheet and logo of docs/login.md's example in a real browser: the
    stylesheet served under /.auth/assets/ and the layout's nonced <style> both apply, the
    logo loads, the console shows no CSP violation, and the form in the layout signs in."""
    from selenium.webdriver.common.by import By

    from secure_mw import Settings, asgi
    from secure_mw.guards.timing import LoginDelay
    from secure_mw.login import UsersFile
    from secure_mw.session import MemorySessionStore
    from tests.apps import asgi_inner, uvicorn_server
    from tests.test_local_login_e2e import FAST, KEY
    from tests.test_login_pages import write_docs_pages

    pages = write_docs_pages(tmp_path)
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="correct horse")
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]}, "local_users": {"file": str(users.path)},
        "pages": pages}, environ={}, base_dir=tmp_path)
    app = asgi.protect(asgi_inner(), settings, users=users, store=MemorySessionStore(),
                       delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
    console = Console(chrome)
    with uvicorn_server(app) as base:
        chrome.get(base + "/.auth/login?rd=/books")
        wait_for_path(chrome, "/.auth/login")
        assert chrome.title == "Sign in · Acme Books"
        assert computed(chrome, "background-color", "header") == "rgb(12, 34, 56)"
        assert computed(chrome, "max-width", "main") == "448px"
        assert chrome.execute_script(
            "return document.querySelector('header img').naturalWidth") == 10
        ARTIFACTS.mkdir(exist_ok=True)
        chrome.save_screenshot(str(ARTIFACTS / "custom-login.png"))
        chrome.find_element(By.ID, "username").send_keys("alice")
        chrome.find_element(By.ID, "password").send_keys("correct horse")
        chrome.find_element(By.CSS_SELECTOR, "main form button").click()
        wait_for_path(chrome, "/books")
        assert '"sub":"alice"' in chrome.find_element(By.TAG_NAME, "body").text.replace(
            " ", "")
    assert console.csp_violations() == []
