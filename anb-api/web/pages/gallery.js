import { api, currentSession } from '../api.js';
import { formatDate, h, pageTitle, plural } from '../dom.js';
import { pager } from './pager.js';

const PER_PAGE = 12;

export async function galleryPage(main, { params, flash, navigate }) {
  const page = Math.max(1, Number.parseInt(params.get('pagina') ?? '1', 10) || 1);
  const href = (p) => (p > 1 ? `/galeria?pagina=${p}` : '/galeria');
  main.append(
    pageTitle('Galería de videos'),
    h('p', { class: 'lead' }, 'Mira las jugadas publicadas y vota por tus favoritas: un voto por video.'),
  );
  const status = h('div', { class: 'inline-status', role: 'status', 'aria-live': 'polite' });
  main.append(status);

  let videos;
  let total;
  const signedIn = currentSession() !== null;
  let voted = new Set();
  let me = null;
  try {
    const [list, votes, profile] = await Promise.all([
      api.publicVideos(page, PER_PAGE),
      signedIn ? api.myVotes() : null,
      signedIn ? api.me() : null,
    ]);
    videos = list.data;
    total = Number(list.headers.get('x-total-count') ?? videos.length);
    if (votes) voted = new Set(votes.data);
    if (profile) me = profile.data;
  } catch (error) {
    if (error.status !== 401) main.append(h('p', { class: 'form-alert', role: 'alert' }, error.message));
    return;
  }
  if (videos.length === 0) {
    main.append(h('p', { class: 'empty' }, 'Todavía no hay videos publicados. ¡Vuelve pronto!'));
    return;
  }
  const totalPages = Math.max(1, Math.ceil(total / PER_PAGE));
  main.append(
    h('p', { class: 'muted' }, plural(total, 'video publicado', 'videos publicados')),
    h('ul', { class: 'grid', role: 'list' }, videos.map((video) => videoCard(video, { voted, me, status, flash, navigate }))),
    pager({ page, hasNext: page < totalPages, href, label: 'Páginas de la galería', totalPages }),
  );
}

function videoCard(video, { voted, me, status, flash, navigate }) {
  const count = h('span', { class: 'vote-count', 'data-votes': video.votes }, plural(video.votes, 'voto', 'votos'));
  const button = h('button', { type: 'button', class: 'button primary vote' });
  const setState = (state) => {
    button.dataset.state = state;
    const labels = {
      open: 'Votar',
      voted: 'Ya votaste',
      own: 'Es tu video',
      guest: 'Ingresa para votar',
    };
    button.textContent = labels[state];
    button.disabled = state === 'voted' || state === 'own';
    button.setAttribute('aria-pressed', state === 'voted' ? 'true' : 'false');
  };
  if (!me) setState('guest');
  else if (me.user_id === video.player_id) setState('own');
  else setState(voted.has(video.video_id) ? 'voted' : 'open');

  button.addEventListener('click', async () => {
    if (button.dataset.state === 'guest') {
      flash('Ingresa con tu cuenta para votar.', 'info');
      navigate('/ingresar');
      return;
    }
    button.disabled = true;
    try {
      const { data } = await api.vote(video.video_id);
      video.votes += 1;
      count.dataset.votes = video.votes;
      count.textContent = plural(video.votes, 'voto', 'votos');
      setState('voted');
      status.textContent = `${data.message} «${video.title}» tiene ahora ${plural(video.votes, 'voto', 'votos')}.`;
    } catch (error) {
      if (error.code === 'already_voted') setState('voted');
      else if (error.code === 'own_video') setState('own');
      else button.disabled = false;
      status.textContent = error.message;
    }
  });

  return h('li', { class: 'card video-card', 'data-video': video.video_id },
    h('video', {
      controls: true,
      preload: 'none',
      playsinline: true,
      poster: video.thumbnail_url,
      src: video.processed_url,
      'aria-label': `Video: ${video.title}`,
    }),
    h('div', { class: 'video-body' },
      h('h2', { class: 'video-title' }, video.title),
      h('p', { class: 'muted' }, `${video.player_name} · ${video.city}`),
      h('p', { class: 'muted small' }, `Publicado el ${formatDate(video.published_at)}`),
      h('div', { class: 'vote-row' }, count, button),
    ),
  );
}
