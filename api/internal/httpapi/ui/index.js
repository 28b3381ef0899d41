// CAO monitor: job list (filtered by feature and status, paged) and the start form with the selected
// feature's step graph.
'use strict';

(() => {
  const { el, clear, badge, api, showError, fieldList, validateInput, drawDAG, fmtTime, fmtDuration, span } = CAO;
  const $ = (id) => document.getElementById(id);
  // Jobs per page: ?limit=N in the address (1 to 500), 25 by default.
  const PAGE = (() => {
    const n = Number(new URLSearchParams(location.search).get('limit'));
    return Number.isInteger(n) && n >= 1 && n <= 500 ? n : 25;
  })();
  let features = [];
  const list = {
    cursor: null, // next_cursor of the last page shown
    pages: 0, // pages shown since the last reload
    gen: 0, // bumps on every reload: answers of older loads are dropped
    chain: Promise.resolve(), // loads run one at a time, in order
    queued: 0, // loads waiting or running
  };

  // exampleInput builds a starting JSON document from a feature's input schema (required fields).
  function exampleInput(schema) {
    if (!schema || schema.type !== 'object') return {};
    const out = {};
    const props = schema.properties || {};
    for (const name of schema.required || Object.keys(props)) {
      const p = props[name] || {};
      if (p.default !== undefined) out[name] = p.default;
      else if (Array.isArray(p.enum) && p.enum.length) out[name] = p.enum[0];
      else if (p.type === 'integer' || p.type === 'number') out[name] = p.minimum !== undefined ? p.minimum : 1;
      else if (p.type === 'boolean') out[name] = true;
      else if (p.type === 'array') out[name] = [];
      else if (p.type === 'object') out[name] = exampleInput(p);
      else out[name] = 'Example ' + name.replace(/_/g, ' ');
    }
    return out;
  }

  function selectedFeature() {
    return features.find((x) => x.name === $('feature').value);
  }

  function showFeature() {
    const f = selectedFeature();
    const desc = clear($('feature-desc'));
    clear($('feature-dag'));
    if (!f) return;
    const edges = f.steps.reduce((n, s) => n + (s.needs || []).length, 0);
    desc.textContent = (f.description ? f.description + ' · ' : '') + f.steps.length + ' steps, ' + edges + ' dependencies';
    drawDAG($('feature-dag'), f.steps, { compact: true });
    $('input').value = JSON.stringify(exampleInput(f.input_schema), null, 2);
    checkInput();
  }

  // checkInput validates the input against the feature's schema as the user types; it returns the
  // parsed value, or undefined when the input cannot be sent.
  function checkInput() {
    const f = selectedFeature();
    const box = $('input-errors');
    const { value, errors } = validateInput(f ? f.input_schema : null, $('input').value);
    clear(box);
    if (errors.length) {
      box.appendChild(el('strong', { text: 'The input does not match the feature\'s input schema:' }));
      box.appendChild(fieldList(errors, 'client'));
      box.classList.remove('hidden');
      return undefined;
    }
    box.classList.add('hidden');
    return value;
  }

  async function loadFeatures() {
    try {
      const data = await api('GET', '/api/v1/features');
      features = data.features || [];
      const sel = clear($('feature'));
      const filter = $('feature-filter');
      const keep = filter.value;
      clear(filter).appendChild(el('option', { value: '', text: 'all features' }));
      for (const f of features) {
        sel.appendChild(el('option', { value: f.name, text: f.name }));
        filter.appendChild(el('option', { value: f.name, text: f.name }));
      }
      if (keep && !features.some((f) => f.name === keep)) filter.appendChild(el('option', { value: keep, text: keep }));
      filter.value = keep;
      if (!features.length) sel.appendChild(el('option', { value: '', text: 'no features in the registry' }));
      showFeature();
      document.body.dataset.features = 'ok';
    } catch (e) {
      showError($('start-error'), e);
      document.body.dataset.features = 'error';
    }
  }

  async function start(ev) {
    ev.preventDefault();
    const errBox = $('start-error');
    errBox.classList.add('hidden');
    const input = checkInput();
    if (input === undefined) return;
    $('start').disabled = true;
    $('start-status').textContent = 'starting…';
    try {
      const res = await api('POST', '/api/v1/jobs', { feature_name: $('feature').value, input_data: input });
      location.assign('/ui/jobs/' + encodeURIComponent(res.job_id));
    } catch (e) {
      showError(errBox, e);
      $('start').disabled = false;
      $('start-status').textContent = '';
    }
  }

  function jobRow(j) {
    const end = CAO.TERMINAL_JOB.has(j.status) ? j.finished_at : null;
    const err = j.error || '';
    return el('tr', { 'data-job': j.id, 'data-feature': j.feature_name, 'data-status': j.status },
      el('td', {}, el('a', { href: '/ui/jobs/' + encodeURIComponent(j.id), class: 'mono', title: j.id, text: j.id.slice(0, 8) })),
      el('td', { text: j.feature_name }),
      el('td', {}, badge(j.status), j.stuck ? el('span', { class: 'badge st-RETRYING ml4', title: j.stuck_reason || '', text: 'STUCK' }) : null),
      el('td', { text: fmtTime(j.created_at) }),
      el('td', { class: 'num', text: fmtDuration(span(j.started_at || j.created_at, end)) }),
      el('td', { class: 'err' }, el('span', { class: 'clamp', title: err || null, text: err })));
  }

  // loadJobs reloads the first page (more=false) or appends the next one. Loads run one after the
  // other, so "Load more" always continues the list on screen, whatever refresh ran before it.
  function loadJobs(more) {
    if (!more) list.gen++;
    const gen = list.gen;
    list.queued++;
    const run = list.chain.then(() => loadPage(more, gen)).finally(() => { list.queued--; });
    list.chain = run.catch(() => {});
    return run;
  }

  async function loadPage(more, gen) {
    if (gen !== list.gen) return; // a newer reload is queued
    if (more && !list.cursor) return;
    const box = $('jobs-error');
    const params = new URLSearchParams({ limit: String(PAGE) });
    const st = $('status-filter').value;
    const feat = $('feature-filter').value;
    if (st) params.set('status', st);
    if (feat) params.set('feature', feat);
    if (more) params.set('cursor', list.cursor);
    $('more').disabled = true;
    try {
      const data = await api('GET', '/api/v1/jobs?' + params);
      if (gen !== list.gen) return; // the filters changed meanwhile
      box.classList.add('hidden');
      const body = $('jobs').tBodies[0];
      if (!more) {
        clear(body);
        list.pages = 0;
      }
      for (const j of data.jobs || []) body.appendChild(jobRow(j));
      list.pages++;
      list.cursor = data.next_cursor || null;
      $('more').classList.toggle('hidden', !list.cursor);
      const filtered = st || feat;
      $('jobs-empty').textContent = filtered ? 'No jobs match these filters.' : 'No jobs yet.';
      $('jobs-empty').classList.toggle('hidden', body.rows.length > 0);
      $('jobs').dataset.query = params.toString().replace(/&?cursor=[^&]*/, '');
      $('jobs').dataset.pages = String(list.pages);
      document.body.dataset.jobs = 'ok';
    } catch (e) {
      if (gen === list.gen) {
        showError(box, e);
        document.body.dataset.jobs = 'error';
      }
    } finally {
      $('more').disabled = false;
    }
  }

  // The filters live in the address (?feature=&status=), so a filtered list can be bookmarked.
  function filtersFromURL() {
    const p = new URLSearchParams(location.search);
    const feat = p.get('feature');
    if (feat) {
      const f = $('feature-filter');
      if (![...f.options].some((o) => o.value === feat)) f.appendChild(el('option', { value: feat, text: feat }));
      f.value = feat;
    }
    const st = (p.get('status') || '').toUpperCase();
    if ([...$('status-filter').options].some((o) => o.value === st)) $('status-filter').value = st;
  }

  function filtersChanged() {
    const p = new URLSearchParams(location.search);
    for (const [k, id] of [['feature', 'feature-filter'], ['status', 'status-filter']]) {
      if ($(id).value) p.set(k, $(id).value);
      else p.delete(k);
    }
    const q = p.toString();
    history.replaceState(null, '', location.pathname + (q ? '?' + q : ''));
    loadJobs(false);
  }

  $('feature').addEventListener('change', showFeature);
  $('input').addEventListener('input', checkInput);
  $('start-form').addEventListener('submit', start);
  $('refresh').addEventListener('click', () => loadJobs(false));
  $('status-filter').addEventListener('change', filtersChanged);
  $('feature-filter').addEventListener('change', filtersChanged);
  $('more').addEventListener('click', () => loadJobs(true));
  filtersFromURL();
  loadFeatures();
  loadJobs(false);
  // Keep the first page fresh while the tab is visible (not once more pages are shown, nor after a 401).
  setInterval(() => {
    if (!document.hidden && list.pages <= 1 && list.queued === 0 && $('key-prompt').classList.contains('hidden')) loadJobs(false);
  }, 5000);
})();
