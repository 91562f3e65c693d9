// The app's shell: a router over the History API, the navigation for the
// current session, and messages carried from one page to the next.

import { api, currentSession, clearSession, SESSION_ENDED } from './api.js';
import { h } from './dom.js';
import { landingPage } from './pages/landing.js';
import { signupPage } from './pages/signup.js';
import { loginPage } from './pages/login.js';
import { myVideosPage } from './pages/my-videos.js';
import { uploadPage } from './pages/upload.js';
import { galleryPage } from './pages/gallery.js';
import { rankingsPage } from './pages/rankings.js';

const PAGES = {
  '/': { render: landingPage, title: 'Inicio' },
  '/galeria': { render: galleryPage, title: 'Galería' },
  '/rankings': { render: rankingsPage, title: 'Rankings' },
  '/mis-videos': { render: myVideosPage, title: 'Mis videos', private: true },
  '/subir': { render: uploadPage, title: 'Subir video', private: true },
  '/ingresar': { render: loginPage, title: 'Ingresar' },
  '/registro': { render: signupPage, title: 'Crear cuenta' },
};

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const flashBox = document.getElementById('flash');

let pendingFlash = null;
let leavePage = null;
// Counts renders, so a page that finishes loading after the user (or a
// refused session) moved on stops at once instead of taking over.
let generation = 0;

/** Shows `message` at the top of the next page rendered. */
export function flash(message, kind = 'info') {
  pendingFlash = { message, kind };
}

function showFlash() {
  flashBox.replaceChildren();
  flashBox.className = 'flash';
  if (!pendingFlash) return;
  flashBox.className = `flash flash-${pendingFlash.kind}`;
  flashBox.append(h('p', {}, pendingFlash.message));
  pendingFlash = null;
}

/** Goes to `path` (which may carry a query) and renders it. */
export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

function renderNav() {
  const signedIn = currentSession() !== null;
  const link = (href, text) => h('li', {}, h('a', {
    href,
    'aria-current': location.pathname === href ? 'page' : null,
  }, text));
  const items = [link('/galeria', 'Galería'), link('/rankings', 'Rankings')];
  if (signedIn) {
    items.push(link('/mis-videos', 'Mis videos'), link('/subir', 'Subir video'));
    items.push(h('li', {}, h('button', { type: 'button', class: 'link-button', onclick: logout }, 'Cerrar sesión')));
  } else {
    items.push(link('/ingresar', 'Ingresar'), link('/registro', 'Crear cuenta'));
  }
  nav.replaceChildren(...items);
}

async function logout() {
  try {
    const { data } = await api.logout();
    flash(data?.message || 'Sesión cerrada.', 'success');
  } catch (error) {
    // Refused or unreachable: the session ends here all the same.
    if (error.status !== 401) flash(error.message, 'error');
  }
  clearSession();
  navigate('/');
}

async function render() {
  const current = ++generation;
  if (leavePage) {
    leavePage();
    leavePage = null;
  }
  const page = PAGES[location.pathname];
  if (!page) {
    main.replaceChildren(h('h1', {}, 'Página no encontrada'), h('p', {}, h('a', { href: '/' }, 'Volver al inicio')));
    renderNav();
    showFlash();
    return;
  }
  if (page.private && !currentSession()) {
    flash('Ingresa con tu cuenta para ver esta página.', 'info');
    history.replaceState(null, '', '/ingresar');
    render();
    return;
  }
  document.title = `${page.title} · ANB Rising Stars`;
  renderNav();
  showFlash();
  main.replaceChildren();
  const params = new URLSearchParams(location.search);
  // A page may return a function that stops what it started (polling…).
  const left = await page.render(main, { params, navigate, flash });
  if (current !== generation) {
    if (typeof left === 'function') left();
    return;
  }
  leavePage = typeof left === 'function' ? left : null;
  const title = main.querySelector('h1');
  if (title && document.activeElement === document.body) title.focus({ preventScroll: true });
}

document.addEventListener('click', (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const anchor = event.target.closest('a[href]');
  if (!anchor || anchor.target || anchor.hasAttribute('download')) return;
  const url = new URL(anchor.href);
  if (url.origin !== location.origin || !(url.pathname in PAGES)) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

// A message from the last page gives way once the person acts on this one.
document.addEventListener('submit', () => {
  flashBox.replaceChildren();
  flashBox.className = 'flash';
}, true);

window.addEventListener('popstate', render);

window.addEventListener(SESSION_ENDED, (event) => {
  flash(event.detail.message, 'error');
  if (location.pathname !== '/ingresar') navigate('/ingresar');
  else render();
});

// A session ends at its token's expiry even when the app sits idle.
setInterval(() => {
  if (currentSession() === null && nav.querySelector('.link-button')) renderNav();
}, 15_000);

render();
