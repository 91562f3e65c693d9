use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use super::StorageError;

/// A validated object key: a relative, `/`-separated path such as
/// `videos/0191…/original.mp4`.
///
/// Every segment is non-empty, made of ASCII letters, digits, `-`, `_` and `.`,
/// and does not start with `.`. That rules out `..`, absolute paths, empty
/// segments and hidden names, so a key can neither escape a local storage root
/// nor collide with the store's own hidden work files, and it needs no
/// escaping inside a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Longest accepted key, well under S3's 1024-byte limit so a prefix fits.
    pub const MAX_LEN: usize = 512;

    /// Validates `raw` as an object key.
    pub fn parse(raw: impl Into<String>) -> Result<Self, StorageError> {
        let raw = raw.into();
        let invalid = |reason| StorageError::InvalidKey {
            key: raw.clone(),
            reason,
        };
        if raw.is_empty() {
            return Err(invalid("the key is empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(invalid("the key is longer than 512 bytes"));
        }
        for segment in raw.split('/') {
            if segment.is_empty() {
                return Err(invalid(
                    "the key has an empty segment (leading, trailing or double /)",
                ));
            }
            if segment.starts_with('.') {
                return Err(invalid("a key segment starts with '.'"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(invalid(
                    "a key segment has a character other than letters, digits, '-', '_' or '.'",
                ));
            }
        }
        Ok(Self(raw))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The media type implied by the key's extension, used when storing and
    /// serving the object.
    pub fn content_type(&self) -> &'static str {
        let extension = self
            .0
            .rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase());
        match extension.as_deref() {
            Some("mp4") => "video/mp4",
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("png") => "image/png",
            Some("json") => "application/json",
            _ => "application/octet-stream",
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ObjectKey {
    type Err = StorageError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = StorageError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

/// The keys of one video's objects, all under `videos/{video_id}/`.
///
/// Keys are relative to the configured storage location: an S3 store adds its
/// `s3://bucket/prefix` prefix itself, so the keys recorded in the database do
/// not depend on where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoKeys {
    folder: ObjectKey,
}

impl VideoKeys {
    /// The keys of the video `video_id`.
    pub fn new(video_id: Uuid) -> Self {
        Self {
            // A hyphenated UUID only has hex digits and '-': always a valid segment.
            folder: ObjectKey(format!("videos/{}", video_id.as_hyphenated())),
        }
    }

    /// `videos/{id}`: every object of the video is under it, so
    /// [`Storage::delete_prefix`](super::Storage::delete_prefix) with this
    /// removes them all.
    pub fn folder(&self) -> &ObjectKey {
        &self.folder
    }

    /// `videos/{id}/original.mp4`: the upload as received.
    pub fn original(&self) -> ObjectKey {
        self.child("original.mp4")
    }

    /// `videos/{id}/processed.mp4`: the worker's showcase output.
    pub fn processed(&self) -> ObjectKey {
        self.child("processed.mp4")
    }

    /// `videos/{id}/thumbnail.jpg`: the worker's still image.
    pub fn thumbnail(&self) -> ObjectKey {
        self.child("thumbnail.jpg")
    }

    /// Every key a video may have, for deleting a known list.
    pub fn all(&self) -> [ObjectKey; 3] {
        [self.original(), self.processed(), self.thumbnail()]
    }

    fn child(&self, name: &str) -> ObjectKey {
        ObjectKey(format!("{}/{name}", self.folder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_or_confuse_are_rejected() {
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "videos/../../x",
            "videos/./x",
            "videos//x",
            "videos/x/",
            ".partial/x",
            "videos/.hidden",
            "videos/..x",
            "videos\\x",
            "vid eos/x",
            "videos/x?y",
            "vídeo/x",
            "a\0b",
        ] {
            let err = ObjectKey::parse(bad).unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidKey { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(ObjectKey::parse("x".repeat(ObjectKey::MAX_LEN + 1)).is_err());
    }

    #[test]
    fn ordinary_keys_are_accepted_as_given() {
        for good in ["a", "videos/abc-123/original.mp4", "x_y/Z.tar.gz", "v/x..y"] {
            let key = ObjectKey::parse(good).unwrap();
            assert_eq!(key.as_str(), good);
            assert_eq!(key.to_string().parse::<ObjectKey>().unwrap(), key);
        }
    }

    #[test]
    fn video_keys_live_under_the_video_folder() {
        let id = Uuid::parse_str("0191a6e4-6b7e-7c3a-9f00-0123456789ab").unwrap();
        let keys = VideoKeys::new(id);
        assert_eq!(
            keys.folder().as_str(),
            "videos/0191a6e4-6b7e-7c3a-9f00-0123456789ab"
        );
        assert_eq!(
            keys.original().as_str(),
            "videos/0191a6e4-6b7e-7c3a-9f00-0123456789ab/original.mp4"
        );
        assert_eq!(keys.processed().content_type(), "video/mp4");
        assert_eq!(keys.thumbnail().content_type(), "image/jpeg");
        for key in keys.all() {
            // Each generated key survives validation unchanged.
            assert_eq!(ObjectKey::parse(key.as_str()).unwrap(), key);
            assert!(key.as_str().starts_with(&format!("{}/", keys.folder())));
        }
    }
}
