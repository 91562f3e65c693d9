-- The rankings list only players with a published video, by votes (most
-- first) and then player id. These indexes hold exactly those rows in that
-- order, so a page of the ranking, however deep, is found by walking the
-- index, never by sorting the aggregate. They replace the indexes on every
-- row of the aggregate, which the ranking queries no longer use.

DROP INDEX player_rankings_overall;
DROP INDEX player_rankings_by_city;

CREATE INDEX player_rankings_ranked ON player_rankings (votes DESC, player_id)
    WHERE published_videos > 0;
CREATE INDEX player_rankings_ranked_by_city ON player_rankings (city_key, votes DESC, player_id)
    WHERE published_videos > 0;
