// The dashboard in headless Chromium (playwright-core, driving Debian's /usr/bin/chromium)
// against a running `order-fulfillment run --http`: sign in with a key, place orders
// through the API, watch a saga complete, inject a poison address, see the dead letter on
// the page, clear the fault, replay it with a click, and see the order go on to
// confirmed. Then the viewer role (no bodies, no replay button) and a phone-sized
// viewport (the nav collapses, nothing overflows sideways).
//
// Run by tests/dashboard_browser.rs, which passes everything through the environment:
//   DASHBOARD_BASE      http://127.0.0.1:PORT
//   ADMIN_KEY, VIEWER_KEY
//   PLAYWRIGHT_PREFIX   the npm prefix holding playwright-core (scripts/browser-tools.sh)
//   CHROMIUM            the browser binary (/usr/bin/chromium)
//   SCREENSHOT_DIR      where screenshots go
// Prints `screenshot: PATH` per screenshot and exits non-zero on the first failure (after
// a screenshot of the page as it was).

import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Every wait on the page ends by this deadline at the latest. */
const STEP_MS = 30_000;
/** Waits on the order flow (a saga's steps go through the bus and three services). */
const FLOW_MS = 90_000;
/** How often the API is polled while a condition is awaited. */
const POLL_MS = 250;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}
const BASE = env('DASHBOARD_BASE');
const ADMIN_KEY = env('ADMIN_KEY');
const VIEWER_KEY = env('VIEWER_KEY');
const SHOTS = env('SCREENSHOT_DIR');
const require = createRequire(path.join(env('PLAYWRIGHT_PREFIX'), 'package.json'));
const { chromium } = require('playwright-core');

mkdirSync(SHOTS, { recursive: true });

// --- The API, as a client of the service (not through the page) -------------------------
async function api(method, pathname, body, key = ADMIN_KEY) {
  const init = { method, headers: { Authorization: `Bearer ${key}`, Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(`${BASE}${pathname}`, { ...init, signal: AbortSignal.timeout(STEP_MS) });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = text; }
  return { status: res.status, json };
}
async function must(method, pathname, body, expected) {
  const r = await api(method, pathname, body);
  if (!expected.includes(r.status)) {
    throw new Error(`${method} ${pathname} answered ${r.status}: ${JSON.stringify(r.json)}`);
  }
  return r.json;
}
/** Polls `probe` until it returns a truthy value, or throws at the deadline. */
async function until(what, probe, ms = FLOW_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last && last.ok) return last.value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (last seen: ${JSON.stringify(last && last.seen)})`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
async function orderStatus(id) {
  const r = await api('GET', `/orders/${encodeURIComponent(id)}`);
  return r.status === 200 ? r.json.status : `http ${r.status}`;
}
async function waitOrder(id, status) {
  return until(`order ${id} reaches ${status}`, async () => {
    const seen = await orderStatus(id);
    return { ok: seen === status, seen };
  });
}
function order(id, address) {
  return {
    order_id: id,
    customer_id: 'c-browser',
    items: [{ product_id: 'p-browser', quantity: 2, unit_price_cents: 1250 }],
    shipping_address: address,
  };
}

// --- The browser ------------------------------------------------------------------------
const profile = mkdtempSync(path.join(os.tmpdir(), 'runnel-dashboard-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: env('CHROMIUM'),
  headless: true,
  viewport: DESKTOP,
  // playwright-core sets --user-data-dir to `profile` itself (a fresh one per run).
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
context.setDefaultTimeout(STEP_MS);
const page = context.pages()[0] || (await context.newPage());
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(`uncaught: ${e.message}`));
page.on('console', (m) => {
  // A blocked script or style would say so here; failed fetches (a 401 before signing
  // in) are expected and not errors of the page.
  if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) pageErrors.push(m.text());
});

const shots = [];
async function shot(name) {
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true, timeout: STEP_MS });
  shots.push(file);
  console.log(`screenshot: ${file}`);
}
let current = 'start';
async function step(name, fn) {
  current = name;
  console.log(`step: ${name}`);
  await fn();
}
async function go(hash) {
  await page.goto(`${BASE}/dashboard${hash}`, { timeout: STEP_MS });
}
async function signIn(key, role) {
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('#key-input', key);
  await page.click('#login button[type=submit]');
  await page.locator(`[data-who="${role}"]`).waitFor();
}
/** Fails when the document is wider than the viewport (a sideways scroll on a phone). */
async function noHorizontalOverflow(where) {
  const { scroll, inner } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth,
  }));
  if (scroll > inner) throw new Error(`${where}: the page is ${scroll}px wide in a ${inner}px viewport`);
}

const run = Date.now().toString(36);
const happy = [`browser-${run}-1`, `browser-${run}-2`];
const poisoned = `browser-${run}-poison`;

try {
  await step('sign in with the admin key', async () => {
    await go('');
    await signIn(ADMIN_KEY, 'admin');
    await page.locator('[data-page="overview"] .cards').waitFor();
  });

  await step('place orders through the API', async () => {
    await setUpCatalog();
    for (const id of happy) await must('POST', '/orders', order(id, '1 Main Street'), [202]);
  });

  await step('watch an order reach confirmed on the sagas page', async () => {
    await go('#/sagas');
    const row = page.locator(`tr[data-saga-status="completed"]`, { hasText: happy[0] });
    await row.waitFor({ timeout: FLOW_MS });
    await shot('sagas');
    await row.click();
    await page.locator('[data-saga-detail][data-saga-status="completed"]').waitFor();
    await page.locator('.timeline li[data-what="finished-completed"]').waitFor();
    await shot('saga-timeline');
    await waitOrder(happy[0], 'confirmed');
  });

  await step('overview charts have samples', async () => {
    await go('');
    // A flat line has no height, so Playwright calls it hidden: attached is what counts.
    await page.locator('[data-chart="Throughput"] polyline').first().waitFor({ state: 'attached' });
    await shot('overview');
  });

  await step('a poison address is dead-lettered and shown', async () => {
    await must('PUT', '/faults', { poison_address: 'POISON' }, [200, 204]);
    await must('POST', '/orders', order(poisoned, '13 POISON Road'), [202]);
    await go('#/dead-letters');
    const row = page.locator('tr[data-dead-letter]').first();
    await row.waitFor({ timeout: FLOW_MS });
    await page.locator('tr[data-error-type]').first().waitFor();
    await shot('dead-letters');
    await row.click();
    await page.locator('[data-dead-letter-detail][data-state="pending"]').waitFor();
    await page.locator('.card', { hasText: 'Payload' }).waitFor();
  });

  await step('the fix is deployed; replay from the page', async () => {
    await must('PUT', '/faults', { poison_address: null }, [200, 204]);
    await page.click('button[data-action="replay"]');
    await page.locator('[data-dead-letter-detail][data-state="replayed"]').waitFor();
    await shot('dead-letter-replayed');
    await waitOrder(poisoned, 'confirmed');
    await go('#/sagas');
    await page.locator('tr[data-saga-status="completed"]', { hasText: poisoned }).waitFor({ timeout: FLOW_MS });
  });

  await step('the other pages render', async () => {
    await go(`#/streams`);
    await page.locator('tr[data-stream]').first().waitFor();
    await shot('streams');
    await page.locator('tr[data-stream] a').first().click();
    await page.locator('[data-event]').first().waitFor();
    await shot('stream');
    await go('#/live');
    await page.locator('[data-live-status]', { hasText: 'live' }).waitFor();
    await page.locator('[data-live] li').first().waitFor();
    await shot('live');
    await go('#/consumers');
    await page.locator('tr[data-consumer]').first().waitFor();
    await shot('consumers');
    await go('#/projections');
    await page.locator('tr[data-projection]').first().waitFor();
    await shot('projections');
    await go('#/outbox');
    await page.locator('[data-outbox-pending]').waitFor();
    await shot('outbox');
  });

  await step('a viewer sees no bodies and no replay button', async () => {
    await page.click('#who button');
    await signIn(VIEWER_KEY, 'viewer');
    await go('#/dead-letters?include_replayed=true');
    await page.locator('tr[data-dead-letter]').first().click();
    await page.locator('[data-dead-letter-detail]').waitFor();
    await page.locator('[data-redacted]').waitFor();
    if (await page.locator('button[data-action="replay"]').count()) throw new Error('a viewer is offered the replay button');
    if (await page.locator('[data-page-error]').count()) throw new Error('the redacted body is shown as an error');
    await shot('viewer-dead-letter');
  });

  await step('a phone-sized viewport collapses the nav and never scrolls sideways', async () => {
    await page.setViewportSize(PHONE);
    await go('#/dead-letters?include_replayed=true');
    await page.locator('tr[data-dead-letter]').first().waitFor();
    await page.locator('#nav-toggle').waitFor({ state: 'visible' });
    await page.locator('#nav').waitFor({ state: 'hidden' });
    await noHorizontalOverflow('dead letters');
    await page.click('#nav-toggle');
    await page.locator('#nav').waitFor({ state: 'visible' });
    await shot('phone-nav');
    await page.click('#nav a[data-nav="sagas"]');
    await page.locator('#nav').waitFor({ state: 'hidden' });
    await page.locator('tr[data-saga]').first().waitFor();
    await noHorizontalOverflow('sagas');
    await page.locator('tr[data-saga]').first().click();
    await page.locator('[data-saga-detail]').waitFor();
    await noHorizontalOverflow('saga detail');
    await go('');
    await page.locator('[data-chart="Throughput"]').waitFor();
    await noHorizontalOverflow('overview');
    await shot('phone-overview');
  });

  if (pageErrors.length) throw new Error(`the page reported errors: ${pageErrors.join(' | ')}`);
  console.log(`dashboard scenario passed (${shots.length} screenshots)`);
} catch (e) {
  console.error(`FAILED at step "${current}": ${e && e.stack ? e.stack : e}`);
  if (pageErrors.length) console.error(`page errors: ${pageErrors.join(' | ')}`);
  try {
    await shot(`failure-${current.replace(/[^a-z0-9]+/gi, '-')}`);
  } catch (se) {
    console.error(`no screenshot: ${se.message}`);
  }
  process.exitCode = 1;
} finally {
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

/** The customer and product the orders name (the read model shows their names). */
async function setUpCatalog() {
  await must('POST', '/commands/RegisterCustomer', { customer_id: 'c-browser', name: 'Grace Hopper' }, [200, 201, 202]);
  await must('POST', '/commands/AddProduct', { sku: 'p-browser', name: 'Browser mug', unit_price_cents: 1250 }, [200, 201, 202]);
}
