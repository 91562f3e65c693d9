import { uploadVideo } from '../api.js';
import { formatMegabytes, h, pageTitle } from '../dom.js';
import { clearErrors, field, formAlert, resetForm, showErrors } from './form.js';

// The platform's default limits; the server checks them again (and the
// duration and resolution), and its message is shown when it refuses.
const MAX_BYTES = 100 * 1024 * 1024;

function checkFile(file) {
  if (!file) return 'Elige un archivo de video.';
  const looksMp4 = file.type === 'video/mp4' || (file.type === '' && /\.mp4$/i.test(file.name));
  if (!looksMp4) return 'El archivo debe ser un video MP4.';
  if (file.size > MAX_BYTES) return `El archivo pesa ${formatMegabytes(file.size)}; el máximo es ${formatMegabytes(MAX_BYTES)}.`;
  if (file.size === 0) return 'El archivo está vacío.';
  return null;
}

export function uploadPage(main) {
  const progressLabel = h('label', { for: 'upload-progress' }, 'Enviando el video');
  const progress = h('progress', { id: 'upload-progress', max: 100, value: 0 });
  const progressText = h('span', { id: 'upload-progress-text', class: 'progress-text' }, '');
  const progressBox = h('div', { class: 'progress-row upload-progress', hidden: true },
    progressLabel,
    progress,
    progressText,
  );
  const result = h('div', { class: 'upload-result', role: 'status', 'aria-live': 'polite' });
  const form = h('form', { class: 'card form', novalidate: true },
    formAlert(),
    field({ name: 'title', label: 'Título', required: true, minlength: 5, maxlength: 100, hint: 'Entre 5 y 100 caracteres.' }),
    field({ name: 'video_file', label: 'Video (MP4)', type: 'file', accept: 'video/mp4,.mp4', required: true, hint: 'MP4 de 20 a 60 segundos, al menos 1080p, hasta 100 MB.' }),
    h('div', { class: 'check' },
      h('input', { id: 'f-is_public', name: 'is_public', type: 'checkbox', checked: true }),
      h('label', { for: 'f-is_public' }, 'Publicarlo para votación cuando termine el procesamiento'),
    ),
    progressBox,
    h('button', { type: 'submit', class: 'button primary' }, 'Subir video'),
  );

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    result.replaceChildren();
    const title = form.elements.title.value.trim();
    const file = form.elements.video_file.files[0];
    const errors = {};
    if (title.length < 5 || title.length > 100) errors.title = 'El título debe tener entre 5 y 100 caracteres.';
    const fileProblem = checkFile(file);
    if (fileProblem) errors.video_file = fileProblem;
    if (Object.keys(errors).length) {
      showErrors(form, errors, 'Revisa los campos marcados.');
      return;
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    form.setAttribute('aria-busy', 'true');
    progressBox.hidden = false;
    progressLabel.textContent = 'Enviando el video';
    progress.value = 0;
    progressText.textContent = `0 % · 0,0 MB de ${formatMegabytes(file.size)}`;
    try {
      const data = await uploadVideo({ file, title, isPublic: form.elements.is_public.checked }, (sent, total) => {
        const percent = Math.floor((sent / total) * 100);
        progress.value = percent;
        progressText.textContent = `${percent} % · ${formatMegabytes(sent)} de ${formatMegabytes(total)}`;
      });
      progress.value = 100;
      resetForm(form);
      progressLabel.textContent = 'Video enviado';
      result.append(
        h('p', { class: 'flash flash-success' }, data?.message ?? 'Video subido.'),
        h('p', {}, h('a', { class: 'button primary', href: '/mis-videos' }, 'Ver mis videos')),
      );
      result.querySelector('a').focus();
    } catch (error) {
      if (error.status === 401) return;
      progressBox.hidden = true;
      progress.value = 0;
      const fieldName = error.problem?.errors?.[0]?.field;
      // Refusals of the file itself (type, size, duration, resolution) belong next to it.
      const fileCodes = ['invalid_file_type', 'file_too_large', 'duration_out_of_range', 'resolution_too_low'];
      if (fileCodes.includes(error.code)) showErrors(form, { video_file: error.message }, 'El servidor rechazó el archivo: revisa el campo marcado.');
      else if (fieldName) showErrors(form, error, error.message);
      else showErrors(form, {}, error.message);
    } finally {
      button.disabled = false;
      form.removeAttribute('aria-busy');
    }
  });

  main.append(
    pageTitle('Subir video'),
    h('p', { class: 'lead' }, 'Muestra tus mejores jugadas: el video se adapta al formato del Showcase y, si lo publicas, entra en las votaciones.'),
    form,
    result,
  );
}
