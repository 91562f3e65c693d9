// The web app end to end in Debian's Chromium, on a fresh `anb serve`: two
// players, an upload watched byte by byte, processing, playback, a vote that
// moves the count and the ranking, log-out that really ends the session, and
// the refusals a person meets. Screenshots of every page at phone and desktop
// widths go to ANB_E2E_SCREENSHOTS (default target/browser-screenshots).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { CHROMIUM, CHROMIUM_ARGS, ROOT, makeClips, startServer, watch } from './support.mjs';

const SCREENSHOTS = process.env.ANB_E2E_SCREENSHOTS ?? join(ROOT, 'target', 'browser-screenshots');
const CLIPS = join(ROOT, 'target', 'browser-clips');
const PHONE = { width: 360, height: 800 };
const DESKTOP = { width: 1366, height: 900 };
const PASSWORD = 'balon-naranja-2026';

let server;
let browser;
let clips;
// The watch on the journey's page: its navigations may cancel the old page's loads.
let watcher = null;

before(async () => {
  mkdirSync(SCREENSHOTS, { recursive: true });
  clips = makeClips(CLIPS, { seconds: 21, megabytes: Number(process.env.ANB_E2E_CLIP_MB ?? 50) });
  server = await startServer();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Screenshots the page at both widths, then goes back to the desktop width. */
async function shoot(page, name) {
  for (const [label, size] of [['telefono', PHONE], ['escritorio', DESKTOP]]) {
    await page.setViewportSize(size);
    await page.waitForTimeout(100);
    await page.screenshot({ path: join(SCREENSHOTS, `${name}-${label}.png`), fullPage: true });
  }
}

async function open(page, path) {
  const go = () => page.goto(`${server.base}${path}`);
  await (watcher ? watcher.leave(go) : go());
  await page.locator('main h1').first().waitFor();
}

async function signUp(page, { first, last, email, city }) {
  await open(page, '/registro');
  await page.getByLabel('Nombre', { exact: true }).fill(first);
  await page.getByLabel('Apellido').fill(last);
  await page.getByLabel('Correo electrónico').fill(email);
  await page.getByLabel('Contraseña', { exact: true }).fill(PASSWORD);
  await page.getByLabel('Repite la contraseña').fill(PASSWORD);
  await page.getByLabel('Ciudad').fill(city);
  await page.getByLabel('País').fill('Colombia');
  await page.getByRole('button', { name: 'Crear cuenta' }).click();
  await page.getByText('Cuenta creada.').waitFor();
  assert.equal(new URL(page.url()).pathname, '/ingresar');
}

async function logIn(page, email, password = PASSWORD) {
  if (new URL(page.url()).pathname !== '/ingresar') await open(page, '/ingresar');
  await page.getByLabel('Correo electrónico').fill(email);
  await page.getByLabel('Contraseña').fill(password);
  await page.getByRole('button', { name: 'Ingresar' }).click();
}

async function token(page) {
  return page.evaluate(() => JSON.parse(sessionStorage.getItem('anb.session'))?.token ?? null);
}

async function meStatus(bearer) {
  const response = await fetch(`${server.base}/api/auth/me`, { headers: { Authorization: `Bearer ${bearer}` } });
  return response.status;
}

async function logOut(page) {
  const bearer = await token(page);
  assert.ok(bearer, 'a session before logging out');
  assert.equal(await meStatus(bearer), 200);
  await page.getByRole('button', { name: 'Cerrar sesión' }).click();
  await page.getByText('Sesión cerrada exitosamente.').waitFor();
  assert.equal(await token(page), null, 'the app forgets the token');
  assert.equal(await meStatus(bearer), 401, 'the server refuses the token after log-out');
}

async function chooseFile(page, path) {
  await page.getByLabel('Video (MP4)').setInputFiles(path);
}

test('a player uploads, another votes, the ranking moves, log-out ends each session', async () => {
  const context = await browser.newContext({ viewport: DESKTOP, locale: 'es-CO' });
  const page = await context.newPage();
  page.on('dialog', (dialog) => dialog.accept());
  watcher = watch(page);
  const ana = { first: 'Ana', last: 'Gómez', email: 'ana.gomez@example.com', city: 'Bogotá' };
  const carlos = { first: 'Carlos', last: 'Pérez', email: 'carlos.perez@example.com', city: 'Cali' };

  // The landing page before anyone played.
  await open(page, '/');
  await page.getByText('Todavía no hay jugadores con videos publicados.').waitFor();
  await shoot(page, '01-inicio-vacio');

  // Sign-up: the server's per-field errors next to the fields.
  await open(page, '/registro');
  await page.getByLabel('Nombre', { exact: true }).fill('A');
  await page.getByLabel('Correo electrónico').fill('no-es-un-correo');
  await watcher.provoked([400], async () => {
    await page.getByRole('button', { name: 'Crear cuenta' }).click();
    await page.locator('.field[data-field="email"] .field-error').waitFor();
  });
  const nameError = await page.locator('.field[data-field="first_name"] .field-error').textContent();
  assert.ok(nameError.length > 0, 'first_name error shown next to the field');
  assert.equal(await page.getByLabel('Nombre', { exact: true }).getAttribute('aria-invalid'), 'true');
  await shoot(page, '02-registro-errores');

  await signUp(page, ana);
  await shoot(page, '03-ingresar');

  // A bad password shows the server's Spanish message.
  await watcher.provoked([401], async () => {
    await logIn(page, ana.email, 'no-es-mi-clave');
    await page.getByRole('alert').getByText('Credenciales inválidas.').waitFor();
  });
  await shoot(page, '04-ingresar-error');

  await logIn(page, ana.email);
  await page.waitForURL('**/mis-videos');
  await page.getByText('Aún no has subido videos.').waitFor();
  await shoot(page, '05-mis-videos-vacio');

  // Refusals: a wrong type (checked before sending), a file that only claims
  // to be an MP4 and a clip too short (the server's messages).
  await open(page, '/subir');
  await page.getByLabel('Título').fill('Mi mejor jugada');
  await chooseFile(page, clips.text);
  await page.getByRole('button', { name: 'Subir video' }).click();
  await page.locator('.field[data-field="video_file"] .field-error', { hasText: 'El archivo debe ser un video MP4.' }).waitFor();
  await shoot(page, '06-subir-tipo-incorrecto');

  await chooseFile(page, clips.fake);
  await watcher.provoked([400], async () => {
    await page.getByRole('button', { name: 'Subir video' }).click();
    await page.locator('.field[data-field="video_file"] .field-error', { hasText: 'El archivo no es un video MP4 válido.' }).waitFor();
  });

  await chooseFile(page, clips.short);
  await watcher.provoked([400], async () => {
    await page.getByRole('button', { name: 'Subir video' }).click();
    await page.locator('.field[data-field="video_file"] .field-error', { hasText: /El video dura 5[.,]\d s; debe durar entre 20 y 60 s\./ }).waitFor();
  });
  await shoot(page, '07-subir-muy-corto');

  // The real upload: the progress bar follows the bytes sent.
  await chooseFile(page, clips.valid);
  await page.evaluate(() => {
    window.uploadProgress = [];
    window.uploadSentAt = null;
    const bar = document.getElementById('upload-progress');
    const record = () => {
      window.uploadProgress.push(Number(bar.value));
      if (bar.value >= 100 && window.uploadSentAt === null) window.uploadSentAt = Date.now();
    };
    new MutationObserver(record).observe(bar, { attributes: true });
    bar.addEventListener('change', record);
    // `value` is a property: sample it as well as its attribute changes.
    const sample = setInterval(() => {
      record();
      if (!document.body.contains(bar) || bar.value >= 100) clearInterval(sample);
    }, 20);
  });
  // The direct flow: announce, PUT the file where the server says (the API
  // itself on local storage), complete.
  const uploadRequests = [];
  const recordUploadRequest = (request) => {
    const { pathname } = new URL(request.url());
    if (pathname.startsWith('/api/videos/upload')) uploadRequests.push(`${request.method()} ${pathname.replace(/[0-9a-f-]{36}/, '{id}')}`);
  };
  page.on('request', recordUploadRequest);
  // Over loopback the whole clip goes in a few tens of milliseconds, faster than the
  // browser reports progress; a link of about 320 Mbit/s (a fast home connection) gives
  // the bar something to show, as a player's upload would.
  const network = await page.context().newCDPSession(page);
  await network.send('Network.enable');
  await network.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 40 * 1024 * 1024,
  });
  const uploadStarted = Date.now();
  await page.getByRole('button', { name: 'Subir video' }).click();
  await page.getByText('Video subido correctamente. Procesamiento en curso.').waitFor({ timeout: 120_000 });
  const uploadAnswered = Date.now();
  page.off('request', recordUploadRequest);
  await network.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
  });
  await network.detach();
  assert.deepEqual(uploadRequests, [
    'POST /api/videos/uploads',
    'PUT /api/videos/uploads/{id}/content',
    'POST /api/videos/uploads/{id}/complete',
  ]);
  const answerSeconds = (uploadAnswered - uploadStarted) / 1000;
  const [progress, sentAt] = await page.evaluate(() => [window.uploadProgress, window.uploadSentAt]);
  assert.ok(sentAt, 'the bar reached 100 %');
  const sentSeconds = (sentAt - uploadStarted) / 1000;
  const between = [...new Set(progress.filter((v) => v > 0 && v < 100))];
  assert.ok(between.length >= 2, `the bar moved through intermediate values, saw ${JSON.stringify(between)}`);
  assert.deepEqual([...progress].sort((a, b) => a - b), progress, 'the bar never moves back');
  await shoot(page, '08-subir-completado');

  // "Mis videos" polls until the video is processed.
  await page.getByRole('link', { name: 'Ver mis videos' }).click();
  const card = page.locator('.my-video').first();
  await card.waitFor();
  // The processing bar, sampled as the page polls (its node changes with the status).
  await page.evaluate(() => {
    window.processingProgress = [];
    const sample = setInterval(() => {
      const bar = document.querySelector('.my-video progress');
      if (bar) window.processingProgress.push(Number(bar.value));
      else if (document.querySelector('.my-video[data-status="processed"]')) clearInterval(sample);
    }, 200);
  });
  if (['uploaded', 'processing'].includes(await card.getAttribute('data-status'))) {
    await shoot(page, '09-mis-videos-procesando');
  }
  await page.locator('.my-video[data-status="processed"]').waitFor({ timeout: 600_000 });
  // Seen within one poll (2 s) of the worker's last write.
  const processingSeconds = (Date.now() - uploadAnswered) / 1000;
  const processingSeen = [...new Set(await page.evaluate(() => window.processingProgress))];
  assert.deepEqual([...processingSeen].sort((a, b) => a - b), processingSeen, 'the processing bar never moves back');
  await card.locator('text=Publicado').first().waitFor();
  assert.equal(await card.getByRole('button', { name: 'Eliminar' }).count(), 0, 'a published video cannot be deleted');

  // Playback of the processed video.
  const played = await card.locator('video').evaluate(async (video) => {
    video.muted = true;
    await video.play();
    await new Promise((done) => {
      const check = () => (video.currentTime > 0.5 ? done() : setTimeout(check, 50));
      check();
    });
    video.pause();
    return { time: video.currentTime, width: video.videoWidth, height: video.videoHeight };
  });
  assert.ok(played.time > 0.5, 'the processed video plays');
  await shoot(page, '10-mis-videos-procesado');

  await logOut(page);
  await shoot(page, '11-sesion-cerrada');

  // The other player votes.
  await signUp(page, carlos);
  await logIn(page, carlos.email);
  await page.waitForURL('**/mis-videos');
  // Loaded before leaving: a navigation aborts the page's requests in flight.
  await page.getByText('Aún no has subido videos.').waitFor();
  await open(page, '/rankings');
  const anaRow = page.locator('table.ranking tbody tr', { hasText: 'Ana Gómez' });
  assert.equal((await anaRow.locator('td.num').textContent()).trim(), '0');

  await open(page, '/galeria');
  const videoCard = page.locator('.video-card', { hasText: 'Mi mejor jugada' });
  const vote = videoCard.getByRole('button', { name: 'Votar' });
  await vote.waitFor();
  assert.equal(await videoCard.locator('.vote-count').textContent(), '0 votos');
  await shoot(page, '12-galeria');
  await vote.click();
  await videoCard.getByRole('button', { name: 'Ya votaste' }).waitFor();
  assert.equal(await videoCard.locator('.vote-count').textContent(), '1 voto');
  await page.getByText('Voto registrado exitosamente.').waitFor();
  const galleryPlayed = await videoCard.locator('video').evaluate(async (video) => {
    video.muted = true;
    await video.play();
    await new Promise((done) => {
      const check = () => (video.currentTime > 0.3 ? done() : setTimeout(check, 50));
      check();
    });
    video.pause();
    return video.currentTime;
  });
  assert.ok(galleryPlayed > 0.3, 'the gallery plays the processed video');
  await shoot(page, '13-galeria-votado');

  // Back on the page later: the button still knows (from /api/me/votes).
  await open(page, '/galeria');
  await videoCard.getByRole('button', { name: 'Ya votaste' }).waitFor();

  // The ranking moved, overall and for the city. A ranking page may be served from the
  // API's memory for up to a second after it was read, so a visit within that second can
  // still show the page from before the vote: look again until the second has passed.
  let anaVotes = '';
  for (const deadline = Date.now() + 3000; anaVotes !== '1' && Date.now() < deadline; ) {
    await open(page, '/rankings');
    // Ana is listed before and after the vote; only after it is she first with one vote.
    await anaRow.waitFor();
    anaVotes = (await anaRow.locator('td.num').textContent()).trim();
    if (anaVotes !== '1') await page.waitForTimeout(300);
  }
  assert.equal(anaVotes, '1');
  assert.match(await page.locator('table.ranking tbody tr').first().textContent(), /Ana Gómez/);
  await shoot(page, '14-rankings');
  await page.getByLabel('Filtrar por ciudad').fill('bogota');
  await page.getByRole('button', { name: 'Filtrar' }).click();
  await page.getByRole('heading', { name: 'Ranking de bogota' }).waitFor();
  await anaRow.waitFor();
  await shoot(page, '15-rankings-ciudad');
  await page.getByLabel('Filtrar por ciudad').fill('Cali');
  await page.getByRole('button', { name: 'Filtrar' }).click();
  await page.getByText('Todavía no hay jugadores con videos publicados en «Cali».').waitFor();

  await open(page, '/');
  await page.locator('table.ranking tbody tr', { hasText: 'Ana Gómez' }).waitFor();
  await shoot(page, '16-inicio');
  await open(page, '/subir');
  await shoot(page, '17-subir');

  await logOut(page);

  // Without a session, a private page sends the player to log in.
  await open(page, '/mis-videos');
  await page.waitForURL('**/ingresar');
  await page.getByText('Ingresa con tu cuenta para ver esta página.').waitFor();

  // A token the server refuses (revoked, expired…) ends the session with a message.
  await page.evaluate(() => sessionStorage.setItem('anb.session', JSON.stringify({ token: 'revocado', expiresAt: Date.now() + 60_000 })));
  await watcher.provoked([401], async () => {
    await open(page, '/mis-videos');
    await page.getByText('Tu sesión terminó o expiró.').waitFor();
  });
  assert.equal(new URL(page.url()).pathname, '/ingresar');
  await shoot(page, '18-sesion-expirada');

  assert.deepEqual(watcher.problems(), [], 'no uncaught exception, failed request or unexpected console error');
  await context.close();

  const megabytes = (clips.validBytes / 1_000_000).toFixed(1);
  console.log(`upload of the ${megabytes} MB clip through the browser: bytes sent in ${sentSeconds.toFixed(2)} s, `
    + `server's answer after ${answerSeconds.toFixed(2)} s (bar took ${between.length} values between 0 and 100 %)`);
  console.log(`from the upload's answer to "processed" on "mis videos": ${processingSeconds.toFixed(1)} s `
    + `(processing bar seen at ${processingSeen.join(', ')} %)`);
  console.log(`screenshots: ${SCREENSHOTS}; anb serve's output: ${server.logPath}`);
});

test('a player publishes a private video and deletes another', async () => {
  const context = await browser.newContext({ viewport: DESKTOP, locale: 'es-CO' });
  const page = await context.newPage();
  const dialogs = [];
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    dialog.accept();
  });
  watcher = watch(page);
  const lucia = { first: 'Lucía', last: 'Ramírez', email: 'lucia.ramirez@example.com', city: 'Medellín' };
  await signUp(page, lucia);
  await logIn(page, lucia.email);
  await page.waitForURL('**/mis-videos');
  await page.getByText('Aún no has subido videos.').waitFor();

  // Two private uploads: one to publish by hand, one to delete.
  for (const title of ['Jugada privada para publicar', 'Jugada que voy a borrar']) {
    await open(page, '/subir');
    await page.getByLabel('Título').fill(title);
    await chooseFile(page, clips.valid);
    await page.getByLabel('Publicarlo para votación cuando termine el procesamiento').uncheck();
    await page.getByRole('button', { name: 'Subir video' }).click();
    await page.getByText('Video subido correctamente. Procesamiento en curso.').waitFor({ timeout: 120_000 });
  }

  await open(page, '/mis-videos');
  const doomed = page.locator('.my-video', { hasText: 'Jugada que voy a borrar' });
  await doomed.getByRole('button', { name: 'Eliminar' }).click();
  await page.getByText('El video ha sido eliminado exitosamente.').waitFor();
  await doomed.waitFor({ state: 'detached' });
  assert.equal(dialogs.length, 1, 'deleting asks first');
  assert.match(dialogs[0], /¿Eliminar «Jugada que voy a borrar»\?/);

  const kept = page.locator('.my-video', { hasText: 'Jugada privada para publicar' });
  await kept.and(page.locator('[data-status="processed"]')).waitFor({ timeout: 600_000 });
  await kept.getByText('Privado: publícalo para que el público pueda votar.').waitFor();
  await shoot(page, '19-mis-videos-privado');
  await kept.getByRole('button', { name: 'Publicar' }).click();
  await page.getByText('Video publicado', { exact: false }).first().waitFor();
  await kept.getByText(/^Publicado: participa en las votaciones/).waitFor();
  assert.equal(await kept.getByRole('button', { name: 'Eliminar' }).count(), 0, 'a published video cannot be deleted');

  await open(page, '/galeria');
  await page.locator('.video-card', { hasText: 'Jugada privada para publicar' }).getByRole('button', { name: 'Es tu video' }).waitFor();
  assert.equal(await page.locator('.video-card', { hasText: 'Jugada que voy a borrar' }).count(), 0);

  assert.deepEqual(watcher.problems(), [], 'no uncaught exception, failed request or unexpected console error');
  await context.close();
});

test('every page answers with security headers and hashed, cacheable assets', async () => {
  const response = await fetch(`${server.base}/galeria`);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('cache-control'), 'no-cache');
  const csp = response.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
  assert.ok(response.headers.get('referrer-policy'));
  const html = await response.text();
  const script = /<script type="module" src="(\/assets\/[0-9a-f]+\/app\.js)">/.exec(html);
  assert.ok(script, 'the shell loads its module from a versioned path');
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
  const asset = await fetch(`${server.base}${script[1]}`);
  assert.equal(asset.status, 200);
  assert.match(asset.headers.get('content-type'), /javascript/);
  assert.match(asset.headers.get('cache-control'), /max-age=31536000/);
  const stale = await fetch(`${server.base}/assets/000000000000/app.js`);
  assert.equal(stale.status, 404);
  const api = await fetch(`${server.base}/api/no-existe`);
  assert.equal(api.status, 404);
  assert.match(api.headers.get('content-type'), /application\/problem\+json/);
});
