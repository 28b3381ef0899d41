// CAO monitor, shared helpers. Every value that comes from the API is inserted as text (textContent or
// text nodes), never as HTML, so job data cannot inject markup or script.
'use strict';

const CAO = (() => {
  const KEY = 'cao_api_key';
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
      if (res.status === 401) showKeyPrompt();
      throw new ApiError(res.status, data);
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

  // showKeyPrompt asks for an API key when the server requires one.
  function showKeyPrompt() {
    const box = document.getElementById('key-prompt');
    if (!box || !box.classList.contains('hidden')) return;
    clear(box);
    const input = el('input', { type: 'password', placeholder: 'API key', autocomplete: 'off' });
    box.appendChild(el('div', { class: 'banner info' },
      el('strong', { text: 'An API key is required. ' }),
      'Enter one of CAO_API_KEYS (kept in this browser\'s local storage).',
      el('form', {
        class: 'row mt8', onsubmit: (ev) => {
          ev.preventDefault();
          if (input.value) { setKey(input.value.trim()); location.reload(); }
        },
      }, el('div', { class: 'grow' }, input), el('button', { type: 'submit', text: 'Save key' }))));
    box.classList.remove('hidden');
  }

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

  const TERMINAL_JOB = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);
  const TERMINAL_STEP = new Set(['SUCCEEDED', 'FAILED', 'SKIPPED', 'CANCELLED']);

  initKey();
  return { el, clear, badge, api, ApiError, wsURL, apiKey, fmtTime, fmtDuration, span, parseTime, TERMINAL_JOB, TERMINAL_STEP };
})();
