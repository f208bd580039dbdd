"""The W3C WebDriver client the browser checks share: chromedriver started on a free loopback
port and driven over HTTP with urllib (Python 3 standard library only), and everything it
starts killed at the end. See README.md next to this file.
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

NAME = "browser"  # the prefix of log lines: the script's name
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # W3C web element reference key
HTTP_TIMEOUT = 30  # seconds, any single WebDriver command
STARTUP_TIMEOUT = 20  # chromedriver answering /status
RUN_MARKER = "IPFIXSVC_BROWSER_RUN"  # environment variable naming this run's temporary directory
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
    print(f"[{NAME} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})

    def type(self, el, text):
        """Types into an input; for `<input type=file>`, `text` is the file's path."""
        self.s("POST", f"/element/{el[ELEMENT]}/value", {"text": text})

    def fit_viewport(self, width, height):
        """The window size includes the (simulated) browser frame: grow it so that the
        viewport, and so a screenshot, is width x height."""
        self.set_window(width, height)
        iw, ih = self.js("return [window.innerWidth, window.innerHeight];")
        if (iw, ih) != (width, height):
            self.set_window(2 * width - iw, 2 * height - ih)


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


def drive(args, run):
    """Starts chromedriver and a headless Chromium of `args.width` x `args.height`, calls
    `run(wd, args)`, and stops everything whatever happens (`args.timeout` bounds the whole run).
    Returns the exit status: 0 when `run` passed, 1 when a check failed, 2 when the browser could
    not be started or driven."""

    # SIGTERM/SIGINT/the overall alarm unwind through `finally`, which kills what we started.
    def bail(signum, _frame):
        raise DriverError(f"stopped by signal {signum}" if signum != signal.SIGALRM
                          else f"the run took longer than {args.timeout}s", show_log=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, bail)
    signal.alarm(args.timeout)

    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix=f"{NAME}-")
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
