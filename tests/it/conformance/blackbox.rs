//! The black-box cases are the `triggers-conformance` crate's (what
//! `triggers-api conformance` runs against any deployment). Here each one
//! runs in process as a test of its own, against a fresh server on the
//! backend under test, with the four keys made through the store and the
//! server's clock kept on real time, as a deployment's is.

use std::sync::Arc;
use std::time::Duration;

use triggers_api::auth::admin as keys;
use triggers_api::domain::{KeyStatus, Role};
use triggers_api::store::KeyChange;
use triggers_conformance::{Keys, Target};

use crate::support::{Backend, TestApp};

/// Keeps the server's manual clock on the wall clock, while the test runs.
pub fn keep_real_time(app: &TestApp) {
    let clock = Arc::downgrade(&app.clock);
    tokio::spawn(async move {
        while let Some(clock) = clock.upgrade() {
            clock.set(chrono::Utc::now());
            drop(clock);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

/// The keys a runner is given, made through the store: a creator and a
/// viewer of "acme", a creator of "other", and a revoked key.
pub async fn keys_of(app: &TestApp) -> Keys {
    let revoked = app.key("acme", Role::Creator).await;
    keys::update(
        app.state.store.as_ref(),
        &revoked[4..20],
        KeyChange::Status(KeyStatus::Revoked),
    )
    .await
    .unwrap();
    Keys {
        creator: app.key("acme", Role::Creator).await,
        viewer: app.key("acme", Role::Viewer).await,
        other_account: app.key("other", Role::Creator).await,
        revoked,
    }
}

/// `app` as a runner's target, expecting its backend and this version.
pub async fn target(app: &TestApp) -> Target {
    let mut target = Target::new(&app.base, keys_of(app).await).unwrap();
    target.expect_backend = Some(app.state.store.backend().to_owned());
    target.expect_version = Some(env!("CARGO_PKG_VERSION").to_owned());
    target
}

async fn run(b: Backend, name: &str) {
    let app = TestApp::start(b).await;
    keep_real_time(&app);
    let target = Arc::new(target(&app).await);
    let case = triggers_conformance::case(name).unwrap();
    let run_id = triggers_conformance::new_run_id();
    assert_eq!(case.run_once(target, &run_id).await, None, "did not run");
}

macro_rules! in_process {
    ($($group:ident :: $name:ident),* $(,)?) => {
        $(
            pub async fn $name(b: Backend) {
                run(b, concat!(stringify!($group), "::", stringify!($name))).await;
            }
        )*
    };
}

// One function per case; `suite!` and `once!` in mod.rs name each (a case
// missing there is dead code here, which clippy refuses).
triggers_conformance::with_black_box_cases!(in_process);
