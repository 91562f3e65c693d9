// The rankings table and its city filter, shared by the landing page and
// the rankings page.

import { api } from '../api.js';
import { h, plural } from '../dom.js';

export function cityFilter({ city, onFilter, id }) {
  const input = h('input', { id, name: 'ciudad', type: 'search', value: city ?? '', autocomplete: 'address-level2', placeholder: 'Todas las ciudades' });
  const form = h('form', { class: 'filter', role: 'search' },
    h('label', { for: id }, 'Filtrar por ciudad'),
    h('div', { class: 'filter-row' },
      input,
      h('button', { type: 'submit', class: 'button' }, 'Filtrar'),
      city ? h('button', { type: 'button', class: 'button ghost', onclick: () => onFilter('') }, 'Quitar filtro') : null,
    ),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    onFilter(input.value.trim());
  });
  return form;
}

/** Loads one page of the ranking into a table (or a message). */
export async function rankingTable({ city, page, limit, caption }) {
  let entries;
  try {
    ({ data: entries } = await api.rankings(city, page, limit));
  } catch (error) {
    return { node: h('p', { class: 'form-alert', role: 'alert' }, error.message), count: 0 };
  }
  if (entries.length === 0) {
    const text = city
      ? `Todavía no hay jugadores con videos publicados en «${city}».`
      : 'Todavía no hay jugadores con videos publicados.';
    return { node: h('p', { class: 'empty' }, text), count: 0 };
  }
  const table = h('table', { class: 'ranking' },
    h('caption', {}, caption),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Puesto'),
      h('th', { scope: 'col' }, 'Jugador'),
      h('th', { scope: 'col' }, 'Ciudad'),
      h('th', { scope: 'col', class: 'num' }, 'Votos'),
    )),
    h('tbody', {}, entries.map((entry) => h('tr', { 'data-player': entry.player_id },
      h('td', { class: 'position' }, `${entry.position}.`),
      h('th', { scope: 'row' }, entry.username),
      h('td', {}, entry.city),
      h('td', { class: 'num', 'aria-label': plural(entry.votes, 'voto', 'votos') }, entry.votes.toLocaleString('es')),
    ))),
  );
  return { node: h('div', { class: 'table-scroll' }, table), count: entries.length };
}
