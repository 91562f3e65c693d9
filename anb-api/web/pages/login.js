import { api, startSession } from '../api.js';
import { h, pageTitle } from '../dom.js';
import { busy, field, formAlert, showErrors } from './form.js';

export function loginPage(main, { navigate, flash }) {
  const email = sessionStorage.getItem('anb.signup-email') ?? '';
  sessionStorage.removeItem('anb.signup-email');
  const form = h('form', { class: 'card form narrow', novalidate: true },
    formAlert(),
    field({ name: 'email', label: 'Correo electrónico', type: 'email', autocomplete: 'username', required: true, value: email }),
    field({ name: 'password', label: 'Contraseña', type: 'password', autocomplete: 'current-password', required: true }),
    h('button', { type: 'submit', class: 'button primary' }, 'Ingresar'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    let data;
    try {
      ({ data } = await busy(form, () => api.login(values.email, values.password)));
    } catch (error) {
      showErrors(form, error);
      return;
    }
    startSession(data.access_token, data.expires_in);
    flash('Sesión iniciada. ¡Bienvenido!', 'success');
    navigate('/mis-videos');
  });
  main.append(
    pageTitle('Ingresar'),
    form,
    h('p', {}, '¿No tienes cuenta? ', h('a', { href: '/registro' }, 'Crea una cuenta de jugador'), '.'),
  );
  if (email) form.querySelector('#f-password').focus();
}
