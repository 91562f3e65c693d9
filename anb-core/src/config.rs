//! Typed configuration read from the environment (SPEC §7).
//!
//! Every setting is parsed at start-up; a missing or malformed one stops the
//! process with an error that names the variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error, always naming the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{var} is not set: {hint}")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    /// A variable is set to a value that cannot be used.
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// Where the relational data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(String),
}

impl DatabaseUrl {
    /// Parses `postgres://…`, `postgresql://…` or `sqlite://path`.
    pub fn parse(var: &'static str, raw: &str) -> Result<Self, ConfigError> {
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Ok(Self::Postgres(raw.to_owned()))
        } else if raw.starts_with("sqlite:") {
            Ok(Self::Sqlite(raw.to_owned()))
        } else {
            Err(ConfigError::Invalid {
                var,
                reason: "expected postgres://… or sqlite://path".into(),
            })
        }
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Postgres(url) | Self::Sqlite(url) => url,
        }
    }
}

/// Where the original uploads and processed outputs are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// `s3://bucket[/prefix]`
    S3 { bucket: String, prefix: String },
    /// A local directory.
    Local(PathBuf),
}

impl StorageUrl {
    /// Parses `s3://bucket[/prefix]` or a local directory path.
    pub fn parse(var: &'static str, raw: &str) -> Result<Self, ConfigError> {
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ConfigError::Invalid {
                    var,
                    reason: "s3:// URL has no bucket name".into(),
                });
            }
            Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            })
        } else if raw.contains("://") {
            Err(ConfigError::Invalid {
                var,
                reason: "expected s3://bucket[/prefix] or a local directory path".into(),
            })
        } else if raw.is_empty() {
            Err(ConfigError::Invalid {
                var,
                reason: "empty path".into(),
            })
        } else {
            Ok(Self::Local(PathBuf::from(raw)))
        }
    }
}

/// The HS256 signing secret for access tokens. Never printed.
#[derive(Clone)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    /// The minimum length SPEC §4 requires.
    pub const MIN_BYTES: usize = 32;

    /// Accepts a secret of at least [`Self::MIN_BYTES`] bytes.
    pub fn parse(var: &'static str, raw: &str) -> Result<Self, ConfigError> {
        if raw.len() < Self::MIN_BYTES {
            return Err(ConfigError::Invalid {
                var,
                reason: format!(
                    "the secret must be at least {} bytes long (got {})",
                    Self::MIN_BYTES,
                    raw.len()
                ),
            });
        }
        Ok(Self(raw.as_bytes().to_vec()))
    }

    /// A random secret for the embedded default, kept in `path` so tokens
    /// survive a restart. The file is readable by its owner only (mode
    /// 0600), and an existing one is tightened to that.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

        let owner_only = || std::fs::Permissions::from_mode(0o600);
        if let Ok(existing) = std::fs::read(path)
            && existing.len() >= Self::MIN_BYTES
        {
            std::fs::set_permissions(path, owner_only())?;
            return Ok(Self(existing));
        }
        let secret: [u8; 48] = rand::random();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        // `mode` applies only when the file is created.
        file.set_permissions(owner_only())?;
        file.write_all(&secret)?;
        file.sync_all()?;
        Ok(Self(secret.to_vec()))
    }

    /// The raw secret bytes, for the token signer.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(<redacted>)")
    }
}

/// Parses a listen address such as `0.0.0.0:8080`.
pub fn parse_addr(var: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse().map_err(|e| ConfigError::Invalid {
        var,
        reason: format!("{raw:?} is not a socket address ({e})"),
    })
}

/// What an upload must be (SPEC §3): the API checks it when a file arrives and
/// the worker again before transcoding, both from these same values.
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `ANB_UPLOAD_MAX_BYTES` | `104857600` | largest accepted upload (100 MB) |
/// | `ANB_UPLOAD_MIN_SECONDS` / `ANB_UPLOAD_MAX_SECONDS` | `20` / `60` | accepted duration |
/// | `ANB_UPLOAD_MIN_SHORT_SIDE` | `1080` | smallest accepted shorter side of the frame, in pixels |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLimits {
    pub max_bytes: u64,
    pub min_duration: Duration,
    pub max_duration: Duration,
    pub min_short_side: u32,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            min_duration: Duration::from_secs(20),
            max_duration: Duration::from_secs(60),
            min_short_side: 1080,
        }
    }
}

impl UploadLimits {
    /// Reads the limits from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads the limits through `lookup`; unset or empty means the default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let number = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            match lookup(var).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(raw) => raw.trim().parse().map_err(|_| ConfigError::Invalid {
                    var,
                    reason: format!("{raw:?} is not a non-negative integer"),
                }),
            }
        };
        let defaults = Self::default();
        let max_bytes = number("ANB_UPLOAD_MAX_BYTES", defaults.max_bytes)?;
        if max_bytes == 0 {
            return Err(ConfigError::Invalid {
                var: "ANB_UPLOAD_MAX_BYTES",
                reason: "must be positive".into(),
            });
        }
        let limits = Self {
            max_bytes,
            min_duration: Duration::from_secs(number(
                "ANB_UPLOAD_MIN_SECONDS",
                defaults.min_duration.as_secs(),
            )?),
            max_duration: Duration::from_secs(number(
                "ANB_UPLOAD_MAX_SECONDS",
                defaults.max_duration.as_secs(),
            )?),
            min_short_side: u32::try_from(number(
                "ANB_UPLOAD_MIN_SHORT_SIDE",
                defaults.min_short_side.into(),
            )?)
            .map_err(|_| ConfigError::Invalid {
                var: "ANB_UPLOAD_MIN_SHORT_SIDE",
                reason: "too large".into(),
            })?,
        };
        if limits.min_duration > limits.max_duration {
            return Err(ConfigError::Invalid {
                var: "ANB_UPLOAD_MIN_SECONDS",
                reason: "greater than ANB_UPLOAD_MAX_SECONDS".into(),
            });
        }
        Ok(limits)
    }
}

/// The settings `anb-api` and `anb-worker` share (SPEC §7).
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    /// Defaults to the database URL: the SQL queue lives beside the data.
    pub queue_url: String,
    pub storage_url: StorageUrl,
    /// Path-style addressing for S3-compatible servers.
    pub s3_path_style: bool,
    pub jwt_secret: JwtSecret,
    pub http_addr: SocketAddr,
    /// The database pool: `ANB_DB_ACQUIRE_TIMEOUT_SECS` (default 3) bounds
    /// how long a request waits for a connection during an outage,
    /// `ANB_DB_STATEMENT_TIMEOUT_SECS` (default 5) how long one statement
    /// may run or wait for a lock.
    pub pool: crate::db::PoolSettings,
}

impl Settings {
    /// Whether the queue is the database itself (the default): jobs are then
    /// enqueued in the transaction of the row they are about, with their
    /// unique key, so the queue can cancel them by it.
    pub fn queue_in_database(&self) -> bool {
        self.queue_url == self.database_url.as_str()
    }

    /// Default listen address of `anb-api`.
    pub const DEFAULT_HTTP_ADDR: &'static str = "0.0.0.0:8080";

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests).
    /// An empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let required = |var: &'static str, hint: &'static str| {
            get(var).ok_or(ConfigError::Missing { var, hint })
        };

        let database_url = DatabaseUrl::parse(
            "ANB_DATABASE_URL",
            &required(
                "ANB_DATABASE_URL",
                "set it to postgres://… or sqlite://path",
            )?,
        )?;
        let queue_url = Self::queue_url_from_lookup(&lookup)?;
        let storage_url = StorageUrl::parse(
            "ANB_STORAGE_URL",
            &required(
                "ANB_STORAGE_URL",
                "set it to s3://bucket[/prefix] or a directory",
            )?,
        )?;
        let s3_path_style = match get("ANB_S3_PATH_STYLE").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "ANB_S3_PATH_STYLE",
                    reason: format!("expected true or false, got {other:?}"),
                });
            }
        };
        let jwt_secret = JwtSecret::parse(
            "ANB_JWT_SECRET",
            &required(
                "ANB_JWT_SECRET",
                "set it to a random string of at least 32 bytes",
            )?,
        )?;
        let http_addr = parse_addr(
            "ANB_HTTP_ADDR",
            &get("ANB_HTTP_ADDR").unwrap_or_else(|| Self::DEFAULT_HTTP_ADDR.to_owned()),
        )?;
        let mut pool = crate::db::PoolSettings::default();
        let seconds = |var: &'static str| -> Result<Option<Duration>, ConfigError> {
            let Some(raw) = get(var) else {
                return Ok(None);
            };
            let secs: u64 = raw
                .trim()
                .parse()
                .ok()
                .filter(|secs| (1..=300).contains(secs))
                .ok_or_else(|| ConfigError::Invalid {
                    var,
                    reason: format!("expected whole seconds from 1 to 300, got {raw:?}"),
                })?;
            Ok(Some(Duration::from_secs(secs)))
        };
        if let Some(timeout) = seconds("ANB_DB_ACQUIRE_TIMEOUT_SECS")? {
            pool.acquire_timeout = timeout;
        }
        if let Some(timeout) = seconds("ANB_DB_STATEMENT_TIMEOUT_SECS")? {
            pool.statement_timeout = timeout;
        }
        Ok(Self {
            database_url,
            queue_url,
            storage_url,
            s3_path_style,
            jwt_secret,
            http_addr,
            pool,
        })
    }

    /// The queue's URL alone, read as [`Settings::from_lookup`] reads it: `ANB_QUEUE_URL`,
    /// else `ANB_DATABASE_URL` (the SQL queue beside the data). For tools that open only the
    /// queue, such as the operator commands, and need none of the other settings.
    pub fn queue_url_from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        if let Some(url) = get("ANB_QUEUE_URL") {
            return Ok(url);
        }
        match get("ANB_DATABASE_URL") {
            Some(raw) => Ok(DatabaseUrl::parse("ANB_DATABASE_URL", &raw)?
                .as_str()
                .to_owned()),
            None => Err(ConfigError::Missing {
                var: "ANB_QUEUE_URL",
                hint: "set it, or ANB_DATABASE_URL when the queue lives in the database",
            }),
        }
    }

    /// [`Settings::queue_url_from_lookup`] on the process environment.
    pub fn queue_url_from_env() -> Result<String, ConfigError> {
        Self::queue_url_from_lookup(|var| std::env::var(var).ok())
    }

    /// The SQLite file of the embedded default in `data_dir`: its database and its queue.
    pub fn embedded_database_path(data_dir: &Path) -> PathBuf {
        data_dir.join("anb.db")
    }

    /// The embedded default: SQLite, its SQL queue and local storage, all under
    /// `data_dir`, with a generated secret kept there too.
    pub fn embedded(data_dir: &Path, http_addr: SocketAddr) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let db = format!(
            "sqlite://{}",
            Self::embedded_database_path(data_dir).display()
        );
        Ok(Self {
            database_url: DatabaseUrl::Sqlite(db.clone()),
            queue_url: db,
            storage_url: StorageUrl::Local(data_dir.join("media")),
            s3_path_style: false,
            jwt_secret: JwtSecret::load_or_create(&data_dir.join("jwt-secret"))?,
            http_addr,
            pool: crate::db::PoolSettings::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_accepts_both_engines_and_rejects_others() {
        assert!(matches!(
            DatabaseUrl::parse("ANB_DATABASE_URL", "postgres://u@h/db"),
            Ok(DatabaseUrl::Postgres(_))
        ));
        assert!(matches!(
            DatabaseUrl::parse("ANB_DATABASE_URL", "sqlite://anb.db"),
            Ok(DatabaseUrl::Sqlite(_))
        ));
        let err = DatabaseUrl::parse("ANB_DATABASE_URL", "mysql://h/db").unwrap_err();
        assert!(err.to_string().contains("ANB_DATABASE_URL"), "{err}");
    }

    #[test]
    fn storage_url_splits_bucket_and_prefix() {
        assert_eq!(
            StorageUrl::parse("ANB_STORAGE_URL", "s3://media/anb/videos/").unwrap(),
            StorageUrl::S3 {
                bucket: "media".into(),
                prefix: "anb/videos".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("ANB_STORAGE_URL", "./data").unwrap(),
            StorageUrl::Local("./data".into())
        );
        assert!(StorageUrl::parse("ANB_STORAGE_URL", "s3://").is_err());
        assert!(StorageUrl::parse("ANB_STORAGE_URL", "gs://bucket").is_err());
    }

    #[test]
    fn short_jwt_secret_is_refused_and_secret_never_prints() {
        let err = JwtSecret::parse("ANB_JWT_SECRET", "short").unwrap_err();
        assert!(err.to_string().contains("ANB_JWT_SECRET"));
        let secret = JwtSecret::parse("ANB_JWT_SECRET", &"s".repeat(40)).unwrap();
        assert!(!format!("{secret:?}").contains("sss"));
    }

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|var| map.get(var).cloned())
    }

    /// Tools that open only the queue find it as the processes do, with nothing else set.
    #[test]
    fn the_queue_url_alone_is_the_queue_setting_or_else_the_database() {
        let queue_url = |vars: &[(&str, &str)]| {
            let map: std::collections::HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::queue_url_from_lookup(|var| map.get(var).cloned())
        };
        let db = ("ANB_DATABASE_URL", "sqlite://anb.db");
        assert_eq!(queue_url(&[db]).unwrap(), "sqlite://anb.db");
        assert_eq!(
            queue_url(&[db, ("ANB_QUEUE_URL", "redis://127.0.0.1:6379")]).unwrap(),
            "redis://127.0.0.1:6379"
        );
        let err = queue_url(&[("ANB_QUEUE_URL", " ")]).unwrap_err();
        assert!(
            err.to_string().starts_with("ANB_QUEUE_URL is not set"),
            "{err}"
        );
        let err = queue_url(&[("ANB_DATABASE_URL", "mysql://h/db")]).unwrap_err();
        assert!(
            err.to_string().starts_with("ANB_DATABASE_URL is invalid"),
            "{err}"
        );
    }

    #[test]
    fn settings_name_the_missing_or_invalid_variable() {
        let err = settings(&[]).unwrap_err();
        assert!(
            err.to_string().starts_with("ANB_DATABASE_URL is not set"),
            "{err}"
        );

        let base = [
            ("ANB_DATABASE_URL", "postgres://postgres@127.0.0.1/anb"),
            ("ANB_STORAGE_URL", "s3://media"),
            ("ANB_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        let ok = settings(&base).unwrap();
        assert_eq!(ok.queue_url, "postgres://postgres@127.0.0.1/anb");
        assert_eq!(ok.http_addr.port(), 8080);

        let mut bad = base.to_vec();
        bad.push(("ANB_HTTP_ADDR", "localhost"));
        let err = settings(&bad).unwrap_err();
        assert!(
            err.to_string().starts_with("ANB_HTTP_ADDR is invalid"),
            "{err}"
        );

        assert_eq!(ok.pool.statement_timeout, Duration::from_secs(5));
        let mut timeout = base.to_vec();
        timeout.push(("ANB_DB_STATEMENT_TIMEOUT_SECS", " 2 "));
        assert_eq!(
            settings(&timeout).unwrap().pool.statement_timeout,
            Duration::from_secs(2)
        );
        for value in ["0", "1.5", "5s", "301"] {
            let mut bad = base.to_vec();
            bad.push(("ANB_DB_STATEMENT_TIMEOUT_SECS", value));
            let err = settings(&bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("ANB_DB_STATEMENT_TIMEOUT_SECS is invalid"),
                "{value}: {err}"
            );
        }

        let mut bad = base.to_vec();
        bad.push(("ANB_S3_PATH_STYLE", "maybe"));
        assert!(
            settings(&bad)
                .unwrap_err()
                .to_string()
                .contains("ANB_S3_PATH_STYLE")
        );
    }

    fn upload_limits(vars: &[(&str, &str)]) -> Result<UploadLimits, ConfigError> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        UploadLimits::from_lookup(|var| map.get(var).cloned())
    }

    #[test]
    fn upload_limits_default_to_the_showcase_rules() {
        let limits = upload_limits(&[("ANB_UPLOAD_MAX_SECONDS", " ")]).unwrap();
        assert_eq!(limits, UploadLimits::default());
        assert_eq!(limits.max_bytes, 104_857_600);
        assert_eq!(limits.min_duration, Duration::from_secs(20));
        assert_eq!(limits.max_duration, Duration::from_secs(60));
        assert_eq!(limits.min_short_side, 1080);
    }

    #[test]
    fn upload_limits_read_every_variable() {
        let limits = upload_limits(&[
            ("ANB_UPLOAD_MAX_BYTES", "5000"),
            ("ANB_UPLOAD_MIN_SECONDS", "5"),
            ("ANB_UPLOAD_MAX_SECONDS", " 90 "),
            ("ANB_UPLOAD_MIN_SHORT_SIDE", "720"),
        ])
        .unwrap();
        assert_eq!(
            limits,
            UploadLimits {
                max_bytes: 5000,
                min_duration: Duration::from_secs(5),
                max_duration: Duration::from_secs(90),
                min_short_side: 720,
            }
        );
    }

    #[test]
    fn bad_upload_limits_name_their_variable() {
        for (var, value) in [
            ("ANB_UPLOAD_MAX_BYTES", "-1"),
            ("ANB_UPLOAD_MAX_BYTES", "0"),
            ("ANB_UPLOAD_MAX_BYTES", "100MB"),
            ("ANB_UPLOAD_MIN_SECONDS", "2.5"),
            ("ANB_UPLOAD_MIN_SECONDS", "61"),
            ("ANB_UPLOAD_MAX_SECONDS", "ten"),
            ("ANB_UPLOAD_MIN_SHORT_SIDE", "99999999999"),
        ] {
            let err = upload_limits(&[(var, value)]).unwrap_err();
            assert!(err.to_string().starts_with(var), "{var}={value}: {err}");
        }
    }

    #[test]
    fn generated_secret_is_persisted() {
        let dir = std::env::temp_dir().join(format!("anb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwt-secret");
        let first = JwtSecret::load_or_create(&path).unwrap();
        let second = JwtSecret::load_or_create(&path).unwrap();
        assert_eq!(first.expose(), second.expose());
        assert!(first.expose().len() >= JwtSecret::MIN_BYTES);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_secret_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-secret");
        JwtSecret::load_or_create(&path).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        // A secret left world-readable by an older version is tightened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        JwtSecret::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
