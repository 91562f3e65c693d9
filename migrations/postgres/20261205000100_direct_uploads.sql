-- Direct uploads: the client stores the original itself (a presigned PUT to
-- the bucket, or a signed PUT to the API with local storage), then asks the
-- API to complete the upload. Its record in progress is written when the
-- upload is created and holds what the client announced, so completion can
-- check the stored object against it and record the video; `expires_at` is
-- when it can no longer be completed. Multipart uploads leave these NULL.
ALTER TABLE uploads_in_progress ADD COLUMN title text;
ALTER TABLE uploads_in_progress ADD COLUMN is_public boolean;
ALTER TABLE uploads_in_progress ADD COLUMN expires_at timestamptz;

CREATE INDEX uploads_in_progress_expiry ON uploads_in_progress (expires_at)
    WHERE expires_at IS NOT NULL;
