import { h, pageTitle } from '../dom.js';
import { pager } from './pager.js';
import { cityFilter, rankingTable } from './rankings-view.js';

const PER_PAGE = 20;

export async function rankingsPage(main, { params, navigate }) {
  const city = params.get('ciudad') ?? '';
  const page = Math.max(1, Number.parseInt(params.get('pagina') ?? '1', 10) || 1);
  const at = (p, c = city) => {
    const query = new URLSearchParams();
    if (c) query.set('ciudad', c);
    if (p > 1) query.set('pagina', String(p));
    const text = query.toString();
    return text ? `/rankings?${text}` : '/rankings';
  };
  main.append(
    pageTitle(city ? `Ranking de ${city}` : 'Ranking general'),
    h('p', { class: 'lead' }, 'Jugadores ordenados por el total de votos de sus videos publicados.'),
    cityFilter({ id: 'rankings-city', city, onFilter: (value) => navigate(at(1, value)) }),
  );
  const { node, count } = await rankingTable({ city, page, limit: PER_PAGE, caption: `Página ${page}` });
  main.append(node, pager({ page, hasNext: count === PER_PAGE, href: at, label: 'Páginas del ranking' }));
}
