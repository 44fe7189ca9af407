//! `ramify-operator`: see `--help`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use ramify_operator::config::Config;
use ramify_operator::http::{self, AppState};
use ramify_operator::leader::LeaderElection;
use ramify_operator::metrics::Metrics;
use tracing::{error, info};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,tower=warn,hyper=warn".into());
    if config.log_format == "json" {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or $KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());
    let state = AppState {
        ctx: Arc::new(tokio::sync::OnceCell::new()),
        leader: Arc::new(AtomicBool::new(false)),
        metrics: Arc::clone(&metrics),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(listen = %config.listen, namespace = %config.namespace, "ramify-operator starting");
    let router = http::router(state.clone());
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            error!(error = %e, "HTTP server failed");
        }
    });

    if config.leader_election {
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("ramify-operator-{}", std::process::id()));
        let election = LeaderElection::new(
            client.clone(),
            &config.namespace,
            "ramify-operator",
            &identity,
        );
        election.acquire().await;
        tokio::spawn(async move {
            election.keep().await;
            // Another replica may lead now: stop at once rather than reconcile twice.
            error!("lost the leader lease; exiting");
            std::process::exit(1);
        });
    }
    state.leader.store(true, Ordering::Relaxed);
    let token = ramify_operator::token::ensure(
        client.clone(),
        &config.namespace,
        &config.proxy_token_secret,
    )
    .await
    .context("cannot read or create the proxy token Secret")?;
    let storage_token = match &config.storage_token_file {
        Some(path) => ramify_api::ApiToken::from_file(path)?,
        None => {
            let value = ramify_operator::token::ensure(
                client.clone(),
                &config.namespace,
                &config.storage_token_secret,
            )
            .await
            .context("cannot read or create the storage token Secret")?;
            ramify_api::ApiToken::new(
                &value,
                &format!(
                    "Secret {}/{}",
                    config.namespace, config.storage_token_secret
                ),
            )?
        }
    };
    let mut config = config;
    config.storage_token = Some(storage_token);
    if !config.tls_ca_secret.is_empty() {
        let ca = if config.tls_ca_issued {
            ramify_operator::ca::wait_issued(
                client.clone(),
                &config.namespace,
                &config.tls_ca_secret,
            )
            .await
            .context("cannot read the TLS CA Secret cert-manager issues")?
        } else {
            ramify_operator::ca::ensure(client.clone(), &config.namespace, &config.tls_ca_secret)
                .await
                .context("cannot read or create the TLS CA Secret")?
        };
        config.tls_ca_cert = Some(ca);
    }
    let cell = Arc::clone(&state.ctx);
    ramify_operator::run_controller(client, config, metrics, token, move |ctx| {
        let _ = cell.set(ctx);
    })
    .await;
    info!("ramify-operator stopped");
    Ok(())
}
