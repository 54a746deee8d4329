// herd's dashboard: polls GET /cluster/status once a second and renders it. No framework, no
// build step. Every string from the server goes into the page as text (textContent), never as
// markup: group names and deployment IDs come from config.
'use strict';

(() => {
  const KEY_NAME = 'herd-master-key'; // sessionStorage: this tab only, gone when it closes
  const POLL_MS = 1000;
  const STALE_MS = 5000;
  const TIMEOUT_MS = 10000;
  const HISTORY_FIRST = 180; // seconds of history asked for on the first poll
  const HISTORY_NEXT = 5; // and afterwards: enough to cover a late or missed poll
  const HISTORY_KEEP = 180; // points kept per series
  const PAGE_SIZE = 50;
  const SVG_NS = 'http://www.w3.org/2000/svg'; // the SVG namespace name, not a URL fetched

  const $ = (id) => document.getElementById(id);

  let key = null; // the master key in use; null when the herd needs none
  let generation = 0; // bumped on log in and log out: an older poll's answer is dropped
  let timer = null;
  let polls = 0;
  let lastOK = 0; // Date.now() of the last successful poll
  let lastError = '';
  let status = null; // the last /cluster/status answer
  let page = 0;
  // Per-second counts of this node, aligned so index HISTORY_KEEP-1 is the second hist.end.
  const hist = { end: null, groups: new Map(), deployments: new Map() };

  // ---- storage -------------------------------------------------------------------------------
  function storedKey() {
    try { return sessionStorage.getItem(KEY_NAME); } catch (e) { return null; }
  }
  function storeKey(k) {
    try { sessionStorage.setItem(KEY_NAME, k); } catch (e) { /* private mode: this page only */ }
  }
  function forgetKey() {
    try { sessionStorage.removeItem(KEY_NAME); } catch (e) { /* nothing stored */ }
  }

  // ---- fetching ------------------------------------------------------------------------------
  // fetchStatus asks /cluster/status with key k (null: none) and, when n > 0, n seconds of
  // history. It resolves to {status, body} and rejects on network errors and timeouts.
  async function fetchStatus(k, n) {
    const headers = { Accept: 'application/json' };
    if (k !== null) headers.Authorization = 'Bearer ' + k;
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch('/cluster/status' + (n > 0 ? '?history=' + n : ''), {
        headers, cache: 'no-store', credentials: 'omit', redirect: 'error', signal: ctl.signal,
      });
      let body = null;
      try { body = await r.json(); } catch (e) { /* not JSON: reported by status */ }
      return { status: r.status, body };
    } finally {
      clearTimeout(t);
    }
  }

  function errorText(res) {
    const m = res.body && res.body.error && res.body.error.message;
    return typeof m === 'string' && m ? m : 'HTTP ' + res.status;
  }

  // ---- log in and out ------------------------------------------------------------------------
  function showLogin(message) {
    generation++;
    clearTimeout(timer);
    key = null;
    $('app').hidden = true;
    $('logout').hidden = true;
    $('stale').hidden = true;
    $('login-panel').hidden = false;
    $('key').value = ''; // a refused key is not kept in the page
    const err = $('login-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('key').focus();
  }

  function start(k, res) {
    generation++;
    clearTimeout(timer);
    key = k;
    hist.end = null;
    hist.groups.clear();
    hist.deployments.clear();
    polls = 0;
    page = 0;
    $('login-panel').hidden = true;
    $('login-error').hidden = true;
    $('app').hidden = false;
    $('logout').hidden = k === null;
    accept(res.body);
    schedule(generation, Date.now());
  }

  async function boot() {
    const saved = storedKey();
    for (const k of saved !== null ? [saved, null] : [null]) {
      let res;
      try {
        res = await fetchStatus(k, HISTORY_FIRST);
      } catch (e) {
        showLogin('Cannot reach /cluster/status: ' + e.message);
        return;
      }
      if (res.status === 200 && res.body) {
        start(k, res);
        return;
      }
      if (res.status !== 401) {
        showLogin('/cluster/status answered: ' + errorText(res));
        return;
      }
      if (k !== null) forgetKey(); // refused: the key changed since it was stored
    }
    showLogin('');
  }

  async function login(ev) {
    ev.preventDefault();
    const input = $('key');
    const k = input.value;
    if (!k) return;
    const button = $('login').querySelector('button');
    button.disabled = true;
    try {
      const res = await fetchStatus(k, HISTORY_FIRST);
      if (res.status === 200 && res.body) {
        input.value = '';
        storeKey(k);
        start(k, res);
      } else {
        showLogin(errorText(res));
      }
    } catch (e) {
      showLogin('Cannot reach /cluster/status: ' + e.message);
    } finally {
      button.disabled = false;
    }
  }

  function logout() {
    forgetKey();
    showLogin('');
  }

  // ---- polling -------------------------------------------------------------------------------
  // One poll at a time: the next starts a second after the last one started, or when it ends.
  function schedule(gen, startedAt) {
    timer = setTimeout(() => poll(gen), Math.max(100, POLL_MS - (Date.now() - startedAt)));
  }

  async function poll(gen) {
    const startedAt = Date.now();
    // Ask for enough history to cover the time since the last answer.
    const gap = lastOK ? Math.ceil((startedAt - lastOK) / 1000) + 2 : HISTORY_FIRST;
    const n = hist.end === null ? HISTORY_FIRST : Math.min(HISTORY_KEEP, Math.max(HISTORY_NEXT, gap));
    try {
      const res = await fetchStatus(key, n);
      if (gen !== generation) return;
      if (res.status === 401) {
        forgetKey();
        showLogin('The master key was refused: ' + errorText(res));
        return;
      }
      if (res.status !== 200 || !res.body) throw new Error(errorText(res));
      lastError = '';
      accept(res.body);
    } catch (e) {
      if (gen !== generation) return;
      lastError = e.name === 'AbortError' ? 'timed out' : e.message;
    }
    checkStale();
    if (gen === generation) schedule(gen, startedAt);
  }

  function accept(body) {
    lastOK = Date.now();
    status = body;
    mergeHistory(body.history);
    $('app').dataset.historyEnd = hist.end === null ? '' : String(hist.end);
    render();
    polls++;
    $('app').dataset.polls = String(polls);
    $('updated').textContent = 'updated ' + clock(new Date(lastOK));
    checkStale();
  }

  function checkStale() {
    const stale = $('stale');
    const age = Date.now() - lastOK;
    if (!lastOK || age <= STALE_MS || $('app').hidden) {
      stale.hidden = true;
      return;
    }
    stale.textContent = 'Stale: no answer from /cluster/status for ' + Math.round(age / 1000) + ' s' +
      (lastError ? ' (' + lastError + ')' : '') + '.';
    stale.hidden = false;
  }

  // ---- history -------------------------------------------------------------------------------
  function mergeHistory(h) {
    if (!h || typeof h.end !== 'number' || h.end <= 0) { // an older node, or no sample yet
      hist.end = null;
      hist.groups.clear();
      hist.deployments.clear();
      return;
    }
    if (hist.end === null) hist.end = h.end;
    if (h.end > hist.end) {
      const shift = Math.min(HISTORY_KEEP, h.end - hist.end);
      for (const m of [hist.groups, hist.deployments]) {
        for (const s of m.values()) {
          for (const k in s) {
            s[k].splice(0, shift);
            for (let i = 0; i < shift; i++) s[k].push(null);
          }
        }
      }
      hist.end = h.end;
    }
    place(hist.groups, h.groups, h.end, ['requests', 'rejected']);
    place(hist.deployments, h.deployments, h.end, ['requests', 'throttled']);
  }

  // place writes each series' points, oldest first and ending at second end, into map.
  function place(map, incoming, end, fields) {
    if (!incoming || typeof incoming !== 'object') return;
    for (const name of Object.keys(incoming)) {
      let s = map.get(name);
      if (!s) {
        s = {};
        for (const f of fields) s[f] = new Array(HISTORY_KEEP).fill(null);
        map.set(name, s);
      }
      for (const f of fields) {
        const pts = incoming[name][f];
        if (!Array.isArray(pts)) continue;
        for (let i = 0; i < pts.length; i++) {
          const idx = HISTORY_KEEP - 1 - (hist.end - (end - pts.length + 1 + i));
          if (idx >= 0 && idx < HISTORY_KEEP && typeof pts[i] === 'number') s[f][idx] = pts[i];
        }
      }
    }
    for (const name of map.keys()) { // drop what the server no longer reports
      if (!(name in incoming)) map.delete(name);
    }
  }

  // ---- rendering helpers ---------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function cell(tr, text, cls) {
    const td = el('td', cls, text);
    tr.appendChild(td);
    return td;
  }

  const num = (v) => typeof v === 'number' && isFinite(v);
  const fmt = (v) => (num(v) ? v.toLocaleString('en-US') : '–');
  const pad = (n) => String(n).padStart(2, '0');
  const ms = (v) => (v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString('en-US'));
  const clock = (d) => pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());

  function bar(kind, used, limit) {
    const b = el('div', 'bar ' + kind);
    const fill = el('div', 'fill');
    const pct = limit > 0 ? Math.min(100, (used / limit) * 100) : 0;
    fill.style.width = pct.toFixed(1) + '%'; // CSSOM, which the CSP allows (no style attribute)
    if (limit > 0 && used >= limit) fill.classList.add('full');
    else if (pct >= 80) fill.classList.add('high');
    b.appendChild(fill);
    b.appendChild(el('span', 'label', fmt(used) + ' / ' + (limit > 0 ? fmt(limit) : '∞')));
    b.title = kind.toUpperCase() + ' used in the current minute, cluster-wide' + (limit > 0 ? '' : ' (no limit)');
    return b;
  }

  // sparkline draws points (per-second counts, null = unknown) as an inline SVG.
  function sparkline(points, kind, what) {
    const wrap = el('span', 'spark ' + kind);
    if (!points) {
      wrap.appendChild(el('span', 'muted', '–'));
      wrap.title = 'no history from this node';
      return wrap;
    }
    const W = 150, H = 22;
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('width', W);
    svg.setAttribute('height', H);
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    svg.setAttribute('aria-hidden', 'true');
    let max = 0, latest = null, total = 0;
    for (const p of points) {
      if (p === null) continue;
      max = Math.max(max, p);
      total += p;
      latest = p;
    }
    const scale = max > 0 ? (H - 3) / max : 0;
    const step = W / (points.length - 1);
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        const line = document.createElementNS(SVG_NS, 'polyline');
        line.setAttribute('points', run.join(' '));
        svg.appendChild(line);
      }
      run = [];
    };
    points.forEach((p, i) => {
      if (p === null) { flush(); return; }
      run.push((i * step).toFixed(1) + ',' + (H - 1.5 - p * scale).toFixed(1));
    });
    flush();
    if (max === 0) wrap.classList.add('idle');
    wrap.appendChild(svg);
    const val = el('span', 'spark-val', latest === null ? '–' : latest + '/s');
    if (max > 0) val.appendChild(el('span', 'muted', ' max ' + max));
    wrap.appendChild(val);
    wrap.title = what + ' on this node, per second over the last ' + points.length + ' s: peak ' + max + ', total ' + total;
    wrap.dataset.total = total;
    return wrap;
  }

  // ---- rendering -----------------------------------------------------------------------------
  function render() {
    const st = status;
    const members = Array.isArray(st.members) ? st.members : [];
    $('node-name').textContent = 'node ' + (st.node || '?');
    renderBackend(st);
    renderMembers(st, members);
    renderDeployments();
  }

  function renderBackend(st) {
    const dl = $('backend-fields');
    const frag = document.createDocumentFragment();
    const field = (name, value, cls) => {
      const f = el('div', 'field');
      f.appendChild(el('dt', null, name));
      f.appendChild(el('dd', cls, value === undefined || value === null || value === '' ? '–' : value));
      frag.appendChild(f);
    };
    let backend = st.backend;
    if (st.backend_mode && st.backend_mode !== st.backend) backend += ' (' + st.backend_mode + ')';
    field('Backend', backend);
    field('Limit mode', st.limit_mode);
    if (typeof st.backend_degraded === 'boolean') {
      field('Degraded', st.backend_degraded ? 'yes: limits held locally' : 'no', st.backend_degraded ? 'bad' : 'good');
    } else {
      field('Degraded', undefined);
    }
    field('This node', st.node);
    field('Leader', st.leader);
    field('Term', st.term);
    field('Voters', Array.isArray(st.voters) ? st.voters.length + ': ' + st.voters.join(', ') : undefined);
    const mismatch = num(st.config_version) && st.config_version !== st.served_config_version;
    field('Config version', num(st.config_version)
      ? st.config_version + ' committed, ' + st.served_config_version + ' served'
      : st.served_config_version, mismatch ? 'bad' : null);
    if (Array.isArray(st.homes) && st.homes.length) field('Limit homes', st.homes.join(', ') + ' (v' + st.homes_version + ')');
    dl.replaceChildren(frag);
    const warn = $('config-warning');
    warn.hidden = !mismatch;
    if (mismatch) {
      warn.textContent = 'This node serves config version ' + st.served_config_version + ', not the committed ' +
        st.config_version + (st.config_error ? ': ' + st.config_error : ' (swapping it in)');
    }
    $('backend').classList.toggle('degraded', st.backend_degraded === true);
  }

  function renderMembers(st, members) {
    const counts = {};
    const frag = document.createDocumentFragment();
    for (const m of members) {
      const tr = el('tr');
      const state = String(m.status || 'unknown');
      counts[state] = (counts[state] || 0) + 1;
      tr.dataset.member = m.name;
      tr.dataset.status = state;
      const self = m.self === true || (m.self === undefined && m.name === st.node);
      const name = cell(tr, m.name, 'name');
      if (self) {
        tr.classList.add('self');
        name.appendChild(el('span', 'tag', 'this node'));
      }
      cell(tr, null).appendChild(el('span', 'badge status-' + state.replace(/[^a-z]/g, ''), state));
      cell(tr, m.addr, 'mono');
      cell(tr, m.raft_role ? m.raft_role : '–', m.raft_role === 'leader' ? 'leader' : null);
      const v = cell(tr, num(m.served_config_version) ? m.served_config_version : '–', 'num');
      if (num(m.served_config_version) && num(st.config_version) && m.served_config_version !== st.config_version) {
        v.classList.add('bad');
        v.title = 'the committed version is ' + st.config_version;
      }
      const off = num(m.clock_offset_seconds) ? Math.round(m.clock_offset_seconds * 1000) : null;
      const o = cell(tr, off === null ? '–' : (off > 0 ? '+' : '') + off, 'num');
      if (off !== null && Math.abs(off) >= 1000) o.classList.add('bad');
      cell(tr, self ? '–' : num(m.last_heard_seconds) ? m.last_heard_seconds.toFixed(1) : '–', 'num');
      frag.appendChild(tr);
    }
    $('members').tBodies[0].replaceChildren(frag);
    $('member-count').textContent = members.length + ' · ' +
      Object.keys(counts).sort().map((s) => counts[s] + ' ' + s).join(', ');
  }

  function matches(d, q) {
    if (!q) return true;
    for (const v of [d.model_name, d.id, d.model]) {
      if (typeof v === 'string' && v.toLowerCase().includes(q)) return true;
    }
    return false;
  }

  function renderDeployments() {
    const deps = Array.isArray(status.deployments) ? status.deployments : [];
    const q = $('filter').value.trim().toLowerCase();
    const groups = new Map();
    for (const d of deps) {
      const g = String(d.model_name || '');
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(d);
    }
    const names = [...groups.keys()].sort((a, b) => a.localeCompare(b));
    const shown = [];
    for (const g of names) {
      for (const d of groups.get(g)) if (matches(d, q)) shown.push(d);
    }
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const visible = shown.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);

    const frag = document.createDocumentFragment();
    let group = null;
    for (const d of visible) {
      const g = String(d.model_name || '');
      if (g !== group) {
        group = g;
        frag.appendChild(groupRow(g, groups.get(g).length));
      }
      frag.appendChild(deploymentRow(d));
    }
    if (!visible.length) {
      const tr = el('tr', 'empty');
      const td = cell(tr, deps.length ? 'No deployment matches the filter.' : 'No deployments.');
      td.colSpan = 8;
      frag.appendChild(tr);
    }
    $('deployments').tBodies[0].replaceChildren(frag);
    $('deployment-count').textContent = deps.length + ' in ' + groups.size + ' group' + (groups.size === 1 ? '' : 's');
    $('page-info').textContent = 'page ' + (page + 1) + ' of ' + pages + ' · ' +
      (q ? shown.length + ' matching' : shown.length + ' deployments');
    $('prev').disabled = page === 0;
    $('next').disabled = page >= pages - 1;
  }

  function groupRow(name, count) {
    const tr = el('tr', 'group');
    tr.dataset.group = name;
    const th = el('th', null, name);
    th.colSpan = 6;
    th.appendChild(el('span', 'muted', ' ' + count + ' deployment' + (count === 1 ? '' : 's')));
    tr.appendChild(th);
    const h = hist.groups.get(name);
    cell(tr, null).appendChild(sparkline(h && h.requests, 'requests', 'requests to the group'));
    cell(tr, null).appendChild(sparkline(h && h.rejected, 'rejected', '429s answered for the group'));
    return tr;
  }

  function deploymentRow(d) {
    const tr = el('tr');
    const rpmUsed = num(d.rpm_used) ? d.rpm_used : 0, rpmLimit = num(d.rpm_limit) ? d.rpm_limit : 0;
    const tpmUsed = num(d.tpm_used) ? d.tpm_used : 0, tpmLimit = num(d.tpm_limit) ? d.tpm_limit : 0;
    tr.dataset.deployment = d.id;
    tr.dataset.rpmUsed = rpmUsed;
    tr.dataset.rpmLimit = rpmLimit;
    tr.dataset.tpmUsed = tpmUsed;
    tr.dataset.tpmLimit = tpmLimit;
    const id = cell(tr, d.id, 'name mono');
    id.title = d.id;
    const rpm = bar('rpm', rpmUsed, rpmLimit), tpm = bar('tpm', tpmUsed, tpmLimit);
    const r = d.rights;
    if (r && typeof r === 'object') { // strict mode: this node's rights to the limit
      rpm.title += '\nthis node: ' + (r.home ? 'home, share ' + r.share : 'not a home') + ', busy ' + r.busy +
        ', lent ' + r.lent + ', borrowed ' + r.borrowed;
      tpm.title += '\nthis node: ' + (r.home ? 'home, share ' + r.share_tokens : 'not a home') + ', busy ' +
        r.busy_tokens + ', lent ' + r.lent_tokens + ', borrowed ' + r.borrowed_tokens;
    }
    cell(tr, null).appendChild(rpm);
    cell(tr, null).appendChild(tpm);
    cell(tr, fmt(d.in_flight), 'num');
    const lat = cell(tr, num(d.latency_ms) && d.latency_ms > 0 ? ms(d.latency_ms) : '–', 'num');
    if (num(d.ttft_ms) && d.ttft_ms > 0) lat.appendChild(el('span', 'ttft', 'TTFT ' + ms(d.ttft_ms)));
    const until = d.cooled_until ? new Date(d.cooled_until) : null;
    if (until && !isNaN(until)) {
      tr.classList.add('cooling');
      cell(tr, 'cooling until ' + clock(until) + (d.cooldown_reason ? ': ' + d.cooldown_reason : ''), 'cooldown');
    } else {
      cell(tr, '–', 'muted');
    }
    const h = hist.deployments.get(d.id);
    cell(tr, null).appendChild(sparkline(h && h.requests, 'requests', 'requests'));
    cell(tr, null).appendChild(sparkline(h && h.throttled, 'rejected', '429s'));
    return tr;
  }

  // ---- wiring --------------------------------------------------------------------------------
  document.addEventListener('DOMContentLoaded', () => {
    $('login').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    $('filter').addEventListener('input', () => {
      page = 0;
      if (status) renderDeployments();
    });
    $('prev').addEventListener('click', () => {
      page = Math.max(0, page - 1);
      if (status) renderDeployments();
    });
    $('next').addEventListener('click', () => {
      page++;
      if (status) renderDeployments();
    });
    setInterval(checkStale, 1000);
    boot();
  });
})();
