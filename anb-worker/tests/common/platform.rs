//! A platform as the worker sees it: a real SQLite database (migrated), its SQL queue and local
//! storage in a temporary directory, with uploads recorded as the API records them.

use anb_core::config::{StorageUrl, UploadLimits};
use anb_core::db::{Database, NewVideo, User};
use anb_core::domain::{SignUp, SignUpForm, VideoId, VideoTitle};
use anb_core::jobs::TranscodeVideo;
use anb_core::storage::{Storage, VideoKeys};
use anb_worker::TranscodeOptions;
use anb_worker::job::TranscodeJobs;

use super::{fast_options, video_fixture};

pub struct Platform {
    pub dir: tempfile::TempDir,
    pub db: Database,
    pub storage: Storage,
    /// The database URL, which is also the queue's.
    pub url: String,
}

pub async fn platform() -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("anb.db").display());
    let db = Database::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    let storage = Storage::from_url(
        &StorageUrl::Local(dir.path().join("media")),
        false,
        b"a test secret of at least thirty-two bytes",
    )
    .await
    .unwrap();
    Platform {
        dir,
        db,
        storage,
        url,
    }
}

impl Platform {
    pub async fn player(&self) -> User {
        let form = SignUpForm {
            first_name: "Lucía".into(),
            last_name: "Gómez".into(),
            email: "lucia@example.org".into(),
            password1: "a long password".into(),
            password2: "a long password".into(),
            city: "Bogotá".into(),
            country: "Colombia".into(),
        };
        self.db
            .create_user(&SignUp::parse(&form).unwrap(), "not-a-real-hash")
            .await
            .unwrap()
    }

    /// Stores a generated upload (a flat colour: cheap to encode) and records it, as the API does.
    pub async fn upload(&self, owner: &User, seconds: u32, size: (u32, u32)) -> TranscodeVideo {
        self.upload_from(owner, "color", seconds, size).await
    }

    /// Stores an upload generated from the lavfi `source` (`color`, `testsrc2`…) and records it.
    pub async fn upload_from(
        &self,
        owner: &User,
        source: &str,
        seconds: u32,
        size: (u32, u32),
    ) -> TranscodeVideo {
        let id = VideoId::new();
        let fixture = video_fixture(
            self.dir.path(),
            &format!("{id}.mp4"),
            source,
            size,
            30,
            seconds,
            &[],
        );
        let key = VideoKeys::new(id.into()).original();
        self.storage.upload_file(&key, &fixture).await.unwrap();
        self.db
            .insert_video(&NewVideo {
                id,
                owner_id: owner.id,
                title: VideoTitle::parse("Crossover drill").unwrap(),
                is_public: true,
                original_key: key.as_str().to_owned(),
            })
            .await
            .unwrap();
        TranscodeVideo {
            video_id: id,
            original_key: key.as_str().to_owned(),
        }
    }

    pub fn jobs(&self) -> TranscodeJobs {
        TranscodeJobs::new(self.db.clone(), self.storage.clone(), fast_options())
    }

    /// Jobs whose limits come from these `ANB_UPLOAD_*` values, parsed as the worker process
    /// parses its environment.
    pub fn jobs_with_limits(&self, vars: &[(&str, &str)]) -> TranscodeJobs {
        let limits = UploadLimits::from_lookup(|var| {
            vars.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| (*value).to_owned())
        })
        .unwrap();
        let options = TranscodeOptions {
            limits,
            ..fast_options()
        };
        TranscodeJobs::new(self.db.clone(), self.storage.clone(), options)
    }
}
