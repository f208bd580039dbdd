#!/usr/bin/env python3
"""Headless-Chromium check of the operator page GET /debug/actors.

Python 3 standard library only: chromedriver is driven through the W3C WebDriver HTTP protocol
with urllib. See README.md next to this file.

    python3 tests/browser/actors_page.py --url http://127.0.0.1:8080/debug/actors \
        --token "$ADMIN_TOKEN" --nodes node-a,node-b --screenshot actors.png

Exit status: 0 when every check passes, 1 when a check fails (one line starting with FAIL),
2 when the browser could not be started or driven.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # W3C web element reference key
HTTP_TIMEOUT = 30  # seconds, any single WebDriver command
STARTUP_TIMEOUT = 20  # chromedriver answering /status
RUN_MARKER = "ACTORS_PAGE_RUN"  # environment variable naming this run's temporary directory
DEFAULT_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # needed when running as root (no user namespaces for the sandbox)
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--hide-scrollbars",
]


class CheckFailed(Exception):
    """A property of the page does not hold."""


class DriverError(Exception):
    """The browser or chromedriver misbehaved (not a finding about the page)."""

    def __init__(self, msg, show_log=True):
        super().__init__(msg)
        self.show_log = show_log  # whether chromedriver's log may tell more


def log(msg):
    print(f"[actors_page {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(explicit, names):
    if explicit:
        return explicit
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    raise DriverError(f"none of {', '.join(names)} found on PATH (Debian: apt-get install chromium chromium-driver)")


class WebDriver:
    """Just enough of the W3C WebDriver protocol, over urllib."""

    def __init__(self, base):
        self.base = base
        self.sid = None

    def call(self, method, path, body=None, timeout=HTTP_TIMEOUT):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                payload = r.read()
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                v = json.loads(payload)["value"]
                raise DriverError(f"{method} {path}: {v.get('error')}: {v.get('message', '').splitlines()[0]}")
            except (ValueError, KeyError, TypeError, AttributeError, IndexError):
                raise DriverError(f"{method} {path}: HTTP {e.code}: {payload[:300]!r}")
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            raise DriverError(f"{method} {path}: {e}")
        return json.loads(payload)["value"] if payload else None

    def s(self, method, path, body=None, timeout=HTTP_TIMEOUT):
        return self.call(method, f"/session/{self.sid}{path}", body, timeout)

    def start(self, binary, flags, width, height):
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"script": 15000, "pageLoad": 20000, "implicit": 0},
            "goog:chromeOptions": {"binary": binary, "args": flags + [f"--window-size={width},{height}"]},
        }}}
        v = self.call("POST", "/session", caps, timeout=HTTP_TIMEOUT)
        self.sid = v["sessionId"]
        return v["capabilities"]

    def quit(self):
        if self.sid:
            sid, self.sid = self.sid, None
            try:
                self.call("DELETE", f"/session/{sid}", timeout=15)
            except DriverError as e:
                log(f"closing the session: {e}")

    def get(self, url):
        self.s("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def cdp(self, cmd, params=None):
        return self.s("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params or {}})

    def click(self, el):
        self.s("POST", f"/element/{el[ELEMENT]}/click", {})

    def displayed(self, el):
        return self.s("GET", f"/element/{el[ELEMENT]}/displayed")

    def set_window(self, width, height):
        self.s("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self):
        return base64.b64decode(self.s("GET", "/screenshot"))


def wait_for(what, fn, timeout, interval=0.25):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise CheckFailed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# What the page shows, read in one script so a refresh cannot land between two reads.
SNAPSHOT_JS = r"""
const h2 = [...document.querySelectorAll('h2')].map(h => {
  let n = h.nextElementSibling;
  return {name: h.textContent.trim(), tree: !!n && n.tagName === 'DETAILS',
          after: n ? n.outerHTML.slice(0, 200) : null};
});
return {url: location.href, title: document.title, ready: document.readyState,
        h2: h2, nested: document.querySelectorAll('details details').length,
        details: document.querySelectorAll('details').length,
        refresh: [...document.querySelectorAll('meta[http-equiv]')]
                   .filter(m => m.httpEquiv.toLowerCase() === 'refresh').map(m => m.content),
        marker: window.__actorsPageMarker || null,
        text: document.body ? document.body.innerText.slice(0, 300) : ''};
"""

# The first top-level <details> (a node's root actor) that has nested <details>.
TARGET_JS = r"""
const top = [...document.querySelectorAll('body > details')]
              .find(d => d.querySelector(':scope > details > summary'));
if (!top) return null;
return {details: top, summary: top.querySelector(':scope > summary'),
        child: top.querySelector(':scope > details > summary'),
        label: top.querySelector(':scope > summary').textContent.trim()};
"""

# Whether the nested summary shows. Not getClientRects()/offsetParent: Chromium hides a closed
# <details>' content with content-visibility:hidden, so it keeps its layout boxes (rects, offset
# parent, size) while nothing is painted. checkVisibility() and hit testing tell the truth.
STATE_JS = r"""
const [d, child] = arguments;
d.scrollIntoView({block: 'start'});  // hit testing needs the summary inside the viewport
const r = child.getBoundingClientRect();
const hit = document.elementFromPoint(r.x + Math.min(4, r.width / 2), r.y + Math.min(4, r.height / 2));
return {open: d.open, visible: child.checkVisibility(), hit: !!hit && child.contains(hit),
        marker: window.__actorsPageMarker || null};
"""


FETCH_JS = r"""
const [path, token, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
fetch(path, {headers: {Authorization: 'Bearer ' + token, Accept: 'text/html'}, cache: 'no-store'})
  .then(r => r.text().then(t => done({status: r.status, type: r.headers.get('content-type'), body: t})))
  .catch(e => done({status: 0, type: null, body: String(e)}));
"""


def node_matches(h2_name, node):
    return h2_name == node or h2_name.startswith(node + "@")


def nodes_present(snap, nodes):
    missing = [n for n in nodes if not any(node_matches(h["name"], n) for h in snap["h2"])]
    return missing


def load_page(wd, args, origin, path):
    """Load the page authorised; return a snapshot once every named node shows (or the last one)."""
    deadline = time.monotonic() + args.wait
    while True:
        if args.auth == "cdp":
            try:
                wd.get(args.url)
            except DriverError as e:
                raise CheckFailed(f"could not load {args.url}: {e}")
        else:
            r = wd.s("POST", "/execute/async", {"script": FETCH_JS, "args": [path, args.token]})
            check(r["status"] == 200,
                  f"GET {path} with the bearer token answered {r['status']}: {r['body'][:200]!r}")
            check("text/html" in (r["type"] or ""),
                  f"GET {path} with Accept: text/html answered content-type {r['type']!r}, not HTML")
            body = r["body"]
            check('http-equiv="refresh"' in body,
                  "the page has no <meta http-equiv=\"refresh\">")
            # After document.open() the document's URL is still /healthz, so the refresh would
            # reload that (JSON) after 5 s; removing the <meta> after writing does not cancel it
            # (tried): drop it before writing. Its presence was just checked in the raw HTML.
            body = re.sub(r'<meta http-equiv="refresh"[^>]*>', "", body)
            wd.js("document.open(); document.write(arguments[0]); document.close();", body)
        snap = wd.js(SNAPSHOT_JS)
        if snap["title"] != "ipfixsvc actors":
            check(False, f"{snap['url']} did not show the actors page (title {snap['title']!r}): "
                         f"{snap['text']!r}")
        missing = nodes_present(snap, args.nodes)
        if not missing or time.monotonic() >= deadline:
            return snap
        log(f"not yet on the page: {', '.join(missing)}; retrying")
        time.sleep(1)


def check_page(snap, nodes):
    missing = nodes_present(snap, nodes)
    shown = [h["name"] for h in snap["h2"]]
    check(not missing, f"no <h2> for node(s) {', '.join(missing)}; the page names {shown}")
    for n in nodes:
        h = next(h for h in snap["h2"] if node_matches(h["name"], n))
        check(h["tree"], f"node {n}'s <h2> is not followed by its tree but by {h['after']!r}")
    check(snap["nested"] > 0, "no nested <details> (no 'details details' on the page)")


def fold_and_unfold(wd):
    """Click a root's <summary>: it closes and hides its children; click again: it reopens.

    The page may refresh itself (cdp mode) while this runs; a marker set on `window` tells: it is
    gone after a reload, and the caller then tries again.
    """
    wd.js("window.__actorsPageMarker = 'fold-' + Date.now();")
    t = wd.js(TARGET_JS)
    check(t is not None, "no top-level <details> with nested <details> to fold")
    before = wd.js(STATE_JS, t["details"], t["child"])
    if before["marker"] is None:
        return None
    check(before["open"] is True, f"'{t['label']}' is not open when the page loads")
    check(before["visible"] and before["hit"] and wd.displayed(t["child"]),
          f"the nested summary under '{t['label']}' is not visible on the open tree: {before}")

    wd.click(t["summary"])
    closed = wd.js(STATE_JS, t["details"], t["child"])
    closed_displayed = wd.displayed(t["child"])
    if closed["marker"] is None:
        return None
    check(closed["open"] is False, f"clicking '{t['label']}' did not close it (open is still true)")
    check(not closed["visible"] and not closed["hit"] and not closed_displayed,
          f"'{t['label']}' is closed but its nested summary is still shown: {closed}, "
          f"WebDriver displayed={closed_displayed}")

    wd.click(t["summary"])
    reopened = wd.js(STATE_JS, t["details"], t["child"])
    if reopened["marker"] is None:
        return None
    check(reopened["open"] is True, f"clicking '{t['label']}' again did not reopen it")
    check(reopened["visible"] and reopened["hit"] and wd.displayed(t["child"]),
          f"'{t['label']}' is open again but its nested summary is hidden: {reopened}")
    return t["label"]


def check_refresh(wd, args):
    """cdp mode: the meta refresh reloads the page, and the reload is still authorised."""
    wd.js("window.__actorsPageMarker = 'refresh';")
    t0 = time.monotonic()
    wait_for("the page's meta refresh to reload it", lambda: wd.js(SNAPSHOT_JS)["marker"] is None,
             timeout=args.refresh_wait)
    snap = wait_for("the refreshed page to finish loading",
                    lambda: (lambda s: s if s["ready"] == "complete" else None)(wd.js(SNAPSHOT_JS)),
                    timeout=15)
    log(f"the page refreshed itself after {time.monotonic() - t0:.1f}s")
    check(snap["title"] == "ipfixsvc actors",
          f"after its refresh the page is no longer the actors page: {snap['text']!r}")
    check_page(snap, args.nodes)


def run(wd, args):
    u = urllib.parse.urlsplit(args.url)
    origin = f"{u.scheme}://{u.netloc}"
    path = urllib.parse.urlunsplit(("", "", u.path, u.query, ""))
    # The window size includes the (simulated) browser frame: grow it so the viewport, and so
    # the screenshot, is width x height.
    wd.set_window(args.width, args.height)
    iw, ih = wd.js("return [window.innerWidth, window.innerHeight];")
    if (iw, ih) != (args.width, args.height):
        wd.set_window(2 * args.width - iw, 2 * args.height - ih)

    if args.auth == "cdp":
        # Every request of this tab carries the token: the navigation itself and the reloads
        # of the page's meta refresh (Chromium's Accept for a navigation includes text/html).
        wd.cdp("Network.enable")
        wd.cdp("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {args.token}"}})
    else:
        try:
            wd.get(origin + "/healthz")  # same origin, needs no token
        except DriverError as e:
            raise CheckFailed(f"could not load {origin}/healthz: {e}")

    snap = load_page(wd, args, origin, path)
    check_page(snap, args.nodes)
    if args.auth == "cdp":
        check(snap["refresh"] == ["5"], f"expected one <meta http-equiv=refresh content=5>, found {snap['refresh']}")
    log(f"page: {len(snap['h2'])} node(s) {[h['name'] for h in snap['h2']]}, "
        f"{snap['details']} <details>, {snap['nested']} nested")

    if args.auth == "cdp" and args.refresh_wait > 0:
        check_refresh(wd, args)

    for attempt in range(3):
        try:
            label = fold_and_unfold(wd)
        except DriverError as e:
            if "stale element" not in str(e):
                raise
            label = None  # the page reloaded between two commands
        if label is not None:
            break
        log("the page reloaded during the fold check; again")
    else:
        raise CheckFailed("the page kept reloading during the fold check")
    log(f"clicking '{label}' closed it and hid its children; clicking again reopened it")

    if args.screenshot:
        png = wd.screenshot()
        check(png[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG")
        with open(args.screenshot, "wb") as f:
            f.write(png)
        log(f"screenshot: {args.screenshot} ({len(png)} bytes)")


def kill_group(proc):
    """Stop chromedriver and everything it started (same process group), then reap it."""
    if proc is None:
        return
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 3)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # chromedriver gone; its group may still hold browser processes
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break


def kill_strays(marker):
    """Kill what escaped the process group: Chromium's crashpad handlers call setsid() and are
    reparented to init. They inherit chromedriver's environment, which carries our marker."""
    me = os.getpid()
    needle = f"{RUN_MARKER}={marker}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="http://HOST:PORT/debug/actors")
    p.add_argument("--token", required=True, help="the admin bearer token")
    p.add_argument("--nodes", required=True, help="comma-separated node names that must be on the page")
    p.add_argument("--screenshot", help="write a PNG of the page here (after the fold check)")
    p.add_argument("--auth", choices=("cdp", "fetch"), default="cdp",
                   help="cdp (default): the tab sends the token on every request (DevTools "
                        "Network.setExtraHTTPHeaders), so the page is navigated to and its meta "
                        "refresh is exercised; fetch: load /healthz, fetch the page with the token "
                        "and document.write it, without its meta refresh")
    p.add_argument("--wait", type=float, default=20, help="seconds to wait for every node to show (default 20)")
    p.add_argument("--refresh-wait", type=float, default=12,
                   help="cdp: seconds to wait for the meta refresh to reload the page; 0 skips that check (default 12)")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    p.add_argument("--chromedriver", help="chromedriver binary (default: chromedriver on PATH)")
    p.add_argument("--timeout", type=int, default=120, help="hard limit for the whole run, seconds")
    args = p.parse_args()
    args.nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]

    # SIGTERM/SIGINT/the overall alarm unwind through `finally`, which kills what we started.
    def bail(signum, _frame):
        raise DriverError(f"stopped by signal {signum}" if signum != signal.SIGALRM
                          else f"the run took longer than {args.timeout}s", show_log=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, bail)
    signal.alarm(args.timeout)

    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="actors-page-")
    profile = os.path.join(tmp, "profile")
    driver_log = os.path.join(tmp, "chromedriver.log")
    proc = None
    wd = None
    status = 0
    try:
        chromium = find_binary(args.chromium, ["chromium", "chromium-browser", "google-chrome"])
        chromedriver = find_binary(args.chromedriver, ["chromedriver"])
        port = free_port()
        # Chromium keeps its crash reports under $XDG_CONFIG_HOME, not the profile: keep them in
        # the temporary directory too.
        env = dict(os.environ, XDG_CONFIG_HOME=os.path.join(tmp, "config"),
                   XDG_CACHE_HOME=os.path.join(tmp, "cache"), **{RUN_MARKER: tmp})
        proc = subprocess.Popen(
            [chromedriver, f"--port={port}", f"--log-path={driver_log}"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # own process group: killed as a whole at the end
        wd = WebDriver(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise DriverError(f"chromedriver exited with {proc.returncode} at start")
            try:
                if wd.call("GET", "/status", timeout=2).get("ready"):
                    break
            except DriverError:
                pass
            if time.monotonic() > deadline:
                raise DriverError(f"chromedriver did not answer on port {port} within {STARTUP_TIMEOUT}s")
            time.sleep(0.2)
        caps = wd.start(chromium, DEFAULT_FLAGS + [f"--user-data-dir={profile}"], args.width, args.height)
        log(f"{caps.get('browserName')} {caps.get('browserVersion')} via chromedriver on 127.0.0.1:{port}")
        run(wd, args)
        log(f"OK ({time.monotonic() - t0:.1f}s)")
    except CheckFailed as e:
        print(f"FAIL: {e}", file=sys.stderr)
        status = 1
    except Exception as e:  # DriverError, or a bug in this script
        print(f"ERROR: {e}" if isinstance(e, DriverError) else f"ERROR: {e!r}", file=sys.stderr)
        if not isinstance(e, DriverError):
            import traceback
            traceback.print_exc()
        if getattr(e, "show_log", True):
            try:
                with open(driver_log, errors="replace") as f:
                    # one line per event; the JSON bodies of commands and answers left out
                    tail = [l[:300] for l in f if l.startswith("[")][-10:]
                if tail:
                    print("chromedriver log (last lines):\n" + "".join(tail), file=sys.stderr, end="")
            except OSError:
                pass
        status = 2
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up finish
        if wd is not None:
            wd.quit()
        kill_group(proc)
        kill_strays(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
