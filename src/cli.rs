//! The `triggers-api` binary: `serve` (default), `keys …`, `dynamodb …`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use crate::clock::SystemClock;
use crate::config::{
    Cli, Command, DynamoCommand, KeysCommand, LogFormat, ServeArgs, Settings, StoreArgs, StoreUrl,
};
use crate::domain::{format_ts, AccountId};
use crate::keys::{self, KeyError};
use crate::store::sqlite::SqliteStore;
use crate::store::{KeyChange, Store};
use crate::AppState;

/// Entry point for `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let store = cli.store;
    match cli.command {
        None => serve(store, ServeArgs::from_env()?).await,
        Some(Command::Serve(args)) => serve(store, args).await,
        Some(Command::Keys { command }) => keys_command(&store, command).await,
        Some(Command::Dynamodb { command }) => dynamodb_command(&store, command).await,
    }
}

/// Opens the configured store.
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    match &args.store {
        StoreUrl::Sqlite(path) => {
            let store = SqliteStore::open(path)
                .with_context(|| format!("cannot open the SQLite store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
        StoreUrl::Dynamodb { table_prefix } => {
            let store = open_dynamodb(args, table_prefix).await?;
            Ok(Arc::new(store))
        }
    }
}

async fn open_dynamodb(
    args: &StoreArgs,
    table_prefix: &str,
) -> anyhow::Result<crate::store::dynamodb::DynamoStore> {
    let cfg = crate::store::dynamodb::DynamoConfig {
        table_prefix: table_prefix.to_owned(),
        endpoint_url: std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|s| !s.is_empty()),
        request_timeout: args.store_timeout(),
        max_attempts: 3,
    };
    crate::store::dynamodb::DynamoStore::connect(&cfg)
        .await
        .with_context(|| format!("cannot connect to DynamoDB (table prefix {table_prefix})"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

fn store_url_text(url: &StoreUrl) -> String {
    match url {
        StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
        StoreUrl::Dynamodb { table_prefix } => format!("dynamodb://{table_prefix}"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn serve(store_args: StoreArgs, args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let store: Arc<dyn Store> = match &store_args.store {
        StoreUrl::Dynamodb { table_prefix } => {
            let store = open_dynamodb(&store_args, table_prefix).await?;
            if args.create_tables {
                store
                    .create_tables()
                    .await
                    .context("cannot create the DynamoDB tables")?;
            }
            Arc::new(store)
        }
        StoreUrl::Sqlite(_) => open_store(&store_args).await?,
    };
    let store_text = store_url_text(&store_args.store);
    if store
        .list_keys(None)
        .await
        .map(|k| k.is_empty())
        .unwrap_or(false)
    {
        let exe = std::env::args()
            .next()
            .unwrap_or_else(|| "triggers-api".into());
        tracing::warn!(
            "the store has no API keys yet; create the first one with: {exe} keys create --store {store_text} --account my-account --email you@example.com --role creator"
        );
    }
    let state = AppState::new(
        store,
        Arc::new(SystemClock),
        Settings::new(&store_args, &args),
    )
    .await
    .context("cannot initialise the service")?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = %store_text, "triggers-api {} listening on http://{addr}", crate::routes::meta::VERSION);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let purge = tokio::spawn(state.clone().purge_loop(
        std::time::Duration::from_secs(args.purge_interval_secs.max(1)),
        {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        },
    ));
    crate::serve(listener, crate::app(state), shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    let _ = purge.await;
    Ok(())
}

fn key_json(r: &crate::domain::ApiKeyRecord) -> serde_json::Value {
    json!({
        "key_id": r.key_id,
        "account": r.account,
        "email": r.email,
        "role": r.role,
        "status": r.status,
        "rate_limit_per_minute": r.rate_limit_per_minute,
        "created_at": format_ts(&r.created_at),
    })
}

fn explain(e: KeyError) -> anyhow::Error {
    anyhow::Error::new(e)
}

async fn keys_command(args: &StoreArgs, command: KeysCommand) -> anyhow::Result<()> {
    let store = open_store(args).await?;
    let store = store.as_ref();
    match command {
        KeysCommand::Create {
            account,
            email,
            role,
            rate_limit,
            json,
        } => {
            let created = keys::create(
                store,
                &account,
                &email,
                role,
                rate_limit.unwrap_or(args.default_rate_limit),
                args.bcrypt_cost,
            )
            .await
            .map_err(explain)?;
            if json {
                let mut v = key_json(&created.record);
                v["key"] = json!(created.token);
                println!("{v}");
            } else {
                let r = &created.record;
                println!(
                    "Created {} key {} for account {} ({}, {} requests/minute).",
                    r.role.as_str(),
                    r.key_id,
                    r.account,
                    r.email.as_str(),
                    r.rate_limit_per_minute
                );
                println!("This is the only time the key is shown; store it now:");
                println!("{}", created.token);
            }
        }
        KeysCommand::List { account, json } => {
            let account = account
                .map(|a| AccountId::parse(&a))
                .transpose()
                .map_err(|e| anyhow::anyhow!("invalid account: {e}"))?;
            let list = store.list_keys(account.as_ref()).await?;
            if json {
                let v: Vec<_> = list.iter().map(key_json).collect();
                println!("{}", serde_json::Value::Array(v));
            } else if list.is_empty() {
                println!("No keys.");
            } else {
                println!(
                    "{:<16}  {:<20}  {:<28}  {:<7}  {:<8}  {:>8}  created_at",
                    "key_id", "account", "email", "role", "status", "rpm"
                );
                for r in &list {
                    println!(
                        "{:<16}  {:<20}  {:<28}  {:<7}  {:<8}  {:>8}  {}",
                        r.key_id,
                        r.account,
                        r.email.as_str(),
                        r.role.as_str(),
                        r.status.as_str(),
                        r.rate_limit_per_minute,
                        format_ts(&r.created_at)
                    );
                }
            }
        }
        KeysCommand::Revoke { key_id, email } => match (key_id, email) {
            (Some(id), _) => {
                keys::update(
                    store,
                    &id,
                    KeyChange::Status(crate::domain::KeyStatus::Revoked),
                )
                .await
                .map_err(explain)?;
                println!("Revoked key {id}. Servers stop accepting it within the auth cache time (30 s by default).");
            }
            (None, Some(email)) => {
                let ids = keys::revoke_by_email(store, &email)
                    .await
                    .map_err(explain)?;
                for id in &ids {
                    println!("Revoked key {id}.");
                }
            }
            (None, None) => anyhow::bail!("give a KEY_ID or --email"),
        },
        KeysCommand::SetStatus { key_id, status } => {
            keys::update(store, &key_id, KeyChange::Status(status))
                .await
                .map_err(explain)?;
            println!("Key {key_id} is now {}.", status.as_str());
        }
        KeysCommand::SetRateLimit { key_id, per_minute } => {
            keys::update(store, &key_id, KeyChange::RateLimit(per_minute))
                .await
                .map_err(explain)?;
            println!("Key {key_id} now allows {per_minute} requests per minute.");
        }
    }
    Ok(())
}

async fn dynamodb_command(args: &StoreArgs, command: DynamoCommand) -> anyhow::Result<()> {
    match command {
        DynamoCommand::CreateTables { prefix } => {
            let prefix = match (prefix, &args.store) {
                (Some(p), _) => p,
                (None, StoreUrl::Dynamodb { table_prefix }) => table_prefix.clone(),
                (None, StoreUrl::Sqlite(_)) => {
                    anyhow::bail!("give --prefix or --store dynamodb://PREFIX")
                }
            };
            let store = open_dynamodb(args, &prefix).await?;
            store
                .create_tables()
                .await
                .context("cannot create the tables")?;
            println!("Tables for prefix '{prefix}' are ready (TTL enabled).");
            Ok(())
        }
    }
}
