import { api } from '../api.js';
import { h, pageTitle } from '../dom.js';
import { busy, field, formAlert, showErrors } from './form.js';

export function signupPage(main, { navigate, flash }) {
  const form = h('form', { class: 'card form', novalidate: true },
    formAlert(),
    h('div', { class: 'field-row' },
      field({ name: 'first_name', label: 'Nombre', autocomplete: 'given-name', required: true, minlength: 2, maxlength: 50 }),
      field({ name: 'last_name', label: 'Apellido', autocomplete: 'family-name', required: true, minlength: 2, maxlength: 50 }),
    ),
    field({ name: 'email', label: 'Correo electrónico', type: 'email', autocomplete: 'email', required: true }),
    h('div', { class: 'field-row' },
      field({ name: 'password1', label: 'Contraseña', type: 'password', autocomplete: 'new-password', required: true, hint: 'Entre 8 y 128 caracteres.' }),
      field({ name: 'password2', label: 'Repite la contraseña', type: 'password', autocomplete: 'new-password', required: true }),
    ),
    h('div', { class: 'field-row' },
      field({ name: 'city', label: 'Ciudad', autocomplete: 'address-level2', required: true }),
      field({ name: 'country', label: 'País', autocomplete: 'country-name', required: true }),
    ),
    h('button', { type: 'submit', class: 'button primary' }, 'Crear cuenta'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    try {
      await busy(form, () => api.signup(values));
    } catch (error) {
      showErrors(form, error, error.problem?.errors?.length ? 'Revisa los campos marcados.' : error.message);
      return;
    }
    flash('Cuenta creada. Ya puedes ingresar con tu correo y contraseña.', 'success');
    sessionStorage.setItem('anb.signup-email', values.email.trim());
    navigate('/ingresar');
  });
  main.append(
    pageTitle('Crear cuenta de jugador'),
    h('p', { class: 'lead' }, 'Sube tus mejores jugadas y compite por un lugar en el Showcase de la ANB.'),
    form,
    h('p', {}, '¿Ya tienes cuenta? ', h('a', { href: '/ingresar' }, 'Ingresa aquí'), '.'),
  );
}
