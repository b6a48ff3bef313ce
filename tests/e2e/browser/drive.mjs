// Opens one page in Debian's headless Chromium (never a downloaded browser), waits until its script has written
// its results into the DOM (<pre id="results" data-done="1">), and prints one JSON line on stdout:
// {"results": <what the page wrote>, "console": [...], "pageErrors": [...], "failedRequests": [...]}.
// Usage: node drive.mjs <url> [timeout-ms]; CHROMIUM overrides /usr/bin/chromium.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, timeoutArg] = process.argv.slice(2);
if (!url) {
  console.error('usage: node drive.mjs <url> [timeout-ms]');
  process.exit(2);
}
const timeout = Number(timeoutArg || 20000);
const profile = mkdtempSync(join(tmpdir(), 'storeplane-chromium-'));
const consoleLines = [];
const pageErrors = [];
const failedRequests = [];
let context;
try {
  // A persistent context is how Playwright takes a --user-data-dir of our own (a fresh one per run).
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  page.on('requestfailed', (request) =>
    failedRequests.push({ url: request.url(), method: request.method(), error: request.failure()?.errorText }),
  );
  await page.goto(url, { timeout });
  await page.waitForSelector('#results[data-done="1"]', { state: 'attached', timeout });
  const results = JSON.parse(await page.textContent('#results'));
  process.stdout.write(JSON.stringify({ results, console: consoleLines, pageErrors, failedRequests }) + '\n');
} catch (error) {
  process.stdout.write(
    JSON.stringify({ error: String(error?.stack || error), console: consoleLines, pageErrors, failedRequests }) + '\n',
  );
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
