// What the browser tests need around the browser: a fresh `anb serve`, the
// video clips (made with the ffmpeg CLI), and a watch on the page that fails
// the test on any uncaught exception, failed request or console error that
// the test did not provoke on purpose.

import { spawn, execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, mkdirSync, openSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Flags for Chromium in a headless, sandbox-less CI container. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const CHROMIUM = process.env.ANB_E2E_CHROMIUM ?? '/usr/bin/chromium';

async function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/**
 * Starts `anb serve` on a free port over a temporary data directory; its
 * output (the worker's FFmpeg lines among it) goes to `logPath`.
 */
export async function startServer() {
  const binary = process.env.ANB_E2E_BINARY ?? join(ROOT, 'target', 'debug', 'anb');
  if (!existsSync(binary)) throw new Error(`${binary} not found: build it first (cargo build -p anb)`);
  const dataDir = mkdtempSync(join(tmpdir(), 'anb-e2e-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const logPath = join(ROOT, 'target', 'browser-tests-serve.log');
  mkdirSync(dirname(logPath), { recursive: true });
  const log = openSync(logPath, 'w');
  const child = spawn(binary, ['serve', '--addr', `127.0.0.1:${port}`, '--data-dir', dataDir], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
    stdio: ['ignore', log, log],
  });
  closeSync(log);
  const exited = new Promise((done) => child.once('exit', done));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`anb serve exited with ${child.exitCode} (see ${logPath})`);
    try {
      const response = await fetch(`${base}/health`);
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('anb serve did not answer /health within 60 s');
    await new Promise((done) => setTimeout(done, 200));
  }
  return {
    base,
    logPath,
    async stop() {
      child.kill('SIGTERM');
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Makes the clips once into `dir`: a valid 1080p clip of `seconds` padded
 * to about `megabytes` (constant bit rate with filler, cheap to encode), a
 * clip too short to be accepted, a file that only claims to be an MP4, and
 * a text file.
 */
export function makeClips(dir, { seconds = 21, megabytes = 50 } = {}) {
  mkdirSync(dir, { recursive: true });
  const ffmpeg = (args) => execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', ...args], { stdio: 'inherit' });
  const clip = (path, duration, kbps) => {
    if (existsSync(path)) return;
    ffmpeg([
      '-f', 'lavfi', '-i', `testsrc2=size=1920x1080:rate=30:duration=${duration}`,
      '-f', 'lavfi', '-i', `sine=frequency=440:duration=${duration}`,
      '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p',
      '-b:v', `${kbps}k`, '-minrate', `${kbps}k`, '-maxrate', `${kbps}k`, '-bufsize', `${kbps}k`,
      '-x264-params', 'nal-hrd=cbr:force-cfr=1',
      '-c:a', 'aac', '-b:a', '64k', '-movflags', '+faststart',
      `${path}.tmp.mp4`,
    ]);
    execFileSync('mv', [`${path}.tmp.mp4`, path]);
  };
  const kbps = Math.round((megabytes * 8_000) / seconds) - 64;
  const valid = join(dir, `jugada-1080p-${seconds}s-${megabytes}mb.mp4`);
  clip(valid, seconds, kbps);
  const short = join(dir, 'jugada-corta-5s.mp4');
  clip(short, 5, 2000);
  const fake = join(dir, 'no-es-video.mp4');
  writeFileSync(fake, Buffer.alloc(64 * 1024, 'esto no es un video '));
  const text = join(dir, 'notas.txt');
  writeFileSync(text, 'Estas son mis notas, no un video.\n');
  return { valid, validBytes: statSync(valid).size, short, fake, text };
}

/**
 * Watches a page: collects uncaught exceptions, failed requests, error
 * responses and console errors. `provoked(statuses, work)` allows answers
 * with those statuses (and Chromium's console line for them) while `work`
 * runs, `leave(work)` the old page's cancelled loads while the test
 * navigates; anything else left in `problems()` fails the test.
 */
export function watch(page) {
  const problems = [];
  let allowed = [];
  let leaving = false;
  const allowedStatus = (status) => allowed.includes(status);
  page.on('pageerror', (error) => problems.push(`uncaught exception: ${error.message}`));
  page.on('requestfailed', (request) => {
    const failure = request.failure()?.errorText ?? 'failed';
    // The browser itself cancels media downloads it no longer needs (a
    // video leaving the page, a range it will not read).
    if (failure === 'net::ERR_ABORTED' && request.resourceType() === 'media') return;
    // Going to another address cancels what the page it leaves still loads.
    if (failure === 'net::ERR_ABORTED' && leaving) return;
    problems.push(`request failed: ${request.method()} ${request.url()} (${failure})`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400 && !allowedStatus(response.status())) {
      problems.push(`error response: ${response.status()} ${response.request().method()} ${response.url()}`);
    }
  });
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const status = /status of (\d{3})/.exec(message.text());
    if (status && allowedStatus(Number(status[1]))) return;
    problems.push(`console error: ${message.text()}`);
  });
  return {
    async provoked(statuses, work) {
      allowed = statuses;
      try {
        return await work();
      } finally {
        // Console lines can trail the response a little.
        await page.waitForTimeout(150);
        allowed = [];
      }
    },
    /** Runs `work` (a navigation the test starts), allowing the old page's cancelled loads. */
    async leave(work) {
      leaving = true;
      try {
        return await work();
      } finally {
        await page.waitForTimeout(150);
        leaving = false;
      }
    },
    problems: () => problems.splice(0),
  };
}
