//! One start-up path, for the binary and the tests alike: open the store,
//! build the state (the store behind its time budget), serve on a listener
//! the caller bound, with the connection limits of the settings and the
//! purge loop running beside the server until both stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::Listener;
use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::{Settings, StoreArgs, StoreUrl};
use crate::http::{app, serve_with, TcpAcceptor};
use crate::state::{AppState, Providers};
use crate::store::dynamodb::{DynamoConfig, DynamoStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::timed::Timed;
use crate::store::{Store, StoreError};

/// A service ready to run: its state and its listener (a TCP listener,
/// or any [`Listener`] with socket addresses: the simulator's in-memory one).
pub struct Application<L = TcpAcceptor> {
    state: AppState,
    listener: L,
}

impl Application {
    /// Builds the service over `store` (which the state wraps in its time
    /// budget) on `listener`.
    pub async fn build(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        listener: TcpListener,
    ) -> Result<Self, StoreError> {
        Self::build_on(
            store,
            clock,
            settings,
            Providers::default(),
            TcpAcceptor::new(listener),
        )
        .await
    }
}

impl<L: Listener<Addr = SocketAddr>> Application<L> {
    /// [`Application::build`] on any listener, with `providers` (event ids,
    /// where bcrypt runs) instead of production's.
    pub async fn build_on(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        providers: Providers,
        listener: L,
    ) -> Result<Self, StoreError> {
        let state = AppState::with_providers(store, clock, settings, providers).await?;
        Ok(Self { state, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Logs how to create the first key when the store has none.
    pub async fn hint_when_no_keys(&self, store_text: &str) {
        let empty = self
            .state
            .store
            .list_keys(None)
            .await
            .map(|k| k.is_empty())
            .unwrap_or(false);
        if empty {
            let exe = std::env::args()
                .next()
                .unwrap_or_else(|| "triggers-api".into());
            tracing::warn!(
                "the store has no API keys yet; create the first one with: {exe} keys create --store {store_text} --account my-account --email you@example.com --role creator"
            );
        }
    }

    /// Serves until `shutdown` resolves (then drains within the grace
    /// period), with the purge loop beside it; returns when both stopped.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self { state, listener } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let purge = tokio::spawn(state.clone().purge_loop({
            let mut rx = stop_rx;
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }));
        let signal = {
            let state = state.clone();
            async move {
                shutdown.await;
                state.begin_shutdown();
            }
        };
        let served = serve_with(
            listener,
            app(state.clone()),
            signal,
            state.settings.http.clone(),
            state.metrics.connections.clone(),
        )
        .await;
        let _ = stop_tx.send(true);
        let _ = purge.await;
        served
    }
}

/// The store a URL names, undecorated (the state adds the time budget).
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    match &args.store {
        StoreUrl::Sqlite(path) => {
            let mut options = SqliteOptions::default();
            if let Some(bytes) = args.sqlite_max_db_bytes {
                options = options.max_db_bytes(bytes);
            }
            let store = SqliteStore::open_with(path, options)
                .with_context(|| format!("cannot open the SQLite store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
        StoreUrl::Dynamodb { table_prefix } => {
            Ok(Arc::new(open_dynamodb(args, table_prefix).await?))
        }
    }
}

/// The store for an administrative command: the same budget per call as
/// the server's.
pub async fn open_store_timed(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    let store = open_store(args).await?;
    Ok(Arc::new(Timed::new(
        store,
        args.store_timeout(),
        Arc::new(SystemClock),
    )))
}

pub async fn open_dynamodb(args: &StoreArgs, table_prefix: &str) -> anyhow::Result<DynamoStore> {
    let cfg = DynamoConfig {
        table_prefix: table_prefix.to_owned(),
        endpoint_url: std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|s| !s.is_empty()),
        request_timeout: args.store_timeout(),
        max_attempts: 3,
    };
    DynamoStore::connect(&cfg)
        .await
        .with_context(|| format!("cannot connect to DynamoDB (table prefix {table_prefix})"))
}

/// How a store URL is written back (for log lines and hints).
pub fn store_url_text(url: &StoreUrl) -> String {
    match url {
        StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
        StoreUrl::Dynamodb { table_prefix } => format!("dynamodb://{table_prefix}"),
    }
}
