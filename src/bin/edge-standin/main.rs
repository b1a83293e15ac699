//! `edge-standin`: a faithful stand-in for the Azure IoT Edge runtime, for tests and for trying
//! the connected-registry module on a laptop where no IoT Hub or edgeHub can be reached.
//!
//! It plays the two parts of the runtime a module talks to:
//! - **aziot-edged's workload API** on `DIR/workload.sock` (sign with the module key, trust
//!   bundle, server certificates), see `workload.rs`;
//! - **edgeHub's MQTT endpoint**: a real mosquitto with a TLS listener presenting an edgeHub
//!   certificate issued by the stand-in's edge CA (`broker.rs`), plus a responder client that
//!   answers twin requests, records telemetry and calls direct methods (`responder.rs`).
//!
//! A loopback **control API** (`control.rs`) lets a test drive IoT Hub's side. When ready the
//! stand-in prints one JSON line on stdout:
//! `{"control":"http://127.0.0.1:PORT","workloadSocket":…,"mqttPort":…,"envFile":"DIR/module.env"}`
//! and `DIR/module.env` holds the environment the runtime gives a module.
//!
//! Limits: one module identity per stand-in (mosquitto does not namespace topics per client), no
//! SAS token check (mosquitto allows anonymous clients) and no caller check on the workload
//! socket.

mod broker;
mod certs;
mod connlog;
mod control;
mod http;
mod identity;
mod responder;
mod topics;
mod twin;
mod workload;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Map, Value};

use crate::broker::Broker;
use crate::certs::Material;
use crate::control::Control;
use crate::identity::{check_id, prepare_dir, Identity};
use crate::responder::Responder;
use crate::workload::Workload;

/// How long the responder gets to connect and subscribe at start.
const RESPONDER_TIMEOUT: Duration = Duration::from_secs(20);

/// A stand-in for the Azure IoT Edge runtime (workload API + edgeHub MQTT) serving one module.
#[derive(Parser, Debug)]
#[command(name = "edge-standin", version)]
struct Args {
    /// Directory for the CA, keys, sockets, broker files and module.env (created if needed;
    /// existing keys are reused).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "dev1")]
    device_id: String,
    #[arg(long, default_value = "connected-registry")]
    module_id: String,
    /// IOTEDGE_IOTHUBHOSTNAME: the hub name the module puts in its MQTT username and SAS token.
    #[arg(long, default_value = "myhub.azure-devices.net")]
    hub_hostname: String,
    /// IOTEDGE_GATEWAYHOSTNAME: where the module connects; a SAN of the edgeHub certificate.
    #[arg(long, default_value = "localhost")]
    gateway_hostname: String,
    /// The broker's TLS port (edgeHub's is 8883), bound on 0.0.0.0.
    #[arg(long, default_value_t = 8883)]
    mqtt_port: u16,
    /// Loopback address of the control API (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// JSON file whose object seeds the twin's desired properties.
    #[arg(long)]
    desired: Option<PathBuf>,
    /// IOTEDGE_MODULEGENERATIONID.
    #[arg(long, default_value = "gen1")]
    generation_id: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-standin: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-standin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_desired(path: Option<&PathBuf>) -> Result<Map<String, Value>> {
    let Some(path) = path else {
        return Ok(Map::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --desired {}", path.display()))?;
    match serde_json::from_str(&text)
        .with_context(|| format!("--desired {} is not JSON", path.display()))?
    {
        Value::Object(map) => Ok(map),
        _ => bail!("--desired {} must hold a JSON object", path.display()),
    }
}

async fn run(args: Args) -> Result<()> {
    check_id("--device-id", &args.device_id)?;
    check_id("--module-id", &args.module_id)?;
    check_id("--hub-hostname", &args.hub_hostname)?;
    check_id("--gateway-hostname", &args.gateway_hostname)?;
    check_id("--generation-id", &args.generation_id)?;
    if !args.control.ip().is_loopback() {
        bail!("--control must be a loopback address (the control API has no authentication)");
    }
    if args.mqtt_port == 0 {
        bail!("--mqtt-port must not be 0");
    }
    let desired = read_desired(args.desired.as_ref())?;
    let dir = prepare_dir(&args.dir)?;
    let identity = Identity {
        device_id: args.device_id,
        module_id: args.module_id,
        generation_id: args.generation_id,
        hub_hostname: args.hub_hostname,
        gateway_hostname: args.gateway_hostname,
        mqtt_port: args.mqtt_port,
        dir: dir.clone(),
    };

    let material = Arc::new(Material::load_or_create(&dir, &identity.gateway_hostname)?);
    let env_file = identity.write_env_files(&material.module_key_b64)?;

    let broker = Broker::new(&dir, identity.mqtt_port)?;
    broker.start().await?;
    broker.follow_log();
    let result = serve(
        identity,
        material,
        broker.clone(),
        desired,
        env_file,
        args.control,
    )
    .await;
    let stopped = broker.stop().await;
    result.and(stopped)
}

/// Everything after the broker runs; returns when a signal asks the stand-in to stop.
async fn serve(
    identity: Identity,
    material: Arc<Material>,
    broker: Arc<Broker>,
    desired: Map<String, Value>,
    env_file: PathBuf,
    control_addr: SocketAddr,
) -> Result<()> {
    let workload = Workload::new(identity.clone(), material.clone());
    workload.listen()?;

    let responder = Responder::start(identity.mqtt_port, &material.ca.pem, desired)?;
    if !responder.wait_subscribed(0, RESPONDER_TIMEOUT).await {
        bail!(
            "the responder did not connect and subscribe to mosquitto on port {} within {RESPONDER_TIMEOUT:?}; see {}/mosquitto.log",
            identity.mqtt_port,
            identity.dir.display()
        );
    }

    let control = Arc::new(Control {
        responder,
        broker,
        workload,
    });
    let control_addr = control.listen(control_addr).await?;
    let ready = json!({
        "control": format!("http://{control_addr}"),
        "workloadSocket": identity.workload_socket(),
        "mqttPort": identity.mqtt_port,
        "envFile": env_file,
        "dir": identity.dir,
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}")?;
        out.flush()?;
    }
    tracing::info!(%control_addr, "edge-standin ready");

    wait_for_signal().await?;
    tracing::info!("stopping");
    let _ = std::fs::remove_file(identity.workload_socket());
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
