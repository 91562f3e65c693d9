-- E-mail addresses are compared and stored in Unicode NFC (then lower-case)
-- from now on, so the precomposed and the decomposed spellings of one
-- address are one account. This brings the stored addresses to NFC.
--
-- Where two accounts already exist whose addresses differ only in their
-- normalisation, neither is changed: merging two people's accounts is not
-- something a migration can decide. The account stored in NFC keeps
-- logging in as before; the other one, which log-in no longer reaches, is
-- left with its data intact for an operator to resolve
-- (`SELECT * FROM users WHERE email IS NOT NFC NORMALIZED` lists them).
UPDATE users AS u
SET email = normalize(u.email, NFC)
WHERE u.email IS NOT NFC NORMALIZED
  AND NOT EXISTS (
      SELECT 1 FROM users AS other
      WHERE other.id <> u.id
        AND normalize(other.email, NFC) = normalize(u.email, NFC)
  );
