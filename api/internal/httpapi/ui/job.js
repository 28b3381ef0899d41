// CAO monitor: one job, live over the WebSocket. The first connection gets a snapshot; after a drop it
// reconnects with after_seq=<last seq seen> (exponential backoff), so the server replays exactly what
// was missed. A debounced REST read then corrects the fields events do not carry (times, outputs,
// attempt history). The server closes the stream with 1000 after the event that ends the job; after a
// resume (from this page or elsewhere) the page connects again with after_seq and follows the new run.
'use strict';

(() => {
  const {
    el, clear, badge, api, wsURL, showError, fieldList, validateInput, canonical, drawDAG, isAuthError,
    fmtTime, fmtDuration, span, TERMINAL_JOB, TERMINAL_STEP,
  } = CAO;
  const $ = (id) => document.getElementById(id);
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
    connecting: false, // a ticket is being fetched for the next stream
    reconnectTimer: null,
    backoff: BACKOFF_MIN,
    finished: false, // the server closed the stream with 1000: the job ended
    resumePending: false, // a resume succeeded while the old stream was still open
    stopped: false,
    renderQueued: false,
    refreshTimer: null,
    refreshDue: 0,
    selected: '', // the step shown in the step panel
    panelKey: '',
    tableKey: '',
    busy: '', // the action in flight
    features: null, // GET /api/v1/features, loaded for the resume dialog
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
    updateActions();
  }

  // authStop ends the page's work on a 401: the key prompt is the one message about it.
  function authStop() {
    state.stopped = true;
    setConn('closed', 'API key required');
    updateActions();
  }

  // --- state ---------------------------------------------------------------------------------------

  function applyEvent(m) {
    const j = state.job;
    if (!j || m.seq <= state.viewSeq) return; // already part of the view
    if (m.type === 'job') {
      if (TERMINAL_JOB.has(j.status) && !TERMINAL_JOB.has(m.status)) {
        j.output = null; // resumed: a new run of the job
        j.error = null;
        j.stuck = false;
      }
      j.status = m.status;
      j.error = m.error || (m.status === 'FAILED' ? j.error : null);
      if (m.status === 'RUNNING' && !j.started_at) j.started_at = m.at;
      if (TERMINAL_JOB.has(m.status)) j.finished_at = m.at;
      else j.finished_at = null;
    } else if (m.type === 'step') {
      const s = (j.steps || []).find((x) => x.name === m.step);
      if (!s) return;
      if ((m.status === 'PENDING' || m.status === 'QUEUED') && TERMINAL_STEP.has(s.status)) {
        // A new run (resume): what the last run left is gone.
        s.started_at = null;
        s.finished_at = null;
        s.error = null;
        s.error_class = '';
        s.output = null;
        s.attempts = 0;
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
    // A step that waits for its service says why; the reason changes without events (slots free,
    // budgets reset), so read it again every 2s while a step waits.
    // The WebSocket's snapshot has no such reasons: a view with QUEUED steps is read once over REST.
    clearTimeout(state.waitTimer);
    const steps = job.steps || [];
    if (fromREST && steps.some((s) => s.waiting)) {
      state.waitTimer = setTimeout(() => scheduleRefresh(true), 2000);
    } else if (!fromREST && steps.some((s) => s.status === 'QUEUED')) {
      state.waitTimer = setTimeout(() => scheduleRefresh(true), 0);
    }
    // A job that ended and was resumed elsewhere (CLI, another tab): follow the new run.
    if (fromREST && state.finished && !state.ws && !state.stopped && !TERMINAL_JOB.has(job.status)) reconnectNow();
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
      else if (isAuthError(e)) authStop();
    }
  }

  // --- WebSocket -----------------------------------------------------------------------------------

  async function connect() {
    state.reconnectTimer = null;
    if (state.stopped || state.ws || state.connecting) return; // one stream at a time
    const after = state.job ? state.lastSeq : null; // no after_seq the first time: get a snapshot
    let url;
    state.connecting = true;
    try {
      url = await wsURL(jobID, after);
    } catch (e) {
      if (e.status === 404) { fail('Job not found'); return; }
      if (isAuthError(e)) { authStop(); return; }
      reconnectLater();
      return;
    } finally {
      state.connecting = false;
    }
    if (state.stopped || state.ws) return;
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
        if (state.resumePending) {
          // The old run's end arrived after this page resumed the job: follow the new run.
          reconnectNow();
          return;
        }
        state.finished = true;
        setConn('closed', 'job finished');
        scheduleRefresh(true);
        updateActions();
        return;
      }
      if (received === 0) diagnose(); // maybe a 404 or 401 refused the upgrade
      reconnectLater();
    };
  }

  // reconnectNow connects again at once with after_seq (after a resume ended a closed stream).
  function reconnectNow() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.resumePending = false;
    state.finished = false;
    state.backoff = BACKOFF_MIN;
    document.body.dataset.synced = '';
    setConn('reconnecting', 'connecting…');
    connect();
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
    if (m.type === 'job' && !TERMINAL_JOB.has(m.status)) state.resumePending = false; // the new run is here
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
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  async function diagnose() {
    try {
      await api('GET', '/api/v1/jobs/' + encodeURIComponent(jobID));
    } catch (e) {
      if (e.status === 404) fail('Job not found');
      else if (e.status === 400) fail('Not a job id');
      else if (isAuthError(e)) authStop();
    }
  }

  // --- actions -------------------------------------------------------------------------------------

  function resumable(j) {
    return j.status === 'FAILED' || j.status === 'CANCELLED' || (j.stuck && j.status !== 'COMPLETED');
  }

  // updateActions enables each button only when the API would accept its action.
  function updateActions() {
    const j = state.job;
    const ready = j && !state.stopped && !state.busy;
    const canCancel = ready && !TERMINAL_JOB.has(j.status);
    const canResume = ready && resumable(j);
    const why = !j ? 'loading…' : state.stopped ? 'unavailable' : state.busy ? state.busy + ' in progress…' : '';
    const set = (id, on, offWhy) => {
      $(id).disabled = !on;
      $(id).title = on ? '' : why || offWhy;
    };
    set('cancel-btn', canCancel, 'the job is ' + (j && j.status) + ': only a job that has not ended can be cancelled');
    set('resume-btn', canResume, 'only a FAILED or CANCELLED job, or a stuck one, can be resumed');
    set('retry-btn', canResume, 'only a FAILED or CANCELLED job, or a stuck one, can be retried');
    $('actions').dataset.cancel = canCancel ? 'on' : 'off';
    $('actions').dataset.resume = canResume ? 'on' : 'off';
    if ($('resume-dialog').open) $('resume-submit').disabled = !canResume;
  }

  function actionStatus(kind, text) {
    const box = $('action-status');
    box.className = 'small mt8 ' + kind;
    box.textContent = text;
    document.body.dataset.action = kind;
  }

  // act runs one action: the API call with the stored key, then the result; the WebSocket shows what
  // it changes.
  async function act(name, path, body, errBox) {
    if (state.busy) return null;
    state.busy = name;
    updateActions();
    $('action-error').classList.add('hidden');
    actionStatus('pending', name + '…');
    try {
      const res = await api('POST', path, body);
      return res;
    } catch (e) {
      actionStatus('failed', name + ' refused' + (e.status ? ' (' + e.status + ')' : ''));
      showError(errBox || $('action-error'), e);
      return null;
    } finally {
      state.busy = '';
      updateActions();
    }
  }

  async function cancelJob() {
    const res = await act('cancel', '/api/v1/jobs/' + encodeURIComponent(jobID) + '/cancel');
    if (!res) return;
    actionStatus('ok', 'Cancel accepted: the job is ' + res.status + '.');
    scheduleRefresh(false);
  }

  // resumed follows the job after a successful resume: the stream that ended with the job is closed
  // (or about to be), so connect again with after_seq.
  function resumed(text) {
    actionStatus('ok', text);
    if (state.job) state.job.stuck = false;
    if (state.ws) state.resumePending = TERMINAL_JOB.has(state.job && state.job.status);
    else if (!state.stopped) reconnectNow();
    scheduleRefresh(false);
  }

  async function retryJob() {
    const res = await act('retry', '/api/v1/jobs/' + encodeURIComponent(jobID) + '/resume');
    if (!res) return;
    resumed('Retry accepted: failed, cancelled and skipped steps run again (job ' + res.status + ').');
  }

  // --- resume dialog -------------------------------------------------------------------------------

  async function featureSchema() {
    if (!state.features) {
      try {
        state.features = (await api('GET', '/api/v1/features')).features || [];
      } catch (e) {
        return { known: false };
      }
    }
    const f = state.features.find((x) => x.name === state.job.feature_name);
    return f ? { known: true, schema: f.input_schema } : { known: false };
  }

  // downstream lists the steps that need name, directly or not.
  function downstream(name) {
    const steps = state.job.steps || [];
    const out = new Set([name]);
    let grew = true;
    while (grew) {
      grew = false;
      for (const s of steps) {
        if (!out.has(s.name) && (s.needs || []).some((n) => out.has(n))) {
          out.add(s.name);
          grew = true;
        }
      }
    }
    return out;
  }

  function showPlan() {
    const from = $('resume-from').value;
    const rerun = from ? downstream(from) : new Set();
    const again = (state.job.steps || []).filter((s) => rerun.has(s.name) || s.status !== 'SUCCEEDED').map((s) => s.name);
    $('resume-plan').textContent = again.length ? 'Will run again: ' + again.join(', ') + '.' : 'Nothing would run again.';
  }

  let resumeSchema = { known: false };

  // checkResumeInput validates the dialog's input; it returns {ok, value, changed}.
  function checkResumeInput() {
    const { value, errors } = validateInput(resumeSchema.known ? resumeSchema.schema : null, $('resume-input').value);
    const box = clear($('resume-errors'));
    if (errors.length) {
      box.appendChild(el('strong', { text: 'The input does not match the feature\'s input schema:' }));
      box.appendChild(fieldList(errors, 'client'));
      box.classList.remove('hidden');
      $('resume-input').setAttribute('aria-invalid', 'true');
      $('resume-input-note').textContent = '';
      return { ok: false };
    }
    box.classList.add('hidden');
    $('resume-input').removeAttribute('aria-invalid');
    const changed = canonical(value) !== canonical(state.job.input_data === null ? {} : state.job.input_data);
    $('resume-input-note').textContent = (changed
      ? 'Changed: the job\'s input becomes this document (input version ' + ((state.job.input_version || 1) + 1) + ').'
      : 'Unchanged: the job keeps its input.') + (resumeSchema.known ? '' : ' (The feature\'s schema is not available here; the server checks the input.)');
    return { ok: true, value, changed };
  }

  async function openResume() {
    const j = state.job;
    if (!j || !resumable(j)) return;
    const sel = clear($('resume-from'));
    sel.appendChild(el('option', { value: '', text: '— none: only failed, cancelled and skipped steps —' }));
    for (const s of j.steps || []) sel.appendChild(el('option', { value: s.name, text: s.name + ' (' + s.status + ')' }));
    const firstBad = (j.steps || []).find((s) => s.status !== 'SUCCEEDED');
    if (state.selected && (j.steps || []).some((s) => s.name === state.selected)) sel.value = state.selected;
    else if (firstBad) sel.value = firstBad.name;
    $('resume-input').value = JSON.stringify(j.input_data === null ? {} : j.input_data, null, 2);
    clear($('resume-errors')).classList.add('hidden');
    $('resume-submit').disabled = false;
    showPlan();
    $('resume-dialog').showModal();
    $('resume-dialog').dataset.ready = '';
    resumeSchema = await featureSchema();
    checkResumeInput();
    $('resume-dialog').dataset.ready = 'true';
  }

  async function submitResume(ev) {
    ev.preventDefault();
    const check = checkResumeInput();
    if (!check.ok) {
      $('resume-input').focus();
      return;
    }
    const body = {};
    const from = $('resume-from').value;
    if (from) body.from_step = from;
    if (check.changed) body.input_data = check.value;
    const res = await act('resume', '/api/v1/jobs/' + encodeURIComponent(jobID) + '/resume', body, $('resume-errors'));
    if (!res) return; // the dialog stays open with the server's reasons (per field for 422 invalid_input)
    $('resume-dialog').close();
    resumed('Resume accepted' + (from ? ' from step ' + from : '') + (check.changed ? ' with the new input' : '') +
      ': the job is ' + res.status + '.');
  }

  // --- step panel ----------------------------------------------------------------------------------

  function selectStep(name) {
    state.selected = state.selected === name ? '' : name;
    state.panelKey = '';
    history.replaceState(null, '', location.pathname + location.search + (state.selected ? '#step=' + encodeURIComponent(state.selected) : ''));
    scheduleRender();
    if (state.selected) requestAnimationFrame(() => $('step-panel').scrollIntoView({ block: 'nearest' }));
  }

  function renderStepPanel(steps) {
    const panel = $('step-panel');
    const s = steps.find((x) => x.name === state.selected);
    if (!s) {
      panel.classList.add('hidden');
      panel.dataset.step = '';
      state.panelKey = '';
      return;
    }
    const live = (s.attempt_history || []).some((a) => !a.finished_at) || s.status === 'RUNNING';
    const key = JSON.stringify(s) + (live ? Math.floor(Date.now() / 1000) : '');
    if (key === state.panelKey) return; // unchanged: keep scroll positions and selections
    state.panelKey = key;
    panel.classList.remove('hidden');
    panel.dataset.step = s.name;
    panel.dataset.status = s.status;
    $('step-panel-title').textContent = 'Step ' + s.name;
    clear($('step-panel-badge')).appendChild(badge(s.status));
    const end = TERMINAL_STEP.has(s.status) ? s.finished_at : null;
    clear($('step-meta')).append(
      metaItem('Service', s.service),
      metaItem('Queue', s.queue),
      metaItem('Needs', (s.needs || []).join(', ') || '—'),
      metaItem('Run', String(s.run || 0)),
      metaItem('Attempts', String(s.attempts || 0)),
      metaItem('Started', fmtTime(s.started_at)),
      metaItem('Finished', fmtTime(s.finished_at)),
      metaItem('Duration', s.started_at && (end || s.status === 'RUNNING') ? fmtDuration(span(s.started_at, end)) : '—'),
    );
    if (s.next_attempt_at) $('step-meta').append(metaItem('Next attempt', fmtTime(s.next_attempt_at)));
    if (s.waiting) $('step-meta').append(metaItem('Waiting', s.waiting.message));
    const errBox = clear($('step-error'));
    if (s.error || s.error_class) {
      if (s.error_class) errBox.appendChild(el('span', { class: 'tag', 'data-error-class': s.error_class, text: s.error_class }));
      errBox.appendChild(el('span', { class: 'step-error-text', text: s.error || '' }));
      errBox.classList.remove('hidden');
    } else {
      errBox.classList.add('hidden');
    }
    const none = TERMINAL_STEP.has(s.status) ? '(none)' : '(none yet)';
    $('step-output').textContent = s.output === null || s.output === undefined ? none : JSON.stringify(s.output, null, 2);
    const body = clear($('step-attempts').tBodies[0]);
    const hist = s.attempt_history || [];
    for (const a of hist) {
      body.appendChild(el('tr', { 'data-run': String(a.run), 'data-attempt': String(a.attempt), 'data-status': a.status },
        el('td', { class: 'num', text: String(a.run) }),
        el('td', { class: 'num', text: String(a.attempt) }),
        el('td', {}, badge(String(a.status || '').toUpperCase())),
        el('td', { class: 'mono small', text: a.worker_id || '—' }),
        el('td', { text: fmtTime(a.started_at) }),
        el('td', { text: fmtTime(a.finished_at) }),
        el('td', { class: 'num', text: fmtDuration(span(a.started_at, a.finished_at)) }),
        el('td', { class: 'mono small', text: a.error_class || '—' }),
        el('td', { class: 'num', text: a.http_status ? String(a.http_status) : '—' }),
        el('td', { class: 'err', text: a.error || '' })));
    }
    $('step-attempts-empty').classList.toggle('hidden', hist.length > 0);
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
    const stuck = Boolean(j.stuck) && !TERMINAL_JOB.has(j.status);
    $('job-stuck').classList.toggle('hidden', !stuck);
    $('stuck-reason').textContent = stuck ? 'This job is stuck' + (j.stuck_reason ? ': ' + j.stuck_reason : '') + '. Resume or retry it.' : '';
    $('stuck-reason').classList.toggle('hidden', !stuck);

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
      metaItem('Input version', String(j.input_version || 1)),
      metaItem('Last event', '#' + state.lastSeq),
    );

    // The table and the graph are rebuilt only when they change (or every second while a step runs,
    // for its duration): a click on a row or a box is never lost to a rebuild under the pointer.
    const running = steps.some((s) => s.status === 'RUNNING');
    const tableKey = JSON.stringify(steps.map((s) => [s.name, s.status, s.attempts, s.run, s.started_at, s.finished_at, s.error, s.waiting && s.waiting.message])) +
      state.selected + (running ? Math.floor(Date.now() / 1000) : '');
    if (tableKey !== state.tableKey) {
      state.tableKey = tableKey;
      renderSteps(steps);
    }
    renderStepPanel(steps);
    $('input').textContent = JSON.stringify(j.input_data, null, 2);
    const none = TERMINAL_JOB.has(j.status) ? '(none)' : '(none yet)';
    $('output').textContent = j.output === null || j.output === undefined ? none : JSON.stringify(j.output, null, 2);
    updateActions();
  }

  function renderSteps(steps) {
    const body = clear($('steps').tBodies[0]);
    for (const s of steps) {
      const end = TERMINAL_STEP.has(s.status) ? s.finished_at : null;
      const running = s.status === 'RUNNING';
      body.appendChild(el('tr', {
        'data-step': s.name, 'data-status': s.status, tabindex: '0',
        class: s.name === state.selected ? 'selected' : null, 'aria-selected': s.name === state.selected ? 'true' : 'false',
      },
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
      s.waiting && !s.error
        ? el('td', { class: 'waiting muted', 'data-waiting': s.waiting.reason, text: s.waiting.message })
        : el('td', { class: 'err', text: s.error || '' })));
    }
    drawDAG($('dag'), steps, { selected: state.selected, onSelect: selectStep });
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
    return el('li', { 'data-seq': String(m.seq) },
      el('span', { class: 'seq', text: '#' + m.seq }),
      el('span', { class: 'muted', text: fmtTime(m.at) + '  ' }),
      el('span', { text: what + ' ' }),
      badge(m.status),
      extra.length ? el('span', { class: 'muted', text: '  ' + extra.join(' · ') }) : null);
  }

  // --- wiring --------------------------------------------------------------------------------------

  const rowStep = (ev) => {
    const tr = ev.target.closest('tr[data-step]');
    return tr ? tr.dataset.step : '';
  };
  $('steps').tBodies[0].addEventListener('click', (ev) => {
    const name = rowStep(ev);
    if (name) selectStep(name);
  });
  $('steps').tBodies[0].addEventListener('keydown', (ev) => {
    const name = rowStep(ev);
    if (name && (ev.key === 'Enter' || ev.key === ' ')) {
      ev.preventDefault();
      selectStep(name);
    }
  });
  $('step-panel-close').addEventListener('click', () => selectStep(state.selected));
  $('cancel-btn').addEventListener('click', cancelJob);
  $('retry-btn').addEventListener('click', retryJob);
  $('resume-btn').addEventListener('click', openResume);
  $('resume-form').addEventListener('submit', submitResume);
  $('resume-close').addEventListener('click', () => $('resume-dialog').close());
  $('resume-from').addEventListener('change', showPlan);
  $('resume-input').addEventListener('input', checkResumeInput);

  // Durations of running steps tick while the job runs.
  setInterval(() => {
    if (state.job && !TERMINAL_JOB.has(state.job.status) && !document.hidden) scheduleRender();
  }, 1000);

  if (!/^[0-9a-fA-F-]{36}$/.test(jobID)) {
    fail('Not a job id');
    return;
  }
  const m = /^#step=(.+)$/.exec(location.hash);
  if (m) {
    try { state.selected = decodeURIComponent(m[1]); } catch (e) { state.selected = ''; }
  }
  $('job-id').textContent = jobID;
  updateActions();
  connect();
})();
