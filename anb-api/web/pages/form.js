// Labelled form fields whose errors (the server's, per field) sit next to
// them and are tied to them for assistive technology.

import { h } from '../dom.js';

const NO_FILE = 'Ningún archivo';

/**
 * A file input the page can word in Spanish whatever the browser's own
 * language: the native input (transparent, over the whole box, so a click,
 * a drop or the keyboard reach it) above a button-like text and the chosen
 * file's name.
 */
function filePicker(input) {
  const name = h('span', { class: 'file-name', 'aria-hidden': 'true' }, NO_FILE);
  const show = () => {
    name.textContent = input.files?.[0]?.name ?? NO_FILE;
  };
  input.addEventListener('change', show);
  // form.reset() empties the input without a change event.
  input.addEventListener('reset-view', show);
  return h('div', { class: 'file-picker' },
    input,
    h('span', { class: 'file-button', 'aria-hidden': 'true' }, 'Elegir archivo'),
    name,
  );
}

/** A labelled input with a slot for its error; the hint sits under the input. */
export function field({ name, label, type = 'text', hint, ...attrs }) {
  const id = `f-${name}`;
  const hintId = hint ? `${id}-hint` : null;
  const input = h('input', { id, name, type, 'aria-describedby': hintId, ...attrs });
  return h('div', { class: 'field', 'data-field': name },
    h('label', { for: id }, label),
    type === 'file' ? filePicker(input) : input,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
    h('p', { class: 'field-error', id: `${id}-error`, hidden: true }),
  );
}

/** Resets `form` and the views that follow its inputs (file names). */
export function resetForm(form) {
  form.reset();
  for (const input of form.querySelectorAll('input[type="file"]')) input.dispatchEvent(new Event('reset-view'));
}

/** A summary box for errors that belong to no field. */
export function formAlert() {
  return h('div', { class: 'form-alert', role: 'alert', hidden: true });
}

/** Clears every error shown in `form`. */
export function clearErrors(form) {
  for (const box of form.querySelectorAll('.field')) setFieldError(box, null);
  const alert = form.querySelector('.form-alert');
  if (alert) {
    alert.hidden = true;
    alert.replaceChildren();
  }
}

function setFieldError(box, message) {
  const input = box.querySelector('input, select, textarea');
  const error = box.querySelector('.field-error');
  const hint = box.querySelector('.hint');
  error.textContent = message ?? '';
  error.hidden = !message;
  box.classList.toggle('has-error', Boolean(message));
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
  const describedBy = [hint?.id, message ? error.id : null].filter(Boolean).join(' ');
  if (describedBy) input.setAttribute('aria-describedby', describedBy);
  else input.removeAttribute('aria-describedby');
}

/**
 * Shows `error` (an ApiError or a {field: message} object) in `form`: each
 * field's message next to it, the rest in the form's alert; focuses the
 * first field in error.
 */
export function showErrors(form, error, summary) {
  clearErrors(form);
  const fields = error.fieldErrors ?? error;
  let first = null;
  for (const [name, message] of Object.entries(fields)) {
    const box = form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
    if (!box) continue;
    setFieldError(box, message);
    first ??= box.querySelector('input, select, textarea');
  }
  const alert = form.querySelector('.form-alert');
  const text = summary ?? error.message;
  if (alert && text) {
    alert.append(h('p', {}, text));
    alert.hidden = false;
  }
  (first ?? alert)?.focus?.();
}

/** Disables the submit button while `work` runs. */
export async function busy(form, work) {
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  form.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    button.disabled = false;
    form.removeAttribute('aria-busy');
  }
}
