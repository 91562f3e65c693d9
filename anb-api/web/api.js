// The REST API as the app uses it: the same public endpoints any client has.
// The access token lives in sessionStorage only (gone with the tab), is sent
// only in the Authorization header, and never appears in a URL.

const SESSION_KEY = 'anb.session';

/** Fired on window when the server refuses the session (401) or it expires. */
export const SESSION_ENDED = 'anb:session-ended';

export const SESSION_EXPIRED_MESSAGE = 'Tu sesión terminó o expiró. Ingresa de nuevo para continuar.';

/** The current session {token, expiresAt}, or null if none or expired. */
export function currentSession() {
  let session = null;
  try {
    session = JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    session = null;
  }
  if (!session || typeof session.token !== 'string') return null;
  if (Date.now() >= session.expiresAt) {
    endSession(SESSION_EXPIRED_MESSAGE);
    return null;
  }
  return session;
}

export function startSession(token, expiresInSeconds) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({
    token,
    expiresAt: Date.now() + expiresInSeconds * 1000,
  }));
}

export function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
}

function endSession(message) {
  const hadSession = sessionStorage.getItem(SESSION_KEY) !== null;
  clearSession();
  if (hadSession) window.dispatchEvent(new CustomEvent(SESSION_ENDED, { detail: { message } }));
}

/** A refusal from the API, with its problem document. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || 'No se pudo completar la operación. Inténtalo de nuevo.');
    this.status = status;
    this.code = problem?.code ?? null;
    this.problem = problem ?? {};
    this.retryAfter = null;
  }

  /** {field: message} for validation errors. */
  get fieldErrors() {
    const errors = {};
    for (const { field, message } of this.problem.errors ?? []) {
      errors[field] = errors[field] ? `${errors[field]} ${message}` : message;
    }
    return errors;
  }
}

const NETWORK_ERROR = 'No hay conexión con el servidor. Revisa tu red e inténtalo de nuevo.';

async function readBody(response) {
  const type = response.headers.get('content-type') || '';
  if (!type.includes('json')) return null;
  try {
    return await response.json();
  } catch {
    return null;
  }
}

function refusal(status, problem, retryAfter) {
  const error = new ApiError(status, problem);
  error.retryAfter = retryAfter;
  if (status === 429 && !problem) error.message = 'Demasiadas solicitudes. Espera un momento.';
  return error;
}

function authHeader(auth) {
  if (!auth) return {};
  const session = currentSession();
  if (!session) {
    endSession(SESSION_EXPIRED_MESSAGE);
    throw new ApiError(401, { code: 'missing_token', detail: SESSION_EXPIRED_MESSAGE });
  }
  return { Authorization: `Bearer ${session.token}` };
}

/**
 * Calls the API; resolves {data, headers} or rejects with ApiError.
 * auth: send the session's token; a 401 then ends the session.
 */
export async function request(method, path, { body, auth = false, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, value);
  }
  const headers = { Accept: 'application/json, application/problem+json', ...authHeader(auth) };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
    });
  } catch {
    throw new ApiError(0, { detail: NETWORK_ERROR });
  }
  const data = await readBody(response);
  if (!response.ok) {
    if (response.status === 401 && auth) endSession(SESSION_EXPIRED_MESSAGE);
    throw refusal(response.status, data, response.headers.get('retry-after'));
  }
  return { data, headers: response.headers };
}

/**
 * Uploads a video with XMLHttpRequest, whose upload events report the bytes
 * really sent; onProgress(sent, total) is called as they go.
 */
export function uploadVideo({ file, title, isPublic }, onProgress) {
  return new Promise((resolve, reject) => {
    let headers;
    try {
      headers = authHeader(true);
    } catch (error) {
      reject(error);
      return;
    }
    const form = new FormData();
    form.append('title', title);
    form.append('is_public', isPublic ? 'true' : 'false');
    form.append('video_file', file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/api/videos/upload');
    xhr.setRequestHeader('Authorization', headers.Authorization);
    xhr.setRequestHeader('Accept', 'application/json, application/problem+json');
    xhr.responseType = 'text';
    xhr.upload.addEventListener('progress', (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener('load', () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(data);
        return;
      }
      if (xhr.status === 401) endSession(SESSION_EXPIRED_MESSAGE);
      if (xhr.status === 413 && !data) {
        data = { detail: 'El archivo es demasiado grande.' };
      }
      reject(refusal(xhr.status, data, xhr.getResponseHeader('retry-after')));
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, { detail: NETWORK_ERROR })));
    xhr.addEventListener('abort', () => reject(new ApiError(0, { detail: 'La subida se canceló.' })));
    xhr.send(form);
  });
}

// ---- the endpoints the pages use ----

export const api = {
  signup: (form) => request('POST', '/api/auth/signup', { body: form }),
  login: (email, password) => request('POST', '/api/auth/login', { body: { email, password } }),
  logout: () => request('POST', '/api/auth/logout', { auth: true }),
  me: () => request('GET', '/api/auth/me', { auth: true }),
  myVotes: () => request('GET', '/api/me/votes', { auth: true }),
  myVideos: () => request('GET', '/api/videos', { auth: true }),
  deleteVideo: (id) => request('DELETE', `/api/videos/${encodeURIComponent(id)}`, { auth: true }),
  publishVideo: (id) => request('POST', `/api/videos/${encodeURIComponent(id)}/publish`, { auth: true }),
  publicVideos: (page, limit) => request('GET', '/api/public/videos', { query: { page, limit } }),
  vote: (id) => request('POST', `/api/public/videos/${encodeURIComponent(id)}/vote`, { auth: true }),
  rankings: (city, page, limit) => request('GET', '/api/public/rankings', { query: { city, page, limit } }),
};
