// CAO monitor: job list and start form.
'use strict';

(() => {
  const { el, clear, badge, api, fmtTime, fmtDuration, span } = CAO;
  const $ = (id) => document.getElementById(id);
  let features = [];
  let cursor = null;

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

  function showFeature() {
    const f = features.find((x) => x.name === $('feature').value);
    const steps = $('feature-steps');
    clear(steps);
    if (!f) return;
    if (f.description) steps.appendChild(el('span', { text: f.description + ' · ' }));
    steps.appendChild(document.createTextNode(f.steps.length + ' steps: ' + f.steps.map((s) => s.name).join(' → ')));
    $('input').value = JSON.stringify(exampleInput(f.input_schema), null, 2);
  }

  async function loadFeatures() {
    try {
      const data = await api('GET', '/api/v1/features');
      features = data.features || [];
      const sel = clear($('feature'));
      for (const f of features) sel.appendChild(el('option', { value: f.name, text: f.name }));
      if (!features.length) sel.appendChild(el('option', { value: '', text: 'no features in the registry' }));
      showFeature();
    } catch (e) {
      showError($('start-error'), e);
    }
  }

  function showError(box, e) {
    clear(box);
    box.appendChild(el('strong', { text: (e.code ? e.code + ': ' : '') + e.message }));
    if (e.details) box.appendChild(el('pre', { class: 'mono', text: JSON.stringify(e.details, null, 2) }));
    box.classList.remove('hidden');
  }

  async function start(ev) {
    ev.preventDefault();
    const errBox = $('start-error');
    errBox.classList.add('hidden');
    let input;
    try {
      input = JSON.parse($('input').value || '{}');
    } catch (e) {
      showError(errBox, { message: 'Input is not valid JSON: ' + e.message });
      return;
    }
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
    return el('tr', { 'data-job': j.id },
      el('td', {}, el('a', { href: '/ui/jobs/' + encodeURIComponent(j.id), class: 'mono', text: j.id.slice(0, 8) })),
      el('td', { text: j.feature_name }),
      el('td', {}, badge(j.status)),
      el('td', { text: fmtTime(j.created_at) }),
      el('td', { class: 'num', text: fmtDuration(span(j.started_at || j.created_at, end)) }));
  }

  async function loadJobs(more) {
    const box = $('jobs-error');
    box.classList.add('hidden');
    const params = new URLSearchParams({ limit: '25' });
    const st = $('status-filter').value;
    if (st) params.set('status', st);
    if (more && cursor) params.set('cursor', cursor);
    try {
      const data = await api('GET', '/api/v1/jobs?' + params);
      const body = $('jobs').tBodies[0];
      if (!more) clear(body);
      for (const j of data.jobs || []) body.appendChild(jobRow(j));
      cursor = data.next_cursor || null;
      $('more').classList.toggle('hidden', !cursor);
      $('jobs-empty').classList.toggle('hidden', body.rows.length > 0);
    } catch (e) {
      showError(box, e);
    }
  }

  $('feature').addEventListener('change', showFeature);
  $('start-form').addEventListener('submit', start);
  $('refresh').addEventListener('click', () => loadJobs(false));
  $('status-filter').addEventListener('change', () => loadJobs(false));
  $('more').addEventListener('click', () => loadJobs(true));
  loadFeatures();
  loadJobs(false);
  // Keep the first page fresh while the tab is visible.
  setInterval(() => { if (!document.hidden && !cursor) loadJobs(false); }, 5000);
})();
