use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{ObjectKey, StorageError};

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks expiring media URLs for local storage:
/// `/media/{key}?expires={unix seconds}&sig={base64url HMAC-SHA256}`.
///
/// The HMAC key is derived from the caller's secret with a fixed label, so the
/// same application secret can be reused here without a media signature ever
/// being valid as anything else.
#[derive(Clone)]
pub struct UrlSigner {
    mac_key: [u8; 32],
}

impl UrlSigner {
    /// Path under which the API serves local media; signed URLs start with it.
    pub const PATH_PREFIX: &'static str = "/media/";

    const DERIVATION_LABEL: &'static [u8] = b"anb media url signing v1";

    /// A signer keyed by `secret` (any length; use a random one of at least
    /// 32 bytes).
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        mac.update(Self::DERIVATION_LABEL);
        Self {
            mac_key: mac.finalize().into_bytes().into(),
        }
    }

    /// The signature of `key` valid until `expires` (unix seconds), base64url.
    pub fn signature(&self, key: &ObjectKey, expires: u64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(key, expires).finalize().into_bytes())
    }

    /// A URL path for `key` that [`Self::verify`] accepts until `expires_at`.
    pub fn signed_path(&self, key: &ObjectKey, expires_at: SystemTime) -> String {
        let expires = unix_seconds(expires_at);
        format!(
            "{}{key}?expires={expires}&sig={}",
            Self::PATH_PREFIX,
            self.signature(key, expires)
        )
    }

    /// Checks the `expires` and `sig` query parameters of a media URL for
    /// `key` at time `now`. The signature is checked first (in constant time),
    /// so an expired answer is only given for a URL this signer issued.
    pub fn verify(
        &self,
        key: &ObjectKey,
        expires: u64,
        sig: &str,
        now: SystemTime,
    ) -> Result<(), StorageError> {
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| StorageError::UrlSignatureInvalid)?;
        self.mac(key, expires)
            .verify_slice(&sig)
            .map_err(|_| StorageError::UrlSignatureInvalid)?;
        if unix_seconds(now) >= expires {
            return Err(StorageError::UrlExpired);
        }
        Ok(())
    }

    fn mac(&self, key: &ObjectKey, expires: u64) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.mac_key).expect("HMAC accepts keys of any length");
        // Keys cannot contain '\n', so this encoding of the pair is unambiguous.
        mac.update(key.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }
}

impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UrlSigner(<redacted>)")
    }
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_depends_on_secret_key_and_expiry() {
        let key = ObjectKey::parse("videos/a/original.mp4").unwrap();
        let other_key = ObjectKey::parse("videos/b/original.mp4").unwrap();
        let signer = UrlSigner::new(b"first secret, at least 32 bytes long");
        let other = UrlSigner::new(b"other secret, at least 32 bytes long");
        let sig = signer.signature(&key, 100);
        assert_eq!(sig, signer.signature(&key, 100));
        assert_ne!(sig, signer.signature(&key, 101));
        assert_ne!(sig, signer.signature(&other_key, 100));
        assert_ne!(sig, other.signature(&key, 100));
        assert!(!format!("{signer:?}").contains(&sig));
    }
}
