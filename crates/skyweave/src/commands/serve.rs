//! `skyweave serve`: run the gateway until SIGINT/SIGTERM, then drain.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use skyweave_core::estate::Estate;
use skyweave_gateway::Gateway;

pub async fn run(config: &Path, listen: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    let _logging = super::init_logging("info");
    let loaded = match super::load_estate(config)? {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!(warning = %warning, "estate file warning");
    }
    let mut estate = loaded.estate;
    if estate.deployments.is_empty() {
        eprintln!(
            "{}: the estate has no [[deployment]]; `serve` needs at least one\n    fix: add a \
             [[deployment]] table (see examples/estate.toml)",
            config.display()
        );
        return Ok(ExitCode::from(2));
    }
    let admin_token = match &estate.admin {
        None => None,
        Some(admin) => match std::env::var(&admin.token_env) {
            Ok(token) if token.trim().len() >= 16 => Some(token.trim().to_string()),
            Ok(_) => {
                eprintln!(
                    "{}: [admin] token_env {} holds fewer than 16 characters\n    fix: use a long \
                     random token, e.g. `openssl rand -hex 32`",
                    config.display(),
                    admin.token_env
                );
                return Ok(ExitCode::from(2));
            }
            Err(_) => {
                eprintln!(
                    "{}: [admin] token_env {} is not set\n    fix: export it, or remove [admin]",
                    config.display(),
                    admin.token_env
                );
                return Ok(ExitCode::from(2));
            }
        },
    };
    let database = match super::database(config, &estate) {
        Ok(database) => database,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(2));
        }
    };
    let keys = if estate.tenants.is_empty() && estate.admin.is_none() {
        tracing::warn!("the estate has no [[tenant]]: requests are not authenticated");
        None
    } else {
        let mut store = skyweave_gateway::keystore::KeyStore::open(&database)
            .await
            .with_context(|| format!("cannot open the key database {}", database.describe()))?;
        store.watch(&database);
        tracing::info!(database = %database.describe(), tenants = estate.tenants.len(), "API keys required");
        Some(store)
    };
    if let Some(listen) = listen {
        estate.server.listen = listen;
    }
    let budgets =
        estate.tenants.iter().any(|t| t.budget.is_some()) || !estate.commitments.is_empty();
    if !estate.server.ledger && budgets {
        eprintln!(
            "{}: server.ledger = false, but budgets and commitments are computed from the \
             ledger\n    fix: remove `ledger = false`, or the budgets and commitments",
            config.display()
        );
        return Ok(ExitCode::from(2));
    }
    let ledger = if estate.server.ledger {
        let ledger = skyweave_gateway::ledger::Ledger::open(&database)
            .await
            .with_context(|| format!("cannot open the usage ledger {}", database.describe()))?;
        tracing::info!(database = %database.describe(), replica = ledger.replica(), "recording usage");
        Some(ledger)
    } else {
        tracing::warn!("server.ledger = false: requests are not recorded");
        None
    };
    let on_bound = move |_, gateway: Arc<Gateway>| {
        if let Some(token) = admin_token {
            let _ = gateway.admin_token.set(skyweave_core::keys::hash(&token));
        }
    };
    serve_estate_with_state(estate, keys, ledger, on_bound, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the gateway, binds, calls `on_bound` with the address, serves until
/// `stop` resolves, then drains in-flight requests for up to `shutdown_grace`.
pub async fn serve_estate(
    estate: Estate,
    on_bound: impl FnOnce(SocketAddr, Arc<Gateway>),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Arc<Gateway>> {
    serve_estate_with_state(estate, None, None, on_bound, stop).await
}

/// As `serve_estate`, authenticating tenants' requests against `keys` and
/// recording every request in `ledger` (written out in full on shutdown).
pub async fn serve_estate_with_state(
    estate: Estate,
    keys: Option<skyweave_gateway::keystore::KeyStore>,
    ledger: Option<skyweave_gateway::ledger::Ledger>,
    on_bound: impl FnOnce(SocketAddr, Arc<Gateway>),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Arc<Gateway>> {
    let listen = estate.server.listen;
    let grace = estate.server.shutdown_grace;
    let gateway = Gateway::with_state(estate, keys, ledger).context("cannot start the gateway")?;
    // Budgets and commitments continue from what the ledger recorded.
    gateway.refresh_spend().await.context("cannot read the recorded spend from the ledger")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.listen or --listen)"))?;
    let address = listener.local_addr()?;
    tracing::info!(address = %address, deployments = gateway.deployments.len(), "listening");
    on_bound(address, gateway.clone());

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (probes_stop_tx, probes_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let probes =
        tokio::spawn(skyweave_gateway::gateway::run_background(gateway.clone(), async move {
            let _ = probes_stop_rx.await;
        }));
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_server = match gateway.estate.admin.as_ref().and_then(|a| a.listen) {
        None => None,
        Some(admin_listen) => {
            let admin_listener = tokio::net::TcpListener::bind(admin_listen)
                .await
                .with_context(|| format!("cannot listen on {admin_listen} ([admin] listen)"))?;
            tracing::info!(address = %admin_listener.local_addr()?, "admin API listening");
            let app = skyweave_gateway::admin::routes(gateway.clone()).with_state(gateway.clone());
            Some(tokio::spawn(async move {
                axum::serve(admin_listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = admin_stop_rx.await;
                    })
                    .await
            }))
        }
    };
    let server =
        tokio::spawn(skyweave_gateway::server::serve(gateway.clone(), listener, async move {
            let _ = stop_rx.await;
        }));
    stop.await;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down: draining in-flight requests");
    gateway.begin_shutdown();
    let _ = stop_tx.send(());
    let _ = probes_stop_tx.send(());
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("drained; bye"),
        Ok(Ok(Err(error))) => tracing::error!(error = %error, "the server failed"),
        Ok(Err(error)) => tracing::error!(error = %error, "the server task failed"),
        Err(_) => {
            tracing::warn!("shutdown grace elapsed with requests still in flight; closing them")
        }
    }
    let _ = admin_stop_tx.send(());
    if let Some(admin_server) = admin_server {
        let _ = admin_server.await;
    }
    let _ = probes.await;
    if gateway.ledger.is_some() {
        // Joining the writer blocks (up to its retry bound): off the runtime.
        let closing = gateway.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(ledger) = &closing.ledger {
                ledger.close();
            }
        })
        .await;
        tracing::info!("usage ledger written");
    }
    Ok(gateway)
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
