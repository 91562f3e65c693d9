import { currentSession } from '../api.js';
import { h } from '../dom.js';
import { cityFilter, rankingTable } from './rankings-view.js';

const TOP = 5;

export async function landingPage(main, { params, navigate }) {
  const city = params.get('ciudad') ?? '';
  const signedIn = currentSession() !== null;
  main.append(
    h('section', { class: 'hero' },
      h('h1', { tabindex: '-1' }, 'Las futuras estrellas del baloncesto'),
      h('p', { class: 'lead' },
        'Jugadores aficionados de todo el país suben sus mejores jugadas. El público vota y los más votados de cada ciudad llegan al Showcase de la ANB.'),
      h('p', { class: 'actions' },
        signedIn
          ? h('a', { class: 'button primary', href: '/subir' }, 'Subir un video')
          : h('a', { class: 'button primary', href: '/registro' }, 'Quiero participar'),
        h('a', { class: 'button', href: '/galeria' }, 'Ver videos y votar'),
      ),
    ),
  );
  const section = h('section', { class: 'card', 'aria-labelledby': 'top-title' },
    h('h2', { id: 'top-title' }, city ? `Los mejores de ${city}` : 'Los mejores jugadores'),
    cityFilter({
      id: 'landing-city',
      city,
      onFilter: (value) => navigate(value ? `/?ciudad=${encodeURIComponent(value)}` : '/'),
    }),
  );
  main.append(section);
  const { node } = await rankingTable({ city, page: 1, limit: TOP, caption: `Top ${TOP} por votos` });
  section.append(node, h('p', {}, h('a', { href: city ? `/rankings?ciudad=${encodeURIComponent(city)}` : '/rankings' }, 'Ver el ranking completo')));
}
