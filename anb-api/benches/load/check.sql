-- The ranking aggregate against the votes: prints one line, the number of
-- videos whose vote_count is not their number of votes, of players whose
-- ranking row disagrees with their live videos, and of players with a
-- published video but no ranking row; "0|0|0" when everything agrees.
SELECT
    (SELECT count(*) FROM videos AS v
     WHERE v.vote_count <> (SELECT count(*) FROM votes WHERE video_id = v.id)),
    (SELECT count(*) FROM player_rankings AS r
     WHERE r.votes <> (SELECT coalesce(sum(vote_count), 0) FROM videos
                       WHERE owner_id = r.player_id AND deleted_at IS NULL)
        OR r.published_videos <> (SELECT count(*) FROM videos
                                  WHERE owner_id = r.player_id
                                    AND published_at IS NOT NULL AND deleted_at IS NULL)),
    (SELECT count(DISTINCT v.owner_id) FROM videos AS v
     WHERE v.published_at IS NOT NULL AND v.deleted_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM player_rankings WHERE player_id = v.owner_id));
