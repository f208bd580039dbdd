// The ipfixsvc console: the tenant's jobs (upload a capture, watch it, chart it), sessions,
// streams and live series, and for the admin the actor tree. It talks to the same API as curl,
// with the same bearer token, kept in this tab's session storage. Text from the API is put in
// the page as text (textContent), never as markup.
'use strict';

const state = { token: null, tenant: null, admin: false, tab: 'jobs', timer: null,
                charts: new Set(), shown: null, urls: [] };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// A failed request as an Error with the problem's detail (RFC 9457) and the status.
async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: 'Bearer ' + state.token }, opts.headers || {});
  const r = await fetch(path, Object.assign({}, opts, { headers, cache: 'no-store' }));
  if (!r.ok) {
    let detail = r.statusText;
    try { const p = await r.json(); detail = p.detail || p.title || detail; } catch (_) { /* not JSON */ }
    const e = new Error(`${r.status}: ${detail}`);
    e.status = r.status;
    throw e;
  }
  return r;
}
const getJson = async (path) => (await api(path)).json();
const tenantPath = () => '/api/v1/tenants/' + encodeURIComponent(state.tenant);

function showError(e) { $('error').textContent = e ? String(e.message || e) : ''; }

function when(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z' : ''; }

function bytes(n) {
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

// An object URL for a blob, freed when the next chart replaces it.
function objectUrl(blob) {
  const u = URL.createObjectURL(blob);
  state.urls.push(u);
  while (state.urls.length > 8) URL.revokeObjectURL(state.urls.shift());
  return u;
}

async function download(path, name) {
  try {
    const blob = await (await api(path)).blob();
    const a = el('a', { href: objectUrl(blob), download: name });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) { showError(e); }
}

// ---- sign in ----

async function signIn(token, tenant) {
  state.token = token;
  let tenants;
  try {
    tenants = (await getJson('/api/v1/tenants')).tenants.map((t) => t.id);
    state.admin = true;
  } catch (e) {
    if (e.status !== 401) throw e;
    state.admin = false;
    if (!tenant) throw new Error('This is not the admin token: if it is a tenant\'s, give the tenant too.');
    await getJson('/api/v1/tenants/' + encodeURIComponent(tenant) + '/jobs?limit=1');
    tenants = [tenant];
  }
  if (tenant && !tenants.includes(tenant)) throw new Error(`no tenant ${tenant}`);
  if (tenants.length === 0) throw new Error('there is no tenant yet: make one with POST /api/v1/tenants');
  state.tenant = tenant || tenants[0];
  sessionStorage.setItem('ipfixsvc', JSON.stringify({ token, tenant: state.tenant }));
  const sel = $('tenant-select');
  sel.replaceChildren(...tenants.map((t) => el('option', { value: t }, t)));
  sel.value = state.tenant;
  $('who').textContent = state.admin ? 'admin' : `tenant ${state.tenant}`;
  for (const b of document.querySelectorAll('.admin-only')) b.hidden = !state.admin;
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  show(state.tab);
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('login-error').textContent = '';
  try {
    await signIn($('token').value.trim(), $('tenant').value.trim());
  } catch (e) {
    state.token = null;
    $('login-error').textContent = e.status === 401 ? 'The token is not valid.' : String(e.message || e);
  }
});

$('logout').addEventListener('click', () => {
  sessionStorage.removeItem('ipfixsvc');
  location.reload();
});

$('tenant-select').addEventListener('change', (ev) => {
  state.tenant = ev.target.value;
  state.shown = null;
  $('chart-panel').hidden = true;
  sessionStorage.setItem('ipfixsvc', JSON.stringify({ token: state.token, tenant: state.tenant }));
  show(state.tab);
});

// ---- tabs ----

for (const b of document.querySelectorAll('button.tab')) {
  b.addEventListener('click', () => show(b.dataset.tab));
}

const loaders = { jobs: loadJobs, sessions: loadSessions, streams: loadStreams, live: loadLive,
                  actors: loadActors };
// Seconds between refreshes of a tab while it shows.
const every = { jobs: 2, sessions: 5, streams: 5, live: 10, actors: 5 };

function show(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll('button.tab')) b.classList.toggle('active', b.dataset.tab === tab);
  for (const p of document.querySelectorAll('.panel')) p.hidden = p.id !== 'tab-' + tab;
  refresh();
}

async function refresh() {
  clearTimeout(state.timer);
  const tab = state.tab;
  try {
    await loaders[tab]();
    showError(null);
  } catch (e) {
    showError(e);
  }
  if (state.tab === tab) state.timer = setTimeout(refresh, (state.fast ? 1 : every[tab]) * 1000);
}

// ---- jobs ----

function kindName(j) {
  if (j.kind === 'time_series') return 'time series';
  if (j.kind === 'analysis') return 'analysis: ' + ((j.analysis || {}).analysis || '').replace('_', ' ');
  return 'conversion';
}

function jobRow(j) {
  const p = j.progress || {};
  const bar = el('progress', { max: String(p.bytes_total || 1), value: String(p.bytes_read || 0) });
  let result = '';
  if (j.summary) result = `${j.summary.flows} flows from ${j.summary.packets} packets`;
  if (j.series) result = `${j.series.records} records, ${j.series.intervals} intervals, ${j.series.keys.length} series`;
  if (j.report) {
    const what = j.report.analysis === 'anomalies' ? 'anomalies' : 'rows';
    result = `${j.report.found} ${what} from ${j.report.records} records`;
  }
  if (j.error) result = j.error;
  const actions = el('td');
  const id = j.id;
  if (j.state === 'queued' || j.state === 'running') {
    actions.append(el('button', { type: 'button', onclick: () => cancelJob(id) }, 'Cancel'));
  }
  if (j.state === 'succeeded' && j.kind === 'pcap_conversion') {
    actions.append(el('button', { type: 'button', onclick: () => chartOf(id) }, 'Chart'), ' ',
      el('button', { type: 'button', onclick: () => analyse(id, 'top_talkers') }, 'Talkers'), ' ',
      el('button', { type: 'button', onclick: () => analyse(id, 'mix') }, 'Mix'), ' ',
      el('button', { type: 'button', onclick: () => analyse(id, 'anomalies') }, 'Anomalies'), ' ',
      el('button', { type: 'button', onclick: () => download(`${tenantPath()}/jobs/${id}/result`, `${id}.ipfix`) }, 'IPFIX'));
  }
  if (j.state === 'succeeded' && (j.kind === 'time_series' || j.kind === 'analysis')) {
    actions.append(el('button', { type: 'button', class: 'show-chart', onclick: () => showChart(j) }, 'Show'));
  }
  return el('tr', { 'data-job': id, 'data-state': j.state, 'data-kind': j.kind },
    el('td', { title: id }, el('code', {}, id.slice(0, 8))),
    el('td', {}, kindName(j)),
    el('td', { class: 'state-' + j.state }, j.state + (j.after && j.state === 'queued' && !j.inputs.length ? ' (waiting)' : '')),
    el('td', {}, bar, ' ', p.bytes_total ? `${bytes(p.bytes_read)} of ${bytes(p.bytes_total)}` : ''),
    el('td', {}, result),
    el('td', {}, when(j.submitted_ms)),
    actions);
}

async function loadJobs() {
  const list = await getJson(`${tenantPath()}/jobs?limit=50`);
  $('jobs-table').tBodies[0].replaceChildren(...list.jobs.map(jobRow));
  state.fast = list.jobs.some((j) => j.state === 'queued' || j.state === 'running');
  // A chart asked for here is shown when its job succeeds.
  for (const j of list.jobs) {
    if (state.charts.has(j.id) && j.state !== 'queued' && j.state !== 'running') {
      state.charts.delete(j.id);
      if (j.state === 'succeeded') await showChart(j);
      else showError(new Error(`the chart's job ${j.state}: ${j.error || ''}`));
    }
  }
}

async function cancelJob(id) {
  try {
    await api(`${tenantPath()}/jobs/${id}`, { method: 'DELETE' });
  } catch (e) { showError(e); }
  refresh();
}

async function chartOf(conversion) {
  const by = $('series-by').value;
  const options = {
    interval_secs: Number($('series-interval').value),
    top: Number($('series-top').value) || 8,
    chart: $('series-chart').value,
  };
  if (by) options.by = by;
  try {
    const r = await api(`${tenantPath()}/jobs/time-series`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ after: conversion, options }),
    });
    state.charts.add((await r.json()).id);
  } catch (e) { showError(e); }
  refresh();
}

async function analyse(conversion, analysis) {
  const options = { analysis, top: 10, interval_secs: Number($('series-interval').value) };
  try {
    const r = await api(`${tenantPath()}/jobs/analysis`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ after: conversion, options }),
    });
    state.charts.add((await r.json()).id);
  } catch (e) { showError(e); }
  refresh();
}

async function showChart(j) {
  const base = `${tenantPath()}/jobs/${j.id}`;
  const file = j.kind === 'analysis' ? 'analysis.svg' : 'series.svg';
  const svg = await (await api(`${base}/${file}`)).blob();
  state.shown = j.id;
  const img = $('chart-img');
  img.src = objectUrl(svg);
  img.dataset.path = `${base}/${file}`;
  if (j.kind === 'analysis') {
    $('chart-title').textContent = `Job ${j.id.slice(0, 8)}: ${kindName(j)}`;
  } else {
    const o = j.time_series || {};
    $('chart-title').textContent = `Job ${j.id.slice(0, 8)}: ${o.by || 'total'}, ${o.interval_secs} s intervals`;
  }
  $('chart-files').replaceChildren('Download: ', ...j.files.flatMap((f) => [
    el('button', { type: 'button', onclick: () => download(`${base}/${f}`, `${j.id.slice(0, 8)}-${f}`) }, f), ' ']));
  $('chart-panel').hidden = false;
}

$('upload-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const file = $('capture').files[0];
  if (!file) return;
  // XMLHttpRequest, not fetch: it reports the upload's progress.
  const xhr = new XMLHttpRequest();
  const q = $('uniflow').checked ? '?uniflow=true' : '';
  xhr.open('POST', `${tenantPath()}/jobs/pcap-conversion${q}`);
  xhr.setRequestHeader('Authorization', 'Bearer ' + state.token);
  xhr.setRequestHeader('Content-Type', 'application/octet-stream');
  const bar = $('upload-progress');
  bar.hidden = false;
  bar.value = 0;
  $('upload-status').textContent = `uploading ${file.name}`;
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
  xhr.onload = () => {
    bar.hidden = true;
    if (xhr.status === 202) {
      const j = JSON.parse(xhr.responseText);
      $('upload-status').textContent = `${file.name}: job ${j.id.slice(0, 8)} ${j.state}`;
    } else {
      let detail = xhr.statusText;
      try { detail = JSON.parse(xhr.responseText).detail || detail; } catch (_) { /* not JSON */ }
      $('upload-status').textContent = `${file.name}: ${xhr.status} ${detail}`;
    }
    refresh();
  };
  xhr.onerror = () => { bar.hidden = true; $('upload-status').textContent = `${file.name}: the upload failed`; };
  xhr.send(file);
});

// ---- sessions and streams ----

async function loadSessions() {
  const page = await getJson(`${tenantPath()}/sessions?limit=200`);
  $('sessions-table').tBodies[0].replaceChildren(...page.sessions.map((s) => {
    const st = s.stats || {};
    return el('tr', {},
      el('td', {}, st.exporter || s.session), el('td', {}, st.transport || ''), el('td', {}, s.node),
      el('td', {}, st.started || ''), el('td', { class: 'num' }, st.messages ?? ''),
      el('td', { class: 'num' }, st.data_records ?? ''), el('td', { class: 'num' }, st.errors ?? ''));
  }));
  if (page.sessions.length === 0) {
    $('sessions-table').tBodies[0].replaceChildren(el('tr', {}, el('td', { colspan: '7', class: 'hint' }, 'No exporter is sending to this tenant now.')));
  }
}

async function streams() { return (await getJson(`${tenantPath()}/streams`)).streams; }

async function loadStreams() {
  const list = await streams();
  $('streams-table').tBodies[0].replaceChildren(...list.map((s) => el('tr', {},
    el('td', {}, s.name), el('td', {}, s.spec.sink.kind), el('td', {}, s.totals.state),
    el('td', { class: 'num' }, s.totals.records_in), el('td', { class: 'num' }, s.totals.records_out),
    el('td', { class: 'num' }, s.totals.filtered), el('td', { class: 'num' }, s.totals.dropped))));
}

// ---- live series ----

let liveStreams = [];

async function loadLive() {
  liveStreams = (await streams()).filter((s) => s.spec.sink.kind === 'timeseries');
  const sel = $('live-stream');
  const keep = sel.value;
  sel.replaceChildren(...liveStreams.map((s) => el('option', { value: s.name }, s.name)));
  if (liveStreams.some((s) => s.name === keep)) sel.value = keep;
  $('live-create').hidden = liveStreams.length > 0;
  if (liveStreams.length === 0) {
    $('live-status').textContent = 'This tenant has no stream with a timeseries sink.';
    $('live-img').hidden = true;
    return;
  }
  const stream = liveStreams.find((s) => s.name === sel.value) || liveStreams[0];
  const bySel = $('live-by');
  const keepBy = bySel.value;
  const keys = ['', ...(stream.spec.sink.by || [])];
  bySel.replaceChildren(...keys.map((k) => el('option', { value: k }, k || 'total')));
  if (keys.includes(keepBy)) bySel.value = keepBy;
  const now = Math.floor(Date.now() / 1000);
  const q = new URLSearchParams({ stream: stream.name, from: String(now - Number($('live-window').value)),
                                  to: String(now), chart: $('live-chart').value, top: '8' });
  if (bySel.value) q.set('by', bySel.value);
  const path = `${tenantPath()}/timeseries?${q}`;
  const svg = await (await api(path, { headers: { Accept: 'image/svg+xml' } })).blob();
  const img = $('live-img');
  img.src = objectUrl(svg);
  img.dataset.path = path;
  img.hidden = false;
  $('live-status').textContent = `updated ${when(Date.now())}`;
}

for (const id of ['live-stream', 'live-by', 'live-window', 'live-chart']) {
  $(id).addEventListener('change', () => refresh());
}

$('live-create').addEventListener('click', async () => {
  try {
    await api(`${tenantPath()}/streams`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'live', sink: { kind: 'timeseries', interval_secs: 10,
        by: ['destinationTransportPort', 'protocolIdentifier', 'sourceIPv4Address/24'] } }),
    });
  } catch (e) { showError(e); }
  refresh();
});

// ---- actors (admin) ----

function actorNode(t) {
  const children = t.children || [];
  let facts = `${t.kind || ''} · ${t.id || ''} ${t.status || ''}`;
  if (t.restarts) facts += ` · ${t.restarts} restarts`;
  if (t.figures && typeof t.figures === 'object') {
    for (const [k, v] of Object.entries(t.figures)) facts += ` · ${k} ${typeof v === 'object' ? JSON.stringify(v) : v}`;
  }
  const d = el('details', { open: '' }, el('summary', {}, t.name || '(unnamed)', ' ', el('span', { class: 'facts' }, facts)));
  for (const c of children) d.append(actorNode(c));
  return d;
}

async function loadActors() {
  const views = await getJson('/debug/actors');
  const out = [];
  for (const n of views.nodes) {
    out.push(el('h3', {}, n.node || '?'));
    out.push(n.tree ? actorNode(n.tree) : el('p', { class: 'error' }, JSON.stringify(n.error)));
  }
  $('actors-tree').replaceChildren(...out);
}

// ---- start ----

(async () => {
  const saved = sessionStorage.getItem('ipfixsvc');
  if (!saved) return;
  try {
    const { token, tenant } = JSON.parse(saved);
    await signIn(token, tenant);
  } catch (_) {
    sessionStorage.removeItem('ipfixsvc');
    state.token = null;
  }
})();
