#!/usr/bin/env python3
"""Headless-Chromium check of the web console (GET /), as a user goes through it: sign in with a
token (a wrong one is refused), upload a capture, see its conversion job succeed, chart it (a
time-series job chained after it) and see the chart drawn; then the live series of the tenant's
`timeseries` stream. Screenshots of both. See README.md next to this file.

    python3 tests/browser/console.py --url http://127.0.0.1:8080 --token "$TOKEN" \\
        --capture ../shared/testdata/traffic/http.pcap --jobs-shot jobs.png --live-shot live.png

Exit status: 0 when every check passes, 1 when a check fails (one line starting with FAIL),
2 when the browser could not be started or driven.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import webdriver  # noqa: E402  (beside this script)
from webdriver import check, drive, log, wait_for  # noqa: E402

webdriver.NAME = "console"

# The page's state in one read: what is shown, the jobs table, the chart, the error line.
STATE_JS = r"""
const q = (s) => document.querySelector(s);
const shown = (s) => { const e = q(s); return !!e && !e.closest('[hidden]') && e.checkVisibility(); };
const rows = [...document.querySelectorAll('#jobs-table tbody tr')].map(r => ({
  id: r.dataset.job, kind: r.dataset.kind, state: r.dataset.state, text: r.innerText}));
const img = q('#chart-img'), live = q('#live-img');
return {login: shown('#login'), app: shown('#app'), who: q('#who').textContent,
        loginError: q('#login-error').textContent, error: q('#error').textContent,
        upload: q('#upload-status').textContent, rows: rows,
        chart: shown('#chart-panel') && img.complete ? [img.naturalWidth, img.naturalHeight] : null,
        chartTitle: q('#chart-title').textContent,
        files: [...document.querySelectorAll('#chart-files button')].map(b => b.textContent),
        live: shown('#live-img') && live.complete ? [live.naturalWidth, live.naturalHeight] : null,
        livePath: live.dataset.path || null, liveStatus: q('#live-status').textContent};
"""

# The SVG an <img> shows, fetched again from the API path the console drew it from (its
# `data-path`) with the token: the page's policy lets scripts fetch only from the node.
IMG_TEXT_JS = r"""
const [sel, token, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
fetch(document.querySelector(sel).dataset.path,
      {headers: {Authorization: 'Bearer ' + token, Accept: 'image/svg+xml'}})
  .then(r => r.text()).then(done).catch(e => done('ERROR ' + e));
"""


def state(wd):
    return wd.js(STATE_JS)


def click(wd, css):
    wd.click(wd.find(css))


def sign_in(wd, token, tenant):
    wd.js("document.getElementById('token').value = ''; document.getElementById('tenant').value = '';")
    wd.type(wd.find("#token"), token)
    if tenant:
        wd.type(wd.find("#tenant"), tenant)
    click(wd, "#login-form button[type=submit]")


def run(wd, args):
    wd.fit_viewport(args.width, args.height)
    wd.get(args.url.rstrip("/") + "/")
    s = wait_for("the sign-in form", lambda: (lambda s: s if s["login"] else None)(state(wd)), 15)
    check(not s["app"], "the console shows before anyone signed in")

    for tenant, says in (("", "not the admin token"), (args.tenant or "default", "not valid")):
        sign_in(wd, "not-the-token-at-all", tenant)
        s = wait_for("the refusal of a wrong token",
                     lambda: (lambda s: s if s["loginError"] else None)(state(wd)), 15)
        check(says in s["loginError"], f"a wrong token (tenant {tenant!r}) gave {s['loginError']!r}")
        check(not s["app"], "a wrong token was let in")
        wd.js("document.getElementById('login-error').textContent = '';")

    sign_in(wd, args.token, args.tenant)
    s = wait_for("the console after signing in", lambda: (lambda s: s if s["app"] else None)(state(wd)), 15)
    log(f"signed in as {s['who']!r}")
    if args.tenant:
        wd.js("const s = document.getElementById('tenant-select'); s.value = arguments[0];"
              "s.dispatchEvent(new Event('change'));", args.tenant)

    # Upload a capture: its conversion job shows, runs and succeeds.
    wd.type(wd.find("#capture"), os.path.abspath(args.capture))
    click(wd, "#upload-form button[type=submit]")
    conv = wait_for("the conversion job to succeed", lambda: next(
        (r for r in state(wd)["rows"] if r["kind"] == "pcap_conversion" and r["state"] == "succeeded"), None), 60)
    log(f"conversion {conv['id'][:8]} succeeded: {conv['text']!r}")
    s = state(wd)
    check(os.path.basename(args.capture) in s["upload"], f"the upload line says {s['upload']!r}")

    # Chart it, by 10 s intervals: a time-series job after it, whose chart the console draws
    # when it succeeds.
    wd.js("document.getElementById('series-interval').value = '10';")
    click(wd, f"tr[data-job='{conv['id']}'] button")
    series = wait_for("the time-series job to succeed", lambda: next(
        (r for r in state(wd)["rows"] if r["kind"] == "time_series" and r["state"] == "succeeded"), None), 60)
    s = wait_for("the chart to be drawn", lambda: (lambda s: s if s["chart"] else None)(state(wd)), 30)
    check(s["chart"][0] >= 600 and s["chart"][1] >= 300, f"the chart is {s['chart']} pixels")
    check(series["id"][:8] in s["chartTitle"] and "10 s intervals" in s["chartTitle"],
          f"the chart's title {s['chartTitle']!r} names another job or interval")
    check(set(s["files"]) == {"series.json", "series.csv", "series.svg", "series.png"},
          f"the chart's downloads are {s['files']}")
    svg = wd.s("POST", "/execute/async", {"script": IMG_TEXT_JS, "args": ["#chart-img", args.token]})
    check(svg.startswith("<svg") or "<svg" in svg[:200], f"the chart is not an SVG: {svg[:120]!r}")
    check("destinationTransportPort" in svg, "the chart does not name its key")
    check(not s["error"], f"the console shows an error: {s['error']!r}")
    log(f"chart of job {series['id'][:8]}: {s['chart'][0]}x{s['chart'][1]}, {s['chartTitle']!r}")
    # An analysis of the same conversion: top talkers, drawn as bar charts.
    click(wd, f"tr[data-job='{conv['id']}'] button:nth-of-type(2)")
    talk = wait_for("the analysis job to succeed", lambda: next(
        (r for r in state(wd)["rows"] if r["kind"] == "analysis" and r["state"] == "succeeded"), None), 60)
    s = wait_for("the analysis chart", lambda: (lambda s: s if s["chart"] and talk["id"][:8] in s["chartTitle"]
                                                 else None)(state(wd)), 30)
    check("top talkers" in s["chartTitle"], f"the analysis chart's title is {s['chartTitle']!r}")
    svg = wd.s("POST", "/execute/async", {"script": IMG_TEXT_JS, "args": ["#chart-img", args.token]})
    check("sources by octets" in svg, "the talkers chart lacks its first table's title")
    log(f"analysis {talk['id'][:8]}: {talk['text']!r}")
    # Back to the time series' chart for the screenshot.
    click(wd, f"tr[data-job='{series['id']}'] button.show-chart")
    wait_for("the series chart again", lambda: (lambda s: s if s["chart"] and series["id"][:8] in s["chartTitle"]
                                                 else None)(state(wd)), 30)
    if args.jobs_shot:
        wd.js("document.getElementById('chart-panel').scrollIntoView({block: 'end'});")
        shot(wd, args.jobs_shot)

    # The live series of the tenant's timeseries stream.
    click(wd, "button.tab[data-tab=live]")
    wait_for("the live chart of the total", lambda: (lambda s: s if s["live"] else None)(state(wd)), 30)
    # By port: the stream keeps that key, so the console offers it.
    wd.js("const s = document.getElementById('live-by'); s.value = 'destinationTransportPort';"
          "s.dispatchEvent(new Event('change'));")
    s = wait_for("the live chart by port", lambda: (lambda s: s if s["live"] and "by=destinationTransportPort"
                                                    in (s["livePath"] or "") else None)(state(wd)), 30)
    svg = wd.s("POST", "/execute/async", {"script": IMG_TEXT_JS, "args": ["#live-img", args.token]})
    check("<svg" in svg[:200], f"the live chart is not an SVG: {svg[:120]!r}")
    check(all(f">{p}<" in svg.replace("\n", "").replace(" ", "") for p in ("443", "80", "53")),
          "the live chart's legend lacks a port the exporter sent")
    check(not s["error"], f"the console shows an error: {s['error']!r}")
    log(f"live chart {s['live'][0]}x{s['live'][1]}, {s['liveStatus']!r}")
    if args.live_shot:
        wd.js("window.scrollTo(0, 0);")
        shot(wd, args.live_shot)


def shot(wd, path):
    png = wd.screenshot()
    check(png[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG")
    with open(path, "wb") as f:
        f.write(png)
    log(f"screenshot: {path} ({len(png)} bytes)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="http://HOST:PORT (the API's address)")
    p.add_argument("--token", required=True, help="the admin token, or a tenant's with --tenant")
    p.add_argument("--tenant", default="", help="the tenant to work in (default: the first)")
    p.add_argument("--capture", required=True, help="a pcap to upload")
    p.add_argument("--jobs-shot", help="a PNG of the jobs tab with the chart")
    p.add_argument("--live-shot", help="a PNG of the live series tab")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    p.add_argument("--chromedriver", help="chromedriver binary (default: chromedriver on PATH)")
    p.add_argument("--timeout", type=int, default=180, help="hard limit for the whole run, seconds")
    return drive(p.parse_args(), run)


if __name__ == "__main__":
    sys.exit(main())
