// CAO monitor: one job, live over the WebSocket. The first connection gets a snapshot; after a drop it
// reconnects with after_seq=<last seq seen> (exponential backoff), so the server replays exactly what
// was missed. A debounced REST read then corrects the fields events do not carry (times, outputs).
'use strict';

(() => {
  const { el, clear, badge, api, wsURL, fmtTime, fmtDuration, span, TERMINAL_JOB, TERMINAL_STEP } = CAO;
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const MAX_EVENTS = 300;
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 30000;

  const jobID = decodeURIComponent(location.pathname.replace(/^\/ui\/jobs\//, '').replace(/\/+$/, ''));
  const state = {
    job: null, // the contract's job object, kept current by events
    lastSeq: 0, // seq of the last message applied: the after_seq of the next connection
    viewSeq: 0, // last_seq of the REST/snapshot view in state.job (events up to it are already in)
    recent: [], // recent events, re-applied over an older REST view
    ws: null,
    backoff: BACKOFF_MIN,
    finished: false,
    stopped: false,
    renderQueued: false,
    refreshTimer: null,
    refreshDue: 0,
  };

  function setConn(kind, text) {
    $('conn').className = 'conn ' + kind;
    $('conn-text').textContent = text;
    document.body.dataset.conn = kind;
  }

  function fail(text) {
    state.stopped = true;
    setConn('closed', text);
    const box = $('job-error');
    clear(box).appendChild(el('strong', { text }));
    box.classList.remove('hidden');
  }

  // --- state ---------------------------------------------------------------------------------------

  function applyEvent(m) {
    const j = state.job;
    if (!j || m.seq <= state.viewSeq) return; // already part of the view
    if (m.type === 'job') {
      j.status = m.status;
      j.error = m.error || (m.status === 'FAILED' ? j.error : null);
      if (m.status === 'RUNNING' && !j.started_at) j.started_at = m.at;
      if (TERMINAL_JOB.has(m.status)) j.finished_at = m.at;
      else j.finished_at = null;
    } else if (m.type === 'step') {
      const s = (j.steps || []).find((x) => x.name === m.step);
      if (!s) return;
      if (m.status === 'QUEUED' && TERMINAL_STEP.has(s.status)) {
        s.started_at = null; // a new run (resume)
        s.finished_at = null;
      }
      s.status = m.status;
      if (typeof m.attempt === 'number') s.attempts = m.attempt;
      if (m.run) s.run = m.run;
      if (m.error) s.error = m.error;
      else if (m.status === 'SUCCEEDED') s.error = null;
      if (m.status === 'RUNNING' && !s.started_at) s.started_at = m.at;
      if (TERMINAL_STEP.has(m.status)) s.finished_at = m.at;
    }
    j.last_seq = m.seq;
  }

  function setView(job, fromREST) {
    state.job = job;
    state.viewSeq = job.last_seq || 0;
    for (const m of state.recent) applyEvent(m);
    // After the last event of a finished job, the REST view is final (tests and users can rely on it).
    document.body.dataset.synced = fromREST && state.finished && state.viewSeq >= state.lastSeq ? 'final' : '';
    scheduleRender();
  }

  // refresh reads the job over REST, at most every 2s while events flow, and once at the end.
  function scheduleRefresh(now) {
    const at = Date.now() + (now ? 0 : 400);
    if (state.refreshTimer && !now && state.refreshDue <= at + 1600) return;
    clearTimeout(state.refreshTimer);
    state.refreshDue = at;
    state.refreshTimer = setTimeout(refresh, now ? 0 : 400);
  }

  async function refresh() {
    state.refreshTimer = null;
    try {
      const data = await api('GET', '/api/v1/jobs/' + encodeURIComponent(jobID));
      setView(data.job, true);
    } catch (e) {
      if (e.status === 404) fail('Job not found');
    }
  }

  // --- WebSocket -----------------------------------------------------------------------------------

  async function connect() {
    if (state.stopped) return;
    const after = state.job ? state.lastSeq : null; // no after_seq the first time: get a snapshot
    let url;
    try {
      url = await wsURL(jobID, after);
    } catch (e) {
      if (e.status === 404) { fail('Job not found'); return; }
      reconnectLater();
      return;
    }
    if (state.stopped) return;
    const ws = new WebSocket(url);
    state.ws = ws;
    let received = 0;
    ws.onopen = () => setConn('connected', 'connected');
    ws.onmessage = (ev) => {
      received++;
      state.backoff = BACKOFF_MIN;
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      onMessage(ws, m);
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      if (ev.code === 1000) {
        state.finished = true;
        setConn('closed', 'job finished');
        scheduleRefresh(true);
        return;
      }
      if (received === 0) diagnose(); // maybe a 404 or 401 refused the upgrade
      reconnectLater();
    };
  }

  function onMessage(ws, m) {
    if (m.type === 'snapshot') {
      state.lastSeq = m.seq;
      state.recent = [];
      setView(m.job);
      clear($('events'));
      loadHistory(m.seq);
      return;
    }
    if (m.seq <= state.lastSeq) return;
    if (m.seq !== state.lastSeq + 1) {
      // The server never skips; if it ever happens, reconnect and let it replay from lastSeq.
      ws.close(4000, 'gap');
      return;
    }
    state.lastSeq = m.seq;
    state.recent.push(m);
    if (state.recent.length > MAX_EVENTS) state.recent.shift();
    applyEvent(m);
    addEventLine(m);
    scheduleRender();
    scheduleRefresh(false);
  }

  function reconnectLater() {
    if (state.stopped) return;
    const delay = Math.round(state.backoff * (0.8 + Math.random() * 0.4));
    state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX);
    setConn('reconnecting', 'reconnecting in ' + fmtDuration(delay) + '…');
    setTimeout(connect, delay);
  }

  async function diagnose() {
    try {
      await api('GET', '/api/v1/jobs/' + encodeURIComponent(jobID));
    } catch (e) {
      if (e.status === 404) fail('Job not found');
      else if (e.status === 400) fail('Not a job id');
      else if (e.status === 401) fail('API key required');
    }
  }

  // --- rendering -----------------------------------------------------------------------------------

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      render();
    });
  }

  function metaItem(label, value) {
    return el('div', {}, el('span', { text: label }), el('span', { text: value }));
  }

  function render() {
    const j = state.job;
    if (!j) return;
    document.title = 'CAO · ' + j.feature_name + ' · ' + j.status;
    document.body.dataset.jobStatus = j.status;
    $('feature').textContent = j.feature_name;
    clear($('job-status-badge')).appendChild(badge(j.status, true));
    $('job-status-badge').dataset.status = j.status;
    $('job-id').textContent = j.id;

    const errBox = $('job-error');
    if (j.error && !state.stopped) {
      clear(errBox).appendChild(el('span', { text: j.error }));
      errBox.classList.remove('hidden');
    } else if (!state.stopped) {
      errBox.classList.add('hidden');
    }

    const steps = j.steps || [];
    const done = steps.filter((s) => s.status === 'SUCCEEDED').length;
    clear($('meta')).append(
      metaItem('Created', fmtTime(j.created_at)),
      metaItem('Started', fmtTime(j.started_at)),
      metaItem('Finished', fmtTime(j.finished_at)),
      metaItem('Duration', fmtDuration(span(j.started_at, TERMINAL_JOB.has(j.status) ? j.finished_at : null))),
      metaItem('Steps succeeded', done + ' / ' + steps.length),
      metaItem('Last event', '#' + state.lastSeq),
    );

    const body = clear($('steps').tBodies[0]);
    for (const s of steps) {
      const end = TERMINAL_STEP.has(s.status) ? s.finished_at : null;
      const running = s.status === 'RUNNING';
      body.appendChild(el('tr', { 'data-step': s.name, 'data-status': s.status },
        el('td', {}, el('strong', { text: s.name })),
        el('td', { text: s.service }),
        el('td', { text: s.queue }),
        el('td', { class: 'muted', text: (s.needs || []).join(', ') || '—' }),
        el('td', {}, badge(s.status)),
        el('td', { class: 'num', text: String(s.attempts || 0) }),
        el('td', { class: 'num', text: String(s.run || 0) }),
        el('td', { text: fmtTime(s.started_at) }),
        el('td', { text: fmtTime(s.finished_at) }),
        el('td', { class: 'num', text: s.started_at && (end || running) ? fmtDuration(span(s.started_at, end)) : '—' }),
        el('td', { class: 'err', text: s.error || '' })));
    }
    renderDAG(steps);
    $('input').textContent = JSON.stringify(j.input_data, null, 2);
    const none = TERMINAL_JOB.has(j.status) ? '(none)' : '(none yet)';
    $('output').textContent = j.output === null || j.output === undefined ? none : JSON.stringify(j.output, null, 2);
  }

  // renderDAG lays steps out in columns by depth (longest chain of needs) and draws the edges.
  function renderDAG(steps) {
    const byName = new Map(steps.map((s) => [s.name, s]));
    const depth = new Map();
    const depthOf = (name, seen) => {
      if (depth.has(name)) return depth.get(name);
      const s = byName.get(name);
      if (!s || seen.has(name)) return 0;
      seen.add(name);
      let d = 0;
      for (const n of s.needs || []) d = Math.max(d, depthOf(n, seen) + 1);
      depth.set(name, d);
      return d;
    };
    const cols = [];
    for (const s of steps) {
      const d = depthOf(s.name, new Set());
      (cols[d] = cols[d] || []).push(s);
    }
    const W = 200, H = 48, GX = 56, GY = 14, PAD = 8;
    const pos = new Map();
    let rows = 0;
    cols.forEach((col, ci) => {
      col.forEach((s, ri) => pos.set(s.name, { x: PAD + ci * (W + GX), y: PAD + ri * (H + GY) }));
      rows = Math.max(rows, col.length);
    });
    const width = PAD * 2 + cols.length * (W + GX) - GX;
    const height = PAD * 2 + rows * (H + GY) - GY;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('width', String(Math.max(width, 0)));
    svg.setAttribute('height', String(Math.max(height, 0)));
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', 'step graph');
    for (const s of steps) {
      const to = pos.get(s.name);
      for (const n of s.needs || []) {
        const from = pos.get(n);
        if (!from) continue;
        const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2, mx = (x1 + x2) / 2;
        const p = document.createElementNS(SVG, 'path');
        p.setAttribute('d', `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`);
        svg.appendChild(p);
      }
    }
    for (const s of steps) {
      const { x, y } = pos.get(s.name);
      const g = document.createElementNS(SVG, 'g');
      g.setAttribute('class', 'node s-' + String(s.status).replace(/[^A-Z]/g, ''));
      const r = document.createElementNS(SVG, 'rect');
      for (const [k, v] of [['x', x], ['y', y], ['width', W], ['height', H], ['rx', 8]]) r.setAttribute(k, String(v));
      const dot = document.createElementNS(SVG, 'circle');
      for (const [k, v] of [['cx', x + 14], ['cy', y + 17], ['r', 5]]) dot.setAttribute(k, String(v));
      const t1 = document.createElementNS(SVG, 'text');
      t1.setAttribute('x', String(x + 26));
      t1.setAttribute('y', String(y + 21));
      t1.textContent = s.name.length > 22 ? s.name.slice(0, 21) + '…' : s.name;
      const t2 = document.createElementNS(SVG, 'text');
      t2.setAttribute('x', String(x + 26));
      t2.setAttribute('y', String(y + 37));
      t2.setAttribute('class', 'sub');
      t2.textContent = s.status + (s.attempts > 1 ? ' · ' + s.attempts + ' attempts' : '') + ' · ' + s.service;
      g.append(r, dot, t1, t2);
      svg.appendChild(g);
    }
    clear($('dag')).appendChild(svg);
  }

  // loadHistory fills the event list with what happened before the snapshot.
  async function loadHistory(upTo) {
    try {
      const from = Math.max(0, upTo - MAX_EVENTS);
      const data = await api('GET', '/api/v1/jobs/' + encodeURIComponent(jobID) + '/events?after_seq=' + from + '&limit=' + MAX_EVENTS);
      const list = $('events');
      const first = list.firstChild;
      for (const m of data.events || []) {
        if (m.seq <= upTo) list.insertBefore(eventLine(m), first);
      }
      list.scrollTop = list.scrollHeight;
    } catch (e) { /* the list is a convenience */ }
  }

  function addEventLine(m) {
    const list = $('events');
    list.appendChild(eventLine(m));
    while (list.children.length > MAX_EVENTS) list.removeChild(list.firstChild);
    list.scrollTop = list.scrollHeight;
  }

  function eventLine(m) {
    const what = m.type === 'job' ? 'job' : 'step ' + m.step;
    const extra = [];
    if (m.type === 'step' && typeof m.attempt === 'number') extra.push('attempt ' + m.attempt);
    if (m.error) extra.push(m.error);
    return el('li', {},
      el('span', { class: 'seq', text: '#' + m.seq }),
      el('span', { class: 'muted', text: fmtTime(m.at) + '  ' }),
      el('span', { text: what + ' ' }),
      badge(m.status),
      extra.length ? el('span', { class: 'muted', text: '  ' + extra.join(' · ') }) : null);
  }

  // Durations of running steps tick while the job runs.
  setInterval(() => {
    if (state.job && !TERMINAL_JOB.has(state.job.status) && !document.hidden) scheduleRender();
  }, 1000);

  if (!/^[0-9a-fA-F-]{36}$/.test(jobID)) {
    fail('Not a job id');
    return;
  }
  $('job-id').textContent = jobID;
  connect();
})();
