import { h } from '../dom.js';

/** Previous/next links; `href(page)` gives each page's address. */
export function pager({ page, hasNext, href, label, totalPages }) {
  if (page <= 1 && !hasNext) return h('span', { hidden: true });
  return h('nav', { class: 'pager', 'aria-label': label },
    page > 1 ? h('a', { class: 'button', href: href(page - 1), rel: 'prev' }, '← Anterior') : h('span'),
    h('span', { class: 'pager-status' }, totalPages ? `Página ${page} de ${totalPages}` : `Página ${page}`),
    hasNext ? h('a', { class: 'button', href: href(page + 1), rel: 'next' }, 'Siguiente →') : h('span'),
  );
}
