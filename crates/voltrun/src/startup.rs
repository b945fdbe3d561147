//! Building and running the server: open storage (migrating it), choose the engine, bind the port,
//! serve until a shutdown signal, then drain in-flight requests within the deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use voltrun_api::{ApiConfig, AppState, AuthLimits};
use voltrun_engine::isolation::guest::{
    EmulatedConfig, EmulatedLauncher, FirecrackerConfig, FirecrackerLauncher, GuestIsolation,
};
use voltrun_engine::isolation::namespace::NamespaceIsolation;
use voltrun_engine::{
    Engine, LocalEngine, LocalEngineConfig, RuntimeInfo, UnavailableEngine, detect_runtimes,
};
use voltrun_executions::{EnvOpener, Executions, ExecutionsConfig, StoredCode};
use voltrun_storage::Store;
use voltrun_vm::binaries::BinarySearch;
use voltrun_vm::doctor::{self, DoctorConfig};
use voltrun_vm::emulated::EmulatorConfig;
use voltrun_vm::jailer::JailerConfig;

use crate::config::{EngineBackend, Environment, SecretSource, Settings};

mod prepare;
pub use prepare::{Secrets, read_host, secrets};

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Arc<dyn Store>,
    local_engine: Option<Arc<LocalEngine>>,
    shutdown_timeout: Duration,
    http: crate::config::HttpLimits,
    retention: crate::config::RetentionSettings,
}

/// This node's name (the host name), recorded on the executions it runs.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "local".into())
}

/// The engine the API calls, and the local engine behind it when there is one (to stop its instances
/// at shutdown and to run the asynchronous dispatcher).
struct ChosenEngine {
    engine: Arc<dyn Engine>,
    local: Option<Arc<LocalEngine>>,
}

/// Chooses the isolation backend. `auto` takes Firecracker where a guest boots (the doctor's boot
/// probe), else the namespace sandbox where this host can run it, else runs without one; /health
/// says which and why, and every execute call says why when nothing can run.
async fn build_engine(settings: &Settings, store: Arc<dyn Store>) -> anyhow::Result<ChosenEngine> {
    let runtimes = detect_runtimes();
    let unavailable = |reason: String| {
        tracing::warn!(reason, "functions can be deployed but not run");
        ChosenEngine {
            engine: Arc::new(UnavailableEngine::new(reason, runtimes.clone())),
            local: None,
        }
    };
    match settings.engine.backend {
        EngineBackend::None => Ok(unavailable(
            "ENGINE_BACKEND=none: this server stores functions but does not run them".into(),
        )),
        EngineBackend::Firecracker => {
            firecracker_engine(settings, store, runtimes.clone(), None, None)
                .await
                .map_err(|e| anyhow::anyhow!("ENGINE_BACKEND=firecracker, but {e}"))
        }
        EngineBackend::Emulated => emulated_engine(settings, store, runtimes.clone())
            .await
            .map_err(|e| anyhow::anyhow!("ENGINE_BACKEND=emulated, but {e}")),
        EngineBackend::Namespace => namespace_engine(settings, store, runtimes.clone(), None)
            .map_err(|e| anyhow::anyhow!("ENGINE_BACKEND=namespace, but {e}")),
        EngineBackend::Auto => {
            let probe = doctor::capability(&DoctorConfig {
                search: binary_search(settings),
                images_dir: settings.engine.vm.images_dir.clone(),
                boot_deadline: Duration::from_millis(settings.engine.vm.boot_timeout_ms),
            })
            .await;
            let not_firecracker = if probe.usable {
                let why = format!("chosen by ENGINE_BACKEND=auto: {}", probe.reason);
                let chosen = firecracker_engine(
                    settings,
                    store.clone(),
                    runtimes.clone(),
                    Some(why),
                    probe.manifest,
                )
                .await;
                match chosen {
                    Ok(chosen) => return Ok(chosen),
                    Err(e) => e.to_string(),
                }
            } else {
                probe.reason
            };
            let why = format!("ENGINE_BACKEND=auto; not Firecracker: {not_firecracker}");
            match namespace_engine(settings, store, runtimes.clone(), Some(why.clone())) {
                Ok(chosen) => Ok(chosen),
                Err(e) => Ok(unavailable(format!(
                    "the namespace sandbox cannot run on this host: {e} ({why})"
                ))),
            }
        }
    }
}

/// Where Firecracker and its jailer are looked for: `FIRECRACKER_BIN` (a setting), then as
/// `voltrun vm doctor` looks. A jailer next to the chosen Firecracker is that release's jailer, and
/// is taken unless `JAILER_BIN` says otherwise.
fn binary_search(settings: &Settings) -> BinarySearch {
    let mut search = BinarySearch::from_env();
    if let Some(bin) = &settings.engine.vm.firecracker_bin {
        search.firecracker_bin = Some(bin.clone());
        let sibling = bin.with_file_name("jailer");
        if search.jailer_bin.is_none() && sibling.is_file() {
            search.jailer_bin = Some(sibling);
        }
    }
    search
}

fn local_config(settings: &Settings, selection: Option<String>) -> LocalEngineConfig {
    let e = &settings.engine;
    LocalEngineConfig {
        work_dir: settings.data_dir.join("engine"),
        keep_alive: Duration::from_secs(e.keep_alive_s),
        max_concurrency_per_function: e.max_concurrency,
        memory_budget_mb: e.memory_budget_mb,
        user_memory_mb: e.user_memory_mb,
        queue_timeout: Duration::from_secs(e.queue_timeout_s),
        uid_base: e.sandbox_uid_base,
        tmp_size_mb: e.tmp_size_mb,
        max_processes: e.max_processes,
        node: node_name(),
        selection,
        code_gc_after: e.code_gc_after,
    }
}

fn namespace_engine(
    settings: &Settings,
    store: Arc<dyn Store>,
    runtimes: Vec<RuntimeInfo>,
    selection: Option<String>,
) -> Result<ChosenEngine, voltrun_engine::EngineError> {
    let config = local_config(settings, selection);
    let e = &settings.engine;
    let isolation =
        NamespaceIsolation::new(&config.work_dir, e.sandbox_uid_base, e.sandbox_uid_count)?;
    let engine = LocalEngine::new(
        config,
        Arc::new(StoredCode(store)),
        runtimes,
        Arc::new(isolation),
    )?;
    tracing::info!(
        detail = engine.status().detail,
        "execution engine: namespace sandbox"
    );
    Ok(ChosenEngine {
        engine: engine.clone(),
        local: Some(engine),
    })
}

/// `verified`: the image set as the `auto` probe verified it, so it is not hashed twice at start.
async fn firecracker_engine(
    settings: &Settings,
    store: Arc<dyn Store>,
    runtimes: Vec<RuntimeInfo>,
    selection: Option<String>,
    verified: Option<voltrun_vm::images::Manifest>,
) -> anyhow::Result<ChosenEngine> {
    let search = binary_search(settings);
    let firecracker = search.firecracker()?.path;
    let vm = &settings.engine.vm;
    let jailer = if vm.jailer {
        // The jailed VMMs run as the first uid of the sandbox range, which nothing else uses.
        let uid = settings.engine.sandbox_uid_base.saturating_sub(1);
        Some(JailerConfig::new(
            search.jailer()?.path,
            settings.data_dir.join("vm").join("jail"),
            uid,
            uid,
        ))
    } else {
        None
    };
    let launcher = FirecrackerLauncher::new(FirecrackerConfig {
        firecracker,
        jailer,
        run_dir: settings.data_dir.join("vm").join("run"),
        images_dir: vm.images_dir.clone(),
        boot_timeout: Duration::from_millis(vm.boot_timeout_ms),
        verified_manifest: verified,
        snapshot_dir: Some(settings.data_dir.join("vm").join("snapshots")),
        max_snapshots: vm.snapshots_max,
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let engine = LocalEngine::new(
        local_config(settings, selection),
        Arc::new(StoredCode(store)),
        runtimes,
        Arc::new(GuestIsolation::new(Arc::new(launcher))),
    )?;
    tracing::info!(
        detail = engine.status().detail,
        "execution engine: Firecracker microVMs"
    );
    Ok(ChosenEngine {
        engine: engine.clone(),
        local: Some(engine),
    })
}

/// The Firecracker backend's guests under QEMU's emulation (a development and test backend).
async fn emulated_engine(
    settings: &Settings,
    store: Arc<dyn Store>,
    runtimes: Vec<RuntimeInfo>,
) -> anyhow::Result<ChosenEngine> {
    let vm = &settings.engine.vm;
    let emulator = EmulatorConfig::locate(
        vm.qemu_bin.clone(),
        vm.vhost_vsock_bin.clone(),
        std::path::Path::new(voltrun_vm::emulated::DEFAULT_INSTALL_DIR),
        settings.data_dir.join("vm").join("emulated"),
    )?;
    let launcher = EmulatedLauncher::new(EmulatedConfig {
        emulator,
        images_dir: vm.images_dir.clone(),
        boot_timeout: Duration::from_millis(vm.boot_timeout_ms),
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let engine = LocalEngine::new(
        local_config(settings, Some("ENGINE_BACKEND=emulated".into())),
        Arc::new(StoredCode(store)),
        runtimes,
        Arc::new(GuestIsolation::new(Arc::new(launcher))),
    )?;
    tracing::warn!(
        detail = engine.status().detail,
        "execution engine: emulated microVMs, a development backend: slow, and isolating no better than the VM it emulates"
    );
    Ok(ChosenEngine {
        engine: engine.clone(),
        local: Some(engine),
    })
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        // First, so that a damaged secret file is reported as the configuration error it is.
        let secrets = secrets(settings)?;
        if secrets.jwt_secret_source == SecretSource::DataDir {
            tracing::warn!(
                path = %settings.data_dir.join("jwt_secret").display(),
                "JWT_SECRET is not set: using a development secret kept in the data directory; set JWT_SECRET in production"
            );
        }
        if secrets.encryption_key_source == SecretSource::DataDir {
            tracing::warn!(
                "ENCRYPTION_KEY is not set: using a development key kept in the data directory"
            );
        }
        if settings.metrics_token.is_none() && settings.environment == Environment::Production {
            tracing::warn!(
                "METRICS_TOKEN is not set: GET /metrics is open to anyone who can reach this port"
            );
        }
        // The data directory holds the database, secrets and unpacked code: private by default.
        prepare::create_private_dir(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
        // SQLite creates the database file but not its directory, and would make the file 0644.
        let sqlite_file = settings
            .database_url
            .expose()
            .strip_prefix("sqlite://")
            .map(|path| std::path::Path::new(path.split('?').next().unwrap_or(path)))
            .filter(|path| {
                !path.as_os_str().is_empty() && *path != std::path::Path::new(":memory:")
            });
        if let Some(file) = sqlite_file {
            if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                prepare::create_private_dir(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            prepare::create_private_file(file)
                .with_context(|| format!("creating {}", file.display()))?;
        }
        let store =
            voltrun_storage::connect(settings.database_url.expose(), settings.db_max_connections)
                .await
                .context("opening the database")?;
        tracing::info!(
            backend = store.backend(),
            "database ready, migrations applied"
        );

        let ChosenEngine {
            engine,
            local: local_engine,
        } = build_engine(settings, store.clone()).await?;
        // Asynchronous executions: recover what a previous stop interrupted, then dispatch the queue
        // and start what functions keep warm.
        let secret_box = voltrun_auth::SecretBox::new(secrets.encryption_key.expose());
        let open_env: EnvOpener = Arc::new(move |sealed: &[u8]| Ok(secret_box.open_json(sealed)?));
        let quotas = voltrun_storage::UserQuotas {
            max_functions: settings.quotas.functions,
            max_code_bytes: settings.quotas.code_bytes,
            max_queued_executions: settings.quotas.queued_executions,
        };
        let mut executions = Executions::new(
            store.clone(),
            engine,
            open_env,
            ExecutionsConfig {
                node: node_name(),
                quotas,
                async_parallelism: settings.engine.async_parallelism,
                retry_backoff: Duration::from_millis(settings.engine.retry_backoff_ms),
            },
        );
        executions
            .start()
            .await
            .context("starting the asynchronous dispatcher")?;
        let config = ApiConfig {
            jwt_secret: secrets.jwt_secret.expose().clone(),
            access_token_ttl_s: settings.access_token_ttl_s,
            refresh_token_ttl_s: settings.refresh_token_ttl_s,
            session_max_age_s: settings.session_max_age_s,
            env_encryption_key: *secrets.encryption_key.expose(),
            auth_limits: AuthLimits {
                attempts_per_address_per_minute: settings.auth_attempts_per_minute,
                failed_logins_per_account: settings.login_failures_per_account,
                max_tracked_keys: settings.auth_limiter_max_keys,
                hashing_concurrency: settings.auth_hashing_concurrency,
                hashing_queue_timeout: Duration::from_millis(
                    settings.auth_hashing_queue_timeout_ms,
                ),
            },
            trusted_proxies: settings.trusted_proxies.clone(),
            metrics_token: settings.metrics_token.as_ref().map(|t| t.expose().clone()),
            body_limits: voltrun_api::limits::BodyLimits {
                deadline: settings.http.body_timeout,
                max_uploads: settings.http.max_uploads,
            },
            quotas,
        };
        let state = Arc::new(AppState::new(store.clone(), Arc::new(executions), config)?);
        let router = voltrun_api::router(state);
        let address = SocketAddr::new(settings.bind_address, settings.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        Ok(Self {
            listener,
            router,
            store,
            local_engine,
            shutdown_timeout: Duration::from_secs(settings.shutdown_timeout_s),
            http: settings.http,
            retention: settings.retention,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn run(self) -> anyhow::Result<()> {
        // Handlers are installed before `listening` is logged: a signal sent the moment after
        // must stop the server cleanly, not kill it (the default action) before it could.
        let shutdown = shutdown_signal().context("installing the signal handlers")?;
        self.run_until(shutdown).await
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish within the deadline.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.listener.local_addr()?, "listening");
        let retention = crate::retention::start(self.store.clone(), self.retention);
        let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
        let server = crate::edge::serve(self.listener, self.router, self.http, async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight requests");
            let _ = stopping_tx.send(true);
        });
        let deadline = self.shutdown_timeout;
        let drained = tokio::select! {
            () = server => true,
            () = async move {
                let _ = stopping_rx.wait_for(|stopping| *stopping).await;
                tokio::time::sleep(deadline).await;
            } => false,
        };
        if !drained {
            tracing::warn!(
                deadline_s = deadline.as_secs(),
                "in-flight requests did not finish before the deadline; dropping them"
            );
        }
        if let Some(engine) = &self.local_engine {
            engine.shutdown().await;
        }
        // A pruning step in flight is one statement: stopping between them loses nothing.
        if let Some(retention) = retention {
            retention.abort();
        }
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT; the handlers are in place once this returns.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
