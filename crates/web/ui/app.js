// The Spawngrid web UI: sign in, scores, envs (status and notices), spawn, save, invite, boom,
// and a terminal attached to an env (xterm.js over the node's cpu WebSocket).
//
// Everything goes through the node's HTTPS API (docs/node.md) with the token of a login,
// kept in this tab's sessionStorage (gone when the tab closes or on sign out). Every API
// error is shown as the node's one line. Text from the node is put in the page as text
// (textContent), never as HTML.
'use strict';

const TOKEN = 'spawngrid.token';
const USER = 'spawngrid.user';
// The cpu WebSocket's subprotocols: the node answers with `spawngrid`; `bearer.TOKEN` carries
// the token, since a browser cannot set an Authorization header on a WebSocket.
const PROTOCOL = 'spawngrid';
const BEARER = 'bearer.';

const $ = (id) => document.getElementById(id);

// An API error: the node's one line, and the HTTP status (0: the node was not reached).
class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// Calls the API: `body` is sent as JSON; the answer's JSON is returned, or ApiError thrown.
async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new ApiError(`could not reach the node (${e.message}): check that it is running`, 0);
  }
  const text = await resp.text();
  let value;
  try {
    value = text ? JSON.parse(text) : null;
  } catch {
    value = null;
  }
  if (!resp.ok) {
    const line = value && typeof value.error === 'string'
      ? value.error
      : `${method} ${path} failed: HTTP ${resp.status}`;
    throw new ApiError(line, resp.status);
  }
  return value;
}

// One message line at the top: an error (red) or an outcome; showing one hides the other,
// and the page scrolls up to it if the user is further down (at a form).
function show(id, text) {
  $(id === 'error' ? 'info' : 'error').hidden = true;
  const el = $(id);
  el.textContent = text;
  el.hidden = false;
  el.scrollIntoView({ block: 'nearest' });
}

function showError(text) {
  show('error', text);
}

function showInfo(text) {
  show('info', text);
}

function clearMessages() {
  $('error').hidden = true;
  $('info').hidden = true;
}

// Runs an action started by the user: its button is disabled meanwhile; an error is shown,
// and a 401 (token expired or revoked) signs out.
async function act(button, f) {
  clearMessages();
  if (button) button.disabled = true;
  try {
    await f();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401 && sessionStorage.getItem(TOKEN)) {
      signOut();
    }
    showError(e.message);
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- formatting (as `spawngrid status` prints) ----

function megabytes(bytes) {
  return bytes === null || bytes === undefined ? '-' : `${(bytes / 1048576).toFixed(1)}M`;
}

function age(secs) {
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h`;
  return `${Math.floor(secs / 86400)}d`;
}

// When and how the node ends an env, as `spawngrid status` prints it.
function ends(expiry) {
  if (!expiry) return '-';
  return `in ${age(Math.max(0, expiry.at - now()))} (${expiry.cause}; ${expiry.then})`;
}

function now() {
  return Math.floor(Date.now() / 1000);
}

// A size as the CLI's --mem takes it: bytes, or a number with K, M, G or T (powers of 1024;
// a trailing B is fine).
function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$/i.exec(text);
  if (!m) throw new ApiError(`bad size "${text}" (want e.g. 500M or 10G)`, 400);
  const exp = ' KMGT'.indexOf((m[2] || ' ').toUpperCase());
  return Math.floor(parseFloat(m[1]) * 1024 ** exp);
}

// A table cell with `text`, and `title` when given.
function cell(text, title) {
  const td = document.createElement('td');
  td.textContent = text;
  if (title) td.title = title;
  return td;
}

function button(label, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.addEventListener('click', () => act(b, () => onClick(b)));
  return b;
}

// ---- scores ----

let scores = [];

// How the user names an entry: NAME for their own, OWNER/NAME for one shared with them.
function address(entry) {
  return entry.owner === sessionStorage.getItem(USER) ? entry.name : `${entry.owner}/${entry.name}`;
}

function renderScores() {
  const filter = $('filter').value.trim().toLowerCase();
  const body = $('scores').tBodies[0];
  body.replaceChildren();
  for (const s of scores) {
    const name = address(s);
    if (filter && !name.toLowerCase().includes(filter)) continue;
    const tr = document.createElement('tr');
    tr.dataset.name = name;
    const link = document.createElement('button');
    link.type = 'button';
    link.className = 'link';
    link.textContent = name;
    link.title = 'spawn this name';
    link.addEventListener('click', () => {
      $('spawn-name').value = name;
      $('spawn-name').focus();
    });
    const td = document.createElement('td');
    td.append(link);
    const actions = document.createElement('td');
    actions.className = 'actions';
    const history = button('Lineage', () => showLineage(name));
    history.className = 'lineage';
    actions.append(history);
    tr.append(
      td,
      cell(s.score.slice(0, 12), s.score),
      cell(megabytes(s.size)),
      cell(age(Math.max(0, now() - s.created))),
      actions,
    );
    body.append(tr);
  }
  $('scores-empty').hidden = body.rows.length > 0;
  const names = $('names');
  names.replaceChildren(...scores.map((s) => {
    const o = document.createElement('option');
    o.value = address(s);
    return o;
  }));
}

// ---- envs ----

function renderEnvs(envs, notices) {
  const body = $('envs').tBodies[0];
  body.replaceChildren();
  for (const e of envs) {
    const tr = document.createElement('tr');
    tr.dataset.env = e.env;
    const actions = document.createElement('td');
    actions.className = 'actions';
    const term = button('Terminal', () => openTerminal(e.env));
    term.className = 'terminal';
    term.disabled = !e.running || !e.node_up;
    const boom = button('Boom', () => boomEnv(e.env));
    boom.className = 'boom danger';
    actions.append(term, boom);
    tr.append(
      cell(!e.node_up ? `${e.env} (its node is down)` : e.running ? e.env : `${e.env} (dead: boom it)`),
      cell(e.from || '-'),
      cell(e.snapshot ? e.snapshot.slice(0, 12) : '-', e.snapshot || ''),
      cell(e.node),
      cell(age(e.age)),
      cell(megabytes(e.memory)),
      cell(`${megabytes(e.write_used)}/${megabytes(e.write_size)}${e.disk ? ' disk' : ''}`),
      cell(ends(e.expiry)),
      cell(e.attach.ssh, e.attach.cpu),
      previews(e),
      actions,
    );
    body.append(tr);
  }
  $('envs-empty').hidden = envs.length > 0;
  const select = $('save-env');
  const chosen = select.value;
  select.replaceChildren(...envs.map((e) => {
    const o = document.createElement('option');
    o.value = o.textContent = e.env;
    return o;
  }));
  if (envs.some((e) => e.env === chosen)) select.value = chosen;
  $('notices').replaceChildren(...notices.map((n) => {
    const li = document.createElement('li');
    li.textContent = `note (${age(Math.max(0, now() - n.at))} ago): ${n.message}`;
    return li;
  }));
}

// The env's preview URLs (`spawngrid expose`): a button per port that asks the node for a
// fresh signed link (a minute) and opens it in a new tab without this page as its opener; the
// link sets the preview's cookie there. The token never goes into a URL.
function previews(e) {
  const td = document.createElement('td');
  td.className = 'previews';
  for (const x of e.exposures || []) {
    const b = button(`:${x.port}${x.public ? ' (public)' : ''}`, () => openPreview(e.env, x));
    b.title = x.url;
    td.append(b);
  }
  if (!td.childElementCount) td.textContent = '-';
  return td;
}

async function openPreview(env, x) {
  const body = { port: x.port, public: x.public, ttl: 60 };
  const r = await api('POST', `/api/envs/${encodeURIComponent(env)}/exposures`, body);
  window.open(r.link, '_blank', 'noopener,noreferrer');
}

// ---- nodes ----

// The grid's nodes: up or down, envs, room, labels (envs on any node are listed above and
// reached through this node, which sends their requests on).
function renderNodes(nodes) {
  const body = $('nodes').tBodies[0];
  body.replaceChildren(...nodes.map((n) => {
    const tr = document.createElement('tr');
    tr.dataset.node = n.name;
    tr.append(
      cell(n.name),
      cell(n.address),
      cell(n.up ? 'up' : `down (${age(n.silent)} silent)`),
      cell(`${n.envs}`),
      cell(`${n.room_envs}`),
      cell(megabytes(n.room_mem)),
      cell(n.labels.join(',') || '-'),
      cell(n.fingerprint.slice(0, 23), n.fingerprint),
    );
    return tr;
  }));
}

// Reads scores, envs, notices and nodes again and shows them.
async function refresh() {
  const [s, envs, notices, nodes] = await Promise.all([
    api('GET', '/api/scores'),
    api('GET', '/api/envs'),
    api('GET', '/api/notices'),
    api('GET', '/api/nodes'),
  ]);
  scores = s;
  renderScores();
  renderEnvs(envs, notices);
  renderNodes(nodes);
}

// ---- actions ----

async function spawnEnv() {
  // Placed on the grid: the node with the most room (the answer names it).
  const req = { name: $('spawn-name').value.trim(), net: $('spawn-net').value, place: {} };
  if ($('spawn-disk').checked) req.disk = true;
  const as = $('spawn-as').value.trim();
  if (as) req.as = as;
  const mem = $('spawn-mem').value.trim();
  if (mem) req.mem = parseSize(mem);
  const e = await api('POST', '/api/envs', req);
  await refresh();
  showInfo(`spawned ${e.env} on ${e.node}: ${e.attach.ssh}, or its Terminal button`);
}

async function saveEnv() {
  const env = $('save-env').value;
  if (!env) throw new ApiError('no env to save: spawn one first', 400);
  const r = await api('POST', `/api/envs/${encodeURIComponent(env)}/save`, { name: $('save-name').value.trim() });
  await refresh();
  const warnings = r.warnings.length ? ` (warnings: ${r.warnings.join('; ')})` : '';
  showInfo(`saved ${r.env} as ${r.name} = ${r.score} (${Math.round(r.seconds * 1000)} ms)${warnings}`);
}

async function invite() {
  const r = await api('POST', '/api/invite', {
    user: $('invite-user').value.trim(),
    name: $('invite-name').value.trim(),
  });
  if (r.pending) {
    showInfo(`invited ${r.user}: ${r.name} waits for them to accept (spawngrid invite accept ${r.name})`);
    return;
  }
  showInfo(`invited ${r.user}: they have ${r.name} = ${r.score} (uid ${r.uid}, groups ${r.groups.join(',') || '-'})`);
}

async function boomEnv(env) {
  if (!window.confirm(`Boom ${env}? Its processes and writes since its last save are destroyed.`)) return;
  if (session && session.env === env) closeTerminal();
  const r = await api('DELETE', `/api/envs/${encodeURIComponent(env)}`);
  await refresh();
  showInfo(`boomed ${r.env}`);
}

// ---- lineage ----

// Shows a name's ancestry (GET /api/log): its snapshot, then each parent, newest first.
async function showLineage(name) {
  const entries = await api('GET', `/api/log?name=${encodeURIComponent(name)}`);
  $('lineage-name').textContent = name;
  $('lineage').tBodies[0].replaceChildren(...entries.map((e, i) => {
    const tr = document.createElement('tr');
    tr.dataset.score = e.score;
    tr.append(
      cell(e.score.slice(0, 12), e.score),
      cell(e.names.length ? e.names.join(' ') : '-'),
      cell(e.author),
      cell(age(Math.max(0, now() - e.created))),
      cell(megabytes(e.bytes)),
      cell(e.note),
    );
    const actions = document.createElement('td');
    actions.className = 'actions';
    if (i + 1 < entries.length) {
      const changes = button('Changes', () => showDiff(name, e.score));
      changes.className = 'changes';
      actions.append(changes);
    }
    tr.append(actions);
    return tr;
  }));
  $('lineage-panel').hidden = false;
}

// The marks of a diff's changes, as `spawngrid lib diff` prints them.
const MARKS = { added: '+', removed: '-', changed: 'M' };

// Shows what one save changed against its parent (GET /api/diff).
async function showDiff(name, score) {
  const d = await api('GET', `/api/diff?name=${encodeURIComponent(name)}&score=${score}`);
  $('diff-score').textContent = `${score.slice(0, 12)} (${name})`;
  $('diff-score').title = score;
  const counts = { added: 0, removed: 0, changed: 0 };
  for (const c of d.changes) counts[c.change] += 1;
  $('diff-summary').textContent = d.parent
    ? `against its parent ${d.parent.slice(0, 12)}: ${counts.added} added, ${counts.changed} changed, ` +
      `${counts.removed} removed${d.truncated ? ` (the first ${d.changes.length} paths shown)` : ''}`
    : 'an imported snapshot: it has no parent to compare with';
  $('diff').tBodies[0].replaceChildren(...d.changes.map((c) => {
    const tr = document.createElement('tr');
    tr.className = c.change;
    tr.append(cell(MARKS[c.change] || '?', c.change), cell(c.path));
    return tr;
  }));
  $('diff-panel').hidden = false;
}

// ---- terminal ----

// The open terminal: {env, term, fit, ws, observer}, or null.
let session = null;

function openTerminal(env) {
  closeTerminal();
  $('terminal-panel').hidden = false;
  $('term-env').textContent = env;
  const status = $('term-status');
  status.textContent = 'connecting…';
  const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontFamily: 'monospace' });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($('terminal'));
  fit.fit();
  const showSize = () => {
    $('term-size').textContent = `${term.cols}×${term.rows}`;
    $('terminal').dataset.rows = term.rows;
    $('terminal').dataset.cols = term.cols;
  };
  showSize();
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = `${scheme}//${location.host}/api/envs/${encodeURIComponent(env)}/cpu?rows=${term.rows}&cols=${term.cols}`;
  const ws = new WebSocket(url, [PROTOCOL, BEARER + sessionStorage.getItem(TOKEN)]);
  ws.binaryType = 'arraybuffer';
  const s = { env, term, fit, ws, observer: new ResizeObserver(() => fit.fit()), ended: false };
  session = s;
  const encoder = new TextEncoder();
  const send = (data) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(data);
  };
  ws.addEventListener('open', () => {
    status.textContent = 'connected';
    term.focus();
  });
  ws.addEventListener('message', (ev) => {
    if (typeof ev.data !== 'string') {
      term.write(new Uint8Array(ev.data));
      return;
    }
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (msg.exit !== undefined) {
      s.ended = true;
      status.textContent = `exited with code ${msg.exit}`;
      refresh().catch((e) => showError(e.message));
    } else if (msg.error !== undefined) {
      s.ended = true;
      status.textContent = 'could not start';
      showError(msg.error);
    }
  });
  ws.addEventListener('close', (ev) => {
    if (!s.ended) {
      // A refused upgrade (expired token, env gone) shows only as a close without a reason.
      status.textContent = `disconnected (WebSocket close ${ev.code}): check the env in the list, or sign in again`;
    }
  });
  term.onData((d) => send(encoder.encode(d)));
  term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0))));
  term.onResize(({ rows, cols }) => {
    showSize();
    send(JSON.stringify({ resize: [rows, cols] }));
  });
  s.observer.observe($('terminal'));
  $('terminal-panel').scrollIntoView({ block: 'nearest' });
}

function closeTerminal() {
  if (!session) return;
  session.observer.disconnect();
  session.ws.close();
  session.term.dispose();
  session = null;
  $('terminal-panel').hidden = true;
  $('term-status').textContent = '';
}

// ---- signing in and out ----

function showSignedIn(user) {
  $('who').textContent = user;
  $('signin').hidden = true;
  $('app').hidden = false;
  $('signout').hidden = false;
  $('refresh').hidden = false;
}

function signOut() {
  closeTerminal();
  // The node revokes the token (best effort: it is forgotten here either way).
  if (sessionStorage.getItem(TOKEN)) api('POST', '/api/logout').catch(() => {});
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(USER);
  scores = [];
  $('who').textContent = '';
  $('app').hidden = true;
  $('signout').hidden = true;
  $('refresh').hidden = true;
  $('signin').hidden = false;
  $('signin-password').value = '';
}

async function signIn() {
  const user = $('signin-user').value.trim();
  const password = $('signin-password').value;
  const r = await api('POST', '/api/login', { user, password });
  $('signin-password').value = '';
  sessionStorage.setItem(TOKEN, r.token);
  sessionStorage.setItem(USER, r.user);
  showSignedIn(r.user);
  await refresh();
}

// Wires a form's submit to an action.
function onSubmit(form, f) {
  const el = $(form);
  el.addEventListener('submit', (ev) => {
    ev.preventDefault();
    act(el.querySelector('button[type=submit]'), f);
  });
}

function start() {
  onSubmit('signin', signIn);
  onSubmit('spawn', spawnEnv);
  onSubmit('save', saveEnv);
  onSubmit('invite', invite);
  $('filter').addEventListener('input', renderScores);
  $('signout').addEventListener('click', () => {
    signOut();
    showInfo('signed out');
  });
  $('refresh').addEventListener('click', () => act($('refresh'), refresh));
  $('term-close').addEventListener('click', closeTerminal);
  $('lineage-close').addEventListener('click', () => { $('lineage-panel').hidden = true; });
  $('diff-close').addEventListener('click', () => { $('diff-panel').hidden = true; });
  const user = sessionStorage.getItem(USER);
  if (sessionStorage.getItem(TOKEN) && user) {
    showSignedIn(user);
    act(null, refresh);
  }
}

start();
