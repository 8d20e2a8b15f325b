// Drives a guide's example app (docs/guides/) in headless Chromium, as its user would: signs in
// with the app's own form, waits until the page's herald.js is connected, clicks the button that
// starts the app's background job, and waits for the job's notification to show in the page.
// Run by the Python guide tests (clients/python/tests/test_guides.py), which start Herald and
// the app; not a node --test file.
//
// Usage: node tests/browser/guide-page.mjs <app url> <user name> [screenshot path]
// Prints the notifications shown as one JSON line; exits non-zero (with why) if any step fails.

import { chromium } from 'playwright-core';

/** Longest wait for one step (the page loading, herald.js connecting, the notification). */
const WAIT_MS = 20_000;

const [appUrl, userName, screenshot] = process.argv.slice(2);
if (!appUrl || !userName) {
  console.error('usage: node guide-page.mjs <app url> <user name> [screenshot path]');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
});
let failed = false;
try {
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  page.setDefaultTimeout(WAIT_MS);
  try {
    await page.goto(appUrl);
    await page.fill('input[name=name]', userName);
    await page.click('form[action="/sign-in"] button');
    await page.waitForFunction(() => document.querySelector('#status')?.textContent === 'open');
    await page.click('#report');
    await page.waitForSelector('#notifications li[data-type="report.ready"]');
    const shown = await page.$$eval('#notifications li', (items) => items.map((item) => item.textContent));
    console.log(JSON.stringify(shown));
  } catch (error) {
    failed = true;
    const status = await page.$eval('#status', (s) => s.textContent).catch(() => '(no #status)');
    console.error(`${error.message}\nherald status in the page: ${status}\n${problems.join('\n')}`);
  }
  if (screenshot) await page.screenshot({ path: screenshot });
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
