-- E-mail addresses are compared and stored in Unicode NFC (then lower-case)
-- from now on, so the precomposed and the decomposed spellings of one
-- address are one account. SQLite has no Unicode normalisation function, so
-- the stored addresses are brought to NFC by the application right after
-- this migration (`Database::migrate` runs every step listed here, in the
-- same way as the PostgreSQL migration of the same name, then removes it).
CREATE TABLE IF NOT EXISTS pending_data_steps (
    name TEXT PRIMARY KEY NOT NULL
);
INSERT INTO pending_data_steps (name) VALUES ('nfc_emails');
