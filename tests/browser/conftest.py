"""Browser tests: Debian's Chromium, driven by Playwright, against tokenbank as it really runs.

The service and its Stripe emulator are separate processes started through the ``tokenbank``
command, the way an operator starts them, so a page sees the same app, settings and catalog
sync a deployment would. Its mail goes over SMTP to a server of the test's own
(``tests.smtp``), where a test reads it and follows its link in the browser, as a user
would. Chromium comes from Debian's packages (installed on first use when missing), never
from Playwright's own downloads.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Response,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests import debian
from tests.processes import (
    REPO,
    TOKENBANK,
    Process,
    clean_env,
    cli_error,
    free_ports,
    wait_until_up,
)
from tests.smtp import Received, SmtpServer

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CJK_FONT_PACKAGE = "fonts-noto-cjk"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
]
# Covers a first run that installs Chromium with apt inside the first test's set-up.
BROWSER_TEST_TIMEOUT = 900
START_TIMEOUT = 30.0
LOG_TAIL_LINES = 80

STRIPE_SECRET_KEY = "sk_test_local_emulator"
STRIPE_PUBLISHABLE_KEY = "pk_test_local_emulator"
STRIPE_WEBHOOK_SECRET = "whsec_local_emulator"
MAIL_FROM = "tokenbank <billing@tokenbank.test>"
#: How long a mail may take from the page that sends it to the test's SMTP server.
MAIL_TIMEOUT = 20.0

PurchaseFlow = Literal["checkout", "payment_intent", "embedded"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives Chromium against a running tokenbank")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is a browser test: marked, and given time for a first
    Chromium install (the project's default timeout is sized for in-process tests)."""
    here = Path(__file__).parent
    for item in items:
        if here not in item.path.parents:
            continue
        item.add_marker(pytest.mark.browser)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(BROWSER_TEST_TIMEOUT))


# --- Chromium ----------------------------------------------------------------------------


def _has_cjk_font() -> bool:
    if shutil.which("fc-list"):
        found = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, check=False)
        if found.stdout.strip():
            return True
    status = subprocess.run(
        ["dpkg", "-s", CJK_FONT_PACKAGE], capture_output=True, text=True, check=False
    )
    return status.returncode == 0 and "Status: install ok installed" in status.stdout


def _missing_packages() -> list[str]:
    missing = [] if CHROMIUM.exists() else ["chromium"]
    if not _has_cjk_font():
        missing.append(CJK_FONT_PACKAGE)  # pages in Chinese would render as empty boxes
    return missing


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    """Debian's Chromium and a CJK font, installed with apt when missing (``tests.debian``)."""
    debian.require(_missing_packages, "Chromium for the browser tests")
    return CHROMIUM


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright, chromium_executable: Path) -> Iterator[Browser]:
    """One Chromium for the session; tests isolate themselves with their own contexts."""
    browser = playwright.chromium.launch(
        executable_path=str(chromium_executable), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


class NewPage(Protocol):
    def __call__(
        self, *, locale: str = "en-US", viewport: ViewportSize | None = None, **options: Any
    ) -> Page: ...


@pytest.fixture
def new_page(browser: Browser) -> Iterator[NewPage]:
    """A page in a fresh browser context (its own cookies and storage), closed after the
    test. ``options`` go to ``Browser.new_context`` (``timezone_id``, ``color_scheme``...)."""
    contexts: list[BrowserContext] = []

    def make(
        *, locale: str = "en-US", viewport: ViewportSize | None = None, **options: Any
    ) -> Page:
        if viewport is not None:
            options["viewport"] = viewport
        context = browser.new_context(locale=locale, **options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: NewPage) -> Page:
    """An English page with the default viewport, for tests that need nothing else."""
    return new_page()


# --- screenshots -------------------------------------------------------------------------


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page PNG at ``test-artifacts/screenshots/<name>.png``, kept for review."""
    path = SCREENSHOTS / f"{name}.png"
    if not path.resolve().is_relative_to(SCREENSHOTS):
        raise ValueError(f"screenshot name {name!r} leaves {SCREENSHOTS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=path, full_page=True)
    return path


@pytest.fixture
def screenshot() -> Callable[[Page, str], Path]:
    return save_screenshot


# --- the service and its Stripe emulator ---------------------------------------------------


@dataclass
class LiveService:
    """A running tokenbank and its Stripe emulator, each in its own process, on one SQLite
    file in ``directory``; ``smtp`` is the mail server its mail goes to."""

    base_url: str
    emulator_url: str
    database_url: str
    env: dict[str, str]
    directory: Path
    smtp: SmtpServer
    processes: list[Process] = field(default_factory=list)

    def mail(self, address: str, *, count: int = 1, timeout: float = MAIL_TIMEOUT) -> Received:
        """The ``count``-th mail to ``address`` (the first by default), once it arrived."""
        return self.smtp.wait_for(address, count, timeout)[count - 1]

    def open_mail_link(
        self, page: Page, address: str, prefix: str, *, count: int = 1
    ) -> tuple[Received, Response | None]:
        """Open, in ``page``, the link starting with ``prefix`` of the ``count``-th mail to
        ``address``, as its reader would; the mail, and the page's answer."""
        received = self.mail(address, count=count)
        path = received.link(prefix)
        assert f"{self.base_url}{path}" in received.text, "the link leaves this instance"
        return received, page.goto(f"{self.base_url}{path}")

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``tokenbank ARGS...`` against this instance's database and settings."""
        try:
            return subprocess.run(
                [str(TOKENBANK), *args],
                env=self.env,
                cwd=self.directory,
                input=input,
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            raise cli_error(exc) from None

    def create_user(
        self, user_id: str, email: str, password: str, *, admin: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """A user who can sign in to the pages with ``email`` and ``password``."""
        args = ["users", "create", user_id, "--email", email, "--password-stdin"]
        return self.cli(*args, *(["--admin"] if admin else []), input=password + "\n")

    def api_key(self, *scopes: str, name: str = "browser-tests") -> str:
        """A new API key's secret (scopes ``read``, ``spend``, ``admin``; none means spend)."""
        done = self.cli("apikeys", "create", "--name", name, *(f"--scope={s}" for s in scopes))
        return done.stdout.strip().splitlines()[-1].strip()

    def logs(self) -> str:
        return "\n".join(
            f"--- {process.name} ({process.log_path}) ---\n{process.output()}"
            for process in self.processes
        )

    def start(self, name: str, *args: str) -> None:
        self.processes.append(Process.start(name, args, env=self.env, directory=self.directory))

    def wait_until_up(self, url: str) -> None:
        """Poll ``url`` until it answers 200, failing early when a process has died."""
        problem = wait_until_up(url, self.processes, timeout=START_TIMEOUT)
        if problem is not None:
            self.fail_start(problem)

    def fail_start(self, why: str) -> None:
        logs = self.logs()
        self.stop()
        pytest.fail(f"tokenbank did not start: {why}\n{logs}", pytrace=False)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.smtp.stop()


def _start_service(
    directory: Path, catalog: Path, purchase_flow: PurchaseFlow, extra_env: Mapping[str, str]
) -> LiveService:
    port, emulator_port, smtp_port, models_port = free_ports(4)
    base_url, emulator_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{emulator_port}"
    database_url = f"sqlite:///{directory / 'tokenbank.db'}"
    smtp = SmtpServer(smtp_port)
    smtp.start()
    env = clean_env(
        {
            "TOKENBANK_DATABASE_URL": database_url,
            "TOKENBANK_PUBLIC_URL": base_url,
            "TOKENBANK_SECRET_KEY": secrets.token_urlsafe(48),
            "TOKENBANK_VAR_DIR": str(directory / "var"),
            "TOKENBANK_CATALOG": str(catalog),
            "TOKENBANK_PURCHASE_FLOW": purchase_flow,
            # Every test signs in from 127.0.0.1 against a shared instance.
            "TOKENBANK_LOGIN_LIMIT_PER_IP": "10000/minute",
            "TOKENBANK_LOGIN_LIMIT_PER_EMAIL": "10000/minute",
            "TOKENBANK_REGISTER_LIMIT_PER_IP": "10000/minute",
            "TOKENBANK_RESET_LIMIT_PER_IP": "10000/minute",
            "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY,
            "STRIPE_PUBLISHABLE_KEY": STRIPE_PUBLISHABLE_KEY,
            "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
            "STRIPE_API_BASE": emulator_url,
            # Each app process sends its outbox to this test's SMTP server.
            "TOKENBANK_SMTP_URL": smtp.url,
            "TOKENBANK_MAIL_FROM": MAIL_FROM,
            "TOKENBANK_MAIL_SENDER": "app",
            # The shipped models file, on a model emulator of this instance's own.
            "TOKENBANK_MODELS": str(REPO / "catalogs" / "models.toml"),
            "TOKENBANK_LLM_EMULATOR_URL": f"http://127.0.0.1:{models_port}/v1",
            **extra_env,
        }
    )
    service = LiveService(base_url, emulator_url, database_url, env, directory, smtp)
    service.start(
        "stripe-emulator",
        *("stripe-emulator", "--host", "127.0.0.1", "--port", str(emulator_port)),
        *("--webhook-url", f"{base_url}/webhooks/stripe", "--public-url", emulator_url),
    )
    service.wait_until_up(f"{emulator_url}/_emulator/health")
    service.start("llm-emulator", "llm-emulator", "--port", str(models_port), "--token-ms", "40")
    service.wait_until_up(f"http://127.0.0.1:{models_port}/_emulator/health")
    for step in (("db", "upgrade"), ("packages", "sync")):
        try:
            service.cli(*step)
        except subprocess.CalledProcessError as exc:
            service.fail_start(f"`tokenbank {' '.join(step)}` failed:\n{exc.stdout}{exc.stderr}")
    service.start("tokenbank", "serve", "--host", "127.0.0.1", "--port", str(port))
    service.wait_until_up(f"{base_url}/readyz")
    return service


class StartService:
    """Start (or reuse) a tokenbank with its Stripe emulator, one per distinct option set.

    ``catalog`` is a catalog TOML (default ``catalogs/default.toml``), ``purchase_flow`` sets
    ``TOKENBANK_PURCHASE_FLOW`` and ``extra_env`` adds or overrides environment variables.
    Instances live for the session, so tests sharing options share the database: give
    users and keys names unique to the test.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.started: dict[tuple[str, str, tuple[tuple[str, str], ...]], LiveService] = {}

    def __call__(
        self,
        *,
        catalog: Path | str | None = None,
        purchase_flow: PurchaseFlow = "checkout",
        extra_env: Mapping[str, str] | None = None,
    ) -> LiveService:
        path = (REPO / (catalog or "catalogs/default.toml")).resolve()
        extra = dict(extra_env or {})
        key = (str(path), purchase_flow, tuple(sorted(extra.items())))
        if key not in self.started:
            directory = self.tmp_path_factory.mktemp(f"tokenbank-{path.stem}-{purchase_flow}")
            self.started[key] = _start_service(directory, path, purchase_flow, extra)
        return self.started[key]

    def stop(self) -> None:
        for service in self.started.values():
            service.stop()


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartService]:
    """The factory for running instances, stopped at the end of the session."""
    factory = StartService(tmp_path_factory)
    yield factory
    factory.stop()


# --- what a user does in the pages ----------------------------------------------------------

#: Long and hard to guess (zxcvbn's score 4): a password the pages accept.
PASSWORD = "correct horse battery"


def unique_email(prefix: str) -> str:
    """An address no other test uses: instances, and their databases, are shared."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


def register(
    page: Page, service: LiveService, email: str, name: str = "Ada", password: str = PASSWORD
) -> Response:
    """Fill in and send the sign-up form (in English or Chinese); the answer, a "check your
    inbox" page, signed out (the form's own URL, no redirect)."""
    page.goto(f"{service.base_url}/register")
    page.get_by_label(re.compile("^(Name|姓名)")).fill(name)
    page.get_by_label(re.compile("^(Email|邮箱)")).fill(email)
    page.get_by_label(re.compile("^(Password|密码)")).fill(password)
    with page.expect_navigation() as answer:
        page.locator("form[action='/register'] button[type=submit]").click()
    response = answer.value
    assert response is not None and response.status == 200, response
    assert page.url == f"{service.base_url}/register"
    expect(page.locator("form[action='/register']")).to_have_count(0)
    return response


def show_mail(page: Page, received: Received) -> None:
    """Show a mail's HTML part in ``page``, as a mail program would: in a blank page of its
    own (written into one of ours, it would fall under that page's CSP), its links live."""
    page.goto("about:blank")
    page.set_content(received.html)


def confirm_address(page: Page, service: LiveService, email: str, *, count: int = 1) -> Received:
    """Open the confirmation link of the ``count``-th mail to ``email`` and press its one
    button ("Confirm my address"); signed out, the browser lands on the sign-in page."""
    received, opened = service.open_mail_link(page, email, "/verify/", count=count)
    assert opened is not None and opened.status == 200, opened
    page.locator("form[action^='/verify/'] button[type=submit]").click()
    page.wait_for_url(f"{service.base_url}/login?done=verified")
    return received


def sign_in(page: Page, service: LiveService, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{service.base_url}/login")
    page.get_by_label(re.compile("^(Email|邮箱)")).fill(email)
    page.get_by_label(re.compile("^(Password|密码)")).fill(password)
    page.locator("form[action='/login'] button[type=submit]").click()
    page.wait_for_url(f"{service.base_url}/dashboard")


def register_confirmed(page: Page, service: LiveService, email: str, name: str = "Ada") -> None:
    """Sign up in the pages, confirm the address with the mailed link, and sign in: a new
    user who may buy, on the dashboard."""
    register(page, service, email, name)
    confirm_address(page, service, email)
    sign_in(page, service, email)


def pay_on_hosted_page(page: Page, card: str) -> None:
    """Pay on the Stripe emulator's hosted Checkout page with ``card``."""
    page.get_by_label("Card number").fill(card)
    page.get_by_label("Expiry").fill("12 / 34")
    page.get_by_label("CVC").fill("123")
    page.locator("form button[type=submit]").click()


def watch_console(page: Page, origin: str) -> list[str]:
    """Errors our pages log: a script that fails, a CSP refusal, a missing resource (not
    those of Stripe's pages, here the emulator's, which a test passes through)."""
    errors: list[str] = []

    def console(message: ConsoleMessage) -> None:
        where = message.location.get("url", "") or page.url
        if message.type == "error" and where.startswith(origin):
            errors.append(f"{where}: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def take_refusals(errors: list[str], status: int) -> list[str]:
    """Remove from ``errors`` what the browser logs for an answer with ``status`` (a page
    or a request a test expects refused) and return the rest, which should be nothing."""
    logged = f"the server responded with a status of {status} "
    refusals = [e for e in errors if logged in e]
    assert refusals, f"no {status} answer was logged: {errors}"
    rest = [e for e in errors if logged not in e]
    errors.clear()
    return rest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report carries the end of its services' logs (a 500 in the browser
    is explained by the traceback the server logged) and the mail their SMTP servers got."""
    report = yield
    factory = getattr(item, "funcargs", {}).get("live_service")
    if report.failed and isinstance(factory, StartService):
        for service in factory.started.values():
            for process in service.processes:
                tail = "\n".join(process.output().splitlines()[-LOG_TAIL_LINES:])
                report.sections.append((f"{process.name} log ({process.log_path})", tail))
            received = [
                f"{', '.join(r.recipients)}: {r.message['Subject']}" for r in service.smtp.received
            ]
            report.sections.append(
                (f"mail received at {service.smtp.url}", "\n".join(received[-LOG_TAIL_LINES:]))
            )
    return report
