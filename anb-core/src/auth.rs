//! Credentials: argon2id password hashes and HS256 access tokens (SPEC §4).
//!
//! Hashing is CPU- and memory-heavy on purpose, so it only happens through
//! [`Passwords`], which runs it on the blocking pool a bounded number of
//! times at once, with a bounded line of callers waiting for a turn, a
//! bounded share of that line per client, and turns handed out client by
//! client.

mod hash_line;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Argon2, Block, Params, Version};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use self::hash_line::LineLimits;
use self::hash_line::{HashLine, Refusal};
use crate::config::JwtSecret;

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The stored hash is not a PHC string argon2 understands.
    #[error("stored password hash is malformed: {0}")]
    MalformedHash(String),
    /// Hashing itself failed (e.g. parameters rejected).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// Every hashing slot is busy and the line waiting for one is full: the
    /// caller should answer "try again shortly" at once rather than queue.
    #[error("password hashing is saturated")]
    Busy,
    /// This client already holds as many places in the hashing line
    /// (waiting or hashing) as one client may: it should let those finish
    /// before it sends more. Answered at once, without hashing.
    #[error("this client has as many password hashes in progress as it may")]
    ClientBusy,
    /// The token could not be created.
    #[error("token could not be signed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// The token is missing a claim, expired, signed with another key or
    /// algorithm, or meant for another issuer or audience.
    #[error("access token rejected: {0}")]
    InvalidToken(String),
}

/// Hashes and verifies passwords with argon2id (OWASP parameters: 19 MiB,
/// 2 passes) on tokio's blocking pool, at most as many at once as it has
/// slots. Callers beyond that wait in a line bounded by [`LineLimits`]: up
/// to `queue` of them, all clients together, and any more are refused at
/// once with [`AuthError::Busy`] (load shedding: under a flood a login
/// either runs within a few hash times or is told to come back, and the
/// waiting line, hence everyone's wait, stays bounded); and one client (the
/// address a request came from) may hold at most `per_client` places,
/// waiting or hashing, beyond which it gets [`AuthError::ClientBusy`]. A
/// freed slot goes to the waiting clients in turn, one hash each, not to the
/// oldest waiter: a client that floods the line delays the others by at most
/// one of its hashes per slot. Each slot keeps its 19 MiB
/// work area for the next hash instead of handing it back to the allocator
/// (which would keep freed areas resident, one per thread arena), so the
/// memory hashing ever takes is the slots' work areas, allocated once.
///
/// Cheap to clone: clones share the slots.
#[derive(Debug, Clone)]
pub struct Passwords(Arc<Slots>);

#[derive(Debug)]
struct Slots {
    line: Arc<HashLine>,
    /// The work areas of the slots not in use.
    idle: Mutex<Vec<WorkArea>>,
    /// Work areas allocated so far: at most one per slot, since an area is
    /// taken or made only while holding a slot and always goes back to
    /// `idle`.
    allocated: AtomicUsize,
}

/// Argon2 memory blocks (1 KiB each), grown to what a hash needs and reused.
#[derive(Default)]
struct WorkArea(Vec<Block>);

impl std::fmt::Debug for WorkArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkArea({} KiB)", self.0.len())
    }
}

impl Passwords {
    /// At most `slots` hashes or verifications at once, and a line for
    /// them bounded by `limits`.
    pub fn new(slots: NonZeroUsize, limits: LineLimits) -> Self {
        Self(Arc::new(Slots {
            line: Arc::new(HashLine::new(slots, limits)),
            idle: Mutex::new(Vec::new()),
            allocated: AtomicUsize::new(0),
        }))
    }

    /// One slot per CPU available to the process (as its CPU quota allows),
    /// so hashing never waits for a CPU and its memory is bounded by design;
    /// the line for them bounded by `limits`.
    pub fn per_cpu(limits: LineLimits) -> Self {
        Self::new(
            std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            limits,
        )
    }

    /// How many callers are waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.0.line.waiting()
    }

    /// How many slots are in use now.
    pub fn busy_slots(&self) -> usize {
        self.0.line.busy_slots()
    }

    /// How many hashes or verifications may run at once.
    pub fn slots(&self) -> usize {
        self.0.line.slots()
    }

    /// How many places in the line (waiting or hashing) `client` holds now.
    pub fn held_by(&self, client: IpAddr) -> usize {
        self.0.line.held_by(client)
    }

    /// How many work areas have been allocated so far (never more than
    /// [`slots`](Self::slots)).
    pub fn work_areas(&self) -> usize {
        self.0.allocated.load(Ordering::Relaxed)
    }

    /// Hashes `password` in `client`'s turn, with a random salt, as a PHC
    /// string that records the algorithm and parameters.
    pub async fn hash(&self, client: IpAddr, password: String) -> Result<String, AuthError> {
        self.run(client, move |area| hash_password(password.as_bytes(), area))
            .await?
    }

    /// Checks `password` against `phc_hash`, a hash made by
    /// [`hash`](Self::hash), in `client`'s turn. `None` stands for an
    /// account that does not exist: the password is checked against a hash
    /// of no one's password, so the answer (always `false`) costs the same
    /// time as a wrong password and does not tell which addresses are
    /// registered.
    pub async fn verify(
        &self,
        client: IpAddr,
        password: String,
        phc_hash: Option<String>,
    ) -> Result<bool, AuthError> {
        self.run(client, move |area| match phc_hash {
            Some(phc_hash) => verify_password(password.as_bytes(), &phc_hash, area),
            None => {
                let decoy = decoy_password_hash(area)?;
                verify_password(password.as_bytes(), decoy, area).map(|_| false)
            }
        })
        .await?
    }

    /// Runs `work` with a slot's work area on the blocking pool once it is
    /// `client`'s turn for a slot, or refuses it at once:
    /// [`AuthError::ClientBusy`] when the client holds as many places as it
    /// may, [`AuthError::Busy`] when the line is full.
    async fn run<T, F>(&self, client: IpAddr, work: F) -> Result<T, AuthError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WorkArea) -> T + Send + 'static,
    {
        let turn = self
            .0
            .line
            .enter(client)
            .await
            .map_err(|refusal| match refusal {
                Refusal::Client => AuthError::ClientBusy,
                Refusal::Full => AuthError::Busy,
            })?;
        let passwords = self.clone();
        // The turn moves into the blocking task and is given up when the
        // work ends: should the caller stop waiting (a client that hangs
        // up), the hash still runs to its end and keeps its slot, and the
        // client its place, meanwhile.
        tokio::task::spawn_blocking(move || {
            let idle = passwords.idle().pop();
            let mut area = idle.unwrap_or_else(|| {
                passwords.0.allocated.fetch_add(1, Ordering::Relaxed);
                WorkArea::default()
            });
            // The area goes back even if the work panics: its contents are
            // overwritten by the next hash anyway.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(&mut area)));
            passwords.idle().push(area);
            drop(turn);
            result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .await
        .map_err(|e| AuthError::Hashing(format!("hashing task failed: {e}")))
    }

    fn idle(&self) -> MutexGuard<'_, Vec<WorkArea>> {
        // Nothing panics while holding the lock, but a poisoned vector of
        // work areas would still be sound to use.
        self.0.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn hash_password(password: &[u8], area: &mut WorkArea) -> Result<String, AuthError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hashing(e.to_string()))?;
    argon2_hash(
        password,
        argon2::Algorithm::Argon2id,
        Version::V0x13,
        Params::DEFAULT,
        salt.as_salt(),
        area,
    )
    .map(|hash| hash.to_string())
    .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// What argon2's own verifier does, with the slot's work area: hash again
/// with the stored algorithm, version, parameters and salt, and compare in
/// constant time.
fn verify_password(
    password: &[u8],
    phc_hash: &str,
    area: &mut WorkArea,
) -> Result<bool, AuthError> {
    let malformed = |e: password_hash::Error| AuthError::MalformedHash(e.to_string());
    let parsed = PasswordHash::new(phc_hash).map_err(malformed)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Ok(false);
    };
    let algorithm = argon2::Algorithm::try_from(parsed.algorithm).map_err(malformed)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|e| AuthError::MalformedHash(e.to_string()))?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(malformed)?;
    let computed = argon2_hash(password, algorithm, version, params, salt, area)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Ok(computed.hash == Some(expected))
}

/// argon2's `PasswordHasher::hash_password`, computed in `area` (grown to
/// the parameters' size if needed) instead of a fresh allocation. Every
/// block is written before it is read, so what an earlier hash left in the
/// area does not change the result.
fn argon2_hash<'a>(
    password: &[u8],
    algorithm: argon2::Algorithm,
    version: Version,
    params: Params,
    salt: Salt<'a>,
    area: &mut WorkArea,
) -> password_hash::Result<PasswordHash<'a>> {
    let mut salt_buffer = [0u8; Salt::MAX_LENGTH];
    let salt_bytes = salt.decode_b64(&mut salt_buffer)?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let blocks = params.block_count();
    if area.0.len() < blocks {
        area.0.resize(blocks, Block::new());
    }
    let phc_params = ParamsString::try_from(&params)?;
    let argon2 = Argon2::new(algorithm, version, params);
    let output = Output::init_with(output_len, |out| {
        Ok(argon2.hash_password_into_with_memory(
            password,
            salt_bytes,
            out,
            &mut area.0[..blocks],
        )?)
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: phc_params,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// A hash of no one's password, made on first use in the caller's slot.
fn decoy_password_hash(area: &mut WorkArea) -> Result<&'static str, AuthError> {
    static DECOY: OnceLock<String> = OnceLock::new();
    if let Some(decoy) = DECOY.get() {
        return Ok(decoy);
    }
    let decoy = hash_password(b"decoy password, never valid", area)?;
    Ok(DECOY.get_or_init(|| decoy))
}

/// The claims every access token carries; all are required and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// The token's own id (a UUID), so that this one token can be revoked
    /// on log-out while the user's other tokens keep working.
    pub jti: String,
}

impl Claims {
    /// The token id, if it is a UUID (ours always are).
    pub fn token_id(&self) -> Option<uuid::Uuid> {
        self.jti.parse().ok()
    }
}

/// A freshly issued token and its lifetime in seconds.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_in: u64,
}

/// Issues and verifies HS256 access tokens for one issuer and audience.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<redacted>)")
    }
}

impl TokenKeys {
    /// The `iss` claim of our tokens.
    pub const ISSUER: &'static str = "anb-rising-stars";
    /// The `aud` claim of our tokens.
    pub const AUDIENCE: &'static str = "anb-api";
    /// Token lifetime (the contract's `expires_in`).
    pub const LIFETIME_SECS: u64 = 3600;
    /// Clock skew tolerated between API instances.
    const LEEWAY_SECS: u64 = 30;

    pub fn new(secret: &JwtSecret) -> Self {
        // Pinned to HS256: a token claiming any other algorithm (including
        // `none`) is rejected before its signature is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.set_issuer(&[Self::ISSUER]);
        validation.set_audience(&[Self::AUDIENCE]);
        validation.leeway = Self::LEEWAY_SECS;
        // Only an empty secret is refused, and a `JwtSecret` has at least 32 bytes.
        let non_empty = "a JwtSecret is never empty";
        Self {
            encoding: EncodingKey::from_secret(secret.expose()).expect(non_empty),
            decoding: DecodingKey::from_secret(secret.expose()).expect(non_empty),
            validation,
        }
    }

    /// Issues a token for `subject` (a user id), valid from now.
    pub fn issue(&self, subject: &str) -> Result<AccessToken, AuthError> {
        self.issue_at(subject, unix_now())
    }

    /// Issues a token as if the clock read `issued_at` (seconds since the epoch).
    pub fn issue_at(&self, subject: &str, issued_at: u64) -> Result<AccessToken, AuthError> {
        let claims = Claims {
            sub: subject.to_owned(),
            iss: Self::ISSUER.to_owned(),
            aud: Self::AUDIENCE.to_owned(),
            iat: issued_at,
            exp: issued_at + Self::LIFETIME_SECS,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AuthError::Signing)?;
        Ok(AccessToken {
            token,
            expires_in: Self::LIFETIME_SECS,
        })
    }

    /// Verifies signature, algorithm, issuer, audience and expiry, and that
    /// the token was not issued in the future; returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let claims = data.claims;
        if claims.iat > unix_now() + Self::LEEWAY_SECS {
            return Err(AuthError::InvalidToken("issued in the future".into()));
        }
        if claims.sub.is_empty() {
            return Err(AuthError::InvalidToken("empty subject".into()));
        }
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn keys_for(secret: &str) -> TokenKeys {
        TokenKeys::new(&JwtSecret::parse("ANB_JWT_SECRET", secret).unwrap())
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// The client of the tests that do not look at clients.
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn passwords(slots: usize) -> Passwords {
        Passwords::new(
            NonZeroUsize::new(slots).unwrap(),
            LineLimits {
                queue: usize::MAX,
                per_client: None,
            },
        )
    }

    #[tokio::test]
    async fn a_full_line_for_hashing_is_refused_at_once() {
        let passwords = Passwords::new(
            NonZeroUsize::MIN,
            LineLimits {
                queue: 1,
                per_client: None,
            },
        );
        let running = tokio::spawn({
            let passwords = passwords.clone();
            async move { passwords.hash(CLIENT, "first password".into()).await }
        });
        while passwords.busy_slots() < 1 {
            tokio::task::yield_now().await;
        }
        let waiting = tokio::spawn({
            let passwords = passwords.clone();
            async move { passwords.hash(CLIENT, "second password".into()).await }
        });
        while passwords.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        // One running, one waiting: a third is shed, not queued.
        assert!(matches!(
            passwords.hash(CLIENT, "third password".into()).await,
            Err(AuthError::Busy)
        ));
        assert_eq!(passwords.waiting(), 1);
        running.await.unwrap().unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(passwords.waiting(), 0);
        passwords
            .hash(CLIENT, "fourth password".into())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_client_holding_its_share_of_the_line_is_refused_at_once() {
        let passwords = Passwords::new(
            NonZeroUsize::MIN,
            LineLimits {
                queue: usize::MAX,
                per_client: NonZeroUsize::new(2),
            },
        );
        let flooder = IpAddr::from([203, 0, 113, 9]);
        let mut flood = tokio::task::JoinSet::new();
        for i in 0..2 {
            let passwords = passwords.clone();
            flood.spawn(async move { passwords.hash(flooder, format!("flood {i}")).await });
        }
        while passwords.held_by(flooder) < 2 {
            tokio::task::yield_now().await;
        }
        // A third of the same client's is refused without hashing; another
        // client's is not.
        assert!(matches!(
            passwords.hash(flooder, "flood 3".into()).await,
            Err(AuthError::ClientBusy)
        ));
        passwords
            .hash(IpAddr::from([198, 51, 100, 7]), "a player's".into())
            .await
            .unwrap();
        for hashed in flood.join_all().await {
            hashed.unwrap();
        }
        assert_eq!(passwords.held_by(flooder), 0);
        passwords.hash(flooder, "later".into()).await.unwrap();
    }

    #[tokio::test]
    async fn password_hash_is_argon2id_and_verifies_only_the_same_password() {
        let passwords = passwords(2);
        let verify = |password: &str, hash: Option<&str>| {
            passwords.verify(CLIENT, password.to_owned(), hash.map(str::to_owned))
        };
        let hash = passwords
            .hash(CLIENT, "correct horse battery".to_owned())
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(!hash.contains("correct horse"));
        assert!(verify("correct horse battery", Some(&hash)).await.unwrap());
        assert!(!verify("correct horse battery!", Some(&hash)).await.unwrap());
        assert_ne!(
            hash,
            passwords
                .hash(CLIENT, "correct horse battery".to_owned())
                .await
                .unwrap(),
            "salted"
        );
        assert!(matches!(
            verify("x", Some("not a hash")).await,
            Err(AuthError::MalformedHash(_))
        ));
        // No account: never a match, whatever the password.
        assert!(!verify("anything", None).await.unwrap());
        assert!(!verify("decoy password, never valid", None).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_agree_with_argon2s_own_hasher_and_verifier() {
        use argon2::{PasswordHasher, PasswordVerifier};

        // One slot, so every hash below reuses the work area the previous
        // one left full.
        let passwords = passwords(1);
        let ours = passwords
            .hash(CLIENT, "pelota naranja".to_owned())
            .await
            .unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"pelota naranja", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"pelota azul", &parsed)
                .is_err()
        );

        // Hashes stored by argon2's own hasher, with the default parameters
        // and with others (a larger work area, two lanes, argon2i).
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        let larger = Params::new(24 * 1024, 1, 2, None).unwrap();
        let theirs = [
            Argon2::default()
                .hash_password(b"pelota naranja", &salt)
                .unwrap()
                .to_string(),
            Argon2::new(argon2::Algorithm::Argon2id, Version::V0x13, larger)
                .hash_password(b"pelota naranja", &salt)
                .unwrap()
                .to_string(),
            Argon2::new(argon2::Algorithm::Argon2i, Version::V0x13, Params::DEFAULT)
                .hash_password(b"pelota naranja", &salt)
                .unwrap()
                .to_string(),
        ];
        for hash in theirs {
            let verify =
                |password: &str| passwords.verify(CLIENT, password.to_owned(), Some(hash.clone()));
            assert!(verify("pelota naranja").await.unwrap(), "{hash}");
            assert!(!verify("pelota azul").await.unwrap(), "{hash}");
        }
        assert_eq!(passwords.work_areas(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hashing_runs_at_most_once_per_slot_at_a_time() {
        let passwords = passwords(2);
        let active = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (passwords, active, most) = (passwords.clone(), active.clone(), most.clone());
            tasks.spawn(async move {
                passwords
                    .run(CLIENT, move |_| {
                        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        active.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                    .unwrap();
            });
        }
        tasks.join_all().await;
        assert!(most.load(Ordering::SeqCst) <= 2, "two slots");

        // Real hashes and verifications, more than the slots at once: all
        // succeed, and at most one work area per slot was ever allocated.
        let hash = passwords
            .hash(CLIENT, "una contraseña".to_owned())
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..6 {
            let (passwords, hash) = (passwords.clone(), hash.clone());
            tasks.spawn(async move {
                if i % 2 == 0 {
                    passwords
                        .verify(CLIENT, "una contraseña".to_owned(), Some(hash))
                        .await
                        .unwrap()
                } else {
                    let own = passwords
                        .hash(CLIENT, format!("contraseña {i}"))
                        .await
                        .unwrap();
                    passwords
                        .verify(CLIENT, format!("contraseña {i}"), Some(own))
                        .await
                        .unwrap()
                }
            });
        }
        assert!(tasks.join_all().await.into_iter().all(|matched| matched));
        assert!((1..=2).contains(&passwords.work_areas()));
    }

    #[test]
    fn issued_token_verifies_with_all_claims() {
        let keys = keys_for(SECRET);
        let issued = keys.issue("user-1").unwrap();
        assert_eq!(issued.expires_in, 3600);
        let claims = keys.verify(&issued.token).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.iss, TokenKeys::ISSUER);
        assert_eq!(claims.aud, TokenKeys::AUDIENCE);
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn expired_foreign_or_tampered_tokens_are_rejected() {
        let keys = keys_for(SECRET);
        let expired = keys.issue_at("u", unix_now() - 2 * 3600).unwrap().token;
        assert!(keys.verify(&expired).is_err());
        let future = keys.issue_at("u", unix_now() + 3600).unwrap().token;
        assert!(keys.verify(&future).is_err());

        let other = keys_for(&"z".repeat(32)).issue("u").unwrap().token;
        assert!(keys.verify(&other).is_err());

        let mut tampered = keys.issue("u").unwrap().token;
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
    }

    fn sign(header: Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn wrong_issuer_audience_algorithm_or_missing_claims_are_rejected() {
        let keys = keys_for(SECRET);
        let now = unix_now();
        let good = serde_json::json!({"sub":"u","iss":TokenKeys::ISSUER,"aud":TokenKeys::AUDIENCE,"iat":now,"exp":now+60,"jti":uuid::Uuid::new_v4().to_string()});
        assert!(
            keys.verify(&sign(Header::new(Algorithm::HS256), &good))
                .is_ok()
        );
        for (field, value) in [("iss", "someone-else"), ("aud", "another-api")] {
            let mut claims = good.clone();
            claims[field] = value.into();
            assert!(
                keys.verify(&sign(Header::new(Algorithm::HS256), &claims))
                    .is_err(),
                "{field}"
            );
        }
        for field in ["sub", "iss", "aud", "iat", "exp"] {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(field);
            assert!(
                keys.verify(&sign(Header::new(Algorithm::HS256), &claims))
                    .is_err(),
                "{field}"
            );
        }
        // Same secret, another HMAC algorithm: refused because HS256 is pinned.
        assert!(
            keys.verify(&sign(Header::new(Algorithm::HS512), &good))
                .is_err()
        );
        // An unsigned token.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(good.to_string())
        );
        assert!(keys.verify(&unsigned).is_err());
    }
}
