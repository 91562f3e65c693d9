// A tiny element builder: pages are made of DOM nodes, never of HTML strings,
// so text from the server can never become markup.

// Attributes (not properties) so that a form's reset() returns to them.
const PROPERTIES = new Set(['textContent']);

/** h('p', {class: 'x'}, 'text', child) → an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (PROPERTIES.has(name)) {
      el[name] = value;
    } else if (name === 'class') {
      el.className = value;
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const dateFormat = new Intl.DateTimeFormat('es', { dateStyle: 'medium', timeStyle: 'short' });

export function formatDate(iso) {
  return iso ? dateFormat.format(new Date(iso)) : '';
}

export function formatMegabytes(bytes) {
  return `${(bytes / 1_000_000).toLocaleString('es', { maximumFractionDigits: 1, minimumFractionDigits: 1 })} MB`;
}

export function plural(n, one, many) {
  return `${n.toLocaleString('es')} ${n === 1 ? one : many}`;
}

/** A page title (h1) that takes focus after navigation, for screen readers. */
export function pageTitle(text) {
  return h('h1', { tabindex: '-1', class: 'page-title' }, text);
}
