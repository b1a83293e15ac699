//! Helpers of the edge stand-in tests: running the Python SDK script (`sdk_fidelity.py`) and
//! answering its method call, a module's MQTT client written with rumqttc (to see
//! exactly what edgeHub's side answers, without the Python SDK in between) and a check that a
//! PEM chain verifies against the edge CA for a name at a given time.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::json;

use super::common;
use super::common::edge::{EdgeStandin, MethodReply};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/edge/sdk_fidelity.py");
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`RawModule::expect`] waits.
pub const WAIT: Duration = Duration::from_secs(20);

/// `python3` with Microsoft's SDK importable; a missing one fails the test.
pub fn python_with_sdk() -> PathBuf {
    let python = common::require("python3");
    let out = Command::new(&python)
        .args([
            "-c",
            "import azure.iot.device, azure.iot.device.constant as c; print(c.VERSION)",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python:?}: {e}"));
    assert!(
        out.status.success(),
        "Microsoft's azure-iot-device SDK is not importable by {python:?}; install it with \
         `pip install azure-iot-device==2.14.0` (scripts/test.sh does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        version.starts_with("2."),
        "the fidelity test is written for azure-iot-device 2.x, found {version}"
    );
    python
}

/// Run `sdk_fidelity.py` with `env`, call the `ping` method when it asks for it, and return
/// the steps it reported.
pub fn run_sdk_script(standin: &EdgeStandin, env: &[(String, String)]) -> Vec<String> {
    let python = python_with_sdk();
    let stderr_path = standin.dir().join("sdk.stderr");
    let mut cmd = Command::new(python);
    cmd.arg(SCRIPT);
    // Only what the test hands over: no stray IoT Edge variables from the caller's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("IOTEDGE_") || k.starts_with("EdgeHub") || k.starts_with("EdgeModule") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CONTROL_URL", standin.control_url())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn python3");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let report = |child: &mut std::process::Child, why: &str| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{why}\nSDK stderr:\n{}\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            standin.log_text()
        );
    };
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut steps = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(step) = line.strip_prefix("STEP ") {
                    steps.push(step.to_owned());
                    if step == "awaiting-method" {
                        let reply = standin.call_method("ping", json!({"hello": "world"}), WAIT);
                        assert_eq!(
                            reply,
                            Ok(MethodReply {
                                status: 200,
                                payload: json!({"pong": {"hello": "world"}})
                            }),
                            "the SDK's method response through the stand-in"
                        );
                    }
                } else if line == "DONE" {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => report(
                &mut child,
                &format!("the SDK script did not finish within {SCRIPT_TIMEOUT:?} (steps so far: {steps:?})"),
            ),
        }
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            report(&mut child, "the SDK script did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        report(
            &mut child,
            &format!("the SDK script failed ({status}) after steps {steps:?}"),
        );
    }
    steps
}

/// A module's MQTT client written with rumqttc, standing in for the real module, to see
/// exactly what edgeHub's side answers.
pub struct RawModule {
    client: rumqttc::Client,
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub const SUBACK: &str = "<suback>";

impl RawModule {
    pub fn connect(standin: &EdgeStandin) -> RawModule {
        use rumqttc::{Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut standin.ca_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut opts = MqttOptions::new(standin.client_id(), "localhost", standin.opts.mqtt_port);
        opts.set_credentials(
            format!(
                "myhub.azure-devices.net/{}/?api-version=2019-10-01&DeviceClientType=edge-standin-test",
                standin.client_id()
            ),
            "SharedAccessSignature sr=unchecked&sig=unchecked&se=1",
        )
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(60))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
        let (client, mut connection) = rumqttc::Client::new(opts, 64);
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sub, stopping) = (client.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for event in connection.iter() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let filters = [
                            "$iothub/twin/res/#",
                            "$iothub/twin/PATCH/properties/desired/#",
                            "$iothub/methods/POST/#",
                        ]
                        .map(|f| rumqttc::SubscribeFilter::new(f.to_owned(), QoS::AtLeastOnce));
                        sub.try_subscribe_many(filters).unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send((SUBACK.to_owned(), Vec::new()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        RawModule {
            client,
            rx,
            stop,
            thread: Some(thread),
        }
    }

    pub fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
            .unwrap();
    }

    /// The next message whose topic starts with `prefix` (others are skipped).
    pub fn expect(&self, prefix: &str) -> (String, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((topic, body)) if topic.starts_with(prefix) => return (topic, body),
                Ok(_) => {}
                Err(e) => panic!("nothing on {prefix}* within {WAIT:?} ({e})"),
            }
        }
    }
}

impl Drop for RawModule {
    fn drop(&mut self) {
        // Stop for good: a leftover client with the module's id would kick the next test's
        // module off the broker.
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Verify `chain` (leaf first) against `ca_pem` for `name`, `days_ahead` days from now.
pub fn verify_chain(
    ca_pem: &str,
    chain: &str,
    name: &str,
    days_ahead: u64,
) -> Result<(), rustls::Error> {
    use rustls::client::danger::ServerCertVerifier as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut chain.as_bytes())
        .map(Result::unwrap)
        .collect();
    assert!(certs.len() >= 2, "the chain holds the leaf and the CA");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let at = rustls::pki_types::UnixTime::since_unix_epoch(
        now + Duration::from_secs(days_ahead * 86_400),
    );
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(&certs[0], &certs[1..], &server, &[], at)
        .map(|_| ())
}
