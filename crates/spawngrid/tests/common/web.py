# The web UI driven in a real browser (headless Chromium through Selenium), for tests/web.rs:
#
#   VENV/bin/python web.py CHROMIUM CHROMEDRIVER URL USER PASSWORD INVITEE
#
# Walks a user's story on the node at URL (its certificate is self-signed: the browser is
# told to ignore certificate errors, for this test only) and checks, in order: a wrong
# password shows the node's error; signing in shows the score `base`; the filter hides and
# shows it; a spawn of a missing name shows the node's one-line error; spawning `base` as
# env `web` lists it; its terminal runs `echo $((6*7)) > /tmp/x; cat /tmp/x` and shows 42;
# `stty size` inside follows the terminal's size, before and after the window is resized;
# `exit 3` shows exit code 3; a server started in the env (busybox httpd on port 8000) and
# exposed through the API shows a Previews button, which opens the preview in a new tab through
# a signed link (the cookie it sets lets the browser in; the URL left has no signature) with
# the server's page; saving `web` as `web-saved` lists that name in the scores;
# saving under it again shows the node's error; its lineage lists web-saved then base
# (with the save's note); inviting INVITEE to web-saved says so, and
# inviting a user who does not exist shows the node's error; a boom cancelled at its confirmation keeps
# the env, a confirmed one removes it; signing out shows the sign-in form, forgets the token,
# and a reload stays signed out; the browser logged no Content-Security-Policy violation.
# Prints each step; on the first failed check exits non-zero with what the page showed.
import sys

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

chromium, chromedriver, url, user, password, invitee = sys.argv[1:7]

options = webdriver.ChromeOptions()
options.binary_location = chromium
for arg in [
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--ignore-certificate-errors",  # the node's self-signed certificate
    "--disable-gpu",
    "--window-size=1200,1000",
]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service(chromedriver), options=options)
# Generous: these are waits for the page, not performance assertions.
TIMEOUT = 60


def by_id(i):
    return driver.find_element(By.ID, i)


def shown(i):
    return by_id(i).is_displayed()


def text(i):
    return by_id(i).text


def wait(check, what):
    """Waits until check() is true (exceptions count as not yet)."""
    try:
        WebDriverWait(driver, TIMEOUT, ignored_exceptions=[Exception]).until(lambda d: check())
    except TimeoutException:
        raise AssertionError("timed out waiting for " + what) from None


def rows(table, attr):
    """The data-ATTR values of the table's rows."""
    return [r.get_attribute("data-" + attr) for r in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def fill(i, value):
    el = by_id(i)
    el.clear()
    el.send_keys(value)


def error_line(want):
    """Waits for the error line to contain `want`; it must be one line."""
    wait(lambda: shown("error") and want in text("error"), f"the error {want!r}")
    assert "\n" not in text("error"), "not one line: " + text("error")


def screen():
    """The terminal's lines as shown (xterm.js's DOM renderer), right-trimmed."""
    lines = driver.execute_script(
        "return Array.from(document.querySelectorAll('#terminal .xterm-rows > div'), d => d.textContent)"
    )
    return [line.replace("\xa0", " ").rstrip() for line in lines]


def type_in_terminal(keys):
    driver.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea").send_keys(keys)


def size():
    t = by_id("terminal")
    return int(t.get_attribute("data-rows")), int(t.get_attribute("data-cols"))


def step(name):
    print("web.py:", name, flush=True)


def story():
    driver.get(url)
    wait(lambda: shown("signin"), "the sign-in form")

    step("a wrong password shows the node's error")
    fill("signin-user", user)
    fill("signin-password", "not-the-password")
    by_id("signin-submit").click()
    error_line("wrong user name or password")
    assert not shown("app")

    step("sign in")
    fill("signin-password", password)
    by_id("signin-submit").click()
    wait(lambda: shown("app") and "base" in rows("scores", "name"), "the score base")
    assert text("who") == user, text("who")
    assert not shown("error")

    step("the filter")
    fill("filter", "no-such-name")
    wait(lambda: rows("scores", "name") == [] and shown("scores-empty"), "an empty filtered list")
    fill("filter", "BAS")
    wait(lambda: rows("scores", "name") == ["base"], "base again")
    by_id("filter").send_keys(Keys.CONTROL, "a", Keys.DELETE)
    wait(lambda: by_id("filter").get_attribute("value") == "", "an empty filter")

    step("spawn errors are the node's one line")
    fill("spawn-name", "no-such-name")
    by_id("spawn-submit").click()
    error_line("no-such-name")
    fill("spawn-name", "base")
    fill("spawn-mem", "lots")
    by_id("spawn-submit").click()
    error_line('bad size "lots"')

    step("spawn base as web")
    fill("spawn-as", "web")
    fill("spawn-mem", "256M")
    by_id("spawn-submit").click()
    wait(lambda: rows("envs", "env") == ["web"], "the env web in the list")
    wait(lambda: shown("info") and "spawned web" in text("info"), "the spawn's outcome")

    step("the grid's nodes: this one, up, running web")
    node_cells = lambda: [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr td")]
    wait(lambda: len(rows("nodes", "node")) == 1 and node_cells()[2:4] == ["up", "1"], "this node, up, with 1 env")

    step("a terminal in the env")
    driver.find_element(By.CSS_SELECTOR, '#envs tr[data-env="web"] button.terminal').click()
    wait(lambda: text("term-status") == "connected", "the terminal to connect")
    wait(lambda: any(line.endswith("#") for line in screen()), "a root prompt")
    type_in_terminal("echo $((6*7)) > /tmp/x; cat /tmp/x\n")
    wait(lambda: "42" in screen(), "42 on the screen")

    step("the env's terminal size follows the browser's")
    rows0, cols0 = size()
    type_in_terminal("stty size\n")
    wait(lambda: f"{rows0} {cols0}" in screen(), f"stty size {rows0} {cols0}")
    driver.set_window_size(800, 700)
    wait(lambda: size() != (rows0, cols0), "the terminal to be resized")
    rows1, cols1 = size()
    assert rows1 < rows0 and cols1 < cols0, (rows0, cols0, rows1, cols1)
    type_in_terminal("stty size\n")
    wait(lambda: f"{rows1} {cols1}" in screen(), f"stty size {rows1} {cols1}")
    assert text("term-size") == f"{cols1}×{rows1}", text("term-size")

    step("exit 3 shows the exit code")
    type_in_terminal("exit 3\n")
    wait(lambda: text("term-status") == "exited with code 3", "exit code 3")

    step("a preview of a server in the env opens in a new tab")
    token = driver.execute_script("return sessionStorage.getItem('spawngrid.token')")
    call = (
        "const [m, p, b, t, done] = arguments; fetch(p, {method: m, body: JSON.stringify(b),"
        " headers: {Authorization: 'Bearer ' + t, 'Content-Type': 'application/json'}})"
        ".then(r => done(r.status))"
    )
    serve = "mkdir -p /srv && echo hello-preview > /srv/index.html && httpd -p 127.0.0.1:8000 -h /srv"
    assert driver.execute_async_script(call, "POST", "/api/envs/web/exec", {"argv": ["sh", "-c", serve]}, token) == 200
    assert driver.execute_async_script(call, "POST", "/api/envs/web/exposures", {"port": 8000}, token) == 200
    by_id("refresh").click()
    preview = '#envs tr[data-env="web"] td.previews button'
    wait(lambda: [b.text for b in driver.find_elements(By.CSS_SELECTOR, preview)] == [":8000"], "a :8000 preview button")
    main = driver.current_window_handle
    driver.find_element(By.CSS_SELECTOR, preview).click()
    wait(lambda: len(driver.window_handles) == 2, "a new tab")
    driver.switch_to.window([h for h in driver.window_handles if h != main][0])
    tab = lambda: driver.find_element(By.TAG_NAME, "body").text
    try:
        wait(lambda: "hello-preview" in tab(), "the env's page in the tab")
    except AssertionError as e:
        raise AssertionError(f"{e}: the tab shows {tab()!r} at {driver.current_url}") from None
    assert "/preview/" in driver.current_url and "sg_sig" not in driver.current_url, driver.current_url
    driver.close()
    driver.switch_to.window(main)

    step("save web as web-saved")
    Select(by_id("save-env")).select_by_value("web")
    fill("save-name", "web-saved")
    by_id("save-submit").click()
    wait(lambda: "web-saved" in rows("scores", "name"), "web-saved in the scores")
    assert "saved web as web-saved = " in text("info"), text("info")
    by_id("save-submit").click()
    error_line("web-saved")

    step("the lineage of web-saved: itself, then base")
    driver.find_element(By.CSS_SELECTOR, '#scores tr[data-name="web-saved"] button.lineage').click()
    wait(lambda: shown("lineage-panel") and len(rows("lineage", "score")) == 2, "two snapshots in the lineage")
    cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#lineage tbody tr td")]
    assert text("lineage-name") == "web-saved", text("lineage-name")
    assert cells[1] == "web-saved" and cells[5] == f"saved from env web+{user}", cells
    assert cells[8] == "base", cells
    assert len(driver.find_elements(By.CSS_SELECTOR, "#lineage tbody tr:last-child button.changes")) == 0, \
        "the imported snapshot has no parent to compare with"

    step("the changes web-saved made: the preview's page added")
    driver.find_element(By.CSS_SELECTOR, "#lineage tbody tr:first-child button.changes").click()
    wait(lambda: shown("diff-panel") and driver.find_elements(By.CSS_SELECTOR, "#diff tbody tr"), "the changes listed")
    changes = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
               for r in driver.find_elements(By.CSS_SELECTOR, "#diff tbody tr")]
    assert ["+", "/srv/index.html"] in changes, changes
    assert ["+", "/srv"] in changes or ["M", "/srv"] in changes, changes
    assert "added" in text("diff-summary") and "against its parent" in text("diff-summary"), text("diff-summary")
    by_id("diff-close").click()
    wait(lambda: not shown("diff-panel"), "the changes closed")
    by_id("lineage-close").click()
    wait(lambda: not shown("lineage-panel"), "the lineage closed")

    step("invite")
    fill("invite-user", "no-such-user")
    fill("invite-name", "web-saved")
    by_id("invite-submit").click()
    error_line("no user no-such-user")
    fill("invite-user", invitee)
    by_id("invite-submit").click()
    wait(lambda: shown("info") and text("info").startswith(f"invited {invitee}: web-saved waits for them to accept"), "the invite's outcome")

    step("boom web, after its confirmation")
    boom = '#envs tr[data-env="web"] button.boom'
    driver.find_element(By.CSS_SELECTOR, boom).click()
    WebDriverWait(driver, TIMEOUT).until(expected_conditions.alert_is_present()).dismiss()
    assert rows("envs", "env") == ["web"], "a cancelled boom removed the env"
    driver.find_element(By.CSS_SELECTOR, boom).click()
    WebDriverWait(driver, TIMEOUT).until(expected_conditions.alert_is_present()).accept()
    wait(lambda: rows("envs", "env") == [] and shown("envs-empty"), "an empty env list")
    assert text("info") == "boomed web", text("info")

    step("sign out: the node revokes the token")
    token = driver.execute_script("return sessionStorage.getItem('spawngrid.token')")
    status_with = (
        "return fetch('/api/envs', {headers: {Authorization: 'Bearer ' + arguments[0]}})"
        ".then(r => r.status)"
    )
    assert driver.execute_script(status_with, token) == 200
    by_id("signout").click()
    wait(lambda: shown("signin") and not shown("app"), "the sign-in form")
    assert driver.execute_script("return sessionStorage.length") == 0
    wait(lambda: driver.execute_script(status_with, token) == 401, "the old token refused")
    driver.refresh()
    wait(lambda: shown("signin") and not shown("app"), "still signed out after a reload")

    violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not violations, "CSP violations: %s" % violations


try:
    story()
    print("web.py: all steps passed", flush=True)
except Exception as e:
    diagnostics = []
    for what, get in [
        ("error line", lambda: text("error")),
        ("info line", lambda: text("info")),
        ("terminal status", lambda: text("term-status")),
        ("screen", lambda: "\n".join(screen())),
        ("browser log", lambda: "\n".join(m["message"] for m in driver.get_log("browser"))),
    ]:
        try:
            diagnostics.append(f"--- {what}:\n{get()}")
        except Exception as d:
            diagnostics.append(f"--- {what}: unavailable ({d})")
    sys.exit(f"web.py: FAILED: {e!r}\n" + "\n".join(diagnostics))
finally:
    driver.quit()
