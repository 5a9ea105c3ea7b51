#!/usr/bin/python3
"""dashboard.py - the live dashboard in a real browser: Debian's chromium,
headless, driven through chromedriver by Debian's python3-selenium.

    /usr/bin/python3 tests/browser/dashboard.py BUILD SCENARIO

runs one scenario against BUILD/bgserve serving
BUILD/tests/fixtures/dash_app.so (a fresh server and a fresh browser each),
saves a screenshot to BUILD/browser/SCENARIO.png and exits 0 when every
check passed.  tests/test_browser.c runs each scenario as a cmocka test.

Scenarios:
  load          the page loads with no console error and goes live
  task_live     a task attached by a request appears as queued, then as
                succeeded, without reloading the page
  reload_error  a failed build shows its compiler error at the top
  retry         the retry button re-runs a failed task (healed meanwhile)
  dead_letter   with --journal, a dead letter of an earlier run is on the
                page and its retry button re-runs it
  escape        an error holding <script> and <img onerror> shows as text
  tour          a bit of everything, screenshot of the whole page (the one
                in docs/dashboard.png)

Missing chromium, chromedriver or selenium is a failure with the command
that installs them, never a skip.  Every wait polls with a deadline.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

DEADLINE = 20.0
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "sudo apt-get install chromium chromium-driver python3-selenium (make test does it as root)"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError as e:
    print("browser test: python3-selenium is missing (%s): %s" % (e, INSTALL))
    sys.exit(2)


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def wait_for(what, fn, deadline=DEADLINE):
    """Poll fn() until it returns something true; return it, or fail."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
        except Exception as e:  # the element is being redrawn
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.05)
    raise Failure("timed out waiting for %s (last: %r)" % (what, last))


class Server:
    """build/bgserve on port 0, its stderr read for the listening line."""

    def __init__(self, build, tmp, args=()):
        self.args = args
        self.release = os.path.join(tmp, "release")
        self.heal = os.path.join(tmp, "heal")
        env = dict(os.environ, BGSERVE_RELEASE_FILE=self.release, BGSERVE_HEAL_FILE=self.heal)
        self.log_path = os.path.join(tmp, "server.log")
        self.log = open(self.log_path, "w+")
        cmd = [os.path.join(build, "bgserve"), "--port", "0", *args,
               os.path.join(build, "tests/fixtures/dash_app.so")]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)

        def listening():
            with open(self.log_path) as f:
                m = re.search(r"listening on (http://[0-9.]+:[0-9]+)", f.read())
            check(self.proc.poll() is None, "bgserve exited: " + self.text())
            return m.group(1) if m else None
        self.base = wait_for("bgserve's listening line", listening)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def get(self, path):
        """The body of GET path (of an error status too)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=DEADLINE) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            return e.read().decode()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        log = self.text()
        for bad in ("ERROR: AddressSanitizer", "WARNING: ThreadSanitizer", "runtime error:"):
            check(bad not in log, "sanitizer report in bgserve's log:\n" + log)
        check(self.proc.returncode == 0, "bgserve exited %d:\n%s" % (self.proc.returncode, log))


def browser(tmp):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            print("browser test: %s is missing: %s" % (path, INSTALL))
            sys.exit(2)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--user-data-dir=" + os.path.join(tmp, "profile")):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def open_page(drv, srv):
    drv.get(srv.base + "/_bgserve/")
    wait_for("the stream to be live", lambda: drv.find_element(By.ID, "conn").text == "live")
    wait_for("the plugin's name", lambda: "dash_app 0.1.0" in drv.find_element(By.ID, "plugin-title").text)
    # A page reload would lose this: the checks below prove there was none.
    drv.execute_script("window.__same_page = 42;")


def console_errors(drv):
    return [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def row(drv, task_id):
    rows = drv.find_elements(By.CSS_SELECTOR, '#tasks-body tr[data-id="%d"]' % task_id)
    return rows[0] if rows else None


def row_state(drv, task_id):
    """The row's state, read in one go (rows are redrawn as updates come)."""
    return drv.execute_script(
        "const r = document.querySelector('#tasks-body tr[data-id=\"' + arguments[0] + '\"]');"
        "return r ? r.dataset.state : null;", task_id)


def row_text(drv, task_id, css):
    return drv.execute_script(
        "const r = document.querySelector('#tasks-body tr[data-id=\"' + arguments[0] + '\"]');"
        "const c = r ? r.querySelector(arguments[1]) : null; return c ? c.textContent : null;",
        task_id, css)


def click(elem):
    """Click; a row redrawn meanwhile raises, and wait_for tries again."""
    elem.click()
    return True


def same_page(drv):
    check(drv.execute_script("return window.__same_page;") == 42, "the page was reloaded")


def shot(drv, build, name, full=False):
    os.makedirs(os.path.join(build, "browser"), exist_ok=True)
    if full:
        h = drv.execute_script("return document.documentElement.scrollHeight;")
        drv.set_window_size(1280, max(800, min(int(h) + 40, 4000)))
        drv.execute_script("window.scrollTo(0, 0);")
    path = os.path.join(build, "browser", name + ".png")
    check(drv.save_screenshot(path), "no screenshot written to " + path)
    print("screenshot: " + path)


def heal_and_retry(drv, srv, task_id):
    """Make the next run succeed, click the row's retry button; the new id."""
    open(srv.heal, "w").close()
    wait_for("a click on retry", lambda: click(row(drv, task_id).find_element(By.CSS_SELECTOR, "button.retry")))
    msg = wait_for("the retry's answer", lambda: re.search(
        r"task %d queued again as task (\d+)" % task_id, drv.find_element(By.ID, "action-msg").text))
    new = int(msg.group(1))
    check(new > task_id, "new id %d" % new)
    return new


# ---- scenarios ----------------------------------------------------------------

def sc_load(drv, srv, build, tmp):
    open_page(drv, srv)
    wait_for("the routes table", lambda: len(drv.find_elements(By.CSS_SELECTOR, "#routes-body tr")) == 5)
    wait_for("the reload history", lambda: "load" in drv.find_element(By.ID, "reloads-body").text)
    check(drv.find_element(By.ID, "build-error").is_displayed() is False, "an error banner with no error")
    errs = console_errors(drv)
    check(not errs, "console errors on load: %r" % errs)
    shot(drv, build, "load")


def sc_task_live(drv, srv, build, tmp):
    open_page(drv, srv)
    # One runs and waits for the release file, the other is queued behind
    # it (one at a time); tasks start when their response is sent, so
    # either may be first.
    a = int(srv.get("/gated"))
    b = int(srv.get("/gated"))
    # Which one runs is known only once the page shows one running: a row
    # still "queued" may be the runner whose start has not reached the
    # page yet. One at a time, so the other then stays queued.
    wait_for("task %d or %d running" % (a, b),
             lambda: "running" in (row_state(drv, a), row_state(drv, b)))
    if row_state(drv, b) == "running":
        a, b = b, a
    wait_for("task %d queued" % b, lambda: row_state(drv, b) == "queued")
    shot(drv, build, "task_live-queued")
    open(srv.release, "w").close()
    wait_for("task %d succeeded" % b, lambda: row_state(drv, b) == "succeeded")
    wait_for("task %d succeeded" % a, lambda: row_state(drv, a) == "succeeded")
    same_page(drv)
    check(not console_errors(drv), "console errors: %r" % console_errors(drv))
    shot(drv, build, "task_live")


def sc_reload_error(drv, srv, build, tmp):
    open_page(drv, srv)
    check(not drv.find_element(By.ID, "build-error").is_displayed(), "an error banner before any error")
    # Any change under the watched directory runs the failing build.
    with open(os.path.join(tmp, "src", "app.c"), "w") as f:
        f.write("int x = ;\n")
    want = "app.c:1:9: error: expected expression before <b>;</b> token"
    wait_for("the build error banner",
             lambda: drv.find_element(By.ID, "build-error").is_displayed() and
             want in drv.find_element(By.ID, "build-error-text").text)
    check(not drv.find_elements(By.CSS_SELECTOR, "#build-error-text b"), "the error became markup")
    wait_for("the failed build in the history",
             lambda: "error: expected expression" in drv.find_element(By.ID, "reloads-body").text)
    same_page(drv)
    shot(drv, build, "reload_error")


def sc_retry(drv, srv, build, tmp):
    open_page(drv, srv)
    failed = int(srv.get("/fail?msg=needs-a-retry"))
    wait_for("task %d failed" % failed, lambda: row_state(drv, failed) == "failed")
    check(drv.execute_script("return document.querySelector('#tasks-body tr.failed') !== null;"),
          "a failed row does not stand out")
    # Other tasks changing, or an update naming the failed task again
    # unchanged, must not replace its row: a button redrawn between a
    # press and its release loses the user's click.
    drv.execute_script("document.querySelector('#tasks-body tr[data-id=\"' + arguments[0] + '\"]')"
                       ".__kept = true;", failed)
    srv.get("/many?n=3")
    wait_for("the quick tasks' rows", lambda: drv.execute_script(
        "return document.querySelectorAll('#tasks-body tr.succeeded').length;") == 3)
    check(drv.execute_script(
        "const r = document.querySelector('#tasks-body tr[data-id=\"' + arguments[0] + '\"]');"
        "return r !== null && r.__kept === true;", failed), "the failed task's row was redrawn")
    new = heal_and_retry(drv, srv, failed)
    wait_for("task %d succeeded" % new, lambda: row_state(drv, new) == "succeeded")
    rec = json.loads(srv.get("/_bgserve/tasks/%d" % new))
    check(rec["name"] == "failing" and rec["state"] == "succeeded", "record %r" % rec)
    same_page(drv)
    shot(drv, build, "retry")


def sc_dead_letter(drv, srv, build, tmp):
    # Fails its only attempt: a dead letter in the journal.  After a
    # restart only the journal has it.
    dead = int(srv.get("/fail?msg=dead-letter"))
    wait_for("task %d failed" % dead,
             lambda: json.loads(srv.get("/_bgserve/tasks/%d" % dead))["state"] == "failed")
    srv.stop()
    srv.__init__(build, tmp, srv.args)
    check(json.loads(srv.get("/_bgserve/tasks/%d" % dead))["state"] == "dead",
          "task %d is not a dead letter after the restart" % dead)
    open_page(drv, srv)
    # The snapshot brings the journal's dead letters.
    wait_for("task %d as a dead letter" % dead, lambda: row_state(drv, dead) == "dead")
    drv.find_element(By.ID, "filter-id").send_keys(str(dead))
    new = heal_and_retry(drv, srv, dead)
    drv.execute_script("const f = document.getElementById('filter-id'); f.value = '';"
                       "f.dispatchEvent(new Event('input'));")
    wait_for("task %d succeeded" % new, lambda: row_state(drv, new) == "succeeded")
    rec = json.loads(srv.get("/_bgserve/tasks/%d" % new))
    check(rec["name"] == "failing" and rec["state"] == "succeeded", "record %r" % rec)
    same_page(drv)
    check(not console_errors(drv), "console errors: %r" % console_errors(drv))
    shot(drv, build, "dead_letter")


def sc_escape(drv, srv, build, tmp):
    open_page(drv, srv)
    evil = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2"><b>bold</b>'
    tid = int(srv.get("/fail?msg=" + urllib.request.quote(evil)))
    wait_for("task %d failed" % tid, lambda: row_state(drv, tid) == "failed")
    shown = row_text(drv, tid, "td.error")
    check(shown == evil, "the error shows as %r" % shown)
    check(not drv.find_elements(By.CSS_SELECTOR, "#tasks-body script, #tasks-body img, #tasks-body b"),
          "the error became markup")
    wait_for("a click on the row", lambda: click(row(drv, tid)))
    wait_for("the detail view", lambda: drv.find_element(By.ID, "detail-error").text == evil)
    wait_for("the task's log line", lambda: ("info trying " + evil) in drv.find_element(By.ID, "detail-logs").text)
    check(not drv.find_elements(By.CSS_SELECTOR, "#task-detail script, #task-detail img, #task-detail b"),
          "the detail view made markup")
    check(drv.execute_script("return window.__xss;") is None, "the error's script ran")
    shot(drv, build, "escape")


def sc_tour(drv, srv, build, tmp):
    open_page(drv, srv)
    srv.get("/many?n=12")
    srv.get("/fail?msg=" + urllib.request.quote("payment service answered 502 <upstream>"))
    # One of the two gated tasks runs, the other waits for it; either may
    # be first (a task starts when its response has been sent).
    gated = (int(srv.get("/gated")), int(srv.get("/gated")))
    srv.get("/boom")

    def busy_samples():
        # Some traffic while the page collects a few one-second samples.
        for _ in range(25):
            srv.get("/")
        return drv.execute_script(
            "const p = document.querySelector('#chart-rps polyline');"
            "return p ? p.getAttribute('points').split(' ').length : 0;") >= 6
    wait_for("six samples in the charts", busy_samples)
    with open(os.path.join(tmp, "src", "app.c"), "w") as f:
        f.write("int x = ;\n")
    wait_for("the build error banner", lambda: drv.find_element(By.ID, "build-error").is_displayed())
    wait_for("task %d or %d running" % gated,
             lambda: "running" in (row_state(drv, gated[0]), row_state(drv, gated[1])))
    wait_for("a click on the failed row",
             lambda: click(drv.find_element(By.CSS_SELECTOR, "#tasks-body tr.failed")))
    wait_for("the detail view", lambda: drv.find_element(By.ID, "task-detail").is_displayed())
    shot(drv, build, "dashboard", full=True)
    open(srv.release, "w").close()


SCENARIOS = {"load": sc_load, "task_live": sc_task_live, "reload_error": sc_reload_error,
             "retry": sc_retry, "dead_letter": sc_dead_letter, "escape": sc_escape,
             "tour": sc_tour}

# The build command the watching scenarios run: a compiler's error line,
# with markup in it, and a failing exit status.
FAILING_BUILD = ("echo \"app.c:1:9: error: expected expression before <b>;</b> token\" >&2; "
                 "echo '    1 | int x = ;' >&2; exit 1")


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in SCENARIOS:
        print("usage: dashboard.py BUILD {%s}" % "|".join(SCENARIOS))
        return 2
    build, name = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="bgserve-browser-")
    srv = drv = None
    try:
        os.mkdir(os.path.join(tmp, "src"))
        args = []
        if name in ("reload_error", "tour"):
            args = ["--watch", os.path.join(tmp, "src"), "--watch-debounce", "0", "--build", FAILING_BUILD]
        if name == "dead_letter":
            args = ["--journal", os.path.join(tmp, "tasks.db")]
        srv = Server(build, tmp, args)
        drv = browser(tmp)
        SCENARIOS[name](drv, srv, build, tmp)
        drv.quit()
        drv = None
        srv.stop()
        srv = None
        print("ok: " + name)
        return 0
    except Failure as e:
        print("FAILED %s: %s" % (name, e))
        if drv is not None:
            try:
                shot(drv, build, name + "-failed")
                print("console: %r" % drv.get_log("browser"))
            except Exception:
                pass
        if srv is not None:
            print("bgserve's log:\n" + srv.text())
        return 1
    finally:
        if drv is not None:
            drv.quit()
        if srv is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
