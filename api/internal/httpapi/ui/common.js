// CAO monitor, shared helpers. Every value that comes from the API is inserted as text (textContent or
// text nodes), never as HTML, so job data cannot inject markup or script.
'use strict';

const CAO = (() => {
  const KEY = 'cao_api_key';
  const SVG = 'http://www.w3.org/2000/svg';
  let memoryKey = '';

  // A key passed as ?api_key= is remembered and removed from the address bar (and so from history
  // and from anything that copies the URL).
  function initKey() {
    const params = new URLSearchParams(location.search);
    const k = params.get('api_key');
    if (k) {
      setKey(k);
      params.delete('api_key');
      const q = params.toString();
      history.replaceState(null, '', location.pathname + (q ? '?' + q : '') + location.hash);
    }
  }

  function setKey(k) {
    memoryKey = k;
    try { localStorage.setItem(KEY, k); } catch (e) { /* storage disabled: keep it in memory */ }
  }

  function apiKey() {
    if (memoryKey) return memoryKey;
    try { return localStorage.getItem(KEY) || ''; } catch (e) { return ''; }
  }

  // el builds an element; string children become text nodes.
  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') n.className = v;
      else if (k === 'text') n.textContent = v;
      else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      n.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return n;
  }

  // svg builds an SVG element with attributes (never markup).
  function svg(tag, attrs) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      n.setAttribute(k, String(v));
    }
    return n;
  }

  function clear(n) {
    while (n.firstChild) n.removeChild(n.firstChild);
    return n;
  }

  function badge(status, big) {
    const s = String(status || 'UNKNOWN');
    return el('span', { class: 'badge st-' + s.replace(/[^A-Z]/g, '') + (big ? ' big' : ''), text: s });
  }

  // ApiError carries the contract's error envelope.
  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || ('HTTP ' + status));
      this.status = status;
      this.code = e.code || '';
      this.details = e.details;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const k = apiKey();
    if (k) headers.Authorization = 'Bearer ' + k;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store',
    });
    let data = null;
    try { data = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) {
      const err = new ApiError(res.status, data);
      if (res.status === 401) showKeyPrompt(err);
      throw err;
    }
    return data;
  }

  // wsURL is the WebSocket address of a job. Browsers cannot set headers on a WebSocket, and a key in
  // a URL ends up in logs and history: with a key, the page trades it for a single-use ticket first.
  async function wsURL(jobID, afterSeq) {
    const u = new URL('/ws/' + encodeURIComponent(jobID), location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (afterSeq !== null && afterSeq !== undefined) u.searchParams.set('after_seq', String(afterSeq));
    if (apiKey()) {
      const t = await api('POST', '/api/v1/ws-tickets', { job_id: jobID });
      u.searchParams.set('ticket', t.ticket);
    }
    return u.toString();
  }

  // showKeyPrompt asks for an API key when the server answers 401. It is the only message a 401
  // produces: the page's other error boxes leave 401s to it (see showError), and it is shown once
  // however many requests were refused.
  function showKeyPrompt() {
    const box = document.getElementById('key-prompt');
    if (!box || !box.classList.contains('hidden')) return;
    clear(box);
    const stored = apiKey() !== '';
    const input = el('input', { type: 'password', id: 'key-input', placeholder: 'API key', autocomplete: 'off' });
    box.appendChild(el('div', { class: 'banner info', role: 'alert' },
      el('strong', { text: stored ? 'The stored API key was refused. ' : 'This server requires an API key. ' }),
      stored ? 'Enter a valid key from CAO_API_KEYS or CAO_ADMIN_KEYS; it replaces the stored one.'
        : 'Enter one of CAO_API_KEYS or CAO_ADMIN_KEYS; it is kept in this browser\'s local storage.',
      el('form', {
        class: 'row mt8', id: 'key-form', onsubmit: (ev) => {
          ev.preventDefault();
          const v = input.value.trim();
          if (v) { setKey(v); location.reload(); }
        },
      }, el('div', { class: 'grow' }, input), el('button', { type: 'submit', text: 'Save key' }))));
    box.classList.remove('hidden');
  }

  // isAuthError reports an error the key prompt already explains.
  function isAuthError(e) {
    return e instanceof ApiError && e.status === 401;
  }

  // showError fills an error box with the envelope: code, message, and the details (per field for
  // invalid_input). A 401 hides the box: the key prompt says it once for the whole page.
  function showError(box, e) {
    clear(box);
    if (isAuthError(e)) {
      box.classList.add('hidden');
      return;
    }
    box.appendChild(el('strong', { text: (e.code ? e.code + ': ' : '') + e.message }));
    if (Array.isArray(e.details) && e.details.every((d) => d && typeof d.field === 'string')) {
      box.appendChild(fieldList(e.details, 'server'));
    } else if (e.details !== undefined && e.details !== null) {
      box.appendChild(el('pre', { class: 'mono', text: JSON.stringify(e.details, null, 2) }));
    }
    box.classList.remove('hidden');
  }

  // fieldList shows [{field, message}] as a list, one item per field.
  function fieldList(errs, source) {
    return el('ul', { class: 'field-errors', 'data-source': source || 'client' },
      errs.map((f) => el('li', { 'data-field': f.field },
        el('code', { text: f.field }), ' ' + f.message)));
  }

  // --- JSON Schema subset --------------------------------------------------------------------------
  // validate mirrors the server's schema package (pkg/schema) for the keywords a registry may use:
  // type, required, properties, additionalProperties, items, minItems/maxItems, minLength/maxLength,
  // minimum/maximum, exclusiveMinimum/exclusiveMaximum, enum, const, pattern. Fields are named as the
  // server names them ("name", "items[2].name", "$" for the whole value), with the same messages, so
  // the page can refuse bad input before sending it. The server stays the judge: what passes here is
  // still checked there (formats, for instance, only there).
  function kindOf(v) {
    if (v === null) return 'null';
    if (Array.isArray(v)) return 'array';
    if (typeof v === 'number') return 'number';
    if (typeof v === 'string' || typeof v === 'boolean' || typeof v === 'object') return typeof v;
    return 'unknown';
  }

  function typeMatches(types, kind, v) {
    return types.some((t) => t === kind || (t === 'integer' && kind === 'number' && Number.isInteger(v)));
  }

  function typePhrase(types) {
    const word = { object: 'an object', array: 'an array', integer: 'an integer', null: 'null' };
    return types.map((t) => word[t] || 'a ' + t).join(' or ');
  }

  function plural(n, word) {
    return n === 1 ? '1 ' + word : n + ' ' + word + 's';
  }

  function canonical(v) {
    if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']';
    if (v && typeof v === 'object') {
      return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ':' + canonical(v[k])).join(',') + '}';
    }
    return JSON.stringify(v);
  }

  function join(path, key) {
    return path ? path + '.' + key : key;
  }

  function validateAt(s, path, v, errs) {
    if (!s || typeof s !== 'object') return;
    const field = path || '$';
    const add = (msg) => errs.push({ field, message: msg });
    const kind = kindOf(v);
    if (s.type !== undefined) {
      const types = Array.isArray(s.type) ? s.type : [s.type];
      if (!typeMatches(types, kind, v)) {
        add('must be ' + typePhrase(types));
        return;
      }
    }
    if (Object.prototype.hasOwnProperty.call(s, 'const') && canonical(v) !== canonical(s.const)) {
      add('must be ' + JSON.stringify(s.const));
    }
    if (Array.isArray(s.enum) && !s.enum.some((e) => canonical(e) === canonical(v))) {
      add('must be one of: ' + s.enum.map((e) => JSON.stringify(e)).join(', '));
    }
    if (kind === 'string') {
      const n = [...v].length; // characters (code points), as the server counts them
      if (typeof s.minLength === 'number' && n < s.minLength) {
        add(s.minLength === 1 ? 'must not be empty' : 'must be at least ' + plural(s.minLength, 'character'));
      }
      if (typeof s.maxLength === 'number' && n > s.maxLength) add('must be at most ' + plural(s.maxLength, 'character'));
      if (typeof s.pattern === 'string') {
        let re = null;
        try { re = new RegExp(s.pattern, 'u'); } catch (e) { re = null; } // Go syntax JS lacks: the server decides
        if (re && !re.test(v)) add('must match the pattern ' + s.pattern);
      }
    } else if (kind === 'number') {
      if (typeof s.minimum === 'number' && v < s.minimum) add('must be at least ' + s.minimum);
      if (typeof s.maximum === 'number' && v > s.maximum) add('must be at most ' + s.maximum);
      if (typeof s.exclusiveMinimum === 'number' && v <= s.exclusiveMinimum) add('must be greater than ' + s.exclusiveMinimum);
      if (typeof s.exclusiveMaximum === 'number' && v >= s.exclusiveMaximum) add('must be less than ' + s.exclusiveMaximum);
    } else if (kind === 'array') {
      if (typeof s.minItems === 'number' && v.length < s.minItems) add('must have at least ' + plural(s.minItems, 'item'));
      if (typeof s.maxItems === 'number' && v.length > s.maxItems) add('must have at most ' + plural(s.maxItems, 'item'));
      if (s.items) v.forEach((item, i) => validateAt(s.items, path + '[' + i + ']', item, errs));
    } else if (kind === 'object') {
      const props = s.properties || {};
      for (const name of Array.isArray(s.required) ? s.required : []) {
        if (!Object.prototype.hasOwnProperty.call(v, name)) errs.push({ field: join(path, name), message: 'is required' });
      }
      for (const [name, val] of Object.entries(v)) {
        if (Object.prototype.hasOwnProperty.call(props, name)) validateAt(props[name], join(path, name), val, errs);
        else if (s.additionalProperties === false) errs.push({ field: join(path, name), message: 'is not allowed' });
      }
    }
  }

  // validateInput checks the text of an input document: JSON, an object, and the feature's schema.
  // It returns {value, errors}; errors is empty when the input may be sent.
  function validateInput(schema, text) {
    let value;
    try {
      value = JSON.parse(text.trim() === '' ? '{}' : text);
    } catch (e) {
      return { value: undefined, errors: [{ field: '$', message: 'must be valid JSON: ' + e.message }] };
    }
    if (kindOf(value) !== 'object') return { value, errors: [{ field: '$', message: 'must be an object' }] };
    const errors = [];
    validateAt(schema, '', value, errors);
    errors.sort((a, b) => (a.field < b.field ? -1 : a.field > b.field ? 1 : a.message < b.message ? -1 : a.message > b.message ? 1 : 0));
    return { value, errors };
  }

  // --- step graph ----------------------------------------------------------------------------------
  // drawDAG draws steps ({name, needs, status?, service, queue, attempts?}) as boxes in columns by
  // depth (the longest chain of needs before the step), with one curve per need, and returns the SVG.
  // opts.selected marks a step; opts.onSelect makes boxes clickable.
  function drawDAG(container, steps, opts) {
    opts = opts || {};
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
    const W = opts.compact ? 170 : 200, H = 48, GX = opts.compact ? 40 : 56, GY = 14, PAD = 8;
    const pos = new Map();
    let rows = 0;
    cols.forEach((col, ci) => {
      (col || []).forEach((s, ri) => pos.set(s.name, { x: PAD + ci * (W + GX), y: PAD + ri * (H + GY), col: ci }));
      rows = Math.max(rows, (col || []).length);
    });
    const width = PAD * 2 + cols.length * (W + GX) - GX;
    const height = PAD * 2 + rows * (H + GY) - GY;
    const root = svg('svg', {
      width: Math.max(width, 0), height: Math.max(height, 0), viewBox: '0 0 ' + Math.max(width, 0) + ' ' + Math.max(height, 0),
      role: 'img', 'aria-label': 'step graph',
    });
    // One arrowhead for every edge: the direction of the dependency (need → step).
    const marker = svg('marker', {
      id: 'cao-arrow', viewBox: '0 0 8 8', refX: 7, refY: 4, markerWidth: 7, markerHeight: 7, orient: 'auto',
    });
    marker.appendChild(svg('path', { class: 'arrow', d: 'M0,0 L8,4 L0,8 z' }));
    const defs = svg('defs');
    defs.appendChild(marker);
    root.appendChild(defs);
    for (const s of steps) {
      const to = pos.get(s.name);
      for (const n of s.needs || []) {
        const from = pos.get(n);
        if (!from) continue;
        const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2, mx = (x1 + x2) / 2;
        const p = svg('path', { class: 'edge', d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 1},${y2}`, 'marker-end': 'url(#cao-arrow)' });
        p.dataset.from = n;
        p.dataset.to = s.name;
        root.appendChild(p);
      }
    }
    const trim = (t, n) => (t.length > n ? t.slice(0, n - 1) + '…' : t);
    for (const s of steps) {
      const { x, y, col } = pos.get(s.name);
      const st = s.status ? String(s.status).replace(/[^A-Z]/g, '') : 'NONE';
      const g = svg('g', { class: 'node s-' + st + (opts.selected === s.name ? ' selected' : '') + (opts.onSelect ? ' clickable' : '') });
      g.dataset.step = s.name;
      g.dataset.depth = String(col);
      if (opts.onSelect) {
        g.setAttribute('tabindex', '0');
        g.setAttribute('role', 'button');
        g.setAttribute('aria-label', 'step ' + s.name);
        g.addEventListener('click', () => opts.onSelect(s.name));
        g.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); opts.onSelect(s.name); } });
      }
      const title = svg('title');
      title.textContent = s.name;
      const t1 = svg('text', { x: x + 26, y: y + 21 });
      t1.textContent = trim(s.name, opts.compact ? 19 : 22);
      const t2 = svg('text', { x: x + 26, y: y + 37, class: 'sub' });
      t2.textContent = trim(s.status
        ? s.status + (s.attempts > 1 ? ' · ' + s.attempts + ' attempts' : '') + ' · ' + s.service
        : s.service + (s.queue ? ' · ' + s.queue : ''), opts.compact ? 24 : 30);
      g.append(title, svg('rect', { x, y, width: W, height: H, rx: 8 }), svg('circle', { cx: x + 14, cy: y + 17, r: 5 }), t1, t2);
      root.appendChild(g);
    }
    clear(container).appendChild(root);
    return root;
  }

  // --- time ----------------------------------------------------------------------------------------

  function parseTime(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    return Number.isNaN(t) ? null : t;
  }

  function fmtTime(iso) {
    const t = parseTime(iso);
    if (t === null) return '—';
    const d = new Date(t);
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    const today = new Date();
    const time = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + time;
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || ms < 0) return '—';
    if (ms < 1000) return Math.round(ms) + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
    const m = Math.floor(ms / 60000);
    const s = Math.round((ms % 60000) / 1000);
    if (m < 60) return m + 'm ' + s + 's';
    return Math.floor(m / 60) + 'h ' + (m % 60) + 'm';
  }

  // duration between two ISO times; a missing end means "still running" (now).
  function span(startISO, endISO) {
    const a = parseTime(startISO);
    if (a === null) return null;
    const b = parseTime(endISO);
    return (b === null ? Date.now() : b) - a;
  }

  // The Queues link opens asynqmon. With a stored key it carries ?api_key= once: the server turns it
  // into a session cookie scoped to /monitoring and redirects to the page without the key.
  function initMonitoringLinks() {
    const k = apiKey();
    for (const a of document.querySelectorAll('a[data-monitoring]')) {
      a.setAttribute('href', k ? '/monitoring/?api_key=' + encodeURIComponent(k) : '/monitoring/');
      a.setAttribute('rel', 'noreferrer');
    }
  }

  const TERMINAL_JOB = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);
  const TERMINAL_STEP = new Set(['SUCCEEDED', 'FAILED', 'SKIPPED', 'CANCELLED']);

  initKey();
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', initMonitoringLinks);
  else initMonitoringLinks();
  return {
    el, svg, clear, badge, api, ApiError, wsURL, apiKey, isAuthError, showError, fieldList, validateInput, canonical,
    drawDAG, fmtTime, fmtDuration, span, parseTime, TERMINAL_JOB, TERMINAL_STEP,
  };
})();
