-- Seeds the load benchmark's database: :players players (users with one or
-- two processed, published videos, in eight cities) and :votes votes, with the
-- counters set exactly as the vote path maintains them (videos.vote_count and
-- player_rankings). Every seeded user gets the password hash of the user
-- whose e-mail is :'template_email' (signed up through the API beforehand),
-- which is then removed: argon2 for each seeded user would take minutes.
--
-- psql -v players=10000 -v votes=100000 -v template_email=… -f seed.sql
-- Deterministic: the same figures give the same data, whatever the run.

\set ON_ERROR_STOP on

BEGIN;

SELECT setseed(0.2026);

-- Display name and the key CityKey::of gives it (ASCII, lower case, accents
-- removed, words joined by one space).
CREATE TEMP TABLE load_cities (n int PRIMARY KEY, city text NOT NULL, city_key text NOT NULL);
INSERT INTO load_cities VALUES
    (0, 'Bogotá', 'bogota'),
    (1, 'Medellín', 'medellin'),
    (2, 'Cali', 'cali'),
    (3, 'Barranquilla', 'barranquilla'),
    (4, 'Cartagena', 'cartagena'),
    (5, 'Cúcuta', 'cucuta'),
    (6, 'Bucaramanga', 'bucaramanga'),
    (7, 'Santa Marta', 'santa marta');

-- A UUID version 7 (time-ordered, like the application's ids) for the Unix
-- time `ms` in milliseconds; the random bits come from `salt`.
CREATE FUNCTION pg_temp.uuid7(ms bigint, salt text) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(md5(salt), 1, 3)
            || '8' || substr(md5(salt), 4, 15))::uuid
$$;

-- Players signed up over the last 60 days, one second apart; the larger
-- cities have more of them.
CREATE TEMP TABLE load_players AS
SELECT i,
       pg_temp.uuid7(ms, 'player ' || i) AS id,
       to_timestamp(ms / 1000.0) AS created_at,
       floor(8 * power(random(), 1.6))::int AS city_n
FROM (
    SELECT i, (extract(epoch FROM now() - interval '60 days') * 1000)::bigint + i * 1000 AS ms
    FROM generate_series(1, :players) AS i
) AS s;
CREATE UNIQUE INDEX ON load_players (i);

INSERT INTO users (id, email, password_hash, first_name, last_name, city, city_key, country, created_at)
SELECT p.id,
       'jugador' || p.i || '@carga.test',
       (SELECT password_hash FROM users WHERE email = :'template_email'),
       (ARRAY['Ana', 'Luis', 'María', 'Andrés', 'Camila', 'Juan', 'Valentina', 'Santiago',
              'Daniela', 'Mateo', 'Sofía', 'Sebastián'])[1 + p.i % 12],
       (ARRAY['Gómez', 'Rodríguez', 'Martínez', 'López', 'García', 'Pérez', 'Sánchez',
              'Ramírez', 'Torres', 'Díaz', 'Vargas', 'Castro'])[1 + (p.i / 12) % 12],
       c.city, c.city_key, 'Colombia', p.created_at
FROM load_players AS p
JOIN load_cities AS c ON c.n = p.city_n;

-- One video per player, two for every fourth: uploaded an hour apart after
-- sign-up, processed and published five minutes later.
CREATE TEMP TABLE load_videos AS
SELECT (row_number() OVER (ORDER BY p.i, k) - 1)::int AS n,
       pg_temp.uuid7((extract(epoch FROM p.created_at) * 1000)::bigint + k * 3600000,
                     'video ' || p.i || ' ' || k) AS id,
       p.id AS owner_id,
       p.i,
       k,
       p.created_at + k * interval '1 hour' AS uploaded_at
FROM load_players AS p
CROSS JOIN LATERAL generate_series(1, CASE WHEN p.i % 4 = 0 THEN 2 ELSE 1 END) AS k;
CREATE UNIQUE INDEX ON load_videos (n);

INSERT INTO videos (id, owner_id, title, status, failure_reason, progress_percent, is_public,
                    uploaded_at, processed_at, published_at, deleted_at,
                    original_key, processed_key, thumbnail_key, vote_count)
SELECT v.id, v.owner_id, 'Jugada ' || v.k || ' del jugador ' || v.i, 'processed', NULL, 100, true,
       v.uploaded_at, v.uploaded_at + interval '5 minutes', v.uploaded_at + interval '5 minutes', NULL,
       'videos/' || v.id || '/original.mp4',
       'videos/' || v.id || '/processed.mp4',
       'videos/' || v.id || '/thumbnail.jpg',
       0
FROM load_videos AS v;

-- Votes: random voters among the players, videos skewed towards a popular
-- few (video n drawn as N·r²), one per (voter, video), never for one's own.
-- Half as many draws again as needed, then the first :votes distinct pairs.
CREATE TEMP TABLE load_draws AS
SELECT g,
       1 + floor(random() * :players)::int AS voter_i,
       floor(power(random(), 2) * s.videos)::int AS video_n
FROM generate_series(1, :votes * 3 / 2) AS g,
     (SELECT count(*) AS videos FROM load_videos) AS s;

INSERT INTO votes (user_id, video_id, cast_at)
SELECT u.id, v.id, now() - random() * interval '30 days'
FROM (
    SELECT DISTINCT ON (voter_i, video_n) g, voter_i, video_n
    FROM load_draws
    ORDER BY voter_i, video_n, g
) AS d
JOIN load_players AS u ON u.i = d.voter_i
JOIN load_videos AS v ON v.n = d.video_n
WHERE v.owner_id <> u.id
ORDER BY d.g
LIMIT :votes;

-- The counters, as the vote path keeps them: each video's votes, and per
-- player the votes on their live videos and how many are published.
UPDATE videos AS v
SET vote_count = c.votes
FROM (SELECT video_id, count(*) AS votes FROM votes GROUP BY video_id) AS c
WHERE c.video_id = v.id;

INSERT INTO player_rankings (player_id, city_key, votes, published_videos)
SELECT u.id, u.city_key, sum(v.vote_count), count(*)
FROM videos AS v
JOIN users AS u ON u.id = v.owner_id
WHERE v.published_at IS NOT NULL AND v.deleted_at IS NULL
GROUP BY u.id, u.city_key;

DELETE FROM users WHERE email = :'template_email';

COMMIT;

VACUUM ANALYZE;
