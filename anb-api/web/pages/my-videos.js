import { api } from '../api.js';
import { formatDate, h, pageTitle, plural } from '../dom.js';

const POLL_MS = 2000;

const STATUS_LABELS = {
  uploaded: 'En cola',
  processing: 'Procesando',
  processed: 'Procesado',
  failed: 'Falló',
};

export async function myVideosPage(main) {
  const list = h('div', { class: 'my-videos' });
  const status = h('div', { class: 'inline-status', role: 'status', 'aria-live': 'polite' });
  main.append(
    h('div', { class: 'title-row' },
      pageTitle('Mis videos'),
      h('a', { class: 'button primary', href: '/subir' }, 'Subir video'),
    ),
    status,
    list,
  );
  let timer = null;
  let left = false;
  const cards = new Map();

  async function refresh() {
    timer = null;
    let videos;
    try {
      ({ data: videos } = await api.myVideos());
    } catch (error) {
      if (error.status !== 401 && !left) status.textContent = error.message;
      return;
    }
    if (left) return;
    show(videos);
    // Poll only while something is still on its way.
    if (videos.some((v) => v.status === 'uploaded' || v.status === 'processing')) {
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  function show(videos) {
    if (videos.length === 0) {
      list.replaceChildren(h('p', { class: 'empty' }, 'Aún no has subido videos. ',
        h('a', { href: '/subir' }, 'Sube tu primera jugada'), '.'));
      return;
    }
    const items = videos.map((video) => {
      const key = `${video.video_id}:${video.status}:${video.published}`;
      const existing = cards.get(video.video_id);
      // A card whose state did not change keeps its node (and its playing video).
      if (existing && existing.key === key) {
        updateProgress(existing.node, video);
        return existing.node;
      }
      const node = videoCard(video, { refresh: () => refreshNow(), status });
      cards.set(video.video_id, { key, node });
      return node;
    });
    const ul = list.querySelector('ul.video-list') ?? h('ul', { class: 'video-list', role: 'list' });
    ul.replaceChildren(...items);
    if (!ul.isConnected) list.replaceChildren(ul);
  }

  function refreshNow() {
    if (timer) clearTimeout(timer);
    return refresh();
  }

  await refresh();
  return () => {
    left = true;
    if (timer) clearTimeout(timer);
  };
}

function updateProgress(node, video) {
  const bar = node.querySelector('progress');
  const text = node.querySelector('.progress-text');
  if (bar) bar.value = video.progress_percent;
  if (text) text.textContent = `${video.progress_percent} %`;
}

function videoCard(video, { refresh, status }) {
  const pending = video.status === 'uploaded' || video.status === 'processing';
  const titleId = `v-${video.video_id}`;
  const media = video.status === 'processed' && video.processed_url
    ? h('video', { controls: true, preload: 'metadata', playsinline: true, poster: video.thumbnail_url, src: video.processed_url, 'aria-labelledby': titleId })
    : video.thumbnail_url
      ? h('img', { src: video.thumbnail_url, alt: `Miniatura de ${video.title}` })
      : h('div', { class: `placeholder${pending ? ' pending' : ''}`, 'aria-hidden': 'true' }, pending ? 'Preparando el video…' : 'Sin vista previa');

  const actions = h('div', { class: 'actions' });
  if (video.status === 'processed' && !video.published) {
    actions.append(h('button', {
      type: 'button',
      class: 'button primary',
      onclick: (e) => act(e.currentTarget, () => api.publishVideo(video.video_id), 'Video publicado: ya está en la galería para votar.'),
    }, 'Publicar'));
  }
  if (!video.published) {
    actions.append(h('button', {
      type: 'button',
      class: 'button danger',
      onclick: (e) => {
        if (!window.confirm(`¿Eliminar «${video.title}»? Esta acción no se puede deshacer.`)) return;
        act(e.currentTarget, () => api.deleteVideo(video.video_id));
      },
    }, 'Eliminar'));
  }

  async function act(button, call, fallback) {
    button.disabled = true;
    try {
      const { data } = await call();
      status.textContent = data?.message ?? fallback;
    } catch (error) {
      status.textContent = error.message;
      button.disabled = false;
      return;
    }
    await refresh();
  }

  let note = null;
  if (video.published) note = h('p', { class: 'note' }, `Publicado: participa en las votaciones (${plural(video.votes, 'voto', 'votos')}). Un video publicado no se puede eliminar.`);
  else if (pending && video.is_public) note = h('p', { class: 'note' }, 'Se publicará automáticamente al terminar el procesamiento.');
  else if (video.status === 'processed') note = h('p', { class: 'note' }, 'Privado: publícalo para que el público pueda votar.');

  return h('li', { class: `card my-video status-${video.status}`, 'data-video': video.video_id, 'data-status': video.status },
    h('div', { class: 'my-video-media' }, media),
    h('div', { class: 'video-body' },
      h('h2', { class: 'video-title', id: titleId }, video.title),
      h('p', {}, h('span', { class: `badge badge-${video.status}` }, STATUS_LABELS[video.status] ?? video.status)),
      pending ? h('div', { class: 'progress-row' },
        h('label', { for: `p-${video.video_id}` }, 'Progreso del procesamiento'),
        h('progress', { id: `p-${video.video_id}`, max: 100, value: video.progress_percent }),
        h('span', { class: 'progress-text' }, `${video.progress_percent} %`),
      ) : null,
      video.status === 'failed' ? h('p', { class: 'failure', role: 'note' }, `Motivo: ${video.failure_reason ?? 'desconocido'}`) : null,
      h('p', { class: 'muted small' }, `Subido el ${formatDate(video.uploaded_at)}`,
        video.processed_at ? ` · procesado el ${formatDate(video.processed_at)}` : ''),
      note,
      actions,
    ),
  );
}
