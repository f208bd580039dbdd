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
import os
import re
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import webdriver  # noqa: E402  (beside this script)
from webdriver import CheckFailed, DriverError, check, drive, log, wait_for  # noqa: E402

webdriver.NAME = "actors_page"

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
    wd.fit_viewport(args.width, args.height)

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

    return drive(args, run)


if __name__ == "__main__":
    sys.exit(main())
