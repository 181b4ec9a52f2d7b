//! The `triggers-api` binary: `serve` (default), `keys …`, `dynamodb …`,
//! `healthcheck`, `conformance`.

#[cfg(feature = "conformance")]
mod conformance;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use crate::auth::admin::{self as keys, KeyError};
use crate::clock::SystemClock;
use crate::config::{
    Cli, Command, DynamoCommand, KeysCommand, LogFormat, ServeArgs, Settings, StoreArgs, StoreUrl,
};
use crate::domain::{format_ts, AccountId};
use crate::startup::{open_dynamodb, open_store, open_store_timed, store_url_text, Application};
use crate::store::{KeyChange, Store};

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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let store = cli.store;
    match cli.command {
        None => serve(store, ServeArgs::from_env()?).await,
        Some(Command::Serve(args)) => serve(store, args).await,
        Some(Command::Keys { command }) => keys_command(&store, command).await,
        Some(Command::Dynamodb { command }) => dynamodb_command(&store, command).await,
        Some(Command::Healthcheck { url, timeout_ms }) => {
            healthcheck(&url, Duration::from_millis(timeout_ms)).await
        }
        #[cfg(feature = "conformance")]
        Some(Command::Conformance(args)) => return conformance::run(args).await,
    }?;
    Ok(ExitCode::SUCCESS)
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
        StoreUrl::Dynamodb { table_prefix } if args.create_tables => {
            let store = open_dynamodb(&store_args, table_prefix).await?;
            store
                .create_tables()
                .await
                .context("cannot create the DynamoDB tables")?;
            Arc::new(store)
        }
        _ => open_store(&store_args).await?,
    };
    let store_text = store_url_text(&store_args.store);
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let settings = Settings::new(&store_args, &args);
    let application = Application::build(store, Arc::new(SystemClock), settings, listener)
        .await
        .context("cannot initialise the service")?;
    application.hint_when_no_keys(&store_text).await;
    let addr = application.local_addr()?;
    let limits = &application.state().settings.http;
    tracing::info!(
        %addr,
        store = %store_text,
        max_connections = limits.connection_cap(),
        "triggers-api {} listening on http://{addr}",
        crate::http::routes::meta::VERSION
    );
    application.run_until(shutdown_signal()).await?;
    Ok(())
}

/// GET `url` (plain http) and succeed on a 200.
async fn healthcheck(url: &str, budget: Duration) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: axum::http::Uri = url.parse().context("not a URL")?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported"
    );
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let check = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let head = tokio::time::timeout(budget, check)
        .await
        .with_context(|| format!("no answer from {url} within {budget:?}"))?
        .with_context(|| format!("cannot reach {url}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "{url} answered {status:?}");
    println!("ok");
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
    let store = open_store_timed(args).await?;
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

fn dynamodb_prefix(prefix: Option<String>, args: &StoreArgs) -> anyhow::Result<String> {
    match (prefix, &args.store) {
        (Some(p), _) => Ok(p),
        (None, StoreUrl::Dynamodb { table_prefix }) => Ok(table_prefix.clone()),
        (None, StoreUrl::Sqlite(_)) => anyhow::bail!("give --prefix or --store dynamodb://PREFIX"),
    }
}

async fn dynamodb_command(args: &StoreArgs, command: DynamoCommand) -> anyhow::Result<()> {
    match command {
        DynamoCommand::AddLeaseMarkers { prefix, account } => {
            let prefix = dynamodb_prefix(prefix, args)?;
            let store = open_dynamodb(args, &prefix).await?;
            let mut accounts = account
                .iter()
                .map(|a| AccountId::parse(a).map_err(|e| anyhow::anyhow!("--account {a}: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if accounts.is_empty() {
                accounts = store
                    .list_keys(None)
                    .await
                    .context("cannot list the keys")?
                    .into_iter()
                    .map(|k| k.account)
                    .collect();
                accounts.sort();
                accounts.dedup();
            }
            for a in accounts {
                let (seen, written) = store
                    .add_lease_markers(&a)
                    .await
                    .with_context(|| format!("cannot add the lease markers of account {a}"))?;
                println!("account {a}: {seen} inbox events, {written} available (marker written)");
            }
            Ok(())
        }
        DynamoCommand::CreateTables { prefix } => {
            let prefix = dynamodb_prefix(prefix, args)?;
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
