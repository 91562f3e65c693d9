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
 * Sends `body` with XMLHttpRequest, whose upload events report the bytes
 * really sent; onProgress(sent, total) is called as they go. Resolves
 * {status, data, retryAfter} whatever the status; rejects only when the
 * request never got an answer.
 */
function sendWithProgress(method, url, headers, body, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
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
      resolve({ status: xhr.status, data, retryAfter: xhr.getResponseHeader('retry-after') });
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, { detail: NETWORK_ERROR })));
    xhr.addEventListener('abort', () => reject(new ApiError(0, { detail: 'La subida se canceló.' })));
    xhr.send(body);
  });
}

/** The multipart upload through the API (servers without direct uploads). */
async function uploadThroughApi({ file, title, isPublic }, onProgress) {
  const headers = {
    ...authHeader(true),
    Accept: 'application/json, application/problem+json',
  };
  const form = new FormData();
  form.append('title', title);
  form.append('is_public', isPublic ? 'true' : 'false');
  form.append('video_file', file, file.name);
  let { status, data, retryAfter } = await sendWithProgress('POST', '/api/videos/upload', headers, form, onProgress);
  if (status >= 200 && status < 300) return data;
  if (status === 401) endSession(SESSION_EXPIRED_MESSAGE);
  if (status === 413 && !data) data = { detail: 'El archivo es demasiado grande.' };
  throw refusal(status, data, retryAfter);
}

/**
 * Uploads a video: announces it (title, flag, exact size), sends the file
 * where the server says (the bucket itself, or the API with local storage)
 * with progress, then asks the server to check and record it. A server
 * that does not offer direct uploads (404/405 to the announcement) gets
 * the multipart upload instead.
 */
export async function uploadVideo({ file, title, isPublic }, onProgress) {
  let upload;
  try {
    ({ data: upload } = await request('POST', '/api/videos/uploads', {
      auth: true,
      body: { title, is_public: isPublic, size_bytes: file.size },
    }));
  } catch (error) {
    if (error.status === 404 || error.status === 405) {
      return uploadThroughApi({ file, title, isPublic }, onProgress);
    }
    throw error;
  }
  // The URL carries its own authority: no Authorization header goes there.
  const sent = await sendWithProgress(upload.method, upload.url, upload.headers ?? {}, file, onProgress);
  if (sent.status < 200 || sent.status >= 300) {
    // The bucket answers in XML; the API with a problem document.
    throw refusal(sent.status, sent.data ?? {
      detail: 'No se pudo enviar el archivo al almacenamiento. Inténtalo de nuevo.',
    }, sent.retryAfter);
  }
  const { data } = await request('POST', upload.complete_url, { auth: true });
  return data;
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
