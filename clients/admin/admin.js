// Herald's admin page: sign in with the API key, the overview's charts (live, over Server-Sent
// Events), and the users' live trees (polled every second, one request at a time). Plain
// JavaScript and SVG: nothing is loaded from anywhere else.
//
// Every request that changes something carries `X-Herald-Admin: 1` (the server's CSRF check);
// the session is an HttpOnly cookie this script never sees.

const WINDOW_MS = 15 * 60 * 1000;
/** How often the users' trees are read again while the page is open. */
const USERS_POLL_MS = 1000;
const COLORS = ['#4f46e5', '#b45309', '#15803d', '#b91c1c', '#0e7490', '#7c3aed', '#be185d'];

const $ = (selector) => document.querySelector(selector);

let samples = [];
let events = null;
let usersTimer = null;
let usersShown = '';
let detailUser = null;
let signedIn = false;

async function api(method, path, body) {
  const headers = {};
  if (method !== 'GET') headers['x-herald-admin'] = '1';
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
  });
  let answer = null;
  if (response.status !== 204) answer = await response.json().catch(() => null);
  if (response.status === 401 && path !== '/admin/sign-in') showSignIn(signedIn ? 'Your admin session ended: sign in again.' : '');
  return { status: response.status, body: answer };
}

function errorText(answer) {
  return answer.body?.error?.message ?? `HTTP ${answer.status}`;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function showSignIn(message = '') {
  signedIn = false;
  events?.close();
  events = null;
  clearTimeout(usersTimer);
  $('#console').hidden = true;
  $('#who').hidden = true;
  $('#signin').hidden = false;
  $('#signin-error').textContent = message;
}

async function showConsole(session) {
  signedIn = true;
  $('#signin').hidden = true;
  $('#console').hidden = false;
  $('#who').hidden = false;
  $('#node').textContent = session.node;
  const overview = await api('GET', '/admin/api/overview');
  if (overview.status !== 200) return;
  samples = overview.body.samples;
  $('#interval').textContent = overview.body.interval_secs;
  drawCharts();
  openEvents();
  pollUsers();
}

function openEvents() {
  events?.close();
  events = new EventSource('/admin/api/events');
  const live = $('#live');
  events.addEventListener('open', () => { live.textContent = 'live'; live.dataset.live = 'true'; });
  events.addEventListener('error', async () => {
    live.textContent = 'reconnecting…';
    live.dataset.live = 'false';
    // Ended by the server: at sign-out or expiry (then stop), or at a restart (it reconnects).
    const session = await api('GET', '/admin/api/session');
    if (session.status !== 200) events?.close();
  });
  events.addEventListener('sample', (event) => {
    samples.push(JSON.parse(event.data));
    drawCharts();
  });
  events.addEventListener('lagged', async () => {
    const overview = await api('GET', '/admin/api/overview');
    if (overview.status === 200) { samples = overview.body.samples; drawCharts(); }
  });
}

function drawCharts() {
  const now = Date.now();
  samples = samples.filter((s) => s.at_ms > now - WINDOW_MS);
  for (const figure of document.querySelectorAll('.chart')) {
    const metric = figure.dataset.metric;
    let series;
    if (metric === 'closes') {
      const reasons = [...new Set(samples.flatMap((s) => s.closes.map(([reason]) => reason)))].sort();
      series = reasons.map((reason) => ({
        name: reason,
        points: samples.map((s) => [s.at_ms, s.closes.find(([r]) => r === reason)?.[1] ?? 0]),
      }));
      const last = samples.at(-1);
      figure.querySelector('.now').textContent = last ? String(last.closes.reduce((n, [, c]) => n + c, 0)) : '';
      const legend = figure.querySelector('.legend');
      legend.replaceChildren(...series.map((s, i) => el('span', { class: `key c${i % COLORS.length}`, text: s.name })));
    } else {
      const points = samples.filter((s) => s[metric] !== null && s[metric] !== undefined).map((s) => [s.at_ms, s[metric]]);
      series = [{ name: metric, points }];
      const last = points.at(-1);
      figure.querySelector('.now').textContent = last ? format(last[1]) : '—';
      figure.dataset.now = last ? String(last[1]) : '';
    }
    drawSvg(figure.querySelector('svg'), series, now);
  }
}

function format(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 2 : 0);
}

function drawSvg(svg, series, now) {
  const [width, height] = [300, 90];
  const max = Math.max(1, ...series.flatMap((s) => s.points.map(([, v]) => v)));
  const x = (at) => ((at - (now - WINDOW_MS)) / WINDOW_MS) * width;
  const y = (v) => height - 4 - (v / max) * (height - 14);
  const ns = 'http://www.w3.org/2000/svg';
  const nodes = [];
  const grid = document.createElementNS(ns, 'line');
  for (const [name, value] of Object.entries({ x1: 0, x2: width, y1: y(max), y2: y(max), class: 'grid' })) grid.setAttribute(name, value);
  const top = document.createElementNS(ns, 'text');
  top.setAttribute('x', 2);
  top.setAttribute('y', 9);
  top.setAttribute('class', 'axis');
  top.textContent = format(max);
  nodes.push(grid, top);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', s.points.map(([at, v]) => `${x(at).toFixed(1)},${y(v).toFixed(1)}`).join(' '));
    line.setAttribute('stroke', COLORS[i % COLORS.length]);
    line.setAttribute('class', 'series');
    nodes.push(line);
  });
  svg.replaceChildren(...nodes);
}

async function pollUsers() {
  clearTimeout(usersTimer);
  if (!signedIn) return;
  const prefix = $('#search').value.trim();
  const answer = await api('GET', `/admin/api/users?prefix=${encodeURIComponent(prefix)}`);
  if (answer.status === 200) {
    renderUsers(answer.body);
    $('#error').textContent = '';
  } else if (answer.status !== 401) {
    $('#error').textContent = errorText(answer);
  }
  if (signedIn) usersTimer = setTimeout(pollUsers, USERS_POLL_MS);
}

function renderUsers(body) {
  const text = JSON.stringify(body);
  if (text === usersShown) return; // Nothing changed: keep the elements (and the buttons under the pointer).
  usersShown = text;
  $('#users-note').textContent = body.users.length
    ? (body.more ? 'More users match: type more of the id.' : '')
    : 'No connected user matches (this node\'s users; another node\'s by its exact id).';
  $('#users').replaceChildren(...body.users.map(renderUser));
}

function renderUser(user) {
  const tabs = user.sessions.reduce((n, s) => n + s.clients.length, 0);
  return el('li', { class: 'user', 'data-user': user.user },
    el('div', { class: 'row' },
      el('strong', { class: 'id', text: user.user }),
      el('span', { class: 'muted small', text: `${user.sessions.length} session${user.sessions.length === 1 ? '' : 's'}, ${tabs} tab${tabs === 1 ? '' : 's'}` }),
      el('span', { class: 'badge', title: 'unread', 'data-unread': String(user.unread ?? ''), text: user.unread === null ? 'unread ?' : `${user.unread} unread` }),
      el('button', { type: 'button', class: 'open-user', text: 'Log & notify', onclick: () => openDetail(user.user) })),
    el('ul', { class: 'sessions' }, ...user.sessions.map((session) => renderSession(user.user, session))));
}

function renderSession(user, session) {
  return el('li', { class: 'session', 'data-session': session.session },
    el('div', { class: 'row' },
      el('span', { text: 'session ' }), el('code', { text: session.session }),
      el('button', {
        type: 'button', class: 'close-session danger', text: 'Close session',
        title: 'Signs this session out on every node: its tabs get closed: session_closed, its tokens are refused',
        onclick: () => act('DELETE', `/admin/api/users/${encodeURIComponent(user)}/sessions/${encodeURIComponent(session.session)}`, `session ${session.session} closed`),
      })),
    el('ul', { class: 'tabs' }, ...session.clients.map((client) => renderTab(user, session.session, client))));
}

function renderTab(user, session, client) {
  const since = new Date(client.connected_at).toLocaleTimeString();
  return el('li', { class: 'tab', 'data-client': client.client, 'data-transport': client.transport },
    el('span', { class: `transport t-${client.transport}`, text: client.transport }),
    el('code', { class: 'client', text: client.client }),
    el('span', { class: 'small', text: `node ${client.node} · since ${since} · last seq ${client.last_seq}` }),
    client.topics.length ? el('span', { class: 'small muted', text: `topics: ${client.topics.join(', ')}` }) : null,
    el('button', {
      type: 'button', class: 'close-tab', text: 'Close tab',
      title: 'Closes this tab (closed: evicted; herald.js does not reconnect); only a tab of this node',
      onclick: () => act('DELETE', `/admin/api/users/${encodeURIComponent(user)}/sessions/${encodeURIComponent(session)}/clients/${encodeURIComponent(client.client)}`, `tab ${client.client} closed`),
    }));
}

async function act(method, path, done) {
  const answer = await api(method, path);
  $('#error').textContent = answer.status === 200 ? '' : errorText(answer);
  if (answer.status === 200) $('#users-note').textContent = done;
  pollUsers();
}

async function openDetail(user) {
  detailUser = user;
  $('#detail').hidden = false;
  $('#detail-user').textContent = user;
  $('#notify-result').textContent = '';
  await loadDetail();
}

async function loadDetail() {
  if (!detailUser) return;
  const answer = await api('GET', `/admin/api/users/${encodeURIComponent(detailUser)}`);
  if (answer.status !== 200) {
    $('#detail-counts').textContent = errorText(answer);
    return;
  }
  const { counts, last_seq: lastSeq, log } = answer.body;
  $('#detail-counts').textContent =
    `inbox: ${counts.unread} unread, ${counts.unseen} unseen, ${counts.total} kept, ${counts.archived} archived · last seq ${lastSeq}`;
  $('#detail-log').replaceChildren(...log.map((n) => el('li', { 'data-seq': String(n.seq) },
    el('code', { text: `#${n.seq}` }), el('span', { text: ` ${n.type} ` }),
    el('span', { class: 'muted small', text: `${n.created_at} ` }), el('code', { class: 'data', text: JSON.stringify(n.data) }))));
}

$('#signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.target;
  const button = form.querySelector('button');
  button.disabled = true;
  $('#signin-error').textContent = 'Checking…';
  const answer = await api('POST', '/admin/sign-in', { key: form.key.value });
  button.disabled = false;
  form.key.value = '';
  if (answer.status === 204) {
    $('#signin-error').textContent = '';
    start();
  } else {
    $('#signin-error').textContent = errorText(answer);
  }
});

$('#sign-out').addEventListener('click', async () => {
  await api('POST', '/admin/sign-out');
  showSignIn('Signed out.');
});

$('#search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  usersShown = '';
  pollUsers();
});

$('#notify-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = event.target.text.value;
  const answer = await api('POST', `/admin/api/users/${encodeURIComponent(detailUser)}/notify`, { text });
  $('#notify-result').textContent = answer.status === 200
    ? `Sent: seq ${answer.body.notifications[0]?.seq}, delivered to ${answer.body.delivered} tab(s) of this node`
    : errorText(answer);
  loadDetail();
});

async function start() {
  const session = await api('GET', '/admin/api/session');
  if (session.status === 200) showConsole(session.body);
}

start();
